// The gateway serves the IIFE bundle to its demo page as /clarion.js from a committed copy
// (service/clarion/static/clarion.js), so that `make run` needs only Python. That copy must be
// the bundle this source builds (npm test builds dist/ first).
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";

describe("the gateway's copy of the bundle", () => {
  it("service/clarion/static/clarion.js equals a fresh build of dist/clarion.global.min.js", () => {
    const built = readFileSync(new URL("../dist/clarion.global.min.js", import.meta.url), "utf8");
    const committed = readFileSync(new URL("../../../service/clarion/static/clarion.js", import.meta.url), "utf8");
    // To update it: cd clients/js && npm run build && cp dist/clarion.global.min.js ../../service/clarion/static/clarion.js
    expect(committed === built, "service/clarion/static/clarion.js is stale: rebuild and copy it").toBe(true);
  });
});
