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

/** The transports, in the server's names: `GET /ws`, `GET /sse`, `GET /stream`. */
export type Transport = "websocket" | "sse" | "http_stream";

/** The part of `fetch` the HTTP streams use. */
export type FetchLike = (
  url: string,
  init: { method?: string; body?: string; signal?: AbortSignal; cache?: "no-store" },
) => Promise<{ status: number; body: ReadableStream<Uint8Array> | null; json(): Promise<any> }>;

/** The part of an `EventSource` the SSE transport uses when there is no `fetch`. */
export type EventSourceConstructor = new (url: string) => {
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  close(): void;
};

/** A Storage (sessionStorage) or anything with its two methods. */
export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
}

/** `client.subscribe(channel, options)`: for a channel the connection's token does not cover. */
export interface SubscribeOptions {
  /** A subscription token (a JWT naming the user and this channel), sent in the `subscribe` frame. */
  token?: string;
  /**
   * Returns a subscription token for `channel`: called before subscribing when there is
   * none, and before the token's `exp` (the new one goes over the open socket in a
   * `refresh` frame naming the channel).
   */
  getToken?: (channel: string) => Promise<string> | string;
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
  /**
   * The transports to try, in order (default `["websocket", "sse"]`): the client moves to
   * the next when one fails `fallbackAfter` times in a row before its welcome (it never
   * opened, closed abnormally or sent no welcome within `timeout`), and keeps the first that
   * gets a welcome for the rest of its life. Those the environment lacks are left out.
   */
  transports?: Transport[];
  /** Failures before any welcome that make the client try the next transport (default 1). */
  fallbackAfter?: number;
  /** `fetch` for the HTTP streams and their `POST /emulation` (default: the global one). */
  fetch?: FetchLike;
  /**
   * Read SSE with this `EventSource` (e.g. the browser's) instead of a `fetch` stream.
   * Frames still go up with `fetch`; a refusal before the stream (401) then looks like a
   * network error to the client (EventSource hides the status), so it backs off instead
   * of stopping.
   */
  EventSource?: EventSourceConstructor;
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
