/**
 * A Comet app that goes away without releasing its name (its process exits, or is killed) and is
 * reclaimed with its token by a new process serves again as soon as the new pollers poll; visitors
 * are not left with 503 while pollers are polling. Found by the soak run (test/bench/soak.ts).
 */
import * as http from 'node:http';
import { describe, expect, it } from 'vitest';
import type { GatewayOptions } from '../../src/gateway/server.js';
import { CometChannel } from '../../src/channels/comet.js';
import { request, until, type TestGateway } from '../helpers/index.js';
import { cleanup, useGateway } from '../helpers/fixture.js';
import { CometApp, type CometHandler } from '../helpers/comet.js';

function gateway(options: GatewayOptions = {}): Promise<TestGateway> {
  return useGateway({
    pollTimeout: 2_000,
    cometIdleTimeout: 1_000,
    responseTimeout: 1_500,
    queueTimeout: 3_000,
    ...options,
  });
}

async function start(g: TestGateway, handler: CometHandler, pollers = 8): Promise<CometApp> {
  const app = await CometApp.start(g.origin, { name: 'back', token: 'tok' }, handler, pollers);
  // A poller that failed fails its test: stop() rethrows what it met.
  cleanup(() => app.stop());
  return app;
}

function cometChannel(g: TestGateway): CometChannel | undefined {
  const c = g.gateway.table.lookup('back')?.channels.find((ch) => ch.transport === 'comet');
  return c instanceof CometChannel ? c : undefined;
}

const hello: CometHandler = () => ({ status: 200, body: 'hello' });
const _sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function visits(g: TestGateway, n: number, path = '/'): Promise<number[]> {
  return Promise.all(
    Array.from({ length: n }, () =>
      request(g.port, { host: g.host('back'), path, agent: false }).then((r) => r.status),
    ),
  );
}

describe('Comet: an app that leaves and is reclaimed with its token', () => {
  it('serves again through the new pollers, twice in a row', async () => {
    const g = await gateway();
    const a = await start(g, hello);
    expect(await visits(g, 16)).toEqual(Array(16).fill(200));
    a.leave();
    const b = await start(g, hello);
    expect(await visits(g, 16)).toEqual(Array(16).fill(200));
    b.leave();
    await start(g, hello);
    expect(await visits(g, 16)).toEqual(Array(16).fill(200));
  });

  it('serves again while requests delivered to the app that left are still waiting for their reply', async () => {
    const g = await gateway();
    // The first app does not answer before it goes: every request it took is left at a poller that is gone.
    let answer!: () => void;
    const gate = new Promise<void>((r) => (answer = r));
    const a = await start(
      g,
      async () => {
        await gate;
        return { status: 200, body: 'too late' };
      },
      4,
    );
    const stuck = visits(g, 4, '/stuck');
    await until(
      () => (cometChannel(g)?.active ?? 0) === 4 && cometChannel(g)?.polls === 0,
      3_000,
      'four requests at the pollers',
    );
    a.leave();
    await start(g, hello);
    expect(await visits(g, 16)).toEqual(Array(16).fill(200));
    answer();
    // Those four get the app's timeout, not a 503.
    expect(await stuck).toEqual(Array(4).fill(504));
  });
});

describe('Comet: visitors that give up while the app works on their request', () => {
  it('cost the app no poller: its reply gets 404 and the poller polls on', async () => {
    const g = await gateway();
    let answer!: () => void;
    const gate = new Promise<void>((r) => (answer = r));
    let taken = 0;
    const app = await start(
      g,
      async (req) => {
        if (req.url === '/slow') {
          taken++;
          await gate;
        }
        return { status: 200, body: 'hello' };
      },
      2,
    );
    // Both pollers take a request whose visitor then leaves.
    const quitters = [0, 1].map(() => {
      const r = http.request({
        host: '127.0.0.1',
        port: g.port,
        path: '/slow',
        headers: { host: g.host('back') },
        agent: false,
      });
      r.on('error', () => undefined);
      r.end();
      return r;
    });
    await until(() => taken === 2, 3_000, 'both requests at the pollers');
    for (const r of quitters) r.destroy();
    await until(() => (cometChannel(g)?.active ?? 1) === 0, 3_000, 'the visitors gone');
    answer();
    expect(await visits(g, 8)).toEqual(Array(8).fill(200));
    expect(app.failure).toBeUndefined();
    expect(app.lost).toBe(2);
  });
});
