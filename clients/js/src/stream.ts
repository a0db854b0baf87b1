import type { EventSourceConstructor, FetchLike, WebSocketLike } from "./types.js";

/**
 * An HTTP stream (`GET /sse` or `GET /stream`) behind the WebSocket's interface, so the
 * client runs the same code on every transport. Server frames come down the stream; the
 * client's frames go up with `POST /emulation`, one request at a time (so they arrive in
 * order, on whichever pod), batched, carrying the session token of the stream's welcome
 * (the client sets `session`). A POST that fails closes the stream (1006): its frames'
 * answers would never come, and the reconnect recovers with `since`. The stream's last
 * frame `{"type":"close","code",...}` is handled by the client as a WebSocket close.
 */
export class StreamSocket implements WebSocketLike {
  readyState = 0;
  onopen: ((event: unknown) => void) | null = null;
  onmessage: ((event: { data: unknown }) => void) | null = null;
  onclose: ((event: { code: number; reason: string }) => void) | null = null;
  onerror: ((event: unknown) => void) | null = null;
  /** The welcome's session token: what `POST /emulation` names the stream with. */
  session: string | undefined;
  private queue: string[] = [];
  private posting = false;
  private readonly abort = new AbortController();
  private es: { close(): void } | undefined;

  constructor(
    url: string,
    private readonly emulation: string,
    ndjson: boolean,
    private readonly fetch: FetchLike,
    ES: EventSourceConstructor | undefined,
  ) {
    if (!ES) {
      void this.read(url, ndjson);
    } else {
      // EventSource reconnects by itself; the client does, by its own policy and with its
      // greatest id as since, so the first error ends this stream.
      const es = new ES(url);
      this.es = es;
      es.onopen = () => this.opened();
      es.onmessage = (e) => this.onmessage?.({ data: e.data });
      es.onerror = () => this.end(1006, "stream failed");
    }
  }

  send(data: string): void {
    if (this.readyState !== 1) throw new Error("not open");
    this.queue.push(data);
    if (!this.posting) {
      this.posting = true;
      void Promise.resolve().then(() => this.post()); // the frames of this turn in one POST
    }
  }

  close(): void {
    this.readyState = 3;
    this.es?.close();
    this.abort.abort();
  }

  private opened(): void {
    this.readyState = 1;
    this.onopen?.({});
  }

  /** Gone: the client hears a close with `code` once (unless it closed it itself). */
  private end(code: number, reason: string): void {
    if (this.readyState === 3) return;
    this.close();
    this.onclose?.({ code, reason });
  }

  private async post(): Promise<void> {
    while (this.queue.length && this.readyState === 1) {
      const frames = this.queue.splice(0, 100);
      let status = 0;
      try {
        // A text/plain body (fetch's default for a string): no CORS preflight.
        status = (
          await this.fetch(this.emulation, {
            method: "POST",
            body: `{"session":${JSON.stringify(this.session)},"frames":[${frames.map((f) => JSON.stringify(f))}]}`,
          })
        ).status;
      } catch {
        // the network: status 0
      }
      if (status >= 300) return this.end(1006, `POST /emulation: ${status || "failed"}`);
    }
    this.posting = false;
  }

  private async read(url: string, ndjson: boolean): Promise<void> {
    let code = 1006;
    let reason = "stream ended";
    try {
      const r = await this.fetch(url, { signal: this.abort.signal, cache: "no-store" });
      if (r.status !== 200 || !r.body) {
        // A refusal before the stream (401, 403) names its close code in the body.
        const body = await r.json().catch(() => ({}));
        if (typeof body.code === "number") code = body.code;
        reason = body.reason ?? `HTTP ${r.status}`;
        return;
      }
      this.opened();
      const reader = r.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      let data: string[] = [];
      for (;;) {
        const { done, value } = await reader.read();
        if (done) return;
        buffer += decoder.decode(value, { stream: true });
        let i: number;
        while ((i = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, i).replace(/\r$/, "");
          buffer = buffer.slice(i + 1);
          if (this.readyState === 3) return;
          if (ndjson) {
            if (line) this.onmessage?.({ data: line });
          } else if (line === "") {
            // An event ends: its data lines are one frame (a comment has none).
            if (data.length) this.onmessage?.({ data: data.join("\n") });
            data = [];
          } else if (line.startsWith("data:")) {
            data.push(line.slice(line[5] === " " ? 6 : 5));
          }
        }
      }
    } catch {
      reason = "stream failed";
    } finally {
      this.end(code, reason);
    }
  }
}
