/** Reconnect delays, in milliseconds. */
export interface BackoffOptions {
  /** First ceiling of the full-jitter backoff; doubles per failed attempt. */
  base?: number;
  /** Largest ceiling. */
  max?: number;
  /** Spread of a `soon` reconnect (1001, 1012): a delay in [0, soon). */
  soon?: number;
  /** Smallest delay of a `slow` reconnect (1013). */
  slowMin?: number;
  /** A source of numbers in [0, 1): Math.random unless a test fixes it. */
  random?: () => number;
}

/**
 * Full-jitter exponential backoff (a delay drawn from [0, min(max, base * 2^n)),
 * as centrifuge-js and the AWS architecture blog do), so that clients dropped
 * together do not come back together. Only a `welcome` frame resets it.
 */
export class Backoff {
  readonly base: number;
  readonly max: number;
  readonly soonSpread: number;
  readonly slowMin: number;
  private readonly random: () => number;
  /** Failed attempts since the last success. */
  attempts = 0;

  constructor(options: BackoffOptions = {}) {
    this.base = options.base ?? 500;
    this.max = options.max ?? 20_000;
    this.soonSpread = options.soon ?? 1000;
    this.slowMin = options.slowMin ?? 2000;
    this.random = options.random ?? Math.random;
  }

  private ceiling(): number {
    return Math.min(this.max, this.base * 2 ** Math.min(this.attempts, 30));
  }

  /** The next delay after a failure; grows the ceiling. */
  next(): number {
    const delay = this.random() * this.ceiling();
    this.attempts++;
    return delay;
  }

  /** The next delay when the server is full: at least `slowMin`; grows the ceiling. */
  slow(): number {
    const delay = this.slowMin + this.random() * Math.max(0, Math.min(this.max - this.slowMin, this.ceiling()));
    this.attempts++;
    return delay;
  }

  /** A short random delay that leaves the ceiling as it is. */
  soon(): number {
    return this.random() * this.soonSpread;
  }

  reset(): void {
    this.attempts = 0;
  }
}
