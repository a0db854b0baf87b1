import { Backoff } from "./backoff.js";
import { closeAction } from "./close-codes.js";
import { Emitter } from "./emitter.js";
import { ClarionError, isUnauthorized } from "./errors.js";
import { tokenExpiry } from "./jwt.js";
import { StreamSocket } from "./stream.js";
import { Subscription, type SubscriptionHost } from "./subscription.js";
import type {
  ClarionOptions,
  ClientEvents,
  EventSourceConstructor,
  FetchLike,
  Message,
  State,
  StorageLike,
  SubscribeOptions,
  Transport,
  WebSocketConstructor,
  WebSocketLike,
} from "./types.js";

/** A client frame that waits for its answer; the server answers every frame once, in order. */
interface Pending {
  answer: "subscribed" | "unsubscribed" | "published" | "pong" | "refreshed";
  /** The channel a subscribe or unsubscribe named: its answer names it too. */
  channel?: unknown;
  ok: (frame: ServerFrame) => void;
  fail: (error: ClarionError) => void;
}

interface ServerFrame {
  type?: string;
  [key: string]: unknown;
}

/** Close codes the client itself uses when it gives up on a socket. */
const LOST = 1006;
/** Timers are clamped to this (setTimeout overflows past 2^31 ms). */
const MAX_TIMER = 86_400_000;

type Timer = ReturnType<typeof setTimeout>;

/** A message id (a UUID); anything else from storage is not sent as `since`. */
const MESSAGE_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/**
 * Where the next reconnect recovers from, after a welcome or a `subscribed`: its
 * `position` once nothing is owed before it (nothing received yet, or recovered with
 * nothing missed), so a client idle for long does not come back with an old `since`.
 */
function advance(lastId: string | null, frame: ServerFrame): string | null {
  const position = frame.position;
  if (typeof position !== "string" || !MESSAGE_ID.test(position)) return lastId;
  const owed = lastId !== null && !(frame.recovered === true && Number(frame.missed ?? 0) === 0);
  return owed || (lastId !== null && lastId >= position) ? lastId : position;
}

/** `ws(s)://host/prefix/ws?query` → `http(s)://host/prefix` + `path` + `?query`. */
function httpUrl(url: string, path: string): string {
  return url.replace(/^ws/i, "http").replace(/(\/ws)?(?=\?|$)/, path);
}

/**
 * A Clarion client: one connection (a WebSocket, or an HTTP stream where WebSocket is
 * blocked: see `transports`), reconnected by the close-code policy in `CloseCodes`,
 * recovering missed messages with `since`.
 *
 *     const client = new Clarion("wss://push.example.com/ws", { getToken });
 *     client.on("message", (m) => console.log(m.data));
 *     client.subscribe("orders.eu").on("message", (m) => ...);
 *     client.connect();
 */
export class Clarion extends Emitter<ClientEvents> implements SubscriptionHost {
  readonly url: string;
  private readonly opts: ClarionOptions;
  private readonly WS: WebSocketConstructor | undefined;
  private readonly fetch: FetchLike | undefined;
  private readonly ES: EventSourceConstructor | undefined;
  private readonly transports: Transport[];
  /** The transport in use or being tried (an index in `transports`). */
  private tIndex = 0;
  /** Failures in a row before a welcome on this transport. */
  private tFails = 0;
  /** True once a transport got a welcome: it is kept, no more fallback. */
  private tKept = false;
  private readonly backoff: Backoff;
  private readonly pingInterval: number;
  private readonly timeout: number;
  private readonly refreshMargin: number;
  private readonly dedupeSize: number;
  private readonly storage: StorageLike | null;
  private readonly persistKey: string;

