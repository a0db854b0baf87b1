// Subscription tokens (issue 21, item 3): sent in the subscribe frame, fetched first with
// getToken, refreshed in band before their exp in a refresh frame naming the channel.
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { jwt } from "./fake-ws.js";
import { setup } from "./helpers.js";

beforeEach(() => {
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
});

const subToken = (channel: string, ms: number) =>
  jwt({ sub: "u1", channel, exp: Math.floor((Date.now() + ms) / 1000) });

describe("subscription tokens", () => {
  it("a given token goes in the subscribe frame", async () => {
    const { client, server } = setup();
    client.connect();
    await vi.advanceTimersByTimeAsync(0);
    server.last.welcome();
    const token = subToken("doc:1", 3600_000);
    client.subscribe("doc:1", { token });
    expect(server.last.frames("subscribe")).toEqual([{ type: "subscribe", channel: "doc:1", token }]);
    client.close();
  });

  it("getToken is asked before subscribing and before exp, and the new token is sent in band", async () => {
    const getToken = vi.fn(async (channel: string) => subToken(channel, 120_000));
    const { client, server, events } = setup({ refreshMargin: 30_000 });
    client.connect();
    await vi.advanceTimersByTimeAsync(0);
    server.last.welcome();
    const sub = client.subscribe("doc:2", { getToken });
    await vi.advanceTimersByTimeAsync(0);
    expect(getToken).toHaveBeenCalledWith("doc:2");
    const [frame] = server.last.frames("subscribe");
    expect(frame).toMatchObject({ type: "subscribe", channel: "doc:2", token: expect.any(String) });
    server.last.ackSubscribes();
    expect(sub.state).toBe("subscribed");
    await vi.advanceTimersByTimeAsync(90_000);
    expect(getToken).toHaveBeenCalledTimes(2);
    const [refresh] = server.last.frames("refresh");
    expect(refresh).toMatchObject({ type: "refresh", channel: "doc:2", token: expect.any(String) });
    server.last.receive({ type: "refreshed", channel: "doc:2", expire_at: 0 });
    await vi.advanceTimersByTimeAsync(90_000);
    expect(server.last.frames("refresh")).toHaveLength(2);
    expect(server.sockets).toHaveLength(1);
    expect(events.error).toEqual([]);
    client.close();
  });

  it("a subscribe refused with token_expired gets one new token and tries again", async () => {
    const getToken = vi.fn(async (channel: string) => subToken(channel, 3600_000));
    const { client, server } = setup();
    client.connect();
    await vi.advanceTimersByTimeAsync(0);
    server.last.welcome();
    client.subscribe("doc:3", { getToken });
    await vi.advanceTimersByTimeAsync(0);
    server.last.receive({ type: "error", code: "token_expired", message: "expired", channel: "doc:3" });
    await vi.advanceTimersByTimeAsync(0);
    expect(getToken).toHaveBeenCalledTimes(2);
    expect(server.last.frames("subscribe")).toHaveLength(2);
    client.close();
  });

  it("a refused refresh is an error on the subscription and is tried again soon", async () => {
    const getToken = vi.fn(async (channel: string) => subToken(channel, 120_000));
    const { client, server, events } = setup({ refreshMargin: 30_000 });
    client.connect();
    await vi.advanceTimersByTimeAsync(0);
    server.last.welcome();
    const sub = client.subscribe("doc:4", { getToken });
    const errors: string[] = [];
    sub.on("error", (e) => errors.push(e.code));
    await vi.advanceTimersByTimeAsync(0);
    server.last.ackSubscribes();
    await vi.advanceTimersByTimeAsync(90_000);
    server.last.receive({ type: "error", code: "bad_token", message: "another channel", channel: "doc:4" });
    expect(errors).toEqual(["token"]);
    expect(events.error.map((e) => e.channel)).toEqual(["doc:4"]);
    await vi.advanceTimersByTimeAsync(7_500);
    expect(server.last.frames("refresh")).toHaveLength(2);
    client.close();
  });

  it("4504 (too many connections for this user) stops the client", async () => {
    const { client, server } = setup();
    client.connect();
    await vi.advanceTimersByTimeAsync(0);
    server.last.serverClose(4504, "too many connections for this user");
    await vi.advanceTimersByTimeAsync(60_000);
    expect(server.sockets).toHaveLength(1);
    expect(client.state).toBe("disconnected");
  });
});
