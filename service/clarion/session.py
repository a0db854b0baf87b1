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
from .auth import AuthError, Identity, has_token
from .broker import BindTimeout, BrokerUnavailable
from .disconnects import Disconnect
from .frames import Kind, Outgoing, control
from .gateway import Gateway
from .hub import SKEW_MS, Connection
from .message import Envelope, Target, id_timestamp_ms, position_id
from .namespaces import HISTORY_OFF, Namespaces
from .protocol import (
    ProtocolError,
    Publication,
    channel_of,
    encode,
    error_frame,
    parse_client_frame,
    parse_since,
)
from .proxy import Denied, Unavailable
from .ratelimit import RateLimiter
from .replays import EXPIRED, UNAVAILABLE, Replay
from .transport import release_handshake, transport_for
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


async def admit(
    gw: Gateway, headers: Headers, query: QueryParams, transport: str = "websocket"
) -> Identity | Disconnect:
    """Who a new connection is, or why it is refused: the same checks on every transport
    (origin, drain, ``--max-connections``, admission, identity: a token, or the connect
    proxy)."""
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
    ident = await identify(gw, headers, query, transport)
    limit = gw.settings.max_connections_per_user
    if isinstance(ident, Identity) and limit and len(gw.hub.by_user.get(ident.user, ())) >= limit:
        gw.metrics.limit_hits.labels(limit="user_connections").inc()
        return disconnects.USER_FULL
    return ident


async def identify(
    gw: Gateway, headers: Headers, query: QueryParams, transport: str
) -> Identity | Disconnect:
    """Who the connection is: a token, or the connect proxy."""
    proxies = gw.proxies
    if proxies.connect is not None and (proxies.always or not has_token(query, headers)):
        return await by_proxy(gw, headers, query, transport)
    try:
        return gw.auth.authenticate(query, headers)
    except AuthError as exc:
        log.info("pod=%s auth refused: %s", gw.pod_name, exc)
        if exc.expired:
            return disconnects.TOKEN_EXPIRED
        return disconnects.UNAUTHORIZED.with_reason(str(exc))


def denied(exc: Denied) -> Disconnect:
    """The backend's no, with its reason when it gave one."""
    return disconnects.DENIED.with_reason(f"refused: {exc}") if str(exc) else disconnects.DENIED


async def by_proxy(
    gw: Gateway, headers: Headers, query: QueryParams, transport: str
) -> Identity | Disconnect:
    """The connect proxy's identity, or the close that refuses the connection: the
    backend's no (4503), no usable answer (1013: fail closed, try again later)."""
    try:
        return await gw.proxies.authenticate(headers, query, transport)
    except ValueError as exc:  # the client's ?data=
        return disconnects.UNAUTHORIZED.with_reason(str(exc))
    except Denied as exc:
        log.info("pod=%s connect proxy refused a connection: %s", gw.pod_name, exc)
        return denied(exc)
    except Unavailable as exc:
        log.warning("pod=%s connect proxy unavailable: %s", gw.pod_name, exc)
        return disconnects.PROXY_UNAVAILABLE


async def websocket_session(gw: Gateway, scope: Scope, receive: Receive, send: Send) -> None:
    """Accept (or refuse) one socket, then run its protocol until it closes."""
    accepted = await accept(gw, scope, receive, send)
    if accepted is not None:
        session, since = accepted
        await session.run(receive, since)


async def accept(
    gw: Gateway, scope: Scope, receive: Receive, send: Send
) -> tuple[Session, str | None] | None:
    """The session of an admitted socket and its ``since``, or None when it was refused.

    A coroutine of its own, so that what only the handshake needs (the headers, the
    query, the connect message) is gone when the socket settles down for hours.
    """
    s = gw.settings
    headers = Headers(scope=scope)
    query = QueryParams(scope.get("query_string", b""))
    first = await receive()
    if first["type"] != "websocket.connect":
        return None
    ident = await admit(gw, headers, query)
    if isinstance(ident, Disconnect):
        # Accept, then close with a code and reason the client can read: a
        # rejected handshake would only show the browser a bare 1006.
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": ident.code, "reason": ident.reason})
        gw.metrics.closed.labels(reason=ident.label).inc()
        return None
    await send({"type": "websocket.accept"})
    release_handshake(send)
    transport = transport_for(send, gw.metrics.writes, raw_frames=not s.compression)
    writer = SocketWriter(transport, gw.metrics, s.send_buffer_messages, s.send_buffer_bytes)
    conn = Connection(gw.hub.new_id(), ident.user, writer)
    return Session(gw, conn, ident), query.get("since")


