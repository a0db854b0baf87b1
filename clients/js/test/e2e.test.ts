// End to end in Node against real gateways: the `ws` package as the WebSocket.
import { createHmac } from "node:crypto";
import { createServer as createHttpServer, request as httpRequest, type Server as HttpServer } from "node:http";
import { createServer, type Socket } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { WebSocket } from "ws";
import { Clarion, type Message, type RecoveredEvent, type WebSocketConstructor } from "../src/index.js";
import { Balancer, freePorts, Gateway, publish, Vhost, waitFor } from "./gateway.js";

const WS = WebSocket as unknown as WebSocketConstructor;
const fast = { base: 100, max: 1000, soon: 200 };
const rand = () => Math.random().toString(16).slice(2, 10);

/** Ids the application saw, in order; a repeat would show up here. */
function received(target: { on(e: "message", f: (m: Message) => void): unknown }): string[] {
  const ids: string[] = [];
  target.on("message", (m) => ids.push(m.id));
  return ids;
}

const exactlyOnce = (seen: string[], sent: string[]) => [...seen].sort().join() === [...sent].sort().join();

/**
 * Publishes one more user message and waits for it: the pod delivers in its
 * queue's order, after any replay, so a duplicate of an earlier message would
 * have arrived before it. Returns its id, to count among the sent.
 */
async function barrier(port: number, user: string, seen: string[]): Promise<string> {
  const id = await publish(port, { user, data: "barrier" });
  await waitFor(() => seen.includes(id), "the barrier message");
  return id;
}

describe("clarion dev: two pods on the embedded broker", () => {
  let dev: Gateway;
  let port: number;

  beforeAll(async () => {
    port = await freePorts(2);
    dev = new Gateway("dev", ["dev", "--pods", "2", "--port", String(port)], [port, port + 1]).start();
    await dev.ready();
  }, 30_000);
  afterAll(() => dev?.kill());

  it("a message published on the other pod arrives once; so does the client's own", async () => {
    const user = `js-${rand()}`;
    const channel = `news.${rand()}`;
    const client = new Clarion(`ws://127.0.0.1:${port}/ws`, { user, WebSocket: WS, backoff: fast });
    const errors: unknown[] = [];
    client.on("error", (e) => errors.push(e));
    const all = received(client);
    const sub = client.subscribe(channel);
    const onChannel = received(sub);
    client.connect();
    await waitFor(() => sub.state === "subscribed", "subscribed");
    expect(client.info?.pod).toBe("dev-0");
    const sent: string[] = [];
    for (let i = 0; i < 10; i++) {
      sent.push(await publish(port + 1, { channel, data: { i } }));
      sent.push(await publish(port + 1, { user, data: { i } }));
    }
    sent.push(await client.publish(channel, { mine: true }));
    await waitFor(() => all.length >= sent.length, `${sent.length} messages`);
    sent.push(await barrier(port + 1, user, all));
    expect(exactlyOnce(all, sent)).toBe(true);
    expect(onChannel).toHaveLength(11);
    expect(errors).toEqual([]);
    client.close();
    expect(client.state).toBe("disconnected");
  }, 30_000);

  it("the server answers the application pings, so the socket stays up", async () => {
    let pongs = 0;
    class Counting extends WebSocket {
      constructor(url: string) {
        super(url);
        this.addEventListener("message", (e) => {
          if (JSON.parse(String(e.data)).type === "pong") pongs++;
        });
      }
    }
    const client = new Clarion(`ws://127.0.0.1:${port}/ws`, {
      user: `js-${rand()}`,
      WebSocket: Counting as unknown as WebSocketConstructor,
      pingInterval: 50,
      timeout: 1000,
    });
    const states: string[] = [];
    client.on("state", (e) => states.push(e.state));
    client.connect();
    await waitFor(() => pongs >= 5, "five pongs");
    expect(states).toEqual(["connecting", "connected"]);
    client.close();
  }, 30_000);
});

