// The built package (npm test builds dist/ first): its entry points and its size.
import { existsSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { runInNewContext } from "node:vm";
import { gzipSync } from "node:zlib";
import { transformSync } from "esbuild";
import { describe, expect, it } from "vitest";

const dist = (file: string) => new URL(`../dist/${file}`, import.meta.url);

/** Bytes of a file minified then gzipped, as a browser would download it. */
function minGzip(file: string): number {
  const minified = transformSync(readFileSync(dist(file), "utf8"), { minify: true, loader: "js" }).code;
  return gzipSync(minified, { level: 9 }).length;
}

// Measured: ESM 4262 B, IIFE 4369 B min+gzip. The budgets leave about 7%: a
// change that grows the client past them is a decision (raise the budget here), not an accident.
// Raised by 150 bytes for in-band token refresh (refresh frames, the unknown_type fallback) and
// server-revoked subscriptions (issue 21): measured 4596 and 4703.
// Raised by 1100 bytes for the HTTP-stream transports and the fallback to them (issue 20, item 3:
// src/stream.ts reads SSE and NDJSON from fetch or an EventSource and posts frames to
// /emulation; the client picks, falls back and remembers the transport): measured 5683 and 5795.
// Raised by 400 bytes for subscription tokens (issue 21, item 3: the token in the subscribe frame,
// getToken(channel) before subscribing and before exp, the in-band refresh naming the channel, one
// retry after token_expired, their timers cleared with the socket's): measured 6066 and 6175.
// Raised by 75 bytes for server-side subscriptions (issue 21: the connect proxy's backend
// subscribes the connection; its unasked subscribed frame makes the channel the client's, not
// re-sent on reconnect; answers matched by channel): measured 6172 and 6289.
const BUDGET = { esm: 6225, iife: 6325 };

describe("package", () => {
  it(`the ESM bundle is at most ${BUDGET.esm} bytes min+gzip`, () => {
    const size = minGzip("index.js");
    console.log(`clarion-client: ESM ${size} B min+gzip`);
    expect(size).toBeLessThanOrEqual(BUDGET.esm);
  });

  it(`the IIFE bundle is at most ${BUDGET.iife} bytes min+gzip`, () => {
    const size = gzipSync(readFileSync(dist("clarion.global.min.js")), { level: 9 }).length;
    console.log(`clarion-client: IIFE ${size} B min+gzip`);
    expect(size).toBeLessThanOrEqual(BUDGET.iife);
  });

  it("import and require both resolve through the exports map", async () => {
    const esm = await import("clarion-client");
    const cjs = createRequire(import.meta.url)("clarion-client");
    for (const mod of [esm, cjs]) {
      expect(typeof mod.Clarion).toBe("function");
      expect(mod.CloseCodes[4001].action).toBe("token");
      expect(new mod.UnauthorizedError()).toBeInstanceOf(Error);
    }
    expect(existsSync(dist("index.d.ts"))).toBe(true);
    expect(readFileSync(dist("index.d.ts"), "utf8")).toContain("Clarion");
  });

  it("the IIFE defines window.Clarion, the class, with the package on it", () => {
    const sandbox: Record<string, unknown> = {};
    sandbox.window = sandbox;
    runInNewContext(readFileSync(dist("clarion.global.min.js"), "utf8"), sandbox);
    const Clarion = sandbox.Clarion as { CloseCodes: Record<number, { action: string }>; name: string };
    expect(typeof Clarion).toBe("function");
    expect(Clarion.CloseCodes[1013]!.action).toBe("slow");
  });

  it("has no runtime dependencies", () => {
    const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8"));
    expect(pkg.dependencies ?? {}).toEqual({});
  });
});
