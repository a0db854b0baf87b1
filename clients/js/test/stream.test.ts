// The HTTP-stream transports and the fallback to them, on a fake fetch / EventSource.
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { Clarion } from "../src/index.js";
import type { ClarionOptions, ClientEvents } from "../src/types.js";
import { fakeEventSources, fakeFetch, settle } from "./fake-fetch.js";
import { fakeServer, ids, jwt } from "./fake-ws.js";

beforeEach(() => {
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
  vi.unstubAllGlobals();
});

/** A client with a fake WebSocket and a fake fetch; every client event recorded. */
function setup(options: ClarionOptions = {}) {
  const ws = fakeServer();
  const http = fakeFetch();
  const client = new Clarion("ws://gw.test/push/ws", {
    user: "u1",
    WebSocket: ws.WebSocket,
    fetch: http.fetch,
    backoff: { random: () => 0.5 },
    ...options,
  });
  const events: { [K in keyof ClientEvents]: ClientEvents[K][] } = { message: [], state: [], recovered: [], resync: [], error: [] };
  for (const name of Object.keys(events) as (keyof ClientEvents)[]) {
    client.on(name, (e) => (events[name] as unknown[]).push(e));
  }
  return { client, ws, http, events };
}

/** Runs timers until the client opens its next stream (fails after `limit` ms). */
async function nextStream(http: ReturnType<typeof fakeFetch>, limit = 60_000): Promise<number> {
  const before = http.streams.length;
  const start = Date.now();
  while (http.streams.length === before) {
    if (Date.now() - start > limit) throw new Error("no new stream");
    await vi.advanceTimersByTimeAsync(1);
  }
  await settle();
  return Date.now() - start;
}

describe("fallback from WebSocket", () => {
  it("a refused upgrade: the next connection is SSE, and SSE is kept for the client's life", async () => {
    const { client, ws, http, events } = setup();
    expect(client.transport).toBe("websocket");
    client.connect();
    expect(ws.last.url).toBe("ws://gw.test/push/ws?user=u1");
    ws.last.serverClose(1006); // what a browser reports for a 403 to the upgrade
    expect(client.transport).toBe("sse");
    await nextStream(http);
    expect(http.last.url).toBe("http://gw.test/push/sse?user=u1");
    http.last.welcome();
    await settle();
    expect(client.state).toBe("connected");
    expect(client.transport).toBe("sse");
    // The stream ends without a close frame (a pod killed): back on SSE, never on WebSocket.
    http.last.end();
    await settle();
    expect(client.state).toBe("connecting");
    await nextStream(http);
    http.last.end(); // and its pod is still down: no welcome, still SSE
    await nextStream(http);
    expect(ws.sockets).toHaveLength(1);
    expect(http.streams).toHaveLength(3);
    expect(events.state.map((e) => `${e.state}:${e.code}`)).toEqual(["connecting:0", "connected:0", "connecting:1006"]);
    client.close();
    client.connect(); // remembered across close() and connect()
    await settle();
    expect(client.transport).toBe("sse");
    expect(ws.sockets).toHaveLength(1);
    client.close();
  });

  it("a WebSocket that sends no welcome in time falls back; fallbackAfter counts the failures", async () => {
    const { client, ws, http } = setup({ timeout: 3000, fallbackAfter: 2 });
    client.connect();
    ws.last.open();
    await vi.advanceTimersByTimeAsync(3000); // no welcome: dropped, retried on WebSocket
    expect(ws.last.closedWith?.code).toBe(4000);
    expect(client.transport).toBe("websocket");
    while (ws.sockets.length < 2) await vi.advanceTimersByTimeAsync(1);
    ws.last.serverClose(1006);
    expect(client.transport).toBe("sse");
    await nextStream(http);
    expect(ws.sockets).toHaveLength(2);
    client.close();
  });

  it("a close code before the welcome is the server's answer, not a blocked transport: no fallback", async () => {
    const { client, ws } = setup();
    client.connect();
    ws.last.open().serverClose(1013, "full");
    expect(client.transport).toBe("websocket");
    client.close();
  });

  it("once WebSocket worked it is kept: a dead pod later does not move the client to SSE", async () => {
    const { client, ws, http } = setup();
    client.connect();
    ws.last.welcome();
    ws.last.serverClose(1006);
    while (ws.sockets.length < 2) await vi.advanceTimersByTimeAsync(1);
    ws.last.serverClose(1006);
    expect(client.transport).toBe("websocket");
    expect(http.streams).toHaveLength(0);
    client.close();
  });

  it("with no WebSocket at all, SSE from the start; http_stream on request", async () => {
    vi.stubGlobal("WebSocket", undefined);
    const http = fakeFetch();
    const sse = new Clarion("wss://gw.test/ws?x=1", { user: "u", fetch: http.fetch });
    expect(sse.transport).toBe("sse");
    sse.connect();
    await settle();
    expect(http.last.url).toBe("https://gw.test/sse?x=1&user=u");
    sse.close();
    const nd = new Clarion("ws://gw.test/ws", { user: "u", fetch: http.fetch, transports: ["http_stream"] });
    nd.connect();
    await settle();
    expect(http.last.url).toBe("http://gw.test/stream?user=u");
    nd.close();
  });

  it("persist keeps the working transport: a reloaded page starts on it", async () => {
    const store = new Map<string, string>();
    const storage = { getItem: (k: string) => store.get(k) ?? null, setItem: (k: string, v: string) => void store.set(k, v) };
    const first = setup({ persist: storage });
    first.client.connect();
    first.ws.last.serverClose(1006);
    await nextStream(first.http);
    first.http.last.welcome();
    await settle();
    first.client.close();
    expect(store.get("clarion:ws://gw.test/push/ws#transport")).toBe("sse");
    const second = setup({ persist: storage });
    second.client.connect();
    await settle();
    expect(second.ws.sockets).toHaveLength(0);
    expect(second.http.streams).toHaveLength(1);
    second.client.close();
  });
});