describe("a pod killed and restarted: the client reconnects and recovers with since (RabbitMQ)", () => {
  const vhost = new Vhost();
  let a: Gateway;
  let b: Gateway;
  let pa: number;
  let pb: number;
  const pod = (name: string, p: number) =>
    new Gateway(
      name,
      ["serve", "--host", "127.0.0.1", "--port", String(p), "--pod-name", name, "--auth", "none", "--allow-client-publish", "--amqp-url", vhost.amqpUrl, "--drain-delay", "0", "--drain-window", "0.2", "--no-demo"],
      [p],
    );

  beforeAll(async () => {
    await vhost.create();
    pa = await freePorts(1);
    pb = await freePorts(1);
    a = pod(`js-a-${rand()}`, pa).start();
    b = pod(`js-b-${rand()}`, pb).start();
    await Promise.all([a.ready(), b.ready()]);
  }, 30_000);
  afterAll(async () => {
    await a?.kill();
    await b?.kill();
    await vhost.delete();
  });

  it("what was published while its pod was dead arrives after the reconnect, each message once", async () => {
    const user = `js-${rand()}`;
    const channel = `orders.${rand()}`;
    const client = new Clarion(`ws://127.0.0.1:${pa}/ws`, { user, WebSocket: WS, backoff: fast });
    const all = received(client);
    const sub = client.subscribe(channel);
    const recovered: RecoveredEvent[] = [];
    const subRecovered: RecoveredEvent[] = [];
    const resyncs: unknown[] = [];
    client.on("recovered", (e) => recovered.push(e));
    client.on("resync", (e) => resyncs.push(e));
    sub.on("recovered", (e) => subRecovered.push(e));
    sub.on("resync", (e) => resyncs.push(e));
    const states: string[] = [];
    client.on("state", (e) => states.push(`${e.state}:${e.code}`));
    client.connect();
    await waitFor(() => sub.state === "subscribed", "subscribed");

    const before = [await publish(pb, { channel, data: 1 }), await publish(pb, { user, data: 2 })];
    await waitFor(() => all.length === 2, "the first two messages");
    await a.kill();
    await waitFor(() => client.state === "connecting", "the client to notice the dead pod");
    const during = [await publish(pb, { channel, data: 3 }), await publish(pb, { user, data: 4 }), await publish(pb, { channel, data: 5 })];
    a.start();
    await a.ready();
    await waitFor(() => sub.state === "subscribed" && all.length >= 5, "the reconnect and the replay", 15_000);
    const after = [await publish(pb, { channel, data: 6 })];
    await waitFor(() => all.length >= 6, "a live message after the replay");
    after.push(await barrier(pb, user, all));

    expect(exactlyOnce(all, [...before, ...during, ...after])).toBe(true);
    expect(states).toEqual(["connecting:0", "connected:0", "connecting:1006", "connected:0"]);
    expect(recovered).toEqual([{ recovered: true, missed: 1, since: before[1] }]);
    expect(subRecovered).toEqual([{ recovered: true, missed: 2, since: before[0] }]);
    expect(resyncs).toEqual([]);
    client.close();
  }, 30_000);

  it("a draining pod (1001): the client comes back soon through the balancer to the other pod and recovers", async () => {
    const balancer = new Balancer();
    balancer.target = pa;
    const port = await balancer.start();
    try {
      const user = `js-${rand()}`;
      const channel = `orders.${rand()}`;
      const client = new Clarion(`ws://127.0.0.1:${port}/ws`, { user, WebSocket: WS, backoff: { ...fast, soon: 300 } });
      const all = received(client);
      const sub = client.subscribe(channel);
      const states: string[] = [];
      const recovered: RecoveredEvent[] = [];
      const resyncs: unknown[] = [];
      client.on("state", (e) => states.push(`${e.state}:${e.code}`));
      client.on("recovered", (e) => recovered.push(e));
      client.on("resync", (e) => resyncs.push(e));
      sub.on("resync", (e) => resyncs.push(e));
      client.connect();
      await waitFor(() => sub.state === "subscribed", "subscribed");
      expect(client.info?.pod).toBe(a.name);
      const sent = [await publish(pb, { user, data: 1 }), await publish(pb, { channel, data: 2 })];
      await waitFor(() => all.length === 2, "the first two messages");
      balancer.target = pb; // a is no longer ready: new connections go to b
      const draining = a.terminate();
      // The state history, not the state: a reconnect can be quicker than a poll.
      await waitFor(() => states.includes("connecting:1001"), "the 1001 close");
      sent.push(await publish(pb, { user, data: 3 }), await publish(pb, { channel, data: 4 }));
      await waitFor(() => client.info?.pod === b.name && sub.state === "subscribed", "the reconnect to b");
      await waitFor(() => all.length >= 4, "every message");
      sent.push(await barrier(pb, user, all));
      expect(exactlyOnce(all, sent)).toBe(true);
      expect(states).toEqual(["connecting:0", "connected:0", "connecting:1001", "connected:0"]);
      expect(recovered).toHaveLength(1);
      expect(resyncs).toEqual([]);
      client.close();
      await draining;
    } finally {
      balancer.stop();
    }
  }, 30_000);
});