  private _state: State = "disconnected";
  private ws: WebSocketLike | null = null;
  /** True once the current socket's welcome arrived. */
  private welcomed = false;
  /** Bumped by close() and by each new socket: async work of an older one stops. */
  private epoch = 0;
  private token: string | undefined;
  /** When the token is due for a refresh (before its exp); undefined: never. */
  private refreshAt: number | undefined;
  /** The token the current socket was opened with. */
  private socketToken: string | undefined;
  private tokenPromise: Promise<string> | null = null;
  /**
   * Whether this socket's server takes `refresh` frames: a server without them answers
   * `unknown_type`, and the client then falls back to reconnecting after its 4001.
   */
  private refreshInBand = true;
  private pending: Pending[] = [];
  private readonly subs = new Map<string, Subscription>();
  /** Channels subscribed at least once since connect(): their re-subscribe is a recovery. */
  private readonly resubscribing = new WeakSet<Subscription>();
  private readonly seen = new Set<string>();
  /** The id of the last message received: `since` of the next connection. */
  lastId: string | null = null;
  /** True after the first welcome since connect(): later connections are recoveries. */
  private hadConnection = false;
  /** The welcome frame's pod, connection id and user. */
  info: { pod: string; conn: string; user: string } | null = null;

  private timers: { [name: string]: Timer | undefined } = {};
  private removeGlobals: (() => void) | null = null;

  constructor(url: string, options: ClarionOptions = {}) {
    super((error, event) => {
      if (event === "error") throw error;
      this.emit("error", new ClarionError("callback_error", `a ${String(event)} listener threw: ${error}`, { cause: error }));
    });
    const g = globalThis as { WebSocket?: WebSocketConstructor; fetch?: FetchLike };
    const WS = (this.WS = options.WebSocket ?? g.WebSocket);
    const fetch = (this.fetch = options.fetch ?? g.fetch?.bind(g));
    this.ES = options.EventSource;
    this.transports = (options.transports ?? ["websocket", "sse"]).filter((t) => (t === "websocket" ? WS : fetch));
    if (!this.transports.length) {
      throw new TypeError("clarion: no WebSocket (nor fetch); pass options.WebSocket (in Node: the ws package)");
    }
    this.url = url;
    this.opts = options;
    this.backoff = new Backoff(options.backoff);
    this.pingInterval = options.pingInterval ?? 25_000;
    this.timeout = options.timeout ?? 10_000;
    this.refreshMargin = options.refreshMargin ?? 30_000;
    this.dedupeSize = options.dedupeSize ?? 1000;
    const persist = options.persist;
    this.storage =
      persist === true
        ? ((globalThis as { sessionStorage?: StorageLike }).sessionStorage ?? null)
        : persist || null;
    this.persistKey = options.persistKey ?? `clarion:${url}`;
    if (options.token !== undefined) this.setToken(options.token);
  }

  get state(): State {
    return this._state;
  }

  /** The transport in use (or being tried before the first welcome). */
  get transport(): Transport {
    return this.transports[this.tIndex]!;
  }

  /** The subscriptions, by channel. */
  get subscriptions(): ReadonlyMap<string, Subscription> {
    return this.subs;
  }

  /** Starts connecting (and reconnecting, by the close-code policy) until close(). */
  connect(): void {
    if (this._state !== "disconnected") return;
    this.hadConnection = false;
    if (this.storage) {
      try {
        const stored = this.storage.getItem(this.persistKey);
        if (this.lastId === null && stored && MESSAGE_ID.test(stored)) this.lastId = stored;
        const t = this.transports.indexOf(this.storage.getItem(this.persistKey + "#transport") as Transport);
        if (t >= 0) {
          this.tIndex = t;
          this.tKept = true;
        }
      } catch {
        // storage can be disabled (private mode): recovery across reloads is optional
      }
    }
    this.addGlobals();
    this.setState("connecting", 0, "connect");
    void this.open();
  }

  /** Closes the socket (1000), stops reconnecting and removes every timer and global listener. */
  close(): void {
    if (this._state === "disconnected") return;
    this.stop(1000, "client closed");
  }

