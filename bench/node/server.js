// One pod of the Node peer: socket.io 4.8 on the WebSocket transport only, the Redis
// adapter on a key prefix of this run's own (the Redis is shared: nothing is flushed).
// Users join a room named after them (?user=), as sio_server.py does; the backend
// publishes with @socket.io/redis-emitter (emitter.js). GET /healthz answers once the
// adapter's subscriptions are up.
//
//   node server.js --port P --redis redis://127.0.0.1:6379 --key PREFIX
"use strict";

const http = require("http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

async function main() {
  const port = Number(arg("port"));
  const url = arg("redis", "redis://127.0.0.1:6379");
  const key = arg("key", "socket.io");
  let ready = false;
  const server = http.createServer((req, res) => {
    if (req.url === "/healthz") {
      res.writeHead(ready ? 200 : 503, { "content-type": "application/json" });
      res.end(JSON.stringify({ ready }));
      return;
    }
    res.writeHead(404);
    res.end();
  });
  const pub = createClient({ url });
  const sub = pub.duplicate();
  await Promise.all([pub.connect(), sub.connect()]);
  // As its users run it: WebSocket only (no long-polling first), no per-message deflate
  // (the default), the default ping interval and buffer sizes.
  const io = new Server(server, {
    transports: ["websocket"],
    cors: { origin: "*" },
    adapter: createAdapter(pub, sub, { key }),
  });
  io.on("connection", (socket) => {
    const user = socket.handshake.query.user;
    if (typeof user === "string") socket.join(user);
  });
  server.listen(port, "127.0.0.1", () => {
    ready = true;
  });
  const stop = () => {
    io.close();
    Promise.allSettled([pub.quit(), sub.quit()]).then(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
