// Real gateway processes for the end-to-end test: `clarion dev` and `clarion serve` from the
// project's venv, on loopback ports, killed when the test ends.
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, openSync, readFileSync } from "node:fs";
import { connect, createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

const REPO = new URL("../../../", import.meta.url).pathname;
export const CLARION = join(REPO, ".venv/bin/clarion");
const RABBIT = process.env.CLARION_TEST_RABBIT_HOST ?? "127.0.0.1";
const MGMT = process.env.CLARION_TEST_MGMT_URL ?? `http://${RABBIT}:15672`;
const MGMT_AUTH = "Basic " + Buffer.from("guest:guest").toString("base64");

/** Polls `predicate` until it is truthy; fails after `timeout` ms saying what it waited for. */
export async function waitFor<T>(predicate: () => T | Promise<T>, what: string, timeout = 10_000): Promise<T> {
  const deadline = Date.now() + timeout;
  let last: unknown;
  for (;;) {
    try {
      const value = await predicate();
      if (value) return value;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}${last ? ` (${last})` : ""}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once("error", () => resolve(false));
    server.listen(port, "127.0.0.1", () => server.close(() => resolve(true)));
  });
}

/** `count` consecutive free loopback ports. */
export async function freePorts(count: number): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const first = 20_000 + Math.floor(Math.random() * 30_000);
    let ok = true;
    for (let i = 0; i < count && ok; i++) ok = await portFree(first + i);
    if (ok) return first;
  }
  throw new Error("no free ports");
}

export class Gateway {
  private proc: ChildProcess | null = null;
  readonly log: string;

  constructor(
    readonly name: string,
    readonly args: string[],
    readonly ports: number[],
  ) {
    this.log = join(tmpdir(), `clarion-js-e2e-${name}-${ports[0]}.log`);
  }

  start(): this {
    if (!existsSync(CLARION)) throw new Error(`${CLARION} is missing: run scripts/setup.sh dev`);
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("CLARION_")));
    const out = openSync(this.log, "a");
    this.proc = spawn(CLARION, this.args, { env, stdio: ["ignore", out, out] });
    return this;
  }

  async ready(timeout = 20_000): Promise<this> {
    await waitFor(
      async () => {
        if (this.proc?.exitCode !== null) throw new Error(`${this.name} exited: ${this.tail()}`);
        const codes = await Promise.all(this.ports.map((p) => fetch(`http://127.0.0.1:${p}/readyz`).then((r) => r.status)));
        return codes.every((c) => c === 200);
      },
      `${this.name} ready`,
      timeout,
    );
    return this;
  }

  /** SIGKILL: no drain, no close frames; the client sees its sockets drop. */
  async kill(): Promise<void> {
    const proc = this.proc;
    this.proc = null;
    if (!proc || proc.exitCode !== null) return;
    const exited = new Promise((r) => proc.once("exit", r));
    proc.kill("SIGKILL");
    await exited;
  }

  /** SIGTERM: the pod drains, closing its sockets with 1001, and exits. */
  async terminate(timeout = 15_000): Promise<void> {
    const proc = this.proc;
    this.proc = null;
    if (!proc || proc.exitCode !== null) return;
    const exited = new Promise((r) => proc.once("exit", r));
    proc.kill("SIGTERM");
    await waitFor(() => proc.exitCode !== null || proc.signalCode !== null, `${this.name} to drain and exit`, timeout);
    await exited;
  }

  tail(): string {
    try {
      return readFileSync(this.log, "utf8").slice(-3000);
    } catch {
      return "";
    }
  }
}

/** POST /api/publish on a pod; the 202's id. */
export async function publish(port: number, body: object): Promise<string> {
  const r = await fetch(`http://127.0.0.1:${port}/api/publish`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  if (r.status !== 202) throw new Error(`publish: ${r.status} ${await r.text()}`);
  return ((await r.json()) as { id: string }).id;
}

/** A RabbitMQ vhost of its own, so this test never sees another's queues. */
export class Vhost {
  readonly name = `clarion-js-e2e-${Math.random().toString(16).slice(2, 10)}`;

  get amqpUrl(): string {
    return `amqp://guest:guest@${RABBIT}:5672/${encodeURIComponent(this.name)}`;
  }

  private async api(method: string, path: string, body?: object): Promise<void> {
    const r = await fetch(`${MGMT}${path}`, {
      method,
      headers: { authorization: MGMT_AUTH, "content-type": "application/json" },
      body: body && JSON.stringify(body),
    });
    if (!r.ok && r.status !== 404) throw new Error(`${method} ${path}: ${r.status}`);
  }

  async create(): Promise<this> {
    const q = encodeURIComponent(this.name);
    try {
      await this.api("PUT", `/api/vhosts/${q}`);
    } catch (error) {
      throw new Error(`RabbitMQ's management API at ${MGMT} is needed (scripts/services.sh starts it): ${error}`);
    }
    await this.api("PUT", `/api/permissions/${q}/guest`, { configure: ".*", write: ".*", read: ".*" });
    return this;
  }

  async delete(): Promise<void> {
    await this.api("DELETE", `/api/vhosts/${encodeURIComponent(this.name)}`).catch(() => {});
  }
}

/**
 * A TCP load balancer in front of the pods: each new connection goes to the
 * port `target` names at that moment, as a Kubernetes Service would send a
 * reconnect to a pod that is still ready.
 */
export class Balancer {
  target = 0;
  private server: Server | null = null;

  async start(): Promise<number> {
    this.server = createServer((client) => {
      const upstream = connect(this.target, "127.0.0.1");
      client.pipe(upstream).pipe(client);
      client.on("error", () => upstream.destroy());
      upstream.on("error", () => client.destroy());
      client.on("close", () => upstream.destroy());
      upstream.on("close", () => client.destroy());
    });
    await new Promise<void>((r) => this.server!.listen(0, "127.0.0.1", r));
    return (this.server.address() as { port: number }).port;
  }

  stop(): void {
    this.server?.close();
  }
}
