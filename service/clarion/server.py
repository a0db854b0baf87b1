"""Running pods under uvicorn, with Clarion's own signal handling.

uvicorn installs its own SIGTERM handler per server; Clarion replaces it so that
SIGTERM drains first (readiness 503 at once, then closes spread over a window)
and so that several servers in one process (``clarion dev``) stop together.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Iterator

import uvicorn

from . import disconnects, logs
from .app import Surface, create_app
from .gateway import Gateway
from .transport import websocket_protocol

log = logging.getLogger("clarion.server")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # signals are handled by run_pods


def uvicorn_config(gateway: Gateway, surface: Surface | None = None) -> uvicorn.Config:
    """Clarion's uvicorn settings for one pod's public (or only) port.

    The benchmark and the tests use them too. ``surface="internal"`` is the
    internal API's port (``--api-port``).
    """
    s = gateway.settings
    if surface is None:
        surface = "public" if s.api_port else "all"
    internal = surface == "internal"
    return uvicorn.Config(
        create_app(gateway, surface),
        host=s.host,
        port=s.api_port if internal else s.port,
        log_level=s.log_level,
        log_config=logs.uvicorn_log_config(),
        access_log=False,
        # The sans-I/O websockets implementation: about 8 KiB less per socket than
        # the legacy one, and its send completes without suspending while the
        # transport is writable, which transport.py relies on (docs/performance.md).
        ws=websocket_protocol(),
        ws_max_size=s.max_frame_bytes,
        ws_per_message_deflate=s.compression,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        timeout_graceful_shutdown=3,
        lifespan="off" if internal else "on",
        proxy_headers=True,
    )


async def run_pods(gateways: list[Gateway]) -> None:
    servers = [_Server(uvicorn_config(gw)) for gw in gateways]
    servers += [_Server(uvicorn_config(gw, "internal")) for gw in gateways if gw.settings.api_port]
    loop = asyncio.get_running_loop()
    stopping = False
    tasks: list[asyncio.Task[None]] = []

    async def shutdown(drain: bool) -> None:
        if drain:
            await asyncio.gather(*(gw.drain() for gw in gateways))
        else:
            # Close frames now (1001): uvicorn would wait on an HTTP stream until its
            # graceful-shutdown timeout, then cancel it (an ASGI error, no close frame).
            for gw in gateways:
                gw.hub.close_all(disconnects.SHUTDOWN)
        for server in servers:
            server.should_exit = True

    def on_signal(sig: signal.Signals) -> None:
        nonlocal stopping
        if stopping:
            log.warning("second %s: exiting now", sig.name)
            for server in servers:
                server.force_exit = True
                server.should_exit = True
            return
        stopping = True
        # SIGTERM (Kubernetes) drains; Ctrl-C on a laptop does not wait.
        drain = sig == signal.SIGTERM
        if drain:
            log.info("SIGTERM received: draining")
        else:
            log.info("%s received: stopping now, without draining (SIGTERM drains)", sig.name)
        tasks.append(loop.create_task(shutdown(drain=drain)))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    # Start-up objects (modules, the app) never die: move them out of the
    # collector's way, and collect the young generation less often. Measured:
    # connect CPU -22%, connect storm 1,605 -> 2,038/s (docs/performance.md).
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    try:
        await asyncio.gather(*(server.serve() for server in servers))
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    if any(not server.started for server in servers):
        raise SystemExit(1)


def run(gateways: list[Gateway]) -> None:
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run  # type: ignore[assignment]
    runner(run_pods(gateways))
