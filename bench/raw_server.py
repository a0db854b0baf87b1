"""The raw limit: a bare ``websockets`` server that ``broadcast()``s each AMQP message.

Run as ``python -m bench.raw_server --port P --amqp-url URL``. It consumes its
own durable queue bound to a fanout exchange, with the prefetch and batched
acks of a Clarion pod, and hands each message body, already the exact frame,
to ``websockets.broadcast()`` for every open socket: no routing, no buffers,
no metrics. It is what the parts can do with nothing of a gateway around them.

With ``--coalesce`` it is a prototype of one more lever instead: the frames of
all messages that arrive in one event-loop iteration are joined and written to
each socket with one ``transport.write`` (one ``send()``), rather than one
write per message per socket.
"""

from __future__ import annotations

import argparse
import asyncio
import os

import aio_pika
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.protocol import State

EXCHANGE = "bench.raw"


def text_frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 1 << 16:
        return bytes((0x81, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + n.to_bytes(8, "big") + payload


async def run(host: str, port: int, amqp_url: str, name: str, coalesce: bool) -> None:
    conns: set[ServerConnection] = set()

    async def handler(ws: ServerConnection) -> None:
        conns.add(ws)
        try:
            await ws.send("hi")
            await ws.wait_closed()
        finally:
            conns.discard(ws)

    loop = asyncio.get_running_loop()
    pending: list[aio_pika.abc.AbstractIncomingMessage] = []

    acks: set[asyncio.Future[None]] = set()

    def flush() -> None:
        msg = pending[-1]
        pending.clear()
        fut = asyncio.ensure_future(msg.ack(multiple=True))
        acks.add(fut)
        fut.add_done_callback(acks.discard)

    frames: list[bytes] = []

    def write_frames() -> None:
        data = b"".join(frames)
        frames.clear()
        for ws in conns:
            if ws.state is State.OPEN:
                ws.transport.write(data)

    async def on_message(msg: aio_pika.abc.AbstractIncomingMessage) -> None:
        if coalesce:
            if not frames:
                loop.call_soon(write_frames)
            frames.append(text_frame(msg.body))
        else:
            broadcast(conns, msg.body.decode())
        if not pending:
            loop.call_soon(flush)
        pending.append(msg)

    conn = await aio_pika.connect(amqp_url)
    ch = await conn.channel()
    await ch.set_qos(prefetch_count=1024)
    ex = await ch.declare_exchange(EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True)
    q = await ch.declare_queue(f"bench.raw.{name}", durable=True)
    await q.bind(ex)
    await q.consume(on_message)
    async with serve(handler, host, port, compression=None, max_queue=16, backlog=4096):
        await asyncio.Future()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--amqp-url", required=True)
    p.add_argument("--name", default=str(os.getpid()))
    p.add_argument("--coalesce", action="store_true")
    args = p.parse_args()
    import uvloop

    uvloop.run(run(args.host, args.port, args.amqp_url, args.name, args.coalesce))


if __name__ == "__main__":
    main()
