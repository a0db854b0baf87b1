// Background tabs and mobile: application pings, page events, the wall-clock check.
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { setup, timeToNextSocket } from "./helpers.js";

let win: EventTarget;
let doc: EventTarget & { visibilityState: string };

beforeEach(() => {
  vi.useFakeTimers();
  win = new EventTarget();
  doc = Object.assign(new EventTarget(), { visibilityState: "visible" });
  vi.stubGlobal("window", win);
  vi.stubGlobal("document", doc);
});
afterEach(() => {
  vi.useRealTimers();
  vi.unstubAllGlobals();
});

describe("liveness", () => {
  it("pings every interval; a pong keeps the socket, no pong in time drops it and reconnects", async () => {
    const { client, server, events } = setup({ pingInterval: 20_000, timeout: 5_000 });
    client.connect();
    const first = server.last.welcome();
    await vi.advanceTimersByTimeAsync(40_000);
    expect(first.frames("ping")).toHaveLength(2);
    expect(first.closedWith).toBeNull();
    first.autoPong = false; // the network died without a close
    await vi.advanceTimersByTimeAsync(20_000);
    expect(first.frames("ping")).toHaveLength(3);
    await vi.advanceTimersByTimeAsync(4_999);
    expect(first.closedWith).toBeNull();
    await vi.advanceTimersByTimeAsync(1);
    expect(first.closedWith?.code).toBe(4000);
    expect(events.state.at(-1)).toMatchObject({ state: "connecting", code: 1006, reason: "no pong in time" });
    expect(await timeToNextSocket(server.sockets)).toBe(250);
    client.close();
  });

  it.each([
    ["online", () => win.dispatchEvent(new Event("online"))],
    ["pageshow", () => win.dispatchEvent(new Event("pageshow"))],
    ["visibilitychange", () => doc.dispatchEvent(new Event("visibilitychange"))],
  ])("%s while waiting to reconnect: reconnects at once", async (_name, fire) => {
    const { client, server } = setup({ backoff: { random: () => 0.999 } });
    client.connect();
    for (let i = 0; i < 6; i++) {
      server.last.open().serverClose(1006);
      await timeToNextSocket(server.sockets);
    }
    server.last.serverClose(1006); // next wait: about 20 s
    fire();
    expect(server.sockets).toHaveLength(8);
    server.last.welcome();
    expect(client.state).toBe("connected");
    client.close();
  });

  it.each([
    ["online", () => win.dispatchEvent(new Event("online"))],
    ["visibilitychange", () => doc.dispatchEvent(new Event("visibilitychange"))],
  ])("%s while connected: checks the socket with a ping at once", async (_name, fire) => {
    const { client, server } = setup();
    client.connect();
    server.last.welcome();
    await vi.advanceTimersByTimeAsync(1_000);
    fire();
    expect(server.last.frames("ping")).toHaveLength(1);
    client.close();
  });

  it("a page hidden again does not count as a wake-up", () => {
    const { client, server } = setup();
    client.connect();
    server.last.welcome();
    doc.visibilityState = "hidden";
    doc.dispatchEvent(new Event("visibilitychange"));
    expect(server.last.frames("ping")).toHaveLength(0);
    client.close();
  });

  it("the wall-clock check: a timer that fired far too late (the machine slept) pings at once", async () => {
    const { client, server } = setup({ pingInterval: 25_000, timeout: 20_000 });
    client.connect(); // the clock check runs every 25 s from here
    await vi.advanceTimersByTimeAsync(10_000);
    const socket = server.last.welcome(); // the first ping is due at 35 s
    // Asleep for ten minutes: the wall clock moves on, the timers did not run.
    vi.setSystemTime(Date.now() + 600_000);
    socket.autoPong = false;
    await vi.advanceTimersByTimeAsync(15_000); // 25 s: the clock check sees the gap
    expect(socket.frames("ping")).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(20_000);
    expect(socket.closedWith?.code).toBe(4000); // dead after the sleep: dropped, not trusted
    client.close();
  });

  it("without the gap the clock check sends nothing early", async () => {
    const { client, server } = setup({ pingInterval: 25_000, timeout: 20_000 });
    client.connect();
    await vi.advanceTimersByTimeAsync(10_000);
    const socket = server.last.welcome();
    await vi.advanceTimersByTimeAsync(24_999);
    expect(socket.frames("ping")).toHaveLength(0);
    await vi.advanceTimersByTimeAsync(1);
    expect(socket.frames("ping")).toHaveLength(1);
    client.close();
  });

  it("without window and document (Node) nothing is listened to and nothing breaks", async () => {
    vi.unstubAllGlobals();
    const { client, server } = setup();
    client.connect();
    server.last.welcome();
    await vi.advanceTimersByTimeAsync(60_000);
    expect(client.state).toBe("connected");
    client.close();
  });
});
