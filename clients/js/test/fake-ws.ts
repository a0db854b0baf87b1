// A fake WebSocket for unit tests: the test plays the server.
import type { WebSocketLike } from "../src/types.js";

export class FakeSocket implements WebSocketLike {
  readyState = 0;
  /** Client frames, parsed. */
  sent: Record<string, unknown>[] = [];
  /** What the client closed this socket with, if it did. */
  closedWith: { code?: number; reason?: string } | null = null;
  onopen: ((event: unknown) => void) | null = null;
  onmessage: ((event: { data: unknown }) => void) | null = null;
  onclose: ((event: { code: number; reason: string }) => void) | null = null;
  onerror: ((event: unknown) => void) | null = null;

  constructor(readonly url: string) {}

  /** Answer pings with pongs, as the server does; off to play a dead network. */
  autoPong = true;

  send(data: string): void {
    if (this.readyState !== 1) throw new Error("send on a socket that is not open");
    const frame = JSON.parse(data);
    this.sent.push(frame);
    if (frame.type === "ping" && this.autoPong) this.receive({ type: "pong" });
  }

  close(code?: number, reason?: string): void {
    this.closedWith = { code, reason };
    this.readyState = 3;
  }

  get params(): URLSearchParams {
    return new URL(this.url).searchParams;
  }

  /** Frames of one type that the client sent. */
  frames(type: string): Record<string, unknown>[] {
    return this.sent.filter((f) => f.type === type);
  }

  // --- the server's side ---

  open(): this {
    this.readyState = 1;
    this.onopen?.({});
    return this;
  }

  receive(frame: object | string): this {
    this.onmessage?.({ data: typeof frame === "string" ? frame : JSON.stringify(frame) });
    return this;
  }

  welcome(extra: object = {}): this {
    if (this.readyState === 0) this.open();
    return this.receive({ type: "welcome", pod: "pod-0", conn: "c1", user: "u1", ...extra });
  }

  /** Answers every subscribe frame not answered yet. */
  ackSubscribes(extra: (frame: Record<string, unknown>) => object = () => ({})): this {
    const frames = this.frames("subscribe");
    for (const f of frames.slice(this.acked)) this.receive({ type: "subscribed", channel: f.channel, ...extra(f) });
    this.acked = frames.length;
    return this;
  }
  private acked = 0;

  message(id: string, target: object, data: unknown = null): this {
    return this.receive({ type: "message", id, target, data, ts: Date.now() });
  }

  serverClose(code: number, reason = ""): void {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  /** True when the client left no handler on the socket but a no-op onerror (see detach()). */
  get detached(): boolean {
    return !this.onopen && !this.onmessage && !this.onclose && (this.onerror === null || this.onerror.length === 0);
  }
}

/** A WebSocket constructor whose sockets the test can reach. */
export function fakeServer() {
  const sockets: FakeSocket[] = [];
  class WS extends FakeSocket {
    constructor(url: string) {
      super(url);
      sockets.push(this);
    }
  }
  return {
    WebSocket: WS,
    sockets,
    get last(): FakeSocket {
      const s = sockets[sockets.length - 1];
      if (!s) throw new Error("no socket was opened");
      return s;
    },
  };
}

/** An unsigned JWT with this payload (the client never verifies). */
export function jwt(payload: object): string {
  const b64 = (o: object) => Buffer.from(JSON.stringify(o)).toString("base64url");
  return `${b64({ alg: "HS256", typ: "JWT" })}.${b64(payload)}.sig`;
}

/** A promise and its resolve/reject, to control when an async callback returns. */
export function deferred<T>() {
  let resolve!: (value: T) => void;
  let reject!: (error: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** UUIDv7-shaped ids that sort in the order they are made. */
export function ids(n: number): string[] {
  return Array.from({ length: n }, (_, i) => `0190a000-0000-7000-8000-${String(i + 1).padStart(12, "0")}`);
}
