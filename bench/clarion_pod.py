"""A bench-only launcher of one Clarion pod with other uvicorn settings.

``clarion serve`` is what the benchmark measures by default; this launcher
builds the same app (``clarion.app.Gateway`` / ``create_app``) with the same
uvicorn settings as ``clarion.server`` but lets the benchmark swap the
WebSocket implementation (``websockets``, ``websockets-sansio``, ``wsproto``),
so alternatives are measured without touching the shipped code. ``--gc``
also tunes the garbage collector (``gc.freeze()`` after start-up, and a
gen-0 threshold of 50,000 allocations instead of 700): with thousands of
sockets, every full collection walks every object the pod holds.
``--transient`` publishes non-persistent messages, so a publisher confirm
does not wait for the pod queues' disk write (the history stream still
stores every message). ``--no-socket-metrics`` skips the two metric updates
made per socket per message: an upper bound of what counting once per message
saves.
"""

from __future__ import annotations

import argparse
import gc

import uvicorn

from clarion.app import Gateway, create_app
from clarion.config import Settings


def _transient_messages() -> None:
    """Publish with delivery mode 1: no disk write before the broker confirms."""
    import aio_pika

    from clarion.broker import rabbitmq

    persistent = rabbitmq.envelope_to_message

    def transient(env: object) -> aio_pika.Message:
        msg = persistent(env)  # type: ignore[arg-type]
        msg.delivery_mode = aio_pika.DeliveryMode.NOT_PERSISTENT
        return msg

    rabbitmq.envelope_to_message = transient


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pod-name", required=True)
    p.add_argument("--amqp-url", required=True)
    p.add_argument("--ws", default="auto")
    p.add_argument("--compression", action="store_true")
    p.add_argument("--gc", action="store_true", help="gc.freeze() + gen-0 threshold 50,000")
    p.add_argument(
        "--transient",
        action="store_true",
        help="publish pod-queue messages non-persistent (the history stream still stores them)",
    )
    p.add_argument(
        "--no-socket-metrics",
        action="store_true",
        help="skip the per-socket delivered/latency metrics (the most per-message counting saves)",
    )
    args = p.parse_args()
    if args.transient:
        _transient_messages()
    if args.no_socket_metrics:
        from clarion.hub import Connection

        Connection._sent = lambda self, ts_ms: None  # type: ignore[method-assign]
    settings = Settings(
        pod_name=args.pod_name,
        amqp_url=args.amqp_url,
        auth="none",
        compression=args.compression,
        drain_delay=0,
        drain_window=0,
    )
    gateway = Gateway(settings)
    config = uvicorn.Config(
        create_app(gateway),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        ws=args.ws,
        ws_max_size=settings.max_frame_bytes,
        ws_per_message_deflate=settings.compression,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        timeout_graceful_shutdown=3,
        lifespan="on",
        proxy_headers=True,
    )
    import uvloop

    if args.gc:
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
    uvloop.run(uvicorn.Server(config).serve())


if __name__ == "__main__":
    main()