  /**
   * The subscription of `channel`: the same object until its unsubscribe().
   * It is (re-)subscribed on every connection. `options.token` or `options.getToken`: a
   * subscription token, for a channel the connection's own token does not cover.
   */
  subscribe(channel: string, options: SubscribeOptions = {}): Subscription {
    if (typeof channel !== "string" || channel === "") throw new TypeError("clarion: a channel is a non-empty string");
    let sub = this.subs.get(channel);
    if (sub) return sub;
    sub = new Subscription(channel, this);
    sub.getToken = options.getToken;
    if (options.token) this.setSubToken(sub, options.token);
    this.subs.set(channel, sub);
    if (this.welcomed) this.sendSubscribe(sub);
    return sub;
  }

  /** @internal Use `subscription.unsubscribe()`. */
  unsubscribe(sub: Subscription): void {
    if (this.subs.get(sub.channel) !== sub) return;
    this.subs.delete(sub.channel);
    this.clearTimer("sub:" + sub.channel);
    if (this.welcomed) this.request({ type: "unsubscribe", channel: sub.channel }, "unsubscribed", ignore, ignore);
    sub._setState("unsubscribed", "unsubscribe");
  }

  /** Publishes to a channel (the server must allow client publishing); resolves to the message id. */
  publish(channel: string, data: unknown): Promise<string> {
    return new Promise((resolve, reject) => {
      if (!this.welcomed) return reject(new ClarionError("not_connected", "not connected", { channel }));
      this.request({ type: "publish", channel, data }, "published", (frame) => resolve(frame.id as string), reject);
    });
  }

  // --- connection -------------------------------------------------------

  private async open(): Promise<void> {
    const epoch = ++this.epoch;
    this.clearTimer("reconnect");
    if (this.opts.getToken && this.tokenStale()) {
      try {
        await this.fetchToken();
      } catch (error) {
        if (epoch === this.epoch) this.tokenFailed(error);
        return;
      }
      if (epoch !== this.epoch) return;
    }
    const sentSince = this.lastId;
    const url = this.socketUrl();
    const t = this.transport;
    let ws: WebSocketLike;
    try {
      ws =
        t === "websocket"
          ? new this.WS!(url)
          : new StreamSocket(url, httpUrl(this.url.split("?")[0]!, "/emulation"), t !== "sse", this.fetch!, this.ES);
    } catch (error) {
      this.stop(0, "bad url");
      this.emitError(new ClarionError("bad_url", `cannot open ${this.url}: ${error}`, { cause: error }));
      return;
    }
    this.ws = ws;
    this.welcomed = false;
    this.socketToken = this.token;
    ws.onmessage = (event) => {
      if (this.ws === ws) this.frame(event.data, sentSince);
    };
    ws.onclose = (event) => {
      if (this.ws === ws) this.lost(event.code || LOST, event.reason || "connection closed");
    };
    ws.onerror = ignore; // a close event follows
    this.setTimer("welcome", this.timeout, () => this.drop(LOST, "no welcome in time"));
  }

  private socketUrl(): string {
    const params: string[] = [];
    if (this.token !== undefined) params.push("token=" + encodeURIComponent(this.token));
    else if (this.opts.user !== undefined) params.push("user=" + encodeURIComponent(this.opts.user));
    if (this.opts.data !== undefined) params.push("data=" + encodeURIComponent(JSON.stringify(this.opts.data)));
    if (this.lastId) params.push("since=" + encodeURIComponent(this.lastId));
    const t = this.transport;
    const url = t === "websocket" ? this.url : httpUrl(this.url, t === "sse" ? "/sse" : "/stream");
    if (!params.length) return url;
    return url + (url.includes("?") ? "&" : "?") + params.join("&");
  }

  /** Closes the current socket from this side, then handles it as a close with `code`. */
  private drop(code: number, reason: string): void {
    const ws = this.ws;
    if (!ws) return;
    detach(ws);
    try {
      ws.close(4000, reason);
    } catch {
      // already closing
    }
    this.lost(code, reason);
  }

