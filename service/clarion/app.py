"""One gateway pod as a Starlette app.

``Gateway`` holds the pod's state (settings, broker, hub, metrics); ``create_app``
wires it to routes. Nothing is module-global, so several pods can share one
process (``clarion dev``) and tests build as many as they like.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Mapping
from importlib import resources
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.datastructures import Headers, QueryParams
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .auth import Authenticator, AuthError, Identity, JwtAuth, NoAuth, api_key_ok, token_ok
from .broker import Broker, BrokerUnavailable, MemoryExchange, create_broker
from .config import Settings
from .hub import (
    CLOSE_GOING_AWAY,
    CLOSE_POLICY,
    CLOSE_RESTART,
    CLOSE_TOO_BIG,
    CLOSE_TRY_AGAIN,
    Connection,
    Hub,
    raw_transport_of,
)
from .metrics import Metrics
from .protocol import (
    Envelope,
    ProtocolError,
    Target,
    encode,
    error_frame,
    is_message_id,
    parse_client_frame,
    parse_publish_body,
)

log = logging.getLogger("clarion.gateway")


class Gateway:
    """The state of one pod."""

    def __init__(
        self,
        settings: Settings,
        broker: Broker | None = None,
        memory_exchange: MemoryExchange | None = None,
    ) -> None:
        settings.validate()
        self.settings = settings
        self.pod_name = settings.pod_name
        self.metrics = Metrics()
        self.hub = Hub(self.metrics, self.pod_name)
        self.broker = broker or create_broker(
            settings.amqp_url,
            settings.pod_name,
            memory_exchange=memory_exchange,
            exchange=settings.exchange,
            queue_prefix=settings.queue_prefix,
            queue_max_length=settings.queue_max_length,
            queue_message_ttl_ms=settings.queue_message_ttl_ms,
            queue_expires_ms=settings.queue_expires_ms,
            history_max_age=settings.history_max_age,
            history_max_bytes=settings.history_max_bytes,
        )
        self.auth: Authenticator
        if settings.auth == "none":
            self.auth = NoAuth()
        else:
            self.auth = JwtAuth(
                settings.jwt_secret,
                settings.jwt_public_key,
                settings.jwks_file,
                settings.jwt_audience,
            )
        self.draining = False
        self.started = False
        self.broker.on_gap = self._on_gap

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        if self.settings.auth == "none":
            log.warning(
                "pod=%s AUTH IS OFF (--auth none): any client can claim any user id; "
                "use --auth jwt in production",
                self.pod_name,
            )
        await self.broker.start(self.hub.deliver, self._on_broker_state)
        self.metrics.broker_connected.set(1 if self.broker.ready else 0)
        self.started = True

    async def stop(self) -> None:
        self.hub.close_all(CLOSE_GOING_AWAY, "server shutting down", "drain")
        await self.broker.stop()

    def _on_broker_state(self, up: bool) -> None:
        self.metrics.broker_connected.set(1 if up else 0)
        log.info("pod=%s broker %s", self.pod_name, "up" if up else "DOWN")

    def _on_gap(self) -> None:
        # After a reconnect the pod could not read the history stream to fill
        # what its queue may have lost: its sockets reconnect (1012) and
        # recover with since= on their own.
        log.warning(
            "pod=%s could not catch up from history after a broker outage: "
            "asking %d sockets to reconnect and recover",
            self.pod_name,
            len(self.hub),
        )
        self.hub.close_all(CLOSE_RESTART, "broker outage: reconnect with since", "outage")

    @property
    def ready(self) -> bool:
        return self.started and not self.draining and self.broker.ready

    async def drain(self, delay: float | None = None, window: float | None = None) -> None:
        """Graceful shutdown: unready at once, wait, then close sockets spread over a window."""
        delay = self.settings.drain_delay if delay is None else delay
        window = self.settings.drain_window if window is None else window
        self.draining = True
        log.info(
            "pod=%s draining: %d sockets, delay %.1fs, window %.1fs",
            self.pod_name,
            len(self.hub),
            delay,
            window,
        )
        await asyncio.sleep(delay)
        conns = list(self.hub.connections.values())
        random.shuffle(conns)
        started = time.monotonic()
        for i, conn in enumerate(conns):
            due = started + window * i / max(1, len(conns))
            pause = due - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
            conn.close(CLOSE_GOING_AWAY, "draining: reconnect", "drain")
        # Give the close frames a moment to go out.
        deadline = time.monotonic() + 2.0
        while self.hub.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    # -- publishing ----------------------------------------------------------

    async def publish(self, items: list[tuple[Target, Any]], source: str) -> list[str]:
        envelopes = [Envelope.create(t, d) for t, d in items]
        await self.broker.publish(envelopes)
        for env in envelopes:
            self.metrics.published.labels(source=source, target=env.target.kind).inc()
        return [e.id for e in envelopes]

    # -- sockets -------------------------------------------------------------

    def shed(self, count: int) -> int:
        """Close up to ``count`` sockets with 1012 so the load balancer spreads them."""
        conns = [c for c in self.hub.connections.values() if not c.closing]
        random.shuffle(conns)
        for conn in conns[:count]:
            conn.close(CLOSE_RESTART, "rebalance: reconnect", "shed")
        return min(count, len(conns))


def _origin_allowed(headers: Mapping[str, str], allowed: list[str]) -> bool:
    if not allowed or "*" in allowed:
        return True
    origin = headers.get("origin")
    return origin is None or origin in allowed


class _RateLimiter:
    """Token bucket: ``rate`` frames per second, bursts up to twice that."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.burst = max(1.0, rate * 2)
        self.tokens = self.burst
        self.last = time.monotonic()

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


