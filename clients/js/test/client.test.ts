import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { Clarion } from "../src/index.js";
import { fakeServer, ids } from "./fake-ws.js";
import { setup, timeToNextSocket } from "./helpers.js";

beforeEach(() => {
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
  vi.unstubAllGlobals();
});

describe("connection", () => {
  it("states: each transition carries a code and a reason; connected only on welcome", async () => {
    const { client, server, events } = setup();
    client.connect();
    expect(server.last.url).toBe("ws://gw.test/ws?user=u1");
    server.last.open();
    expect(client.state).toBe("connecting");
    server.last.welcome({ pod: "p0", conn: "c9", user: "u1" });
    expect(client.info).toEqual({ pod: "p0", conn: "c9", user: "u1" });
    server.last.serverClose(1006, "");
    await timeToNextSocket(server.sockets);
    server.last.welcome();
    client.close();
    expect(events.state).toEqual([
      { state: "connecting", previous: "disconnected", code: 0, reason: "connect" },
      { state: "connected", previous: "connecting", code: 0, reason: "welcome" },
      { state: "connecting", previous: "connected", code: 1006, reason: "connection closed" },
      { state: "connected", previous: "connecting", code: 0, reason: "welcome" },
      { state: "disconnected", previous: "connected", code: 1000, reason: "client closed" },
    ]);
    expect(server.last.closedWith).toEqual({ code: 1000, reason: "client closed" });
  });

  it("only the welcome resets the backoff: a server that accepts and closes at once is backed off", async () => {
    const { client, server } = setup({ backoff: { random: () => 0.999 } });
    client.connect();
    const waits: number[] = [];
    for (let i = 0; i < 7; i++) {
      server.last.open().serverClose(1006);
      waits.push(await timeToNextSocket(server.sockets));
    }
    expect(waits).toEqual([499, 999, 1998, 3996, 7992, 15984, 19980]);
    // 60 s of a storm would be 120 sockets at the old fixed 500 ms; here:
    expect(server.sockets.length).toBe(8);
    server.last.welcome();
    server.last.serverClose(1006);
    expect(await timeToNextSocket(server.sockets)).toBe(499);
    client.close();
  });

  it("no welcome in time: the socket is dropped and retried with backoff", async () => {
    const { client, server } = setup({ timeout: 5000 });
    client.connect();
    const first = server.last.open();
    await vi.advanceTimersByTimeAsync(5000);
    expect(first.closedWith?.code).toBe(4000);
    expect(first.detached).toBe(true);
    expect(await timeToNextSocket(server.sockets)).toBe(250);
    client.close();
  });

  it("a dev user, a token and since go in the query, after the URL's own", async () => {
    const server = fakeServer();
    const client = new Clarion("ws://gw.test/ws?x=1", { token: "a.b.c", WebSocket: server.WebSocket });
    client.lastId = ids(1)[0]!;
    client.connect();
    expect(server.last.url).toBe(`ws://gw.test/ws?x=1&token=a.b.c&since=${ids(1)[0]}`);
    client.close();
  });

  it("without a WebSocket anywhere the constructor says what to pass", () => {
    vi.stubGlobal("WebSocket", undefined);
    vi.stubGlobal("fetch", undefined);
    expect(() => new Clarion("ws://x/ws")).toThrow(/options.WebSocket/);
  });
});

