import { describe, expect, it } from "vitest";
import { Backoff } from "../src/index.js";

const DRAWS = 5000;

function draws(f: () => number): { min: number; max: number } {
  let min = Infinity;
  let max = -Infinity;
  for (let i = 0; i < DRAWS; i++) {
    const d = f();
    min = Math.min(min, d);
    max = Math.max(max, d);
  }
  return { min, max };
}

describe("Backoff", () => {
  it("full jitter: attempt n draws from [0, min(max, base * 2^n)), covering the range", () => {
    for (let n = 0; n < 10; n++) {
      const ceiling = Math.min(20_000, 500 * 2 ** n);
      const { min, max } = draws(() => {
        const b = new Backoff();
        b.attempts = n;
        return b.next();
      });
      expect(min).toBeGreaterThanOrEqual(0);
      expect(min).toBeLessThan(ceiling * 0.01);
      expect(max).toBeLessThan(ceiling);
      expect(max).toBeGreaterThan(ceiling * 0.99);
    }
  });

  it("grows per failure up to the cap, and reset() starts over", () => {
    const b = new Backoff({ random: () => 0.999999 });
    const seen = Array.from({ length: 12 }, () => Math.round(b.next()));
    expect(seen.slice(0, 6)).toEqual([500, 1000, 2000, 4000, 8000, 16000]);
    expect(seen.slice(6)).toEqual(Array(6).fill(20000));
    b.reset();
    expect(Math.round(b.next())).toBe(500);
  });

  it("soon (1001, 1012) spreads over [0, 1 s) and never grows", () => {
    const b = new Backoff();
    const { min, max } = draws(() => b.soon());
    expect(min).toBeGreaterThanOrEqual(0);
    expect(max).toBeLessThan(1000);
    expect(max).toBeGreaterThan(990);
    expect(b.attempts).toBe(0);
  });

  it("slow (1013) is never under 2 s, never over the cap, and grows", () => {
    const b = new Backoff();
    const { min, max } = draws(() => b.slow());
    expect(min).toBeGreaterThanOrEqual(2000);
    expect(max).toBeLessThanOrEqual(20_000);
    expect(max).toBeGreaterThan(19_900);
    const first = new Backoff({ random: () => 0.999999 });
    expect([first.slow(), first.slow(), first.slow()].map(Math.round)).toEqual([2500, 3000, 4000]);
  });

  it("takes its bounds from the options", () => {
    const b = new Backoff({ base: 100, max: 1000, soon: 50, slowMin: 300, random: () => 0.999999 });
    expect(Math.round(b.next())).toBe(100);
    for (let i = 0; i < 10; i++) b.next();
    expect(Math.round(b.next())).toBe(1000);
    expect(Math.round(b.soon())).toBe(50);
    expect(Math.round(b.slow())).toBe(1000);
  });
});