async def websocket_session(gw: Gateway, scope: Scope, receive: Receive, send: Send) -> None:
    """One client socket, as a plain ASGI handler.

    It bypasses Starlette's routing and WebSocket wrapper on purpose: their
    frames stay alive for the whole life of a socket, and at tens of thousands
    of sockets per pod every kilobyte per socket counts (docs/performance.md).
    """
    s = gw.settings
    headers = Headers(scope=scope)
    query = QueryParams(scope.get("query_string", b""))
    first = await receive()
    if first["type"] != "websocket.connect":
        return

    async def refuse(code: int, reason: str, metric: str) -> None:
        # Accept, then close with a code and reason the client can read: a
        # rejected handshake would only show the browser a bare 1006.
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": code, "reason": reason})
        gw.metrics.closed.labels(reason=metric).inc()

    if not _origin_allowed(headers, s.allowed_origins):
        return await refuse(CLOSE_POLICY, "origin not allowed", "policy")
    if gw.draining:
        return await refuse(CLOSE_GOING_AWAY, "draining: reconnect", "drain")
    if len(gw.hub) >= s.max_connections:
        gw.metrics.limit_hits.labels(limit="connections").inc()
        return await refuse(CLOSE_TRY_AGAIN, "pod full: try again later", "overload")
    try:
        ident: Identity = gw.auth.authenticate(query, headers)
    except AuthError as exc:
        log.info("pod=%s auth refused: %s", gw.pod_name, exc)
        return await refuse(CLOSE_POLICY, str(exc)[:120], "policy")

    await send({"type": "websocket.accept"})
    conn = Connection(
        gw.hub.new_id(),
        ident.user,
        send,
        gw.metrics,
        s.send_buffer_messages,
        s.send_buffer_bytes,
        raw=None if s.compression else raw_transport_of(send),
    )
    welcome: dict[str, Any] = {
        "type": "welcome",
        "pod": gw.pod_name,
        "conn": conn.id,
        "user": ident.user,
    }
    since = query.get("since")
    replayed: list[tuple[str, str, int, int]] = []
    bad_since = since is not None and not is_message_id(since)
    # Registered and paused before the welcome: live messages wait behind it
    # (and, with since, behind the replay), so nothing falls in between.
    gw.hub.add(conn)
    conn.pause()
    if since is not None and not bad_since:
        user = ident.user
        replay = await gw.broker.replay(
            since,
            lambda e: (
                e.target.kind == "broadcast" or (e.target.kind == "user" and e.target.name == user)
            ),
        )
        welcome["recovered"] = replay.complete
        welcome["missed"] = len(replay.messages)
        replayed = _replay_frames(replay.messages)
    elif bad_since:
        welcome["recovered"] = False
    conn.push(encode(welcome), 0)
    if bad_since:
        conn.push(error_frame("bad_field", "'since' must be a message id"), 0)
    conn.resume(replayed)
    expiry: asyncio.TimerHandle | None = None
    if ident.expires_at is not None:
        delay = max(0.0, ident.expires_at - time.time())
        expiry = asyncio.get_running_loop().call_later(
            delay, conn.close, CLOSE_POLICY, "token expired", "token_expired"
        )
    log.debug("pod=%s conn=%s user=%s connected", gw.pod_name, conn.id, ident.user)
    limiter = _RateLimiter(s.max_frames_per_second)
    reason = "client"
    try:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                if message.get("code") == CLOSE_TOO_BIG:  # the server refused an oversized frame
                    reason = "too_big"
                    gw.metrics.limit_hits.labels(limit="frame_size").inc()
                break
            if conn.closing:
                continue
            if not limiter.allow():
                gw.metrics.dropped.labels(reason="rate_limited").inc()
                gw.metrics.limit_hits.labels(limit="frame_rate").inc()
                conn.push(error_frame("rate_limited", "too many frames per second"), 0)
                continue
            text = message.get("text")
            if text is None:
                conn.push(error_frame("binary_unsupported", "binary frames are not supported"), 0)
                continue
            await _handle_text(gw, conn, ident, text)
    except Exception:
        reason = "error"
        log.exception("pod=%s conn=%s user=%s session error", gw.pod_name, conn.id, conn.user)
    finally:
        if expiry is not None:
            expiry.cancel()
        gw.hub.remove(conn, reason)
        await conn.stop()
        log.debug("pod=%s conn=%s closed (%s)", gw.pod_name, conn.id, conn.close_reason or reason)