describe("subscriptions and recovery", () => {
  it("one subscription object per channel; a new subscription sends no since", () => {
    const { client, server } = setup();
    const a = client.subscribe("a");
    expect(client.subscribe("a")).toBe(a);
    client.connect();
    server.last.welcome();
    expect(server.last.frames("subscribe")).toEqual([{ type: "subscribe", channel: "a" }]);
    client.subscribe("b");
    expect(server.last.frames("subscribe")).toEqual([
      { type: "subscribe", channel: "a" },
      { type: "subscribe", channel: "b" },
    ]);
    server.last.ackSubscribes();
    expect(a.state).toBe("subscribed");
    client.close();
  });

  it("reconnects with the connection's since and re-subscribes each channel with its own", async () => {
    const [m1, m2, m3] = ids(3);
    const { client, server, events } = setup();
    const a = client.subscribe("a");
    const b = client.subscribe("b");
    client.subscribe("quiet");
    const aMessages: string[] = [];
    a.on("message", (m) => aMessages.push(m.id));
    client.connect();
    server.last.welcome().ackSubscribes();
    server.last.message(m1!, { channel: "a" }).message(m2!, { channel: "b" }).message(m3!, { user: "u1" });
    server.last.serverClose(1012, "rebalance");
    expect(a.state).toBe("subscribing");
    await timeToNextSocket(server.sockets);
    expect(server.last.params.get("since")).toBe(m3);
    server.last.welcome({ recovered: true, missed: 0 });
    expect(server.last.frames("subscribe")).toEqual([
      { type: "subscribe", channel: "a", since: m1 },
      { type: "subscribe", channel: "b", since: m2 },
      { type: "subscribe", channel: "quiet" },
    ]);
    client.subscribe("new");
    expect(server.last.frames("subscribe").at(-1)).toEqual({ type: "subscribe", channel: "new" });
    const recovered: unknown[] = [];
    b.on("recovered", (e) => recovered.push(e));
    server.last.ackSubscribes((f) => (f.since ? { recovered: true, missed: 0 } : {}));
    expect(recovered).toEqual([{ recovered: true, missed: 0, since: m2 }]);
    expect(b.state).toBe("subscribed");
    expect(events.recovered).toEqual([{ recovered: true, missed: 0, since: m3 }]);
    expect(aMessages).toEqual([m1]);
    expect(events.message.map((m) => m.id)).toEqual([m1, m2, m3]);
    client.close();
  });

  it("with nothing received, recovers from the welcome's and the subscription's position", async () => {
    const [p1, p2, m1] = ids(3);
    const { client, server } = setup();
    client.subscribe("a");
    client.connect();
    server.last.welcome({ position: p1 }).ackSubscribes(() => ({ position: p2 }));
    server.last.serverClose(1001, "draining: reconnect");
    await timeToNextSocket(server.sockets);
    expect(server.last.params.get("since")).toBe(p1);
    server.last.welcome({ recovered: true, missed: 2, position: m1 });
    expect(server.last.frames("subscribe")).toEqual([{ type: "subscribe", channel: "a", since: p2 }]);
    expect(client.lastId).toBe(p1); // two messages are owed: their ids move it on
    server.last.serverClose(1001, "draining: reconnect");
    await timeToNextSocket(server.sockets);
    server.last.welcome({ recovered: true, missed: 0, position: m1 });
    expect(client.lastId).toBe(m1); // caught up: the next reconnect starts from here
    client.close();
  });

  it("keeps the greatest id as since, not the last one received", async () => {
    // After a reconnect the connection's replay comes first and each channel's after
    // it, so the last message received can be older than one received before it.
    const [m1, m2, m3] = ids(3);
    const { client, server } = setup();
    const a = client.subscribe("a");
    client.connect();
    server.last.welcome().ackSubscribes();
    server.last.message(m3!, { user: "u1" }).message(m1!, { channel: "a" }).message(m2!, { channel: "a" });
    expect(client.lastId).toBe(m3);
    expect(a.lastId).toBe(m2);
    server.last.serverClose(1012, "rebalance");
    await timeToNextSocket(server.sockets);
    expect(server.last.params.get("since")).toBe(m3);
    client.close();
  });

  it("resync when recovery failed, or when there was no since to recover from", async () => {
    const [m1] = ids(1);
    const { client, server, events } = setup();
    const a = client.subscribe("a");
    const quiet = client.subscribe("quiet");
    const resyncs: unknown[] = [];
    a.on("resync", (e) => resyncs.push(["a", e]));
    quiet.on("resync", (e) => resyncs.push(["quiet", e]));
    client.connect();
    server.last.welcome().ackSubscribes();
    expect(events.resync).toEqual([]); // the first connection recovers nothing
    server.last.serverClose(1006);
    await timeToNextSocket(server.sockets);
    expect(server.last.params.has("since")).toBe(false);
    server.last.welcome().ackSubscribes();
    expect(events.resync).toEqual([{ recovered: false, missed: 0, since: null }]);
    server.last.message(m1!, { channel: "a" });
    server.last.serverClose(1006);
    await timeToNextSocket(server.sockets);
    server.last.welcome({ recovered: false, missed: 3 });
    server.last.ackSubscribes((f) => (f.since ? { recovered: false, missed: 2 } : {}));
    expect(events.resync.at(-1)).toEqual({ recovered: false, missed: 3, since: m1 });
    const none = { recovered: false, missed: 0, since: null };
    expect(resyncs).toEqual([
      ["a", none], // second connection: no message seen on either channel yet
      ["quiet", none],
      ["a", { recovered: false, missed: 2, since: m1 }],
      ["quiet", none],
    ]);
    client.close();
  });

  it("drops duplicates by id, from a bounded set", async () => {
    const [m1, m2, m3, m4] = ids(4);
    const { client, server, events } = setup({ dedupeSize: 3 });
    client.connect();
    server.last.welcome();
    server.last.message(m1!, { user: "u1" }).message(m1!, { user: "u1" }).message(m2!, { broadcast: true });
    server.last.serverClose(1001);
    await timeToNextSocket(server.sockets);
    // the replay after since repeats what arrived live: dropped
    server.last.welcome({ recovered: true, missed: 2 }).message(m2!, { broadcast: true }).message(m3!, { user: "u1" });
    expect(events.message.map((m) => m.id)).toEqual([m1, m2, m3]);
    server.last.message(m4!, { user: "u1" }).message(m1!, { user: "u1" }); // m1 fell out of the 3-id set
    expect(events.message.map((m) => m.id)).toEqual([m1, m2, m3, m4, m1]);
    client.close();
  });

  it("unsubscribe sends the frame, ends the object, and drops its channel's late messages", () => {
    const [m1] = ids(1);
    const { client, server, events } = setup();
    const a = client.subscribe("a");
    const states: string[] = [];
    a.on("state", (e) => states.push(e.state));
    client.connect();
    server.last.welcome().ackSubscribes();
    a.unsubscribe();
    expect(server.last.frames("unsubscribe")).toEqual([{ type: "unsubscribe", channel: "a" }]);
    expect(states).toEqual(["subscribed", "unsubscribed"]);
    expect(a.listenerCount("state")).toBe(0);
    server.last.receive({ type: "unsubscribed", channel: "a" }).message(m1!, { channel: "a" });
    expect(events.message).toEqual([]);
    expect(client.subscribe("a")).not.toBe(a);
    client.close();
  });

  it("a refused subscription reports on the subscription and the client, and ends", () => {
    const { client, server, events } = setup();
    const a = client.subscribe("secret");
    const errors: unknown[] = [];
    a.on("error", (e) => errors.push(e.code));
    client.connect();
    server.last.welcome().receive({ type: "error", code: "forbidden", message: "no", channel: "secret" });
    expect(errors).toEqual(["forbidden"]);
    expect(events.error).toMatchObject([{ code: "forbidden", channel: "secret" }]);
    expect(a.state).toBe("unsubscribed");
    expect(client.subscriptions.size).toBe(0);
    client.close();
  });

  it("keeps the last id in storage so that a reloaded page recovers", () => {
    const [m1] = ids(1);
    const store = new Map<string, string>();
    const storage = { getItem: (k: string) => store.get(k) ?? null, setItem: (k: string, v: string) => void store.set(k, v) };
    const first = setup({ persist: storage });
    first.client.connect();
    first.server.last.welcome().message(m1!, { user: "u1" });
    first.client.close();
    const second = setup({ persist: storage });
    second.client.connect();
    expect(second.server.last.params.get("since")).toBe(m1);
    second.client.close();
  });

  it("a stored value that is not a message id is not sent as since", () => {
    const storage = { getItem: () => "garbage", setItem: () => {} };
    const { client, server } = setup({ persist: storage });
    client.connect();
    expect(server.last.params.has("since")).toBe(false);
    client.close();
  });

  it("persist: true uses sessionStorage when the page has one", () => {
    const [m1] = ids(1);
    const store = new Map<string, string>();
    vi.stubGlobal("sessionStorage", { getItem: (k: string) => store.get(k) ?? null, setItem: (k: string, v: string) => void store.set(k, v) });
    const { client, server } = setup({ persist: true });
    client.connect();
    server.last.welcome().message(m1!, { user: "u1" });
    expect(Object.fromEntries(store)).toEqual({ "clarion:ws://gw.test/ws": m1, "clarion:ws://gw.test/ws#transport": "websocket" });
    client.close();
  });
});