describe("on an HTTP stream", () => {
  /** A client connected over SSE (or NDJSON). */
  async function connected(options: ClarionOptions = {}) {
    const s = setup({ transports: ["sse"], ...options });
    s.client.connect();
    await settle();
    return s;
  }

  it("frames go up with POST /emulation and the session token, batched, in order; answers come down", async () => {
    const { client, http } = await connected();
    const a = client.subscribe("a");
    client.subscribe("b");
    http.last.welcome({ session: "s-1" });
    await settle();
    expect(http.posts).toEqual([
      {
        url: "http://gw.test/push/emulation",
        session: "s-1",
        frames: [
          { type: "subscribe", channel: "a" },
          { type: "subscribe", channel: "b" },
        ],
      },
    ]);
    http.last.receive({ type: "subscribed", channel: "a" }).receive({ type: "subscribed", channel: "b" });
    await settle();
    expect(a.state).toBe("subscribed");
    const published = client.publish("a", { n: 1 });
    await settle();
    expect(http.frames.at(-1)).toEqual({ type: "publish", channel: "a", data: { n: 1 } });
    http.last.receive({ type: "published", id: "id-1" });
    await expect(published).resolves.toBe("id-1");
    client.close();
  });

  it("messages once, the greatest id as since, each channel re-subscribed with its own", async () => {
    const [m1, m2, m3] = ids(3);
    const { client, http, events } = await connected();
    const a = client.subscribe("a");
    http.last.welcome();
    http.last.receive({ type: "subscribed", channel: "a" });
    http.last.message(m3!, { user: "u1" }).message(m1!, { channel: "a" }).message(m3!, { user: "u1" });
    await settle();
    expect(events.message.map((m) => m.id)).toEqual([m3, m1]);
    http.last.end();
    await nextStream(http);
    expect(http.last.params.get("since")).toBe(m3);
    http.last.welcome({ recovered: true, missed: 1, session: "s-2" });
    await settle();
    expect(http.posts.at(-1)).toMatchObject({ session: "s-2", frames: [{ type: "subscribe", channel: "a", since: m1 }] });
    http.last.receive({ type: "subscribed", channel: "a", recovered: true, missed: 0 });
    http.last.message(m2!, { user: "u1" }).message(m3!, { user: "u1" });
    await settle();
    expect(events.message.map((m) => m.id)).toEqual([m3, m1, m2]);
    expect(events.recovered).toEqual([{ recovered: true, missed: 1, since: m3 }]);
    expect(a.state).toBe("subscribed");
    client.close();
    expect(http.last.aborted).toBe(true);
  });

  it("the welcome's position is where a client with nothing received resumes", async () => {
    const [p1] = ids(1);
    const { client, http } = await connected();
    http.last.welcome({ position: p1 });
    http.last.close(1001, "draining");
    await nextStream(http);
    expect(http.last.params.get("since")).toBe(p1);
    client.close();
  });

  it("the stream's close frame is its close code: 1001 comes back soon, 4502 stops", async () => {
    const { client, http, events } = await connected({ backoff: { random: () => 0.5, soon: 1000 } });
    http.last.welcome();
    await settle();
    http.last.close(1001, "draining");
    await settle();
    expect(events.state.at(-1)).toMatchObject({ state: "connecting", code: 1001, reason: "draining" });
    expect(await nextStream(http)).toBeLessThanOrEqual(501);
    http.last.welcome();
    http.last.close(4502, "disconnected by the server");
    await settle();
    expect(client.state).toBe("disconnected");
    expect(events.error.map((e) => [e.code, e.closeCode])).toEqual([["closed", 4502]]);
  });

  it("a refusal before the stream names its code in the JSON body: 4500 stops, a 502 retries", async () => {
    const { client, http, events } = setup({ transports: ["sse"] });
    http.refusals.push({ status: 502, body: {} });
    http.refusals.push({ status: 401, body: { error: "unauthorized", type: "close", code: 4500, reason: "bad token" } });
    client.connect();
    await settle();
    expect(client.state).toBe("connecting");
    await vi.advanceTimersByTimeAsync(1000);
    await settle();
    expect(client.state).toBe("disconnected");
    expect(events.error.map((e) => e.closeCode)).toEqual([4500]);
    expect(http.streams).toHaveLength(0);
  });

  it("a POST that fails drops the stream (its answers would never come) and the reconnect recovers", async () => {
    const [m1] = ids(1);
    const { client, http } = await connected();
    http.last.welcome().message(m1!, { user: "u1" });
    await settle();
    http.state.postStatus = 404; // the pod that held the stream is gone
    const published = client.publish("a", 1);
    await settle();
    await expect(published).rejects.toMatchObject({ code: "disconnected", closeCode: 1006 });
    expect(http.last.aborted).toBe(true);
    await nextStream(http);
    expect(http.last.params.get("since")).toBe(m1);
    client.close();
  });

  it("pings go by POST, and a missing pong drops the stream", async () => {
    const { client, http } = await connected({ pingInterval: 1000, timeout: 500 });
    http.last.welcome();
    await vi.advanceTimersByTimeAsync(1000);
    await settle();
    expect(http.frames).toEqual([{ type: "ping" }]);
    expect(client.state).toBe("connected");
    http.state.autoPong = false;
    await vi.advanceTimersByTimeAsync(1600);
    expect(client.state).toBe("connecting");
    expect(http.streams[0]!.aborted).toBe(true);
    client.close();
  });

  it("the token is refreshed in band: the refresh frame is posted, the stream stays", async () => {
    const now = Date.now();
    const tokens = [jwt({ sub: "u1", exp: Math.floor(now / 1000) + 60 }), jwt({ sub: "u1", exp: Math.floor(now / 1000) + 3600 })];
    let calls = 0;
    const { client, http } = await connected({ user: undefined, getToken: async () => tokens[calls++]!, refreshMargin: 30_000 });
    await settle();
    expect(http.last.params.get("token")).toBe(tokens[0]);
    http.last.welcome();
    await vi.advanceTimersByTimeAsync(30_000);
    await settle();
    expect(http.frames).toContainEqual({ type: "refresh", token: tokens[1] });
    http.last.receive({ type: "refreshed" });
    await settle();
    expect(http.streams).toHaveLength(1);
    expect(client.state).toBe("connected");
    client.close();
  });

  it("SSE parsing: events split across chunks, CRLF, comments, id and retry lines, multi-line data", async () => {
    const [m1] = ids(1);
    const { client, http, events } = await connected();
    http.last.welcome();
    const frame = JSON.stringify({ type: "message", id: m1, target: { user: "u1" }, data: "x", ts: 1 });
    http.last.write(": keep-alive\n\n").write(`retry: 500\r\nid: ${m1}\r\nda`).write(`ta: ${frame.slice(0, 20)}`).write(`${frame.slice(20)}\r\n\r\n`);
    await settle();
    expect(events.message.map((m) => m.id)).toEqual([m1]);
    http.last.write('data: {"type":\ndata: "pong"}\n\n'); // two data lines are one frame
    await settle();
    expect(events.error).toEqual([]);
    client.close();
  });

  it("NDJSON: one frame a line; keep-alive blank lines and bare strings are skipped", async () => {
    const [m1] = ids(1);
    const { client, http, events } = await connected({ transports: ["http_stream"] });
    expect(http.last.url).toBe("http://gw.test/push/stream?user=u1");
    http.last.welcome();
    const frame = JSON.stringify({ type: "message", id: m1, target: { user: "u1" }, data: 1, ts: 1 });
    http.last.write('\n"pong"\n').write(frame.slice(0, 10)).write(frame.slice(10) + "\n");
    await settle();
    expect(client.transport).toBe("http_stream");
    expect(events.message.map((m) => m.id)).toEqual([m1]);
    client.close();
  });
});

