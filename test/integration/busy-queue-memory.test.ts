/**
 * A name whose only channel stays busy keeps a queue that never empties; visitors who give up
 * waiting must leave it (and memory) at once, not when the queue next drains.
 */
import * as http from 'node:http';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { describe, expect, it } from 'vitest';
import { readUntil, sleep, until } from '../helpers/index.js';
import { useApp, useGateway, useSocket } from '../helpers/fixture.js';

/** A full garbage collection (the flag is set at run time, so the suite needs no node option). */
function collectGarbage(): void {
  setFlagsFromString('--expose-gc');
  (runInNewContext('gc') as () => void)();
}

describe('the queue of a busy name', () => {
  it('lets go of visitors that gave up waiting while it never empties (memory any visitor controls)', async () => {
    const g = await useGateway({ queueTimeout: 20_000, queueLimit: 1_000 });
    const held: http.ServerResponse[] = [];
    const app = http.createServer((_req, res) => void held.push(res));
    await useApp(g.port, app, { name: 'busy', connections: 1, http1: true });
    const reg = g.gateway.table.lookup('busy');
    if (!reg) throw new Error('not registered');
    const get = (path: string): string => `GET ${path} HTTP/1.1\r\nHost: ${g.host('busy')}\r\n\r\n`;
    // A holds the one channel; B waits in the queue all along, so the queue never empties.
    const a = await useSocket(g.port, get('/a'));
    await until(() => held.length === 1, 3_000, 'A at the app');
    const b = await useSocket(g.port, get('/b'));
    await until(() => reg.waiting === 1, 3_000, 'B queued');

    const seen: WeakRef<http.IncomingMessage>[] = [];
    g.gateway.server.on('request', (req: http.IncomingMessage) => void seen.push(new WeakRef(req)));
    for (let i = 0; i < 30; i++) {
      const s = await useSocket(g.port, get(`/gone-${i}`));
      await until(() => reg.waiting === 2, 3_000, 'a queued visitor');
      s.destroy();
      await until(() => reg.waiting === 1, 3_000, 'the visitor gone');
    }
    expect(seen).toHaveLength(30);
    // Collected once nothing holds them: a full GC, then a macrotask (a WeakRef read keeps its target
    // alive to the end of the job that read it, and finished work may still hold them for a turn),
    // again until none is left, bounded by a deadline a leak cannot outlast.
    const live = (): number => seen.filter((r) => r.deref() !== undefined).length;
    const deadline = Date.now() + 10_000;
    do {
      await sleep(10);
      collectGarbage();
    } while (live() > 0 && Date.now() < deadline);
    expect(live()).toBe(0);

    // The queue still works: A is answered, then B gets the channel.
    held[0]?.end('A');
    expect((await readUntil(a, (buf) => buf.toString().endsWith('A'))).toString()).toMatch(/^HTTP\/1\.1 200 /);
    await until(() => held.length === 2, 3_000, 'B at the app');
    held[1]?.end('B');
    expect((await readUntil(b, (buf) => buf.toString().endsWith('B'))).toString()).toMatch(/^HTTP\/1\.1 200 /);
  });
});
