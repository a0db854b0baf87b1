"""The python-socketio peer: an ASGI app under uvicorn with ``AsyncAioPikaManager``.

Run as ``python -m bench.sio_server --port P --amqp-url URL``; one process is
one "pod", as a Clarion pod is. Users join a room named after them (``?user=``)
so targeted messages go to ``to=<user>``. ``POST /api/publish`` takes the same
body as Clarion's publish API (``{"user": ID, "data": ...}`` or
``{"broadcast": true, "data": ...}``) and calls ``sio.emit``, which delivers
locally and publishes to the other pods through RabbitMQ, so S2 goes through
an HTTP publish on both systems. uvicorn runs with the same settings as a
Clarion pod (uvloop, httptools, uvicorn's default ``auto`` WebSocket implementation).
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any
from urllib.parse import parse_qs

import socketio
import uvicorn

EVENT = "m"


def build(amqp_url: str) -> Any:
    mgr = socketio.AsyncAioPikaManager(amqp_url, channel="socketio")
    sio = socketio.AsyncServer(
        async_mode="asgi", client_manager=mgr, cors_allowed_origins="*", logger=False
    )

    @sio.event
    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        qs = parse_qs(environ.get("QUERY_STRING", ""))
        user = qs.get("user", ["anon"])[0]
        await sio.enter_room(sid, user)

    async def api(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:
            msg = await receive()
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
        status, out = 404, b'{"error":"not_found"}'
        if scope["path"] == "/healthz":
            status, out = 200, b'{"status":"ok"}'
        elif scope["path"] == "/api/publish" and scope["method"] == "POST":
            obj = json.loads(body)
            room = obj.get("user") or obj.get("channel")
            await sio.emit(EVENT, obj["data"], to=room)
            status, out = 202, b'{"ok":true}'
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(out)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": out})

    async def startup() -> None:
        # python-socketio starts its broker listener on the first connection;
        # start it now so the pod's queue is bound before the benchmark publishes.
        sio.manager_initialized = True
        sio.manager.initialize()

    return socketio.ASGIApp(sio, other_asgi_app=api, on_startup=startup)


class _ShowBrokerError(logging.Filter):
    """AsyncAioPikaManager puts the exception in ``extra``; show it in the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = getattr(record, "rabbitmq_exception", None)
        if exc is not None:
            record.msg = f"{record.msg} ({exc})"
        return True


def main() -> None:
    handler = logging.StreamHandler()
    handler.addFilter(_ShowBrokerError())
    logging.getLogger("socketio").addHandler(handler)
    logging.getLogger("socketio").propagate = False
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--amqp-url", required=True)
    p.add_argument("--compression", action="store_true")
    args = p.parse_args()
    uvicorn.run(
        build(args.amqp_url),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        ws="auto",
        ws_per_message_deflate=args.compression,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        log_level="warning",
        access_log=False,
        lifespan="on",
        backlog=4096,
    )


if __name__ == "__main__":
    main()
