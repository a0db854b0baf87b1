"""A bench-only launcher of one Clarion pod with other uvicorn settings.

``clarion serve`` is what the benchmark measures by default; this launcher
builds the same pod (``clarion.gateway.Gateway``) with the same uvicorn settings
(``clarion.server.uvicorn_config``) but lets the benchmark swap the
WebSocket implementation (``websockets``, ``websockets-sansio``, ``wsproto``),
so alternatives are measured without touching the shipped code. ``--gc``
also tunes the garbage collector (``gc.freeze()`` after start-up, and a
gen-0 threshold of 50,000 allocations instead of 700): with thousands of
sockets, every full collection walks every object the pod holds.
``--no-socket-metrics`` skips the delivery metrics (before 5bdcb81 two
updates per socket per message; since, one latency observation per message and
the counts of the slow path): what they still cost.
"""

from __future__ import annotations

import argparse
import gc

import uvicorn

from clarion.config import Settings
from clarion.gateway import Gateway
from clarion.server import uvicorn_config


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
        "--no-socket-metrics",
        action="store_true",
        help="skip the delivered/latency metrics (what they cost)",
    )
    args = p.parse_args()
    if args.no_socket_metrics:
        from clarion.writer import SocketWriter

        SocketWriter._sent = lambda self, out: None  # type: ignore[method-assign]
        try:
            from clarion.metrics import Deliveries  # since 5bdcb81: once per message
        except ImportError:
            pass
        else:
            Deliveries.live = lambda self, ts_ms: None  # type: ignore[method-assign]
    settings = Settings(
        pod_name=args.pod_name,
        amqp_url=args.amqp_url,
        auth="none",
        compression=args.compression,
        drain_delay=0,
        drain_window=0,
        host=args.host,
        port=args.port,
        log_level="warning",
    )
    gateway = Gateway(settings)
    config = uvicorn_config(gateway)
    config.ws = args.ws
    import uvloop

    if args.gc:
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
    uvloop.run(uvicorn.Server(config).serve())


if __name__ == "__main__":
    main()
