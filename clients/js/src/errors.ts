/** What the client reports through `error` events and rejected promises. */
export class ClarionError extends Error {
  /** A short code: a server error code (`forbidden`, ...), `closed`, `token`, `callback_error`, ... */
  readonly code: string;
  /** The WebSocket close code, when a close caused it. */
  readonly closeCode?: number;
  /** The channel, when the error is about one. */
  readonly channel?: string;

  constructor(code: string, message: string, extra: { closeCode?: number; channel?: string; cause?: unknown } = {}) {
    super(message);
    this.name = "ClarionError";
    this.code = code;
    if (extra.closeCode !== undefined) this.closeCode = extra.closeCode;
    if (extra.channel !== undefined) this.channel = extra.channel;
    if (extra.cause !== undefined) (this as { cause?: unknown }).cause = extra.cause;
  }
}

/** Thrown (or returned) by `getToken()` when the user is not allowed in: the client stops. */
export class UnauthorizedError extends Error {
  readonly unauthorized = true as const;

  constructor(message = "unauthorized") {
    super(message);
    this.name = "UnauthorizedError";
  }
}

export function isUnauthorized(value: unknown): boolean {
  return typeof value === "object" && value !== null && (value as { unauthorized?: unknown }).unauthorized === true;
}