describe("in-band token refresh against a real pod (clarion serve --auth jwt)", () => {
  const secret = "js-e2e-refresh-secret-0123456789abcdef";
  let gw: Gateway;
  let port: number;
  const b64 = (o: object) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const sign = (claims: object) => {
    const head = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
    return `${head}.${createHmac("sha256", secret).update(head).digest("base64url")}`;
  };

  beforeAll(async () => {
    port = await freePorts(1);
    gw = new Gateway(
      `js-refresh-${rand()}`,
      ["serve", "--host", "127.0.0.1", "--port", String(port), "--pod-name", `js-refresh-${rand()}`, "--jwt-secret", secret, "--public-api", "--no-demo"],
      [port],
    ).start();
    await gw.ready();
  }, 30_000);
  afterAll(async () => {
    await gw?.kill();
  });

  it("3 s tokens refreshed in band for 9 s: no reconnect, no lost message, a revoked channel ends", async () => {
    const user = `js-${rand()}`;
    let calls = 0;
    const getToken = async () => {
      calls++;
      // After the fourth token the channel "b" is no longer allowed.
      const channels = calls <= 4 ? ["a", "b"] : ["a"];
      return sign({ sub: user, exp: Math.floor(Date.now() / 1000) + 3, channels });
    };
    const client = new Clarion(`ws://127.0.0.1:${port}/ws`, { getToken, WebSocket: WS, backoff: fast, refreshMargin: 2000 });
    const states: string[] = [];
    client.on("state", (e) => states.push(`${e.state}:${e.code}`));
    const errors: string[] = [];
    client.on("error", (e) => errors.push(`${e.code}:${e.channel ?? ""}`));
    const all = received(client);
    const a = client.subscribe("a");
    const b = client.subscribe("b");
    client.connect();
    await waitFor(() => a.state === "subscribed" && b.state === "subscribed", "subscribed");
    const sent: string[] = [];
    const until = Date.now() + 9000;
    while (Date.now() < until) {
      sent.push(await publish(port, { user, data: sent.length }));
      await new Promise((r) => setTimeout(r, 100));
    }
    sent.push(await barrier(port, user, all));
    expect(exactlyOnce(all, sent)).toBe(true);
    expect(states).toEqual(["connecting:0", "connected:0"]); // one socket throughout
    expect(calls).toBeGreaterThanOrEqual(5);
    expect(b.state).toBe("unsubscribed");
    expect(errors).toEqual(["revoked:b"]);
    expect(a.state).toBe("subscribed");
    client.close();
  }, 30_000);

  it("a channel outside the token's rights on 2 s subscription tokens from getToken: renewed in band, every message once", async () => {
    const user = `js-${rand()}`;
    const channel = `doc:${rand()}`;
    const token = sign({ sub: user, exp: Math.floor(Date.now() / 1000) + 600, channels: [] });
    const asked: string[] = [];
    const getToken = async (name: string) => {
      asked.push(name);
      return sign({ sub: user, channel: name, exp: Math.floor(Date.now() / 1000) + 2 });
    };
    const client = new Clarion(`ws://127.0.0.1:${port}/ws`, { token, WebSocket: WS, backoff: fast, refreshMargin: 1000 });
    const errors: string[] = [];
    client.on("error", (e) => errors.push(`${e.code}:${e.channel ?? ""}`));
    const doc = client.subscribe(channel, { getToken });
    const seen = received(doc);
    const forged = client.subscribe(`${channel}x`, { token: sign({ sub: user, channel, exp: Math.floor(Date.now() / 1000) + 60 }) });
    client.connect();
    await waitFor(() => doc.state === "subscribed" && forged.state === "unsubscribed", "subscribed, and the other refused");
    const sent: string[] = [];
    const until = Date.now() + 6000;
    while (Date.now() < until) {
      sent.push(await publish(port, { channel, data: sent.length }));
      await new Promise((r) => setTimeout(r, 100));
    }
    await waitFor(() => seen.length >= sent.length, `${sent.length} messages`);
    expect(exactlyOnce(seen, sent)).toBe(true);
    expect(asked.length).toBeGreaterThanOrEqual(4); // three 2 s tokens renewed in band
    expect(doc.state).toBe("subscribed");
    expect(errors).toEqual([`forbidden:${channel}x`]);
    client.close();
  }, 30_000);
});