class Session:
    """The protocol of one accepted connection, whatever carries it.

    ``run`` is the whole life of a WebSocket; a stream (streams.py) overrides
    ``serve``, because its client frames come from POSTs (emulation.py), not
    from its own connection.
    """

    #: What carries it, as the proxies are told (a stream: ``sse``, ``http_stream``).
    transport = "websocket"

    # One per socket, for its whole life: no instance dict (a stream's subclass has one).
    __slots__ = (
        "_expiry",
        "_ns_limiters",
        "_renewal",
        "conn",
        "granted",
        "gw",
        "ident",
        "limiter",
        "namespaces",
    )

    def __init__(self, gw: Gateway, conn: Connection, ident: Identity) -> None:
        self.gw = gw
        self.conn = conn
        self.ident = ident
        self.limiter = RateLimiter(gw.settings.max_frames_per_second)
        #: Closes the connection (or asks the refresh proxy) when its rights expire.
        self._expiry: asyncio.TimerHandle | None = None
        self._renewal: asyncio.Task[None] | None = None
        #: Channels joined with a subscription token or by the subscribe proxy, not by the
        #: connection's rights: a refresh of those rights leaves them; each token's expiry
        #: (its timer here) ends its own.
        self.granted: dict[str, asyncio.TimerHandle | None] = {}
        self.namespaces = Namespaces.of_setting(gw.settings.namespaces)
        #: Per-namespace frame budgets (a namespace's ``rate``), made on first use.
        self._ns_limiters: dict[str, RateLimiter] = {}

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
        steps += [self.channel_replay(since, j["channel"]) for j in joined]
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
        how = disconnects.CLIENT
        gw.hub.add(conn)
        try:
            if self.over_user_limit():
                how = disconnects.USER_FULL
                conn.close(how)
                return
            # The backend's server-side subscriptions (connect proxy) come first.
            await self.welcome(since, list(dict.fromkeys([*ident.subscribe, *channels])))
            self.schedule_expiry()
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
            for channel in list(self.granted):
                self.ungrant(channel)
            if self._expiry is not None:
                self._expiry.cancel()
            if self._renewal is not None:
                self._renewal.cancel()
            gw.hub.remove(conn, how)
            await conn.stop()
            log.debug(
                "pod=%s conn=%s closed (%s)", gw.pod_name, conn.id, (conn.disconnect or how).label
            )

    def over_user_limit(self) -> bool:
        """Whether this socket is one over ``--max-connections-per-user`` now that it is
        registered: ``admit`` checked before, but two of a user's sockets admitted in the same
        instant both passed it; the later one goes."""
        limit = self.gw.settings.max_connections_per_user
        if not limit or len(self.gw.hub.by_user.get(self.conn.user, ())) <= limit:
            return False
        self.gw.metrics.limit_hits.labels(limit="user_connections").inc()
        return True

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
        elif not self.namespace_allows(frame.channel or channel_of(text)):
            return
        elif frame.type == "subscribe":
            assert frame.channel is not None
            await self.subscribe(frame.channel, frame.since, frame.token)
        elif frame.type == "unsubscribe":
            assert frame.channel is not None
            self.ungrant(frame.channel)
            self.gw.hub.unsubscribe(self.conn, frame.channel)
            self.reply(encode({"type": "unsubscribed", "channel": frame.channel}))
        elif frame.type == "refresh":
            assert frame.token is not None
            if frame.channel is not None:
                self.refresh_subscription(frame.channel, frame.token)
            else:
                self.refresh(frame.token)
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

    # -- rights: refresh and expiry ----------------------------------------------------

    def refresh(self, token: str) -> None:
        """A ``refresh`` frame: the same checks as at connect (signature, ``exp``, ``aud``)
        and the same user; the new token's rights replace the old ones. A refused token
        changes nothing: the connection keeps its rights until they expire."""
        metrics = self.gw.metrics.refreshes
        try:
            ident = self.gw.auth.refresh(token, self.ident)
        except AuthError as exc:
            metrics.labels(result="expired" if exc.expired else "invalid").inc()
            code = "token_expired" if exc.expired else "bad_token"
            self.reply(error_frame(code, str(exc)))
            return
        metrics.labels(result="ok").inc()
        self.set_rights(ident)
        self.reply(encode({"type": "refreshed", "expire_at": ident.expires_at}))

    def set_rights(self, ident: Identity) -> None:
        """Replace the connection's rights: a channel they no longer allow is unsubscribed,
        with an ``unsubscribed`` frame that says why."""
        conn = self.conn
        self.ident = ident
        for channel in [c for c in conn.channels if not self.may_keep(c)]:
            self.end_subscription(
                channel, "revoked", "the connection's new rights do not allow this channel"
            )
        self.schedule_expiry()

    def may_keep(self, channel: str) -> bool:
        """Whether the connection's rights still cover a channel it joined (one joined with
        a subscription token or by the subscribe proxy is not theirs to take)."""
        if channel in self.granted:
            return True
        rule = self.namespaces.of(channel).subscribe
        return rule == "rights" and self.ident.may_subscribe(channel)

    def end_subscription(self, channel: str, reason: str, message: str) -> None:
        """The server ends a subscription: an ``unsubscribed`` frame says why."""
        self.ungrant(channel)
        self.gw.hub.unsubscribe(self.conn, channel)
        self.gw.metrics.subscriptions_refused.labels(reason=reason).inc()
        frame = {"type": "unsubscribed", "channel": channel, "reason": reason, "message": message}
        self.reply(encode(frame))

    def schedule_expiry(self) -> None:
        """When the rights expire: a token's connection is closed 4001 at ``exp`` plus
        ``--refresh-grace`` unless a ``refresh`` frame came; the connect proxy's is
        renewed by the refresh proxy at ``expire_at`` (or closed 4002 after the grace)."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        exp = self.ident.expires_at
        if exp is None or self.conn.closing:
            return
        loop = asyncio.get_running_loop()
        grace = self.gw.settings.refresh_grace
        delay = max(0.0, exp - time.time())
        if self.ident.via == "proxy" and self.gw.proxies.refresh is not None:
            self._expiry = loop.call_later(delay, self._renew)
            return
        closing = disconnects.SESSION_EXPIRED if self.ident.via == "proxy" else None
        self._expiry = loop.call_later(delay + grace, self._expire, closing)

    def _expire(self, how: Disconnect | None) -> None:
        self._expiry = None
        self.conn.close(how or disconnects.TOKEN_EXPIRED)

    def _renew(self) -> None:
        self._expiry = None
        if self._renewal is None or self._renewal.done():
            self._renewal = asyncio.create_task(self.renew(), name=f"renew {self.conn.id}")

    async def renew(self) -> None:
        """Ask the refresh proxy for new rights; an unusable answer is asked again (backing
        off) until the grace is over, then the connection is closed 1013; a no closes it
        4503."""
        gw, conn = self.gw, self.conn
        ident = self.ident
        deadline = (ident.expires_at or time.time()) + gw.settings.refresh_grace
        wait = 0.2
        while not conn.closing:
            try:
                renewed = await gw.proxies.renew(ident, conn.id, self.transport)
            except Denied as exc:
                gw.metrics.refreshes.labels(result="proxy_denied").inc()
                conn.close(denied(exc))
                return
            except Unavailable as exc:
                gw.metrics.refreshes.labels(result="proxy_unavailable").inc()
                left = deadline - time.time()
                if left <= 0:
                    log.warning("pod=%s conn=%s refresh proxy: %s", gw.pod_name, conn.id, exc)
                    conn.close(disconnects.PROXY_UNAVAILABLE)
                    return
                await asyncio.sleep(min(wait, left))
                wait = min(wait * 2, 5.0)
                continue
            gw.metrics.refreshes.labels(result="proxy_ok").inc()
            if not conn.closing and self.ident is ident:
                self.set_rights(renewed)
            return

    async def join(self, channel: str, token: str | None = None) -> str | None:
        """Subscribe to ``channel`` once the broker routes it here; None, or the error frame
        that refuses it (the rights, a subscription token, the subscribe proxy,
        ``--max-subscriptions``, the broker)."""
        gw, conn, s = self.gw, self.conn, self.gw.settings
        refused = self.namespaces.refusal(channel)
        if refused is not None:
            gw.metrics.subscriptions_refused.labels(reason="bad_channel").inc()
            return error_frame("bad_channel", refused, channel)
        decided = await self.authorize(channel, token)
        if isinstance(decided, str):
            return decided
        if channel not in conn.channels and len(conn.channels) >= s.max_subscriptions:
            gw.metrics.limit_hits.labels(limit="subscriptions").inc()
            gw.metrics.subscriptions_refused.labels(reason="too_many_subscriptions").inc()
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
        if decided is True:
            self.ungrant(channel)  # the rights hold it now
        else:
            self.grant(channel, decided)
        return None

    async def authorize(self, channel: str, token: str | None) -> str | float | bool | None:
        """Who lets this subscription in: True (the connection's rights), a subscription
        token's expiry (a float, or None: no ``exp``), False (the subscribe proxy); or the
        error frame that refuses it.

        A token, when given, is checked (in a namespace whose rule is ``proxy`` only the
        proxy decides); without one, the rights decide in a ``rights`` namespace, and what
        they do not cover goes to the subscribe proxy, if there is one."""
        gw = self.gw
        rule = self.namespaces.of(channel).subscribe
        refused = gw.metrics.subscriptions_refused
        if token is not None and rule != "proxy":
            try:
                return gw.auth.subscription(token, self.ident.user, channel)
            except AuthError as exc:
                if exc.expired:
                    refused.labels(reason="token_expired").inc()
                    return error_frame("token_expired", "subscription token expired", channel)
                refused.labels(reason="bad_token").inc()
                return error_frame("forbidden", f"subscription token refused: {exc}", channel)
        if rule == "rights" and self.ident.may_subscribe(channel):
            return True
        if rule == "token":
            refused.labels(reason="forbidden").inc()
            return error_frame(
                "forbidden", f"subscribing to {channel!r} needs a subscription token", channel
            )
        if gw.proxies.subscribe is None:
            refused.labels(reason="forbidden").inc()
            return error_frame("forbidden", f"not allowed to subscribe to {channel!r}", channel)
        try:
            await gw.proxies.may_subscribe(self.ident, channel, self.conn.id, self.transport)
        except Denied as exc:
            refused.labels(reason="proxy_denied").inc()
            message = f"refused: {exc}" if str(exc) else "refused by the backend"
            return error_frame("forbidden", message, channel)
        except Unavailable as exc:
            log.warning("pod=%s conn=%s subscribe proxy: %s", gw.pod_name, self.conn.id, exc)
            refused.labels(reason="proxy_unavailable").inc()
            return error_frame(
                "unavailable", "subscribe backend unavailable: try again later", channel
            )
        return False

    # -- subscriptions granted by a token or the subscribe proxy ----------------------

    def grant(self, channel: str, expires: float | bool | None) -> None:
        """Remember who let ``channel`` in; a token's expiry (plus ``--refresh-grace``)
        ends the subscription unless a ``refresh`` frame naming the channel came."""
        self.ungrant(channel)
        timer = None
        if isinstance(expires, float) and not self.conn.closing:
            delay = max(0.0, expires - time.time()) + self.gw.settings.refresh_grace
            timer = asyncio.get_running_loop().call_later(delay, self._lapse, channel)
        self.granted[channel] = timer

    def ungrant(self, channel: str) -> None:
        timer = self.granted.pop(channel, None)
        if timer is not None:
            timer.cancel()

    def _lapse(self, channel: str) -> None:
        self.granted[channel] = None
        if channel in self.conn.channels and not self.conn.closing:
            self.end_subscription(
                channel, "subscription_expired", "the subscription token expired: no refresh came"
            )
        else:
            self.ungrant(channel)

    def refresh_subscription(self, channel: str, token: str) -> None:
        """A ``refresh`` frame naming a channel: its subscription token is replaced (the
        same checks as at subscribe); a refused one changes nothing until it expires."""
        metrics = self.gw.metrics.refreshes
        if channel not in self.conn.channels:
            self.reply(error_frame("not_subscribed", f"not subscribed to {channel!r}", channel))
            return
        try:
            expires = self.gw.auth.subscription(token, self.ident.user, channel)
        except AuthError as exc:
            metrics.labels(
                result="subscription_expired" if exc.expired else "subscription_invalid"
            ).inc()
            code = "token_expired" if exc.expired else "bad_token"
            self.reply(error_frame(code, str(exc), channel))
            return
        metrics.labels(result="subscription_ok").inc()
        self.grant(channel, expires)
        self.reply(encode({"type": "refreshed", "channel": channel, "expire_at": expires}))

    # -- namespaces -------------------------------------------------------------------

    def namespace_allows(self, channel: str | None) -> bool:
        """A frame about ``channel`` within its namespace's ``rate`` (else an error frame)."""
        if channel is None:
            return True
        ns = self.namespaces.of(channel)
        if not ns.rate:
            return True
        limiter = self._ns_limiters.get(ns.name)
        if limiter is None:
            limiter = self._ns_limiters[ns.name] = RateLimiter(ns.rate)
        if limiter.allow():
            return True
        self.gw.metrics.limit_hits.labels(limit="namespace_rate").inc()
        self.reply(
            error_frame("rate_limited", f"too many frames about {ns.name!r} channels", channel)
        )
        return False

    async def channel_replay(self, since: str, channel: str) -> Replay:
        """What a channel missed since ``since``, as its namespace allows: none where it
        keeps no history (and says so), none older than its ``history_seconds``."""
        ns = self.namespaces.of(channel)
        if not ns.history:
            self.gw.metrics.replays.labels(scope="subscribe", result=HISTORY_OFF).inc()
            return Replay(complete=False, reason=HISTORY_OFF)
        if (
            ns.history_seconds
            and id_timestamp_ms(since) < (time.time() - ns.history_seconds) * 1000
        ):
            self.gw.metrics.replays.labels(scope="subscribe", result=EXPIRED).inc()
            return Replay(complete=False, reason=EXPIRED)
        return await self.replay("subscribe", since, Target("channel", channel))

    @staticmethod
    def subscribed(channel: str) -> dict[str, Any]:
        return {
            "type": "subscribed",
            "channel": channel,
            "position": position_id(int(time.time() * 1000) - SKEW_MS),
        }

    async def subscribe(self, channel: str, since: str | None, token: str | None = None) -> None:
        gw, conn = self.gw, self.conn
        error = await self.join(channel, token)
        if error is not None:
            self.reply(error)
            return
        subscribed = self.subscribed(channel)
        if since is None:
            self.reply(encode(subscribed))
            return
        conn.hold()
        try:
            replay = await self.channel_replay(since, channel)
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
            self.ungrant(channel)
            return
        self.reply(encode({**subscribed, **recovery_fields(replay)}))
        conn.release(replay_frames(replay.messages))

    async def replay(self, scope: str, since: str, target: Target) -> Replay:
        replay = await self.gw.replays.replay(since, target)
        result = "recovered" if replay.complete else (replay.reason or "unavailable")
        self.gw.metrics.replays.labels(scope=scope, result=result).inc()
        return replay

    async def publish(self, target: Target, data: Any) -> None:
        allowed = self.gw.settings.allow_client_publish
        if target.kind == "channel" and target.name is not None:
            refused = self.namespaces.refusal(target.name)
            if refused is not None:
                self.reply(error_frame("bad_channel", refused, target.name))
                return
            ns = self.namespaces.of(target.name)
            if ns.publish is not None:
                allowed = ns.publish
        if not allowed:
            self.reply(error_frame("forbidden", "client publishing is disabled on this gateway"))
            return
        try:
            ids = await self.gw.publish([Publication(target, data)], source="client")
        except BrokerUnavailable:
            self.reply(error_frame("unavailable", "broker unavailable, message not sent"))
            return
        self.reply(encode({"type": "published", "id": ids[0]}))
