import { vi } from "vitest";
import { Clarion } from "../src/index.js";
import type { ClarionOptions, ClientEvents } from "../src/types.js";
import { fakeServer } from "./fake-ws.js";

/** A client on a fake server, with every client event recorded in order. */
export function setup(options: ClarionOptions = {}) {
  const server = fakeServer();
  const client = new Clarion("ws://gw.test/ws", {
    user: "u1",
    WebSocket: server.WebSocket,
    transports: ["websocket"], // the fallback to HTTP streams has tests of its own (stream.test.ts)
    backoff: { random: () => 0.5 },
    ...options,
  });
  const events: { [K in keyof ClientEvents]: ClientEvents[K][] } = {
    message: [],
    state: [],
    recovered: [],
    resync: [],
    error: [],
  };
  for (const name of Object.keys(events) as (keyof ClientEvents)[]) {
    client.on(name, (e) => (events[name] as unknown[]).push(e));
  }
  return { client, server, events };
}

/** The milliseconds until the client opens its next socket (fails after `limit`). */
export async function timeToNextSocket(sockets: unknown[], limit = 120_000): Promise<number> {
  const before = sockets.length;
  const start = Date.now();
  while (sockets.length === before) {
    if (Date.now() - start > limit) return Infinity;
    await vi.advanceTimersByTimeAsync(1);
  }
  return Date.now() - start;
}