  /** The socket is gone: follow the close-code policy. */
  private lost(code: number, reason: string): void {
    const wasConnected = this.welcomed;
    // A transport that never got a welcome: after `fallbackAfter` abnormal ends, the next one.
    if (!wasConnected && !this.tKept && code === LOST && ++this.tFails >= (this.opts.fallbackAfter ?? 1)) {
      this.tFails = 0;
      this.tIndex = (this.tIndex + 1) % this.transports.length;
    }
    if (this.ws) detach(this.ws);
    this.ws = null;
    this.welcomed = false;
    this.epoch++;
    this.clearSocketTimers();
    this.rejectPending(new ClarionError("disconnected", `disconnected (${code}): ${reason}`, { closeCode: code }));
    for (const sub of this.subs.values()) sub._setState("subscribing", "reconnecting");
    const action = closeAction(code);
    if (action === "stop" || action === "fatal" || (action === "token" && !this.opts.getToken)) {
      this.stop(code, reason);
      if (action !== "stop") {
        const what = action === "token" ? "token expired and there is no getToken" : "closed by the server";
        this.emitError(new ClarionError("closed", `${what} (${code}): ${reason}`, { closeCode: code }));
      }
      return;
    }
    // Expired: a token refreshed while the socket was open is new enough, else get one.
    if (action === "token" && this.token === this.socketToken) this.token = undefined;
    this.setState("connecting", code, reason);
    let delay: number;
    if (action === "slow") delay = this.backoff.slow();
    else if (action === "backoff" || !wasConnected) delay = this.backoff.next();
    else delay = action === "soon" ? this.backoff.soon() : 0;
    this.scheduleReconnect(delay);
  }

  private scheduleReconnect(delay: number): void {
    this.setTimer("reconnect", delay, () => void this.open());
  }

  /** Back to disconnected: no socket, no timer, no global listener. */
  private stop(code: number, reason: string): void {
    this.epoch++;
    const ws = this.ws;
    this.ws = null;
    this.welcomed = false;
    if (ws) {
      detach(ws);
      try {
        ws.close(1000, reason);
      } catch {
        // already closed
      }
    }
    for (const name of Object.keys(this.timers)) this.clearTimer(name);
    this.removeGlobals?.();
    this.removeGlobals = null;
    this.rejectPending(new ClarionError("disconnected", `disconnected: ${reason}`, { closeCode: code }));
    for (const sub of this.subs.values()) sub._setState("subscribing", reason);
    this.setState("disconnected", code, reason);
  }

  // --- frames -----------------------------------------------------------

  private frame(raw: unknown, sentSince: string | null): void {
    let frame: ServerFrame;
    try {
      frame = JSON.parse(typeof raw === "string" ? raw : String(raw));
    } catch {
      return; // bare text (a "pong" to a bare "ping"): nothing the client asked for
    }
    if (typeof frame !== "object" || frame === null) return;
    switch (frame.type) {
      case "welcome":
        return this.welcome(frame, sentSince);
      case "message":
        return this.message(frame as unknown as Message);
      case "unsubscribed":
        // With a reason it is the server's own: a refresh took the right away.
        if (typeof frame.reason === "string") return this.revoked(frame);
        this.answer(frame);
        return;
      case "subscribed":
        // Not asked for: the server subscribed this connection (the connect proxy's backend).
        if (!this.answer(frame)) this.serverSubscribed(String(frame.channel ?? ""), frame);
        return;
      case "published":
      case "pong":
      case "refreshed":
        this.answer(frame);
        return;
      case "error":
        return this.serverError(frame);
      case "close": // an HTTP stream's last frame: its close code
        return this.drop(Number(frame.code) || LOST, String(frame.reason ?? "closed"));
    }
  }

