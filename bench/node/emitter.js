// The Node peer's backend: publishes with @socket.io/redis-emitter from a process of its
// own, as teams do from their services. Commands arrive as JSON lines on stdin; each is
// answered with one JSON line on stdout once every emit has reached Redis (a PING after
// them: the client pipelines in order; emit() does not return its promise).
//
//   node emitter.js --redis URL --key PREFIX --clock OFFSET
//   {"cmd": "burst", "count": 500, "pad": 200}                     broadcasts, back to back
//   {"cmd": "burst", "count": 2000, "pad": 200, "target": "user", "users": 400}
//   {"cmd": "paced", "users": 400, "rate": 500, "duration": 4, "pad": 200, "seed": 1}
//
// OFFSET is Python's time.time() - time.monotonic(): hrtime reads the monotonic clock, so
// OFFSET + hrtime is the load generator's wall clock (every payload's "t").
"use strict";

const readline = require("readline");
const { Emitter } = require("@socket.io/redis-emitter");
const { createClient } = require("redis");

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

const offset = Number(arg("clock", "0"));
const now = () => offset + Number(process.hrtime.bigint()) / 1e9;
const sleep = (s) => new Promise((r) => setTimeout(r, Math.max(0, s * 1000)));

// The same pseudo-random user sequence for every repeat of a seed (mulberry32).
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

async function burst(io, client, { count, pad, target, users, seed }) {
  const p = "x".repeat(pad);
  const rand = rng(seed || 1);
  const first = now();
  for (let i = 0; i < count; i++) {
    if (target === "user") io.to(`u${Math.floor(rand() * users)}`).emit("m", { t: now(), s: i, p });
    else io.emit("m", { t: now(), s: i, p });
  }
  const last = now();
  await client.ping();
  return { sent: count, first, last };
}

async function paced(io, client, { users, rate, duration, pad, seed }) {
  const p = "x".repeat(pad);
  const rand = rng(seed || 1);
  const total = Math.round(rate * duration);
  const start = now() + 0.05;
  for (let i = 0; i < total; i++) {
    const due = start + i / rate;
    const pause = due - now();
    if (pause > 0.0005) await sleep(pause);
    const user = `u${Math.floor(rand() * users)}`;
    io.to(user).emit("m", { t: due, s: i, p });
  }
  const last = now();
  await client.ping();
  return { sent: total, first: start, last };
}

async function main() {
  const client = createClient({ url: arg("redis", "redis://127.0.0.1:6379") });
  await client.connect();
  const io = new Emitter(client, { key: arg("key", "socket.io") });
  process.stdout.write(JSON.stringify({ ready: true }) + "\n");
  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    if (!line.trim()) continue;
    const cmd = JSON.parse(line);
    if (cmd.cmd === "quit") break;
    const out = cmd.cmd === "burst" ? await burst(io, client, cmd) : await paced(io, client, cmd);
    process.stdout.write(JSON.stringify(out) + "\n");
  }
  await client.quit();
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
