import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { UnauthorizedError } from "../src/index.js";
import { tokenExpiry } from "../src/jwt.js";
import { deferred, jwt } from "./fake-ws.js";
import { setup, timeToNextSocket } from "./helpers.js";

beforeEach(() => {
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
});

const expiringIn = (ms: number, sub = "u1") => jwt({ sub, exp: Math.floor((Date.now() + ms) / 1000) });

describe("tokens", () => {
  it("reads exp without verifying, and nothing from what is not a JWT", () => {
    expect(tokenExpiry(jwt({ exp: 1700000000 }))).toBe(1700000000_000);
    expect(tokenExpiry(jwt({ sub: "u" }))).toBeUndefined();
    expect(tokenExpiry("opaque")).toBeUndefined();
    expect(tokenExpiry("a.!!!.c")).toBeUndefined();
    expect(tokenExpiry(jwt({ exp: "soon" }))).toBeUndefined();
  });

  it("connect without a token asks getToken first and sends its answer", async () => {
    const t1 = expiringIn(3600_000);
    const { client, server } = setup({ getToken: async () => t1 });
    client.connect();
    expect(server.sockets).toHaveLength(0);
    await vi.advanceTimersByTimeAsync(0);
    expect(server.last.params.get("token")).toBe(t1);
    expect(server.last.params.has("user")).toBe(false);
    client.close();
  });

  it("refreshes before exp while connected, so the 4001 close reconnects with no wait", async () => {
    const t1 = expiringIn(120_000);
    const t2 = expiringIn(3600_000);
    const getToken = vi.fn(async () => t2);
    const { client, server } = setup({ token: t1, getToken, refreshMargin: 30_000 });
    client.connect();
    await vi.advanceTimersByTimeAsync(0);
    expect(getToken).not.toHaveBeenCalled();
    server.last.welcome();
    await vi.advanceTimersByTimeAsync(89_000);
    expect(getToken).not.toHaveBeenCalled();
    await vi.advanceTimersByTimeAsync(1_000);
    expect(getToken).toHaveBeenCalledTimes(1); // at exp - 30 s, the socket still up
    expect(server.sockets).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(30_000);
    server.last.serverClose(4001, "token expired");
    await vi.advanceTimersByTimeAsync(0);
    expect(server.sockets).toHaveLength(2);
    expect(server.last.params.get("token")).toBe(t2);
    expect(getToken).toHaveBeenCalledTimes(1);
    client.close();
  });

  it("two expiries at once make one getToken call", async () => {
    const t1 = expiringIn(60_000);
    const t2 = expiringIn(3600_000);
    const answer = deferred<string>();
    const getToken = vi.fn(() => answer.promise);
    const { client, server } = setup({ token: t1, getToken, refreshMargin: 30_000 });
    client.connect();
    server.last.welcome();
    await vi.advanceTimersByTimeAsync(30_000); // the refresh starts, and hangs
    expect(getToken).toHaveBeenCalledTimes(1);
    server.last.serverClose(4001, "token expired"); // the reconnect needs a token too
    await vi.advanceTimersByTimeAsync(5_000);
    expect(getToken).toHaveBeenCalledTimes(1);
    expect(server.sockets).toHaveLength(1);
    answer.resolve(t2);
    await vi.advanceTimersByTimeAsync(0);
    expect(getToken).toHaveBeenCalledTimes(1);
    expect(server.sockets).toHaveLength(2);
    expect(server.last.params.get("token")).toBe(t2);
    client.close();
  });

  it("a 4001 storm with tokens the server keeps refusing backs off", async () => {
    let n = 0;
    const getToken = vi.fn(async () => `opaque-${++n}`);
    const { client, server } = setup({ getToken, backoff: { random: () => 0.999 } });
    client.connect();
    await vi.advanceTimersByTimeAsync(0);
    const waits: number[] = [];
    for (let i = 0; i < 5; i++) {
      server.last.open().serverClose(4001, "token expired");
      waits.push(await timeToNextSocket(server.sockets));
    }
    expect(waits).toEqual([499, 999, 1998, 3996, 7992]);
    expect(getToken).toHaveBeenCalledTimes(6);
    client.close();
  });

  it("a short-lived token is refreshed half-way, not in a loop", async () => {
    const getToken = vi.fn(async () => expiringIn(20_000));
    const { client, server } = setup({ getToken, refreshMargin: 30_000 });
    client.connect();
    await vi.advanceTimersByTimeAsync(0);
    server.last.welcome();
    await vi.advanceTimersByTimeAsync(9_000);
    expect(getToken).toHaveBeenCalledTimes(1);
    await vi.advanceTimersByTimeAsync(1_000);
    expect(getToken).toHaveBeenCalledTimes(2);
    client.close();
  });

  it.each([
    ["throws", () => Promise.reject(new UnauthorizedError("logged out"))],
    ["returns", () => Promise.resolve(new UnauthorizedError("logged out"))],
  ])("getToken %s an UnauthorizedError: the client stops with an error", async (_how, getToken) => {
    const { client, server, events } = setup({ token: "t0", getToken });
    client.connect();
    server.last.welcome();
    server.last.serverClose(4001, "token expired");
    await vi.advanceTimersByTimeAsync(60_000);
    expect(server.sockets).toHaveLength(1);
    expect(client.state).toBe("disconnected");
    expect(events.error).toMatchObject([{ code: "unauthorized" }]);
    expect(vi.getTimerCount()).toBe(0);
  });

  it("getToken failing otherwise (network) is reported and retried with backoff", async () => {
    const getToken = vi.fn().mockRejectedValueOnce(new Error("fetch failed")).mockResolvedValue("opaque");
    const { client, server, events } = setup({ getToken });
    client.connect();
    await vi.advanceTimersByTimeAsync(0);
    expect(events.error).toMatchObject([{ code: "token" }]);
    expect(server.sockets).toHaveLength(0);
    await vi.advanceTimersByTimeAsync(250);
    expect(server.last.params.get("token")).toBe("opaque");
    client.close();
  });

  it("a getToken that throws at once is handled like one that rejects", async () => {
    const getToken = vi.fn(() => {
      throw new UnauthorizedError();
    });
    const { client, events } = setup({ getToken });
    client.connect();
    await vi.advanceTimersByTimeAsync(0);
    expect(client.state).toBe("disconnected");
    expect(events.error).toMatchObject([{ code: "unauthorized" }]);
  });
});