  private welcome(frame: ServerFrame, sentSince: string | null): void {
    const ws = this.ws;
    this.clearTimer("welcome");
    this.welcomed = true;
    this.refreshInBand = true;
    this.tKept = true;
    if (typeof frame.session === "string") (ws as StreamSocket).session = frame.session;
    if (this.storage) {
      try {
        this.storage.setItem(this.persistKey + "#transport", this.transport);
      } catch {
        // optional
      }
    }
    this.backoff.reset();
    this.info = { pod: String(frame.pod), conn: String(frame.conn), user: String(frame.user) };
    const recovery = this.hadConnection;
    this.hadConnection = true;
    this.lastId = advance(this.lastId, frame);
    // Before any listener runs: one that subscribes now sends its own frame, once.
    for (const sub of this.subs.values()) if (!sub.server) this.sendSubscribe(sub);
    this.setState("connected", 0, "welcome");
    if (this.ws !== ws) return; // a listener closed the client
    if (typeof frame.recovered === "boolean") {
      const event = { recovered: frame.recovered, missed: Number(frame.missed ?? 0), since: sentSince };
      this.emit(frame.recovered ? "recovered" : "resync", event);
    } else if (recovery) {
      this.emit("resync", { recovered: false, missed: 0, since: null });
    }
    if (this.ws !== ws) return;
    this.schedulePing();
    this.scheduleRefresh();
  }

  private sendSubscribe(sub: Subscription, retried = false): void {
    const channel = sub.channel;
    if (sub.getToken && (sub.token === undefined || Date.now() >= sub.refreshAt!)) {
      // A subscription token first; the frame goes once it is here (if still wanted).
      const epoch = this.epoch;
      this.subToken(sub).then(
        () => epoch === this.epoch && this.welcomed && this.subs.get(channel) === sub && this.sendSubscribe(sub, retried),
        (error) => this.subTokenFailed(sub, error),
      );
      return;
    }
    const since = sub.lastId;
    const recovery = this.resubscribing.has(sub);
    this.resubscribing.add(sub);
    const frame: Record<string, unknown> = { type: "subscribe", channel };
    if (since) frame.since = since;
    if (sub.token) frame.token = sub.token;
    this.request(
      frame,
      "subscribed",
      (frame) => {
        if (this.subs.get(sub.channel) !== sub) return;
        sub.lastId = advance(sub.lastId, frame);
        sub._setState("subscribed", "subscribed");
        this.scheduleSubRefresh(sub);
        if (typeof frame.recovered === "boolean") {
          sub._recovery({ recovered: frame.recovered, missed: Number(frame.missed ?? 0), since });
        } else if (recovery) {
          sub._recovery({ recovered: false, missed: 0, since: null });
        }
      },
      (error: ClarionError) => {
        if (error.code === "disconnected" || this.subs.get(sub.channel) !== sub) return;
        if (error.code === "token_expired" && sub.getToken && !retried) {
          sub.token = undefined; // a new subscription token, once
          return this.sendSubscribe(sub, true);
        }
        const failed = new ClarionError(error.code, error.message, { channel: sub.channel });
        sub._error(failed);
        this.emitError(failed);
        if (error.code === "forbidden" || error.code === "too_many_subscriptions") {
          this.subs.delete(sub.channel);
          sub._setState("unsubscribed", error.code);
        }
      },
    );
  }

  /** The server unsubscribed a channel (its right was revoked): it is not re-subscribed. */
  private revoked(frame: ServerFrame): void {
    const channel = String(frame.channel);
    const sub = this.subs.get(channel);
    if (!sub) return;
    this.subs.delete(channel);
    this.clearTimer("sub:" + channel);
    const error = new ClarionError(String(frame.reason), String(frame.message ?? "unsubscribed by the server"), {
      channel,
    });
    sub._error(error);
    this.emitError(error);
    sub._setState("unsubscribed", String(frame.reason));
  }