async def _handle_text(gw: Gateway, conn: Connection, ident: Identity, text: str) -> None:
    s = gw.settings
    try:
        frame = parse_client_frame(text)
    except ProtocolError as exc:
        conn.push(error_frame(exc.code, exc.message), 0)
        return
    if frame.type == "ping":
        conn.push(encode({"type": "pong"}) if text.strip() != "ping" else "pong", 0)
        return
    if frame.type == "subscribe":
        assert frame.channel is not None
        if not ident.may_subscribe(frame.channel):
            conn.push(error_frame("forbidden", f"not allowed to subscribe to {frame.channel!r}"), 0)
            return
        if frame.channel not in conn.channels and len(conn.channels) >= s.max_subscriptions:
            gw.metrics.limit_hits.labels(limit="subscriptions").inc()
            conn.push(
                error_frame(
                    "too_many_subscriptions",
                    f"at most {s.max_subscriptions} subscriptions per socket",
                ),
                0,
            )
            return
        gw.hub.subscribe(conn, frame.channel)
        if frame.since is None:
            conn.push(encode({"type": "subscribed", "channel": frame.channel}), 0)
            return
        conn.pause()
        channel = frame.channel
        try:
            replay = await gw.broker.replay(
                frame.since, lambda e: e.target.kind == "channel" and e.target.name == channel
            )
        except Exception:
            conn.resume([])
            raise
        conn.push(
            encode(
                {
                    "type": "subscribed",
                    "channel": channel,
                    "recovered": replay.complete,
                    "missed": len(replay.messages),
                }
            ),
            0,
        )
        conn.resume(_replay_frames(replay.messages))
        return
    if frame.type == "unsubscribe":
        assert frame.channel is not None
        gw.hub.unsubscribe(conn, frame.channel)
        conn.push(encode({"type": "unsubscribed", "channel": frame.channel}), 0)
        return
    # publish frame or bare text
    if not s.allow_client_publish:
        conn.push(error_frame("forbidden", "client publishing is disabled on this gateway"), 0)
        return
    if frame.type == "text":
        items = [(Target("broadcast"), {"from": conn.user, "text": frame.raw_text})]
    else:
        assert frame.target is not None
        items = [(frame.target, frame.data)]
    try:
        ids = await gw.publish(items, source="client")
    except BrokerUnavailable:
        conn.push(error_frame("unavailable", "broker unavailable, message not sent"), 0)
        return
    conn.push(encode({"type": "published", "id": ids[0]}), 0)


