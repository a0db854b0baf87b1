// In-band token refresh, revoked channels and the connect proxy's data, on a fake server.
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { jwt } from "./fake-ws.js";
import { setup } from "./helpers.js";

beforeEach(() => {
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
});

const expiringIn = (ms: number, sub = "u1") => jwt({ sub, exp: Math.floor((Date.now() + ms) / 1000) });

describe("in-band refresh", () => {
  it("sends the new token over the open socket before exp, and again before the next exp", async () => {
    const t1 = expiringIn(120_000);
    const tokens = [expiringIn(3600_000), expiringIn(7200_000)];
    const getToken = vi.fn(async () => tokens.shift()!);
    const { client, server, events } = setup({ token: t1, getToken, refreshMargin: 30_000 });
    client.connect();
    await vi.advanceTimersByTimeAsync(0);
    server.last.welcome();
    await vi.advanceTimersByTimeAsync(90_000);
    expect(getToken).toHaveBeenCalledTimes(1);
    const [frame] = server.last.frames("refresh");
    expect(frame).toEqual({ type: "refresh", token: expect.any(String) });
    server.last.receive({ type: "refreshed", expire_at: 0 });
    // Past the first token's exp: still one socket, no reconnect.
    await vi.advanceTimersByTimeAsync(60_000);
    expect(server.sockets).toHaveLength(1);
    expect(client.state).toBe("connected");
    // The second token is due 30 s before its own exp.
    await vi.advanceTimersByTimeAsync(3600_000);
    expect(getToken).toHaveBeenCalledTimes(2);
    expect(server.last.frames("refresh")).toHaveLength(2);
    expect(events.error).toEqual([]);
    client.close();
  });

  it("against a server without refresh frames it falls back to reconnecting after 4001", async () => {
    const t1 = expiringIn(120_000);
    const t2 = expiringIn(3600_000);
    const getToken = vi.fn(async () => t2);
    const { client, server } = setup({ token: t1, getToken, refreshMargin: 30_000 });
    client.connect();
    await vi.advanceTimersByTimeAsync(0);
    server.last.welcome();
    await vi.advanceTimersByTimeAsync(90_000);
    server.last.receive({ type: "error", code: "unknown_type", message: "unknown frame type 'refresh'" });
    await vi.advanceTimersByTimeAsync(30_000);
    server.last.serverClose(4001, "token expired");
    await vi.advanceTimersByTimeAsync(0);
    expect(server.sockets).toHaveLength(2);
    expect(server.last.params.get("token")).toBe(t2); // the token fetched before, no new call
    expect(getToken).toHaveBeenCalledTimes(1);
    client.close();
  });

  it("a refused refresh is an error and is tried again soon with a new token", async () => {
    const t1 = expiringIn(120_000);
    const getToken = vi.fn(async () => expiringIn(3600_000));
    const { client, server, events } = setup({ token: t1, getToken, refreshMargin: 30_000 });
    client.connect();
    await vi.advanceTimersByTimeAsync(0);
    server.last.welcome();
    await vi.advanceTimersByTimeAsync(90_000);
    server.last.receive({ type: "error", code: "bad_token", message: "token is for another user" });
    expect(events.error.map((e) => e.code)).toEqual(["token"]);
    await vi.advanceTimersByTimeAsync(7_500);
    expect(getToken).toHaveBeenCalledTimes(2);
    expect(server.last.frames("refresh")).toHaveLength(2);
    client.close();
  });

  it("a 4001 after an accepted refresh drops the token it stood on", async () => {
    const t1 = expiringIn(120_000);
    const getToken = vi.fn(async () => expiringIn(3600_000));
    const { client, server } = setup({ token: t1, getToken, refreshMargin: 30_000 });
    client.connect();
    await vi.advanceTimersByTimeAsync(0);
    server.last.welcome();
    await vi.advanceTimersByTimeAsync(90_000);
    server.last.receive({ type: "refreshed", expire_at: 0 });
    server.last.serverClose(4001, "token expired");
    await vi.advanceTimersByTimeAsync(1);
    expect(getToken).toHaveBeenCalledTimes(2); // a fresh one: the server said this one expired
    client.close();
  });
});

describe("revoked channels", () => {
  it("an unsubscribed frame with a reason ends the subscription, with an error, for good", async () => {
    const { client, server, events } = setup();
    const sub = client.subscribe("orders.eu");
    const keep = client.subscribe("news");
    const subErrors: string[] = [];
    sub.on("error", (e) => subErrors.push(e.code));
    client.connect();
    await vi.advanceTimersByTimeAsync(0);
    server.last.welcome().ackSubscribes();
    client.subscribe("late"); // a request waiting for its answer is not taken for it
    server.last.receive({ type: "unsubscribed", channel: "orders.eu", reason: "revoked", message: "no" });
    expect(sub.state).toBe("unsubscribed");
    expect(keep.state).toBe("subscribed");
    expect(subErrors).toEqual(["revoked"]);
    expect(events.error.map((e) => [e.code, e.channel])).toEqual([["revoked", "orders.eu"]]);
    expect([...client.subscriptions.keys()]).toEqual(["news", "late"]);
    server.last.ackSubscribes();
    expect(client.subscriptions.get("late")!.state).toBe("subscribed");
    server.last.serverClose(1012, "rebalance");
    await vi.advanceTimersByTimeAsync(2_000);
    server.last.welcome();
    expect(server.last.frames("subscribe").map((f) => f.channel)).toEqual(["news", "late"]);
    client.close();
  });
});

describe("connect proxy", () => {
  it("sends data as ?data= JSON", async () => {
    const { client, server } = setup({ user: undefined, data: { page: "orders", n: 1 } });
    client.connect();
    await vi.advanceTimersByTimeAsync(0);
    expect(JSON.parse(server.last.params.get("data")!)).toEqual({ page: "orders", n: 1 });
    expect(server.last.params.has("token")).toBe(false);
    client.close();
  });

  it("4503 (the backend said no) stops; 4002 (session expired) reconnects", async () => {
    const { client, server, events } = setup({ user: undefined });
    client.connect();
    await vi.advanceTimersByTimeAsync(0);
    server.last.welcome();
    server.last.serverClose(4002, "session expired: reconnect");
    await vi.advanceTimersByTimeAsync(1_000);
    expect(server.sockets).toHaveLength(2);
    server.last.welcome();
    server.last.serverClose(4503, "refused: banned");
    await vi.advanceTimersByTimeAsync(60_000);
    expect(server.sockets).toHaveLength(2);
    expect(client.state).toBe("disconnected");
    expect(events.error.at(-1)?.closeCode).toBe(4503);
  });
});