  private message(m: Message): void {
    if (typeof m.id !== "string" || !m.target) return;
    if (this.seen.has(m.id)) return;
    this.seen.add(m.id);
    if (this.seen.size > this.dedupeSize) this.seen.delete(this.seen.values().next().value as string);
    const channel = (m.target as { channel?: string }).channel;
    const sub = channel === undefined ? undefined : this.subs.get(channel);
    if (channel !== undefined && !sub) return; // in flight when it was unsubscribed
    // The greatest id (UUIDv7 ids sort by time), not the last: the connection's and
    // each channel's replays come one after the other, so the last can be older.
    if (this.lastId === null || m.id > this.lastId) this.lastId = m.id;
    if (this.storage) {
      try {
        this.storage.setItem(this.persistKey, this.lastId);
      } catch {
        // full or disabled: recovery across reloads is optional
      }
    }
    const message: Message = { id: m.id, target: m.target, data: m.data, ts: m.ts };
    this.emit("message", message);
    sub?._message(message);
  }

  private answer(frame: ServerFrame): boolean {
    const i = this.pending.findIndex((p) => p.answer === frame.type && (p.channel === undefined || p.channel === frame.channel));
    if (i < 0) return false;
    const [p] = this.pending.splice(i, 1);
    p!.ok(frame);
    return true;
  }

  /** A channel the server subscribed: its messages are delivered; it is not re-sent. */
  private serverSubscribed(channel: string, frame: ServerFrame): void {
    if (!channel) return;
    let sub = this.subs.get(channel);
    if (!sub) {
      sub = new Subscription(channel, this);
      sub.server = true;
      this.subs.set(channel, sub);
    }
    sub.lastId = advance(sub.lastId, frame);
    sub._setState("subscribed", "server");
  }

  private serverError(frame: ServerFrame): void {
    const error = new ClarionError(String(frame.code ?? "error"), String(frame.message ?? "error"), {
      channel: frame.channel as string | undefined,
    });
    const p = this.pending.shift();
    if (p) p.fail(error);
    else this.emitError(error);
  }

  /** Sends a frame; `ok` or `fail` is called with its answer, or `fail` when the socket goes first. */
  private request(frame: object, answer: Pending["answer"], ok: Pending["ok"], fail: Pending["fail"]): void {
    if (!this.ws || !this.welcomed) return fail(new ClarionError("disconnected", "not connected"));
    // A subscribe's answer names its channel (the server's own subscribed frames come too).
    const channel = answer === "subscribed" || answer === "unsubscribed" ? (frame as { channel?: unknown }).channel : undefined;
    this.pending.push({ answer, ok, fail, channel });
    try {
      this.ws.send(JSON.stringify(frame));
    } catch {
      // closing: the close event fails it
    }
  }

  private rejectPending(error: ClarionError): void {
    const pending = this.pending;
    this.pending = [];
    for (const p of pending) p.fail(error);
  }

  // --- liveness ---------------------------------------------------------

  /**
   * Pings every `pingInterval`; no pong within `timeout` drops the socket
   * (browsers cannot see WebSocket pings, and a dead network sends no close).
   */
  private schedulePing(): void {
    this.setTimer("ping", this.pingInterval, () => this.ping());
  }

  private ping(): void {
    if (!this.welcomed || this.timers.pong !== undefined) return;
    const epoch = this.epoch;
    this.setTimer("pong", this.timeout, () => this.drop(LOST, "no pong in time"));
    this.request(
      { type: "ping" },
      "pong",
      () => {
        if (epoch !== this.epoch) return;
        this.clearTimer("pong");
        this.schedulePing();
      },
      ignore,
    );
  }

  /** Something suggests the network is back or the page woke up: check or reconnect now. */
  private wake(): void {
    if (this.welcomed) {
      this.clearTimer("ping");
      this.ping();
    } else if (this.timers.reconnect !== undefined) {
      void this.open();
    }
  }

