// A fake fetch (and EventSource) for the HTTP-stream transports: the test plays the server.
import type { EventSourceConstructor, FetchLike } from "../src/types.js";

/** One `GET /sse` or `GET /stream` the client opened. */
export class FakeStream {
  private controller!: ReadableStreamDefaultController<Uint8Array>;
  readonly body = new ReadableStream<Uint8Array>({ start: (c) => void (this.controller = c) });
  aborted = false;
  ended = false;

  constructor(
    readonly url: string,
    readonly signal: AbortSignal | undefined,
  ) {
    signal?.addEventListener("abort", () => {
      this.aborted = true;
      this.end();
    });
  }

  get params(): URLSearchParams {
    return new URL(this.url).searchParams;
  }

  get sse(): boolean {
    return new URL(this.url).pathname.endsWith("/sse");
  }

  /** Raw bytes, as the server wrote them. */
  write(text: string): this {
    if (!this.ended) this.controller.enqueue(new TextEncoder().encode(text));
    return this;
  }

  /** A frame in this stream's format (an SSE event, or an NDJSON line). */
  receive(frame: object | string): this {
    const text = typeof frame === "string" ? JSON.stringify(frame) : JSON.stringify(frame);
    const id = typeof frame === "object" && "id" in frame ? `id: ${(frame as { id: string }).id}\n` : "";
    return this.write(this.sse ? `${id}data: ${text}\n\n` : `${text}\n`);
  }

  welcome(extra: object = {}): this {
    return this.receive({ type: "welcome", pod: "pod-0", conn: "c1", user: "u1", session: "tok-1", ...extra });
  }

  message(id: string, target: object, data: unknown = null): this {
    return this.receive({ type: "message", id, target, data, ts: 1 });
  }

  /** The stream's last frame, then its end. */
  close(code: number, reason = ""): void {
    this.receive({ type: "close", code, reason, reconnect: true, action: "", retry: 500 });
    this.end();
  }

  end(): void {
    if (this.ended) return;
    this.ended = true;
    try {
      this.controller.close();
    } catch {
      // cancelled by the reader
    }
  }
}

export interface Post {
  url: string;
  session: string;
  frames: Record<string, unknown>[];
}

/** A fetch whose streams and POSTs the test reaches. */
export function fakeFetch() {
  const streams: FakeStream[] = [];
  const posts: Post[] = [];
  /** What the next GETs answer instead of a stream (a refusal), in order. */
  const refusals: { status: number; body: object }[] = [];
  const state = {
    /** The status POST /emulation answers. */
    postStatus: 202,
    /** Answer pings with pongs on the stream, as the server does. */
    autoPong: true,
  };
  const fetch: FetchLike = async (url, init) => {
    if (init.method === "POST") {
      const body = JSON.parse(init.body!);
      const frames = body.frames.map((f: string) => JSON.parse(f));
      posts.push({ url, session: body.session, frames });
      if (state.postStatus === 202 && state.autoPong && frames.some((f: { type: string }) => f.type === "ping")) {
        streams[streams.length - 1]?.receive({ type: "pong" });
      }
      return { status: state.postStatus, body: null, json: async () => ({}) };
    }
    const refusal = refusals.shift();
    if (refusal) return { status: refusal.status, body: null, json: async () => refusal.body };
    const stream = new FakeStream(url, init.signal);
    streams.push(stream);
    return { status: 200, body: stream.body, json: async () => ({}) };
  };
  return {
    fetch,
    streams,
    posts,
    refusals,
    state,
    get last(): FakeStream {
      const s = streams[streams.length - 1];
      if (!s) throw new Error("no stream was opened");
      return s;
    },
    /** Every frame the client posted, in order. */
    get frames(): Record<string, unknown>[] {
      return posts.flatMap((p) => p.frames);
    },
  };
}

/** A fake EventSource: the browser's, without fetch. */
export function fakeEventSources() {
  const sources: FakeEventSource[] = [];
  class FakeEventSource {
    onopen: ((event: unknown) => void) | null = null;
    onmessage: ((event: { data: string }) => void) | null = null;
    onerror: ((event: unknown) => void) | null = null;
    closed = false;
    constructor(readonly url: string) {
      sources.push(this);
    }
    close(): void {
      this.closed = true;
    }
    open(): this {
      this.onopen?.({});
      return this;
    }
    receive(frame: object): this {
      this.onmessage?.({ data: JSON.stringify(frame) });
      return this;
    }
  }
  return { EventSource: FakeEventSource as unknown as EventSourceConstructor, sources };
}

/** Lets the streams' and POSTs' promises run. */
export async function settle(): Promise<void> {
  for (let i = 0; i < 30; i++) await Promise.resolve();
}
