"""The pod's ASGI app: wiring only.

``/ws`` goes straight to the socket session (session.py) and ``POST
/api/publish`` straight to the publish handler (api.py), both as plain ASGI;
everything else goes through Starlette's routing to api.py's endpoints.

The way of a message: ``POST /api/publish`` (api.py) -> ``Gateway.publish``
(gateway.py) -> the broker (broker/) -> every pod's ``Gateway.on_message`` ->
``Hub.deliver`` (hub.py) -> each matching socket's ``SocketWriter``
(writer.py) -> its transport (transport.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Literal

from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from . import api
from .gateway import Gateway
from .session import websocket_session
from .streams import Streams

_NOT_ALLOWED = JSONResponse(
    {"error": "method_not_allowed", "message": "use POST"},
    status_code=405,
    headers={"Allow": "POST"},
)


#: Which endpoints one listening port serves: both surfaces, or one of them
#: (``--api-port``: the internal API on a port of its own, as Centrifugo does).
Surface = Literal["all", "public", "internal"]


class GatewayApp:
    """``/ws`` and ``POST /api/publish`` as plain ASGI, the rest through Starlette."""

    def __init__(self, gateway: Gateway, http: Starlette, surface: Surface) -> None:
        self.gateway = gateway
        self.http = http
        self.state = http.state
        self.ws = surface != "internal"
        self.api = surface != "public"
        self.streams = Streams(gateway)
        #: ``/sse``, ``/stream``, ``/emulation`` (what --sse and --http-stream leave on).
        self.stream_paths = self.streams.paths if self.ws else frozenset()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] == "/ws" and self.ws:
            await websocket_session(self.gateway, scope, receive, send)
        elif scope["type"] == "http" and scope["path"] in self.stream_paths:
            await self.streams(scope, receive, send)
        elif scope["type"] == "http" and scope["path"] == "/api/publish" and self.api:
            if scope["method"] == "POST":
                await api.publish_asgi(self.gateway, scope, receive, send)
            else:
                await _NOT_ALLOWED(scope, receive, send)
        else:
            await self.http(scope, receive, send)


def create_app(gateway: Gateway, surface: Surface = "all") -> GatewayApp:
    """The app of one listening port. The public (or only) one runs the pod's lifespan."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    routes = [Route("/healthz", api.healthz), Route("/readyz", api.readyz)]
    if surface != "internal":
        routes += [Route("/", api.index), Route("/clarion.js", api.client_js)]
    if surface != "public":
        routes += [
            Route("/api/history", api.history),
            Route("/api/presence", api.presence),
            Route("/api/presence/stats", api.presence_stats),
            Route("/api/disconnect", api.disconnect, methods=["POST"]),
            Route("/admin/shed", api.shed, methods=["POST"]),
            Route("/metrics", api.metrics),
        ]
    http = Starlette(routes=routes, lifespan=lifespan if surface != "internal" else None)
    http.state.gateway = gateway
    return GatewayApp(gateway, http, surface)
