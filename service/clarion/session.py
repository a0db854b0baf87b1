"""One client socket's protocol, from the upgrade to the close (centrifuge's ``Client``).

A plain ASGI handler: it bypasses Starlette's routing and WebSocket wrapper on
purpose, because their frames stay alive for the whole life of a socket and at
tens of thousands of sockets per pod every kilobyte counts
(docs/performance.md). Messages reach the socket the other way, through the
hub (hub.py) and the socket's writer (writer.py).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any, TypeVar

from starlette.datastructures import Headers, QueryParams
from starlette.types import Receive, Scope, Send

from . import disconnects
from .auth import AuthError, Identity
from .broker import BindTimeout, BrokerUnavailable
from .disconnects import Disconnect
from .frames import Kind, Outgoing, control
from .gateway import Gateway
from .hub import SKEW_MS, Connection
from .protocol import (
    Envelope,
    ProtocolError,
    Publication,
    Target,
    channel_of,
    encode,
    error_frame,
    parse_client_frame,
    parse_since,
    position_id,
)
from .ratelimit import RateLimiter
from .replays import UNAVAILABLE, Replay
from .transport import transport_for
from .writer import SocketWriter

log = logging.getLogger("clarion.session")

T = TypeVar("T")


def origin_allowed(headers: Mapping[str, str], allowed: list[str]) -> bool:
    if not allowed or "*" in allowed:
        return True
    origin = headers.get("origin")
    return origin is None or origin in allowed


def recovery_fields(replay: Replay) -> dict[str, Any]:
    """``recovered``, ``missed`` and, when not recovered, ``reason`` (welcome, subscribed)."""
    fields: dict[str, Any] = {"recovered": replay.complete, "missed": len(replay.messages)}
    if not replay.complete:
        fields["reason"] = replay.reason or UNAVAILABLE
    return fields


def replay_frames(messages: list[Envelope]) -> list[Outgoing]:
    return [Outgoing(e.body.decode(), len(e.body), Kind.REPLAY, e.id, e.ts) for e in messages]


def admit(gw: Gateway, headers: Headers, query: QueryParams) -> Identity | Disconnect:
    """Who a new connection is, or why it is refused: the same checks on every transport
    (origin, drain, ``--max-connections``, admission, identity)."""
    if not origin_allowed(headers, gw.settings.allowed_origins):
        return disconnects.ORIGIN
    if gw.draining:
        return disconnects.DRAIN
    if len(gw.hub) >= gw.settings.max_connections:
        gw.metrics.limit_hits.labels(limit="connections").inc()
        return disconnects.POD_FULL
    if gw.admission is not None and not gw.admission.allow():
        gw.metrics.limit_hits.labels(limit="connect_rate").inc()
        return disconnects.ADMISSION
    try:
        return gw.auth.authenticate(query, headers)
    except AuthError as exc:
        log.info("pod=%s auth refused: %s", gw.pod_name, exc)
        if exc.expired:
            return disconnects.TOKEN_EXPIRED
        return disconnects.UNAUTHORIZED.with_reason(str(exc))


async def websocket_session(gw: Gateway, scope: Scope, receive: Receive, send: Send) -> None:
    """Accept (or refuse) one socket, then run its protocol until it closes."""
    s = gw.settings
    headers = Headers(scope=scope)
    query = QueryParams(scope.get("query_string", b""))
    first = await receive()
    if first["type"] != "websocket.connect":
        return
    ident = admit(gw, headers, query)
    if isinstance(ident, Disconnect):
        # Accept, then close with a code and reason the client can read: a
        # rejected handshake would only show the browser a bare 1006.
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": ident.code, "reason": ident.reason})
        gw.metrics.closed.labels(reason=ident.label).inc()
        return
    await send({"type": "websocket.accept"})
    transport = transport_for(send, gw.metrics.writes, raw_frames=not s.compression)
    writer = SocketWriter(transport, gw.metrics, s.send_buffer_messages, s.send_buffer_bytes)
    conn = Connection(gw.hub.new_id(), ident.user, writer)
    await Session(gw, conn, ident).run(receive, query.get("since"))


class Session:
    """The protocol of one accepted connection, whatever carries it.

    ``run`` is the whole life of a WebSocket; a stream (streams.py) overrides
    ``serve``, because its client frames come from POSTs (emulation.py), not
    from its own connection.
    """

    def __init__(self, gw: Gateway, conn: Connection, ident: Identity) -> None:
        self.gw = gw
        self.conn = conn
        self.ident = ident
        self.limiter = RateLimiter(gw.settings.max_frames_per_second)

    def reply(self, text: str) -> None:
        self.conn.send(control(text))

    def welcome_fields(self) -> dict[str, Any]:
        """What a transport adds to the welcome (a stream: its session token)."""
        return {}

    async def welcome(self, since: str | None, channels: Sequence[str] = ()) -> bool:
        """Route the user (and ``channels``) here, replay what it missed, welcome it;
        False if it was closed.

        A stream names its channels in its request and resumes from one id: every
        replay is read before any is sent, and they go out merged in publish order,
        so the last id the client receives is where it resumes.
        """
        gw, conn, ident = self.gw, self.conn, self.ident
        welcome: dict[str, Any] = {
            "type": "welcome",
            "pod": gw.pod_name,
            "conn": conn.id,
            "user": ident.user,
            **self.welcome_fields(),
        }
        refused: ProtocolError | None = None
        if since is not None:
            try:
                since = parse_since(since)
            except ProtocolError as exc:
                refused, since = exc, None
                welcome.update(recovered=False, reason="bad_since")
        # Held before the welcome: live messages wait behind it (and, with
        # since, behind the replay), so nothing falls in between.
        conn.hold()
        # With routed delivery, the user's messages reach this pod only once the
        # broker confirmed its binding: the welcome (and the replay) come after.
        target = Target("user", ident.user)
        if await self.until_closed(self.routed(target)) is None:
            return False
        welcome["position"] = position = position_id(int(time.time() * 1000) - SKEW_MS)
        answers: list[dict[str, Any] | str] = []
        joined: list[dict[str, Any]] = []
        for channel in channels:
            error = await self.until_closed(self.join(channel))
            if conn.closing:
                return False
            if error is None:
                joined.append(self.subscribed(channel))
                answers.append(joined[-1])
            else:
                answers.append(error)
        replayed: list[Outgoing] = []
        cursor = position
        if since is not None:
            replays = await self.until_closed(self.replays(since, target, joined))
            if replays is None:
                return False
            if any(not r.complete and r.reason == UNAVAILABLE for r in replays):
                # Nothing is skipped: the client comes back later with the same since.
                conn.close(disconnects.UNRECOVERED)
                return False
            welcome.update(recovery_fields(replays[0]))
            for subscribed, replay in zip(joined, replays[1:], strict=True):
                subscribed.update(recovery_fields(replay))
            if all(r.complete for r in replays):
                cursor = since
            if len(replays) == 1:
                replayed = replay_frames(replays[0].messages)
            else:
                # Stable: each replay keeps its own order.
                merged = heapq.merge(*(r.messages for r in replays), key=lambda e: e.ts)
                replayed = replay_frames(list(merged))
        text = encode(welcome)
        # The welcome names where the client resumes from (an SSE stream's ``id:``).
        conn.send(Outgoing(text, len(text), Kind.CONTROL, cursor))
        for answer in answers:
            self.reply(answer if isinstance(answer, str) else encode(answer))
        if refused is not None:
            self.reply(error_frame(refused.code, refused.message))
        conn.release(replayed)
        return True

    async def replays(self, since: str, user: Target, joined: list[dict[str, Any]]) -> list[Replay]:
        """The user's replay, then each joined channel's (read together)."""
        if not joined:
            return [await self.replay("connect", since, user)]
        steps = [self.replay("connect", since, user)]
        steps += [self.replay("subscribe", since, Target("channel", j["channel"])) for j in joined]
        return list(await asyncio.gather(*steps))

    async def routed(self, target: Target) -> bool:
        await self.gw.broker.routed(target)
        return True

    async def until_closed(self, step: Coroutine[Any, Any, T]) -> T | None:
        """``step``'s result, or None as soon as the socket is closed (a drain must not
        wait for a replay or a binding of a socket it already closed)."""
        if self.conn.closing:
            step.close()
            return None
        task = asyncio.ensure_future(step)
        closed = self.conn.on_closed()
        try:
            await asyncio.wait((task, closed), return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
            if not task.done():
                task.cancel()
        return task.result() if task.done() and not task.cancelled() else None

    async def run(self, receive: Receive, since: str | None, channels: Sequence[str] = ()) -> None:
        """The whole session. The socket is registered for exactly as long as this runs."""
        gw, conn, ident = self.gw, self.conn, self.ident
        expiry: asyncio.TimerHandle | None = None
        how = disconnects.CLIENT
        gw.hub.add(conn)
        try:
            await self.welcome(since, channels)
            if ident.expires_at is not None:
                delay = max(0.0, ident.expires_at - time.time())
                expiry = asyncio.get_running_loop().call_later(
                    delay, conn.close, disconnects.TOKEN_EXPIRED
                )
            log.debug("pod=%s conn=%s user=%s connected", gw.pod_name, conn.id, ident.user)
            how = await self.serve(receive)
        except BindTimeout as exc:
            log.warning("pod=%s conn=%s user=%s closed: %s", gw.pod_name, conn.id, conn.user, exc)
            conn.close(disconnects.UNROUTED)
        except Exception:
            how = disconnects.ERROR
            log.exception("pod=%s conn=%s user=%s session error", gw.pod_name, conn.id, conn.user)
            # The client gets a close frame, not a silent drop.
            conn.close(disconnects.ERROR)
        finally:
            if expiry is not None:
                expiry.cancel()
            gw.hub.remove(conn, how)
            await conn.stop()
            log.debug(
                "pod=%s conn=%s closed (%s)", gw.pod_name, conn.id, (conn.disconnect or how).label
            )

    async def serve(self, receive: Receive) -> Disconnect:
        """Read the WebSocket's frames until it closes; how it closed."""
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                if message.get("code") == disconnects.TOO_BIG.code:
                    # uvicorn refused an oversized frame and closed the socket.
                    self.gw.metrics.limit_hits.labels(limit="frame_size").inc()
                    return disconnects.TOO_BIG
                return disconnects.CLIENT
            await self.on_frame(message.get("text"))

    async def on_frame(self, text: str | None) -> None:
        """One client frame (None: a binary one), from the socket or posted to a stream."""
        if self.conn.closing:
            return
        if not self.limiter.allow():
            self.gw.metrics.limit_hits.labels(limit="frame_rate").inc()
            channel = channel_of(text) if text is not None else None
            self.reply(error_frame("rate_limited", "too many frames per second", channel))
            return
        if text is None:
            self.reply(error_frame("binary_unsupported", "binary frames are not supported"))
            return
        await self.handle_text(text)

    async def handle_text(self, text: str) -> None:
        try:
            frame = parse_client_frame(text)
        except ProtocolError as exc:
            self.reply(error_frame(exc.code, exc.message, exc.channel))
            return
        if frame.type == "ping":
            self.reply(encode({"type": "pong"}) if text.strip() != "ping" else "pong")
        elif frame.type == "subscribe":
            assert frame.channel is not None
            await self.subscribe(frame.channel, frame.since)
        elif frame.type == "unsubscribe":
            assert frame.channel is not None
            self.gw.hub.unsubscribe(self.conn, frame.channel)
            self.reply(encode({"type": "unsubscribed", "channel": frame.channel}))
        elif frame.type == "text":
            if not self.gw.settings.allow_client_publish:
                # Bare text is a chat message only where clients may publish.
                self.reply(error_frame("bad_json", "frame is not valid JSON"))
                return
            await self.publish(
                Target("broadcast"), {"from": self.conn.user, "text": frame.raw_text}
            )
        else:
            assert frame.target is not None
            await self.publish(frame.target, frame.data)

    async def join(self, channel: str) -> str | None:
        """Subscribe to ``channel`` once the broker routes it here; None, or the error frame
        that refuses it (the token's ``channels``, ``--max-subscriptions``, the broker)."""
        gw, conn, s = self.gw, self.conn, self.gw.settings
        if not self.ident.may_subscribe(channel):
            return error_frame("forbidden", f"not allowed to subscribe to {channel!r}", channel)
        if channel not in conn.channels and len(conn.channels) >= s.max_subscriptions:
            gw.metrics.limit_hits.labels(limit="subscriptions").inc()
            return error_frame(
                "too_many_subscriptions",
                f"at most {s.max_subscriptions} subscriptions per socket",
                channel,
            )
        gw.hub.subscribe(conn, channel)
        try:
            await gw.broker.routed(Target("channel", channel))
        except BindTimeout:
            gw.hub.unsubscribe(conn, channel)
            return error_frame("unavailable", "broker did not confirm the subscription", channel)
        return None

    @staticmethod
    def subscribed(channel: str) -> dict[str, Any]:
        return {
            "type": "subscribed",
            "channel": channel,
            "position": position_id(int(time.time() * 1000) - SKEW_MS),
        }

    async def subscribe(self, channel: str, since: str | None) -> None:
        gw, conn = self.gw, self.conn
        error = await self.join(channel)
        if error is not None:
            self.reply(error)
            return
        target = Target("channel", channel)
        subscribed = self.subscribed(channel)
        if since is None:
            self.reply(encode(subscribed))
            return
        conn.hold()
        try:
            replay = await self.replay("subscribe", since, target)
        except Exception:
            conn.release([])
            raise
        if not replay.complete and replay.reason == UNAVAILABLE:
            # Nothing is skipped: the client subscribes again later with the same since.
            conn.release([])
            gw.hub.unsubscribe(conn, channel)
            self.reply(
                error_frame("unavailable", "history busy: subscribe again with since", channel)
            )
            return
        self.reply(encode({**subscribed, **recovery_fields(replay)}))
        conn.release(replay_frames(replay.messages))

    async def replay(self, scope: str, since: str, target: Target) -> Replay:
        replay = await self.gw.replays.replay(since, target)
        result = "recovered" if replay.complete else (replay.reason or "unavailable")
        self.gw.metrics.replays.labels(scope=scope, result=result).inc()
        return replay

    async def publish(self, target: Target, data: Any) -> None:
        if not self.gw.settings.allow_client_publish:
            self.reply(error_frame("forbidden", "client publishing is disabled on this gateway"))
            return
        try:
            ids = await self.gw.publish([Publication(target, data)], source="client")
        except BrokerUnavailable:
            self.reply(error_frame("unavailable", "broker unavailable, message not sent"))
            return
        self.reply(encode({"type": "published", "id": ids[0]}))