describe("a server that accepts TCP and never answers the upgrade (ws in Node)", () => {
  it("the welcome timeout drops the socket and retries; close() while connecting throws nothing", async () => {
    const held: Socket[] = [];
    const server = createServer((s) => held.push(s));
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const { port } = server.address() as { port: number };
    try {
      const client = new Clarion(`ws://127.0.0.1:${port}/ws`, { user: "u", WebSocket: WS, timeout: 200, backoff: fast });
      const states: string[] = [];
      client.on("state", (e) => states.push(`${e.state}:${e.code}:${e.reason}`));
      client.connect();
      await waitFor(() => held.length >= 2, "a second attempt after the welcome timeout", 5_000);
      expect(states).toEqual(["connecting:0:connect"]);
      client.close(); // the socket is still connecting
      await new Promise((r) => setTimeout(r, 100)); // an unhandled 'error' would fail the run here
      expect(client.state).toBe("disconnected");
    } finally {
      for (const s of held) s.destroy();
      server.close();
    }
  }, 10_000);
});

/**
 * A corporate proxy in front of the pods that refuses the WebSocket upgrade (403) and passes
 * plain HTTP on: streams to the pod `target` names, and POST /emulation to `postTarget`, so
 * that every posted frame reaches the stream's pod through the broker.
 */
class NoWebSocketProxy {
  target = 0;
  postTarget = 0;
  upgrades = 0;
  private server: HttpServer | null = null;