describe("EventSource instead of a fetch stream", () => {
  it("reads SSE; its first error is a 1006, and the client reconnects by itself with since", async () => {
    const [m1] = ids(1);
    const http = fakeFetch();
    const es = fakeEventSources();
    const client = new Clarion("ws://gw.test/ws", {
      user: "u1",
      transports: ["sse"],
      fetch: http.fetch,
      EventSource: es.EventSource,
      backoff: { random: () => 0.5 },
    });
    const seen: string[] = [];
    client.on("message", (m) => seen.push(m.id));
    client.connect();
    const first = es.sources[0]!;
    expect(first.url).toBe("http://gw.test/sse?user=u1");
    first.open().receive({ type: "welcome", pod: "p", conn: "c", user: "u1", session: "s" });
    first.receive({ type: "message", id: m1, target: { user: "u1" }, data: 1, ts: 1 });
    expect(client.state).toBe("connected");
    first.onerror?.({});
    expect(first.closed).toBe(true); // not left to reconnect on its own
    expect(client.state).toBe("connecting");
    while (es.sources.length < 2) await vi.advanceTimersByTimeAsync(1);
    expect(es.sources[1]!.url).toBe(`http://gw.test/sse?user=u1&since=${m1}`);
    expect(seen).toEqual([m1]);
    es.sources[1]!.open().receive({ type: "welcome", pod: "p", conn: "c2", user: "u1", session: "s2" });
    client.subscribe("a");
    await settle();
    expect(http.posts).toEqual([{ url: "http://gw.test/emulation", session: "s2", frames: [{ type: "subscribe", channel: "a" }] }]);
    expect(http.streams).toHaveLength(0);
    client.close();
    expect(es.sources[1]!.closed).toBe(true);
  });
});