  private addGlobals(): void {
    const g = globalThis as { window?: EventTarget; document?: EventTarget & { visibilityState?: string } };
    const win = g.window;
    const doc = g.document;
    const onWake = () => this.wake();
    const onVisible = () => {
      if (doc?.visibilityState !== "hidden") this.wake();
    };
    win?.addEventListener?.("online", onWake);
    win?.addEventListener?.("pageshow", onWake);
    doc?.addEventListener?.("visibilitychange", onVisible);
    this.removeGlobals = () => {
      win?.removeEventListener?.("online", onWake);
      win?.removeEventListener?.("pageshow", onWake);
      doc?.removeEventListener?.("visibilitychange", onVisible);
    };
    this.startClock();
  }

  /**
   * A wall-clock check: this timer firing far later than planned means the
   * page's timers were throttled or the machine slept, and the socket may be
   * dead without a close event: ping now, or reconnect now.
   */
  private startClock(): void {
    const planned = Date.now() + this.pingInterval;
    this.setTimer("clock", this.pingInterval, () => {
      this.startClock();
      if (Date.now() - planned > this.pingInterval) this.wake();
    });
  }

  // --- tokens -----------------------------------------------------------

  /**
   * Keeps a token and when to refresh it: `refreshMargin` before `exp`, or
   * half-way for a token that lives shorter than twice the margin (so a
   * short-lived token cannot make the client call getToken in a loop).
   */
  private setToken(token: string): void {
    this.token = token;
    this.refreshAt = this.dueAt(token);
  }

  private dueAt(token: string): number | undefined {
    const exp = tokenExpiry(token);
    const now = Date.now();
    return exp === undefined ? undefined : now + Math.max((exp - now) / 2, exp - now - this.refreshMargin);
  }

  private setSubToken(sub: Subscription, token: string): void {
    sub.token = token;
    sub.refreshAt = this.dueAt(token);
  }

  /** A new subscription token from the subscription's getToken. */
  private async subToken(sub: Subscription): Promise<string> {
    const token = await sub.getToken!(sub.channel);
    if (typeof token !== "string" || token === "") throw new ClarionError("token", "getToken() returned no token");
    this.setSubToken(sub, token);
    return token;
  }

  private subTokenFailed(sub: Subscription, error: unknown): void {
    const failed = new ClarionError("token", `subscription getToken() failed: ${error}`, { channel: sub.channel, cause: error });
    sub._error(failed);
    this.emitError(failed);
  }

  /**
   * A subscription token from getToken is renewed as the connection's is: before its `exp`,
   * in a `refresh` frame naming the channel.
   */
  private scheduleSubRefresh(sub: Subscription): void {
    if (!sub.getToken || sub.refreshAt === undefined) return;
    const channel = sub.channel;
    const epoch = this.epoch;
    this.setTimer("sub:" + channel, Math.min(MAX_TIMER, Math.max(0, sub.refreshAt - Date.now())), () =>
      this.subToken(sub).then((token) => {
        if (epoch !== this.epoch || this.subs.get(channel) !== sub) return;
        this.request({ type: "refresh", channel, token }, "refreshed", () => this.scheduleSubRefresh(sub), (error: ClarionError) => {
          if (error.code === "disconnected") return;
          this.subTokenFailed(sub, error.message);
          sub.refreshAt = Date.now() + Math.min(5_000, this.refreshMargin / 4);
          this.scheduleSubRefresh(sub);
        });
      }, (error) => this.subTokenFailed(sub, error)),
    );
  }

  private tokenStale(): boolean {
    return this.token === undefined || (this.refreshAt !== undefined && Date.now() >= this.refreshAt);
  }

  /** getToken(), one call at a time: concurrent callers share it. */
  private fetchToken(): Promise<string> {
    this.tokenPromise ??= (async () => {
      try {
        await undefined; // so that a getToken() that throws at once still clears tokenPromise after it was set
        const token = await this.opts.getToken!();
        if (isUnauthorized(token)) throw token;
        if (typeof token !== "string" || token === "") throw new ClarionError("token", "getToken() returned no token");
        this.setToken(token);
        return token;
      } finally {
        this.tokenPromise = null;
      }
    })();
    return this.tokenPromise;
  }

