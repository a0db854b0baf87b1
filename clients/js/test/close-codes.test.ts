// The close-code policy, code by code, through a client on a fake server.
import { readFileSync } from "node:fs";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { type CloseAction, CloseCodes, closeAction } from "../src/index.js";
import { jwt } from "./fake-ws.js";
import { setup, timeToNextSocket } from "./helpers.js";

beforeEach(() => {
  vi.useFakeTimers();
});
afterEach(() => {
  vi.useRealTimers();
});

// With random() = 0.5 and a socket that got its welcome (backoff reset):
// soon 0.5 * 1000, backoff 0.5 * 500, slow 2000 + 0.5 * 500; token at once, after getToken's
// promise (the 1 ms step of timeToNextSocket).
const DELAY: Record<CloseAction, number> = { soon: 500, backoff: 250, slow: 2250, token: 1, stop: Infinity, fatal: Infinity };

const POLICY: [number, CloseAction][] = [
  [1000, "stop"],
  [1001, "soon"],
  [1002, "backoff"],
  [1005, "backoff"],
  [1006, "backoff"],
  [1008, "fatal"],
  [1009, "fatal"],
  [1011, "backoff"],
  [1012, "soon"],
  [1013, "slow"],
  [4000, "backoff"],
  [4001, "token"],
  [4002, "backoff"],
  [4250, "backoff"],
  [4499, "backoff"],
  [4500, "fatal"],
  [4501, "fatal"],
  [4502, "fatal"],
  [4503, "fatal"],
  [4999, "fatal"],
];

describe("close codes", () => {
  it.each(POLICY)("%i: %s", async (code, action) => {
    expect(closeAction(code)).toBe(action);
    const getToken = vi.fn(async () => jwt({ sub: "u1", exp: Date.now() / 1000 + 3600 }));
    const { client, server, events } = setup({ getToken, token: "t0" });
    client.connect();
    await vi.advanceTimersByTimeAsync(0);
    server.last.welcome();
    server.last.serverClose(code, "why");
    const wait = await timeToNextSocket(server.sockets, 60_000);
    if (action === "stop" || action === "fatal") {
      expect(wait).toBe(Infinity);
      expect(client.state).toBe("disconnected");
      expect(events.state.at(-1)).toMatchObject({ state: "disconnected", previous: "connected", code, reason: "why" });
      expect(events.error.map((e) => e.closeCode)).toEqual(action === "fatal" ? [code] : []);
      expect(vi.getTimerCount()).toBe(0);
      return;
    }
    expect(wait).toBe(DELAY[action]);
    expect(events.state.at(-1)).toMatchObject({ state: "connecting", previous: "connected", code, reason: "why" });
    expect(events.error).toEqual([]);
    expect(getToken).toHaveBeenCalledTimes(action === "token" ? 1 : 0);
    if (action === "token") expect(server.last.params.get("token")).not.toBe("t0");
    client.close();
  });

  it("4001 without getToken stops with an error", async () => {
    const { client, server, events } = setup({ token: "t0" });
    client.connect();
    server.last.welcome();
    server.last.serverClose(4001, "token expired");
    expect(await timeToNextSocket(server.sockets, 60_000)).toBe(Infinity);
    expect(client.state).toBe("disconnected");
    expect(events.error).toMatchObject([{ code: "closed", closeCode: 4001 }]);
  });

  it("1001 and 1012 do not grow the backoff: many drains in a row reconnect within 1 s each", async () => {
    const { client, server } = setup({ backoff: { random: () => 0.999 } });
    client.connect();
    for (const code of [1001, 1012, 1001, 1012, 1001, 1012, 1001, 1012]) {
      server.last.welcome();
      server.last.serverClose(code);
      expect(await timeToNextSocket(server.sockets)).toBeLessThan(1000);
    }
    client.close();
  });

  it("a socket closed before its welcome backs off, whatever the code (no 1001 storm)", async () => {
    const { client, server } = setup({ backoff: { random: () => 0.999 } });
    client.connect();
    const waits: number[] = [];
    for (let i = 0; i < 8; i++) {
      server.last.open().serverClose(i % 2 ? 1012 : 1001);
      waits.push(await timeToNextSocket(server.sockets));
    }
    expect(waits).toEqual([499, 999, 1998, 3996, 7992, 15984, 19980, 19980]);
    client.close();
  });

  it("the README documents every code of the table with its action", () => {
    const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8");
    for (const [code, info] of Object.entries(CloseCodes)) {
      const row = readme.split("\n").find((line) => line.startsWith(`| ${code} `));
      expect(row, `README row for ${code}`).toBeDefined();
      expect(row).toContain(`\`${info.action}\``);
    }
  });
});