describe("publish", () => {
  it("resolves to the id, rejects with the server's error code, and needs a connection", async () => {
    const { client, server } = setup();
    await expect(client.publish("a", 1)).rejects.toMatchObject({ code: "not_connected" });
    client.connect();
    server.last.welcome();
    const ok = client.publish("a", { n: 1 });
    const refused = client.publish("a", { n: 2 });
    expect(server.last.frames("publish")).toEqual([
      { type: "publish", channel: "a", data: { n: 1 } },
      { type: "publish", channel: "a", data: { n: 2 } },
    ]);
    server.last.receive({ type: "published", id: "id-1" }).receive({ type: "error", code: "rate_limited", message: "slow down" });
    await expect(ok).resolves.toBe("id-1");
    await expect(refused).rejects.toMatchObject({ code: "rate_limited" });
    const lost = client.publish("a", 3);
    server.last.serverClose(1006);
    await expect(lost).rejects.toMatchObject({ code: "disconnected", closeCode: 1006 });
    client.close();
  });
});

describe("isolation and leaks", () => {
  it("a listener that throws is reported and breaks neither the other listeners nor the client", async () => {
    const [m1, m2] = ids(2);
    const { client, server, events } = setup();
    const a = client.subscribe("a");
    client.on("message", () => {
      throw new Error("app bug");
    });
    client.on("state", () => {
      throw new Error("state bug");
    });
    const got: string[] = [];
    a.on("message", (m) => {
      got.push(m.id);
      throw new Error("sub bug");
    });
    const subErrors: string[] = [];
    a.on("error", (e) => subErrors.push(e.code));
    client.connect();
    server.last.welcome().ackSubscribes();
    expect(client.state).toBe("connected");
    expect(server.last.frames("subscribe")).toHaveLength(1); // the welcome went on after the state listener threw
    server.last.message(m1!, { channel: "a" }).message(m2!, { channel: "a" });
    expect(got).toEqual([m1, m2]);
    expect(events.message).toHaveLength(2);
    expect(subErrors).toEqual(["callback_error", "callback_error"]);
    expect(events.error.map((e) => e.code)).toEqual(Array(4).fill("callback_error"));
    expect(events.error[0]!.message).toMatch(/state listener threw/);
    await vi.advanceTimersByTimeAsync(25_000);
    expect(server.last.frames("ping")).toHaveLength(1); // timers still run
    client.close();
  });

  it("a state listener may close the client, or subscribe, in the middle of the welcome", () => {
    const closing = setup();
    closing.client.subscribe("a");
    closing.client.on("state", (e) => e.state === "connected" && closing.client.close());
    closing.client.connect();
    closing.server.last.welcome();
    expect(closing.client.state).toBe("disconnected");
    expect(closing.server.last.closedWith?.code).toBe(1000);
    expect(vi.getTimerCount()).toBe(0);

    const subscribing = setup();
    subscribing.client.on("state", (e) => e.state === "connected" && subscribing.client.subscribe("b"));
    subscribing.client.connect();
    subscribing.server.last.welcome();
    expect(subscribing.server.last.frames("subscribe")).toEqual([{ type: "subscribe", channel: "b" }]);
    subscribing.client.close();
  });

  it("an error listener that throws goes to console.error, not into the client", () => {
    const console_ = vi.spyOn(console, "error").mockImplementation(() => {});
    const { client, server } = setup();
    client.on("error", () => {
      throw new Error("error-handler bug");
    });
    client.connect();
    server.last.welcome().receive({ type: "error", code: "bad_json", message: "?" });
    expect(console_).toHaveBeenCalledTimes(1);
    expect(client.state).toBe("connected");
    client.close();
    console_.mockRestore();
  });

  it("close() leaves no timer, no socket handler and no global listener", async () => {
    const win = new EventTarget();
    const doc = Object.assign(new EventTarget(), { visibilityState: "visible" });
    vi.stubGlobal("window", win);
    vi.stubGlobal("document", doc);
    const added = vi.spyOn(win, "addEventListener");
    const removed = vi.spyOn(win, "removeEventListener");
    const docRemoved = vi.spyOn(doc, "removeEventListener");
    const { client, server } = setup({
      getToken: async () => "a.eyJleHAiOjQxMDI0NDQ4MDB9.c",
    });
    client.subscribe("a");
    client.connect();
    await vi.advanceTimersByTimeAsync(0);
    server.last.welcome().ackSubscribes();
    await vi.advanceTimersByTimeAsync(25_000); // a ping in flight
    expect(vi.getTimerCount()).toBeGreaterThan(0);
    client.close();
    expect(vi.getTimerCount()).toBe(0);
    expect(server.last.detached).toBe(true);
    expect(removed.mock.calls.map((c) => c[0]).sort()).toEqual(added.mock.calls.map((c) => c[0]).sort());
    expect(docRemoved.mock.calls.map((c) => c[0])).toEqual(["visibilitychange"]);
    win.dispatchEvent(new Event("online"));
    await vi.advanceTimersByTimeAsync(120_000);
    expect(server.sockets).toHaveLength(1);
    // close() then connect() works again, with the same subscriptions
    client.connect();
    await vi.advanceTimersByTimeAsync(0);
    server.last.welcome();
    expect(server.last.frames("subscribe")).toEqual([{ type: "subscribe", channel: "a" }]);
    client.close();
  });

  it("a terminal close also clears everything", async () => {
    vi.stubGlobal("window", new EventTarget());
    const { client, server } = setup();
    client.connect();
    server.last.welcome();
    server.last.serverClose(4502, "logged out");
    expect(vi.getTimerCount()).toBe(0);
    expect(server.last.detached).toBe(true);
  });
});
