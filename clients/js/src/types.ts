import type { BackoffOptions } from "./backoff.js";

/** The part of a WebSocket the client uses: browsers', `ws`'s and React Native's all fit. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** A Storage (sessionStorage) or anything with its two methods. */
export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
}

export interface ClarionOptions {
  /** A JWT, sent as `?token=`. */
  token?: string;
  /**
   * Returns a fresh JWT. Called before the current one's `exp` (the new token is
   * sent over the open socket in a `refresh` frame), after a 4001 close, and at
   * connect when there is no token. One call at a time. Throw
   * (or resolve to) an `UnauthorizedError` to stop the client.
   */
  getToken?: () => Promise<string | UnauthorizedErrorLike> | string;
  /**
   * Sent to the server's connect proxy as `?data=` (JSON): what the application's backend
   * needs to decide who this is, beside the cookies the proxy passes on.
   */
  data?: unknown;
  /** Development servers (`--auth none`): the user id, sent as `?user=`. */
  user?: string;
  /** The WebSocket constructor (Node: `ws`'s; default: the global one). */
  WebSocket?: WebSocketConstructor;
  backoff?: BackoffOptions;
  /** Milliseconds between application pings (browsers cannot see WebSocket pings). */
  pingInterval?: number;
  /** Milliseconds to wait for a pong, or for the welcome after connecting, before reconnecting. */
  timeout?: number;
  /** Milliseconds before `exp` at which the token is refreshed. */
  refreshMargin?: number;
  /** Ids remembered to drop duplicates. */
  dedupeSize?: number;
  /**
   * Keep the last message id across page reloads: `true` for sessionStorage,
   * or a storage object. Off by default.
   */
  persist?: boolean | StorageLike;
  /** The storage key; default `clarion:` + the URL. */
  persistKey?: string;
}

/** Marker of the error that stops the client (see UnauthorizedError). */
export interface UnauthorizedErrorLike {
  readonly unauthorized: true;
}

export type State = "disconnected" | "connecting" | "connected";

export interface StateEvent {
  state: State;
  previous: State;
  /** The close code that caused it; 0 when no socket closed. */
  code: number;
  reason: string;
}

export type Target = { user: string } | { channel: string } | { broadcast: true };

export interface Message {
  id: string;
  target: Target;
  data: unknown;
  /** Publish time, Unix milliseconds. */
  ts: number;
}

export interface RecoveredEvent {
  /** False: `since` was older than the history window, messages may be lost. */
  recovered: boolean;
  /** How many messages the server replayed. */
  missed: number;
  /** The id recovery started from; null when there was none to send. */
  since: string | null;
}

export interface ClientEvents {
  message: Message;
  state: StateEvent;
  /** The connection (user and broadcast messages) was recovered after a reconnect. */
  recovered: RecoveredEvent;
  /** Recovery failed or was impossible: refetch the application's state. */
  resync: RecoveredEvent;
  error: ClarionErrorLike;
}

export interface ClarionErrorLike extends Error {
  readonly code: string;
  readonly closeCode?: number;
  readonly channel?: string;
}

export type SubscriptionState = "unsubscribed" | "subscribing" | "subscribed";

export interface SubscriptionStateEvent {
  state: SubscriptionState;
  previous: SubscriptionState;
  reason: string;
}

export interface SubscriptionEvents {
  message: Message;
  state: SubscriptionStateEvent;
  recovered: RecoveredEvent;
  resync: RecoveredEvent;
  error: ClarionErrorLike;
}
