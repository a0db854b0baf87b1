/**
 * What the client does after each WebSocket close code: the one place the
 * policy lives. README.md has the same table for people.
 *
 * - `stop`: no reconnect, no error (a normal close).
 * - `fatal`: no reconnect; an `error` event, since retrying cannot help.
 * - `soon`: reconnect after a small random spread; the backoff does not grow.
 * - `backoff`: reconnect with full-jitter exponential backoff.
 * - `slow`: like `backoff`, with a higher minimum delay (the server is full).
 * - `token`: get a fresh token with `getToken()`, then reconnect.
 */
export type CloseAction = "stop" | "fatal" | "soon" | "backoff" | "slow" | "token";

export interface CloseCodeInfo {
  readonly name: string;
  readonly action: CloseAction;
}

/** Every close code the Clarion server sends, with the client's action. */
export const CloseCodes: Readonly<Record<number, CloseCodeInfo>> = {
  1000: { name: "normal", action: "stop" },
  1001: { name: "going away (pod draining)", action: "soon" },
  1006: { name: "abnormal (no close frame, network error)", action: "backoff" },
  1008: { name: "policy violation", action: "fatal" },
  1009: { name: "message too big", action: "fatal" },
  1011: { name: "internal error", action: "backoff" },
  1012: { name: "service restart, rebalance or broker outage", action: "soon" },
  1013: { name: "try again later (pod full, send buffer overflow, auth backend down)", action: "slow" },
  4001: { name: "token expired", action: "token" },
  4002: { name: "session expired (connect proxy)", action: "backoff" },
  4500: { name: "unauthorized (missing or invalid token)", action: "fatal" },
  4501: { name: "origin not allowed", action: "fatal" },
  4502: { name: "disconnected by the server", action: "fatal" },
  4503: { name: "refused by the backend (connect proxy)", action: "fatal" },
  4504: { name: "too many connections for this user", action: "fatal" },
};

/** The action for any code: the table, then the 4000-4499 / 4500-4999 ranges, else `backoff`. */
export function closeAction(code: number): CloseAction {
  const known = CloseCodes[code];
  if (known) return known.action;
  if (code >= 4500 && code <= 4999) return "fatal";
  return "backoff";
}