  async start(): Promise<number> {
    this.server = createHttpServer((req, res) => {
      const port = req.method === "POST" ? this.postTarget : this.target;
      const upstream = httpRequest(
        { host: "127.0.0.1", port, path: req.url, method: req.method, headers: req.headers },
        (answer) => {
          res.writeHead(answer.statusCode ?? 502, answer.headers);
          answer.pipe(res);
          answer.on("close", () => answer.complete || res.destroy()); // the pod died mid-stream

        },
      );
      upstream.on("error", () => {
        if (!res.headersSent) res.writeHead(502).end();
        else res.destroy();
      });
      res.on("close", () => upstream.destroy());
      req.pipe(upstream);
    });
    this.server.on("upgrade", (_req, socket: Socket) => {
      this.upgrades++;
      socket.end("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    });
    await new Promise<void>((r) => this.server!.listen(0, "127.0.0.1", r));
    return (this.server.address() as { port: number }).port;
  }

  stop(): void {
    this.server?.closeAllConnections();
    this.server?.close();
  }
}

describe("behind a proxy that refuses WebSocket: the client falls back to SSE (RabbitMQ)", () => {
  const vhost = new Vhost();
  let a: Gateway;
  let b: Gateway;
  let pa: number;
  let pb: number;
  const proxy = new NoWebSocketProxy();
  let port: number;
  const pod = (name: string, p: number) =>
    new Gateway(
      name,
      ["serve", "--host", "127.0.0.1", "--port", String(p), "--pod-name", name, "--auth", "none", "--allow-client-publish", "--amqp-url", vhost.amqpUrl, "--drain-delay", "0", "--drain-window", "0.2", "--no-demo"],
      [p],
    );
  /** b forwards posted frames to a (presence knows a): a bogus connection of a's is a's 404. */
  const forwarding = () =>
    waitFor(async () => {
      const b64 = (s: string) => Buffer.from(s).toString("base64url");
      const r = await fetch(`http://127.0.0.1:${pb}/emulation`, {
        method: "POST",
        body: JSON.stringify({ session: `${b64(a.name)}.${b64("nobody")}.x`, frames: ["ping"] }),
      });
      return r.status === 404 && ((await r.json()) as { message: string }).message.includes("no open stream");
    }, "b to know a");

  beforeAll(async () => {
    await vhost.create();
    pa = await freePorts(1);
    pb = await freePorts(1);
    a = pod(`js-sa-${rand()}`, pa).start();
    b = pod(`js-sb-${rand()}`, pb).start();
    await Promise.all([a.ready(), b.ready()]);
    await forwarding();
    proxy.target = pa;
    proxy.postTarget = pb;
    port = await proxy.start();
  }, 40_000);
  afterAll(async () => {
    proxy.stop();
    await a?.kill();
    await b?.kill();
    await vhost.delete();
  });

  it("every message once across a pod SIGKILL, frames posted through the other pod, SSE kept", async () => {
    const user = `js-${rand()}`;
    const channel = `orders.${rand()}`;
    const client = new Clarion(`ws://127.0.0.1:${port}/ws`, { user, WebSocket: WS, backoff: fast });
    const all = received(client);
    const sub = client.subscribe(channel);
    const onChannel = received(sub);
    const recovered: RecoveredEvent[] = [];
    const subRecovered: RecoveredEvent[] = [];
    const resyncs: unknown[] = [];
    const errors: unknown[] = [];
    client.on("recovered", (e) => recovered.push(e));
    client.on("resync", (e) => resyncs.push(e));
    client.on("error", (e) => errors.push(e));
    sub.on("recovered", (e) => subRecovered.push(e));
    sub.on("resync", (e) => resyncs.push(e));
    const states: string[] = [];
    client.on("state", (e) => states.push(`${e.state}:${e.code}:${client.transport}`));
    client.connect();
    await waitFor(() => sub.state === "subscribed", "subscribed over SSE");
    expect(client.transport).toBe("sse");
    expect(client.info?.pod).toBe(a.name);
    expect(proxy.upgrades).toBe(1);

    const before = [await publish(pb, { channel, data: 1 }), await publish(pb, { user, data: 2 })];
    before.push(await client.publish(channel, { mine: true })); // posted to b, run on a
    await waitFor(() => all.length === 3, "the first three messages");
    await a.kill();
    await waitFor(() => client.state === "connecting", "the client to notice the dead pod");
    const during = [await publish(pb, { channel, data: 3 }), await publish(pb, { user, data: 4 }), await publish(pb, { channel, data: 5 })];
    a.start();
    await a.ready();
    await forwarding();
    await waitFor(() => sub.state === "subscribed" && all.length >= 6, "the reconnect and the replay", 20_000);
    const after = [await publish(pb, { channel, data: 6 })];
    await waitFor(() => all.length >= 7, "a live message after the replay");
    after.push(await barrier(pb, user, all));

    expect(exactlyOnce(all, [...before, ...during, ...after])).toBe(true);
    expect(onChannel).toHaveLength(5);
    expect(states[0]).toBe("connecting:0:websocket");
    expect(states.slice(1)).toEqual(["connected:0:sse", "connecting:1006:sse", "connected:0:sse"]);
    // since is the greatest id: the client's own publish, last of the three.
    expect(recovered).toEqual([{ recovered: true, missed: 1, since: before[2] }]);
    expect(subRecovered).toEqual([{ recovered: true, missed: 2, since: before[2] }]);
    expect(resyncs).toEqual([]);
    expect(errors).toEqual([]);
    expect(proxy.upgrades).toBe(1); // SSE was kept: no WebSocket tried again
    client.close();
  }, 60_000);

  it("NDJSON streaming: a draining pod's close frame (1001) brings the client back soon, and it recovers", async () => {
    const user = `js-${rand()}`;
    proxy.target = pb;
    const client = new Clarion(`ws://127.0.0.1:${port}/ws`, { user, transports: ["http_stream"], backoff: { ...fast, soon: 300 } });
    const all = received(client);
    const states: string[] = [];
    client.on("state", (e) => states.push(`${e.state}:${e.code}`));
    client.connect();
    await waitFor(() => client.state === "connected", "connected over NDJSON");
    expect(client.info?.pod).toBe(b.name);
    const sent = [await publish(pa, { user, data: 1 })];
    await waitFor(() => all.length === 1, "the first message");
    proxy.target = pa;
    proxy.postTarget = pa;
    const draining = b.terminate();
    await waitFor(() => states.includes("connecting:1001"), "the close frame");
    sent.push(await publish(pa, { user, data: 2 }));
    await waitFor(() => client.info?.pod === a.name && client.state === "connected", "the reconnect to a");
    await waitFor(() => all.length >= 2, "every message");
    sent.push(await barrier(pa, user, all));
    expect(exactlyOnce(all, sent)).toBe(true);
    expect(states).toEqual(["connecting:0", "connected:0", "connecting:1001", "connected:0"]);
    await draining;
    client.close();
  }, 40_000);
});
