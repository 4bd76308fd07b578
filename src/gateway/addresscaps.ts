import type { Channel } from '../channels/channel.js';
import { PtthError } from '../http/errors.js';
import type { RouteTable } from '../table/table.js';
import type { Registration } from '../table/registration.js';
import { noop } from '../shared/noop.js';
import { addressKey } from './ratelimit.js';

/** What one client address may hold at once; 0 means no cap. */
export interface AddressLimits {
  /** Open TCP (or TLS) connections of any kind: visitors, claims, channels, Comet polls. */
  readonly connections: number;
  /** Names it created that are still registered (with or without a live channel). */
  readonly names: number;
  /** Live channels it opened, across every name and transport. */
  readonly channels: number;
}

/** What an address holds now (for tests, logs and the status of a refusal). */
export interface AddressHeld {
  connections: number;
  names: number;
  channels: number;
}

/**
 * Per-address caps for open gateways (README "Limits a public gateway lives with"): the rate
 * limits bound how fast one address claims and connects, these bound how much it holds at once.
 * Addresses count as the rate limiter counts them (addressKey: IPv6 per /64, IPv4-mapped as IPv4),
 * and the same exemption applies (loopback unless --limit-loopback).
 *
 * A name counts against the address whose claim created it, for as long as it is registered: a
 * channel that disconnects leaves the name held through its lease (nobody else can take it), so it
 * counts until it is released (DELETE of the private URL) or its lease expires. Reclaiming a name
 * one already holds creates nothing and is never refused by the names cap.
 */
export class AddressCaps {
  readonly #limits: AddressLimits;
  #exempt: ((address: string) => boolean) | undefined;
  readonly #held = new Map<string, AddressHeld>();
  readonly #nameOwner = new WeakMap<Registration, string>();
  /** Where a channel came from, set just before it joins its registration. */
  readonly #channelFrom = new WeakMap<Channel, string>();
  /** Channels counted now (joined and not yet closed). */
  readonly #counted = new Map<Channel, string>();

  constructor(limits: AddressLimits, table: RouteTable) {
    this.#limits = limits;
    table.on('release', (reg: Registration) => {
      const key = this.#nameOwner.get(reg);
      if (key === undefined) return;
      this.#nameOwner.delete(reg);
      this.#change(key, 'names', -1);
    });
    table.on('channel-open', (_reg: Registration, channel: Channel) => {
      const key = this.#channelFrom.get(channel);
      if (key === undefined || this.#counted.has(channel)) return;
      this.#counted.set(channel, key);
      this.#change(key, 'channels', 1);
    });
    table.on('channel-close', (_reg: Registration, channel: Channel) => {
      const key = this.#counted.get(channel);
      if (key === undefined) return;
      this.#counted.delete(channel);
      this.#change(key, 'channels', -1);
    });
  }

  /** Addresses the caps never apply to, e.g. loopback. */
  exempt(test: (address: string) => boolean): void {
    this.#exempt = test;
  }

  /** What `address` (or its /64) holds now. */
  held(address: string | undefined): AddressHeld {
    const h = this.#held.get(addressKey(address));
    return { connections: h?.connections ?? 0, names: h?.names ?? 0, channels: h?.channels ?? 0 };
  }

  /**
   * Counts a new connection from `address` until `release` is called (on its close). Returns false
   * when that puts the address over its cap: the caller refuses the connection's first request
   * (it still counts while it is open, so a flood of refused connections holds nothing extra).
   */
  connect(address: string | undefined): { ok: boolean; release: () => void } {
    const key = this.#key(address);
    if (key === undefined) return { ok: true, release: noop };
    const n = this.#change(key, 'connections', 1);
    let released = false;
    return {
      ok: this.#limits.connections === 0 || n <= this.#limits.connections,
      release: () => {
        if (released) return;
        released = true;
        this.#change(key, 'connections', -1);
      },
    };
  }

  /** The refusal for a connection over the cap. */
  connectionsError(): PtthError {
    return new PtthError(
      'PTTH_ERR_ADDRESS_CONNECTIONS',
      `This address has ${this.#limits.connections} connections open to the gateway, the most it may ` +
        '(--max-connections-per-address): close some and retry.',
    );
  }

  /** Throws PTTH_ERR_ADDRESS_NAMES when a claim from `address` may not create one more name. */
  checkNames(address: string | undefined): void {
    const key = this.#key(address);
    const max = this.#limits.names;
    if (key === undefined || max === 0) return;
    const held = this.#held.get(key)?.names ?? 0;
    if (held >= max) {
      throw new PtthError(
        'PTTH_ERR_ADDRESS_NAMES',
        `This address already holds ${held} names, the most it may (--max-names-per-address ${max}): ` +
          'release one (DELETE its private URL) or let its lease end.',
      );
    }
  }

  /** Counts a name a claim from `address` created, until the registration is released. */
  holdName(reg: Registration, address: string | undefined): void {
    const key = this.#key(address);
    if (key === undefined || reg.released || this.#nameOwner.has(reg)) return;
    this.#nameOwner.set(reg, key);
    this.#change(key, 'names', 1);
  }

  /** Throws PTTH_ERR_ADDRESS_CHANNELS when `address` may not open one more channel. */
  checkChannels(address: string | undefined): void {
    const key = this.#key(address);
    const max = this.#limits.channels;
    if (key === undefined || max === 0) return;
    const held = this.#held.get(key)?.channels ?? 0;
    if (held >= max) {
      throw new PtthError(
        'PTTH_ERR_ADDRESS_CHANNELS',
        `This address already holds ${held} channels, the most it may (--max-channels-per-address ${max}).`,
      );
    }
  }

  /** Marks where `channel` came from; it counts once it joins a registration, until it closes. */
  channelFrom(channel: Channel, address: string | undefined): void {
    const key = this.#key(address);
    if (key !== undefined) this.#channelFrom.set(channel, key);
  }

  /** The counting key of `address`, or undefined when it is exempt. */
  #key(address: string | undefined): string | undefined {
    if (address !== undefined && this.#exempt?.(address) === true) return undefined;
    return addressKey(address);
  }

  #change(key: string, what: keyof AddressHeld, by: number): number {
    let h = this.#held.get(key);
    if (!h) {
      h = { connections: 0, names: 0, channels: 0 };
      this.#held.set(key, h);
    }
    h[what] += by;
    const n = h[what];
    // Addresses holding nothing carry no state: the map stays as large as what is held now.
    if (h.connections <= 0 && h.names <= 0 && h.channels <= 0) this.#held.delete(key);
    return n;
  }
}