  private tokenFailed(error: unknown): void {
    if (isUnauthorized(error)) {
      this.stop(0, "unauthorized");
      this.emitError(new ClarionError("unauthorized", `getToken(): ${(error as Error).message ?? error}`, { cause: error }));
      return;
    }
    this.emitError(new ClarionError("token", `getToken() failed: ${error}`, { cause: error }));
    this.scheduleReconnect(this.backoff.next());
  }

  /**
   * Refreshes the token `refreshMargin` before its `exp` and hands it to the open socket
   * in a `refresh` frame, so the connection outlives the old token. Against a server
   * without refresh frames the new token waits for the reconnect after its 4001.
   */
  private scheduleRefresh(): void {
    if (!this.opts.getToken || this.refreshAt === undefined) return;
    const delay = Math.min(MAX_TIMER, Math.max(0, this.refreshAt - Date.now()));
    this.setTimer("refresh", delay, () => {
      if (!this.tokenStale()) return this.scheduleRefresh();
      const epoch = this.epoch;
      this.fetchToken().then(
        (token) => {
          if (epoch !== this.epoch) return;
          if (this.refreshInBand && this.welcomed) this.sendRefresh(token);
          else this.scheduleRefresh();
        },
        (error) => {
          if (isUnauthorized(error)) this.tokenFailed(error);
          else this.emitError(new ClarionError("token", `getToken() failed: ${error}`, { cause: error }));
        },
      );
    });
  }

  private sendRefresh(token: string): void {
    const epoch = this.epoch;
    this.request(
      { type: "refresh", token },
      "refreshed",
      () => {
        if (epoch !== this.epoch) return;
        this.socketToken = token; // the socket now stands on it
        this.scheduleRefresh();
      },
      (error: ClarionError) => {
        if (epoch !== this.epoch || error.code === "disconnected") return;
        if (error.code === "unknown_type") {
          this.refreshInBand = false; // an older server: reconnect after its 4001
          return this.scheduleRefresh();
        }
        // The server refused this token: ask again soon, within what is left.
        this.emitError(new ClarionError("token", `refresh refused: ${error.message}`, { cause: error }));
        this.refreshAt = Date.now() + Math.min(5_000, this.refreshMargin / 4);
        this.scheduleRefresh();
      },
    );
  }

  // --- helpers ----------------------------------------------------------

  private setState(state: State, code: number, reason: string): void {
    if (state === this._state) return;
    const previous = this._state;
    this._state = state;
    this.emit("state", { state, previous, code, reason });
  }

  private emitError(error: ClarionError): void {
    this.emit("error", error);
  }

  private setTimer(name: string, delay: number, fn: () => void): void {
    this.clearTimer(name);
    this.timers[name] = setTimeout(() => {
      this.timers[name] = undefined;
      fn();
    }, delay);
  }

  private clearTimer(name: string): void {
    const t = this.timers[name];
    if (t !== undefined) clearTimeout(t);
    this.timers[name] = undefined;
  }

  private clearSocketTimers(): void {
    for (const name of ["welcome", "ping", "pong", "refresh", "reconnect"]) this.clearTimer(name);
    for (const name of Object.keys(this.timers)) if (name.startsWith("sub:")) this.clearTimer(name);
  }
}

function ignore(): void {}

/**
 * Removes the client's handlers. `onerror` stays a no-op: the `ws` package
 * emits an error when a connecting socket is closed, and an EventEmitter
 * with no error listener would throw it out of the process.
 */
function detach(ws: WebSocketLike): void {
  ws.onopen = ws.onmessage = ws.onclose = null;
  ws.onerror = ignore;
}