def _replay_frames(messages: list[Envelope]) -> list[tuple[str, str, int, int]]:
    # ts -1: counted as delivered, kept out of the live latency histogram.
    return [(e.id, e.body.decode(), len(e.body), -1) for e in messages]


def _json_error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


async def _publish(gw: Gateway, headers: Headers, receive: Receive) -> tuple[int, dict[str, Any]]:
    """The publish API, as (status, JSON body): 202 only after the broker's confirm."""
    s = gw.settings

    def error(status: int, code: str, message: str) -> tuple[int, dict[str, Any]]:
        return status, {"error": code, "message": message}

    if not api_key_ok(headers, s.api_keys):
        return error(401, "unauthorized", "missing or invalid API key (Authorization: Bearer)")
    too_large = error(413, "too_large", f"body over {s.max_body_bytes} bytes")
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > s.max_body_bytes:
        gw.metrics.limit_hits.labels(limit="body_size").inc()
        return too_large
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return error(400, "bad_body", "client went away")
        body += message.get("body", b"")
        if len(body) > s.max_body_bytes:
            gw.metrics.limit_hits.labels(limit="body_size").inc()
            return too_large
        if not message.get("more_body", False):
            break
    try:
        items, batch = parse_publish_body(bytes(body))
    except ProtocolError as exc:
        return error(400, exc.code, exc.message)
    try:
        ids = await gw.publish(items, source="api")
    except BrokerUnavailable as exc:
        return error(503, "unavailable", f"broker unavailable: {exc}")
    return 202, ({"ids": ids} if batch else {"id": ids[0]})


async def publish_asgi(gw: Gateway, scope: Scope, receive: Receive, send: Send) -> None:
    """``POST /api/publish`` as a plain ASGI handler: the hot path of every publish
    skips Starlette's request, routing and response objects (docs/performance.md)."""
    status, payload = await _publish(gw, Headers(scope=scope), receive)
    body = orjson.dumps(payload)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def publish_endpoint(request: Request) -> Response:
    """The same API through Starlette (``GatewayApp`` routes POSTs to ``publish_asgi``)."""
    status, payload = await _publish(request.app.state.gateway, request.headers, request.receive)
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


async def shed_endpoint(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    if not token_ok(request.headers, gw.settings.admin_token):
        return _json_error(401, "unauthorized", "missing or invalid admin token")
    try:
        obj = orjson.loads(await request.body())
        count = obj["count"]
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ValueError
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return _json_error(400, "bad_body", 'body must be {"count": N} with N >= 0')
    shed = gw.shed(count)
    return JSONResponse({"shed": shed, "connections": len(gw.hub)})


async def metrics_endpoint(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    return Response(generate_latest(gw.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok", "pod": request.app.state.gateway.pod_name})


async def readyz(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    body = {
        "ready": gw.ready,
        "pod": gw.pod_name,
        "broker": gw.broker.ready,
        "draining": gw.draining,
        "connections": len(gw.hub),
    }
    return JSONResponse(body, status_code=200 if gw.ready else 503)


def _demo_page() -> str:
    return resources.files("clarion").joinpath("static/index.html").read_text()


async def index(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    if not gw.settings.demo:
        return JSONResponse({"service": "clarion", "pod": gw.pod_name})
    return HTMLResponse(_demo_page())


class GatewayApp:
    """The pod's ASGI app: ``/ws`` straight to the socket handler, the rest to Starlette."""

    def __init__(self, gateway: Gateway, http: Starlette) -> None:
        self.gateway = gateway
        self.http = http
        self.state = http.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] == "/ws":
            await websocket_session(self.gateway, scope, receive, send)
            return
        if (
            scope["type"] == "http"
            and scope["path"] == "/api/publish"
            and (scope["method"] == "POST")
        ):
            await publish_asgi(self.gateway, scope, receive, send)
            return
        await self.http(scope, receive, send)


def create_app(gateway: Gateway) -> GatewayApp:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/api/publish", publish_endpoint, methods=["POST"]),
            Route("/admin/shed", shed_endpoint, methods=["POST"]),
            Route("/metrics", metrics_endpoint),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
        ],
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    return GatewayApp(gateway, app)
