"""Receiving pushed messages: one WebSocket, reconnected by the close-code policy,
recovering what it missed with ``since``.

The same behaviour as the TypeScript client (clients/js): success is the
``welcome`` frame, not the socket's open (only it resets the backoff); the
greatest message id seen is the connection's ``since`` and each channel is
re-subscribed with the greatest id seen on it; duplicates (a replay
overlapping live delivery) are dropped by id; a token is refreshed with
``get_token`` before its ``exp`` and sent over the open socket (a ``refresh``
frame), so the connection outlives it; against a server without refresh frames
the new token waits for the reconnect after the 4001.

A slow consumer cannot block the read loop: the socket is read into a
bounded queue (``queue_size`` messages). When the consumer falls that far
behind, the subscriber closes the socket itself, stops reading, and once the
consumer has taken half of the queue it reconnects with ``since`` the
greatest id it queued: the server replays what came meanwhile, so nothing
within the history window is lost and memory stays bounded
(``overflows`` counts these).

Where WebSocket is blocked (a proxy refusing the upgrade), a subscriber given
``transports=["websocket", "sse"]`` (or ``http_stream``) falls back to an HTTP
stream (streams.py): the same frames, the same code above; the first transport
that gets a welcome is kept for the subscriber's life.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import inspect
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import orjson
import websockets
from websockets.asyncio.client import ClientConnection, connect

from .policy import Action, Backoff, close_action, reconnect_delay
from .streams import PATHS, Ended, StreamLink, Transport, close_of, http_url
from .tokens import Tokens
from .types import (
    LOST,
    Closed,
    GetToken,
    Message,
    Recovery,
    State,
    StateChange,
    Unauthorized,
    _Channel,
    _Counters,
    _End,
    _Overflow,
)

log = logging.getLogger("clarion_client")

#: A message id (or a position, which is written as one): a UUID.
_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def advance_since(last_id: str | None, frame: dict[str, Any]) -> str | None:
    """Where the next reconnect recovers from after a welcome or ``subscribed``: its
    ``position`` once nothing is owed before it (nothing received yet, or recovered
    with nothing missed), so a client idle for long does not come back with an old
    ``since``."""
    position = frame.get("position")
    if not isinstance(position, str) or _ID.fullmatch(position) is None:
        return last_id
    caught_up = frame.get("recovered") is True and not frame.get("missed")
    if last_id is not None and (not caught_up or last_id >= position):
        return last_id
    return position


class Subscriber:
    """An async iterator over the messages pushed to a user, its channels and everyone.

    >>> async with Subscriber("wss://push.example.com/ws", get_token=fetch_token,
    ...                       channels=["orders.eu"]) as sub:
    ...     async for message in sub:
    ...         print(message.target, message.data)

    Iteration ends after ``close()``; it raises ``Closed`` (after the messages
    already queued) when the server says not to come back (1008, 1009, 4500-4999),
    when ``get_token`` raises ``Unauthorized``, and after ``max_retries``
    failed attempts in a row. ``on_recovery`` is called in the consumer's task,
    in order with the messages (before the replayed ones); ``on_state`` at once.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        get_token: GetToken | None = None,
        user: str | None = None,
        channels: Iterable[str] = (),
        since: str | None = None,
        backoff: Backoff | None = None,
        queue_size: int = 1000,
        timeout: float = 10.0,
        ping_interval: float = 25.0,
        refresh_margin: float = 30.0,
        dedupe_size: int = 10_000,
        reconnect: bool = True,
        max_retries: int | None = None,
        on_state: Callable[[StateChange], object] | None = None,
        on_recovery: Callable[[Recovery], object] | None = None,
        on_error: Callable[[str, str], object] | None = None,
        data: Any = None,
        transports: Iterable[Transport] = ("websocket",),
        fallback_after: int = 1,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss"):
            raise ValueError("the URL must start with ws:// or wss://")
        if queue_size < 2:
            raise ValueError("queue_size must be at least 2")
        self.transports: list[Transport] = list(dict.fromkeys(transports))
        if not self.transports or any(t not in PATHS for t in self.transports):
            raise ValueError(f"transports: one or more of {', '.join(PATHS)}")
        if fallback_after < 1:
            raise ValueError("fallback_after must be at least 1")
        #: Abnormal ends before any welcome that move the subscriber to the next transport.
        self.fallback_after = fallback_after
        self._t = 0  # the transport in use: an index in transports
        self._t_fails = 0  # failures in a row before a welcome on it
        self._t_kept = False  # a welcome came: no more fallback
        self._http: httpx.AsyncClient | None = None
        self._welcomed = False
        self.url = url
        self._parts = parts
        self.user = user
        self.backoff = backoff or Backoff()
        self.queue_size = queue_size
        self.timeout = timeout
        self.ping_interval = ping_interval
        self.refresh_margin = refresh_margin
        self.dedupe_size = dedupe_size
        self.reconnect = reconnect
        self.max_retries = max_retries
        self.on_state = on_state
        self.on_recovery = on_recovery
        self.on_error = on_error
        self.stats = _Counters()
        #: Sent to the server's connect proxy as ``?data=`` (JSON).
        self.data = data
        #: Whether this socket's server takes refresh frames (an older one: ``unknown_type``).
        self._refresh_in_band = True
        #: The token of the refresh frame waiting for its answer.
        self._refreshing: str | None = None
        self._refresh_wake = asyncio.Event()
        #: Wakes the subscription tokens' refresh loop (a refused refresh moved one's time).
        self._sub_wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        #: The greatest message id received: the next connection's ``since``.
        self.last_id: str | None = since
        #: The welcome frame's pod, conn and user.
        self.info: dict[str, Any] | None = None
        self.state: State = "disconnected"
        self._channels: dict[str, _Channel] = {c: _Channel() for c in channels}
        self._tokens = Tokens(token, get_token, refresh_margin, self.stats)
        self._socket_token: str | None = None
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._items: collections.deque[Message | Recovery | _End] = collections.deque()
        self._queued = 0  # messages in _items
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._ws: _Link | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._had_connection = False

    # --- the application's side ------------------------------------------

    async def __aenter__(self) -> Subscriber:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def start(self) -> None:
        """Starts connecting (iterating starts it too)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"clarion-subscriber {self.url}")

    async def close(self) -> None:
        """Closes the socket (1000) and ends the iteration after what is queued."""
        self._closing = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tokens.cancel()
        if not self._items or not isinstance(self._items[-1], _End):
            self._push(_End())

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Message]:
        self.start()
        while True:
            while not self._items:
                self._wake.clear()
                await self._wake.wait()
            item = self._items.popleft()
            if isinstance(item, Message):
                self._queued -= 1
                if self._queued <= self.queue_size // 2:
                    self._room.set()
                yield item
            elif isinstance(item, Recovery):
                if self.on_recovery is not None:
                    result = self.on_recovery(item)
                    if inspect.isawaitable(result):
                        await result
            else:
                self._items.appendleft(item)  # later iterations end too
                if item.error is not None:
                    raise item.error
                return

    async def subscribe(
        self,
        channel: str,
        *,
        token: str | None = None,
        get_token: Callable[[str], str | Awaitable[str]] | None = None,
    ) -> None:
        """Subscribes to ``channel`` now and on every later connection. ``token`` or
        ``get_token(channel)``: a subscription token, for a channel the connection's own
        token does not cover; one from ``get_token`` is renewed before its ``exp`` over
        the open socket (a ``refresh`` frame naming the channel)."""
        if not isinstance(channel, str) or not channel:
            raise ValueError("a channel is a non-empty string")
        if channel in self._channels:
            return
        self._channels[channel] = ch = _Channel()
        if token is not None or get_token is not None:
            get = functools.partial(get_token, channel) if get_token is not None else None
            ch.tokens = Tokens(token, get, self.refresh_margin, self.stats)
        if self.state == "connected" and self._ws is not None:
            await self._send_subscribe(self._ws, channel, ch)

    async def unsubscribe(self, channel: str) -> None:
        if self._channels.pop(channel, None) is not None and self._ws is not None:
            with contextlib.suppress(websockets.ConnectionClosed):
                await self._ws.send(
                    orjson.dumps({"type": "unsubscribe", "channel": channel}).decode()
                )

    @property
    def transport(self) -> Transport:
        """The transport in use (or being tried before the first welcome)."""
        return self.transports[self._t]

    @property
    def channels(self) -> list[str]:
        return list(self._channels)

    @property
    def subscribed(self) -> list[str]:
        """The channels whose subscription the server confirmed on this connection."""
        if self.state != "connected":
            return []
        return [c for c, ch in self._channels.items() if ch.subscribed_once and not ch.pending]

    async def refresh_token(self) -> str:
        """Calls ``get_token`` (one call in flight at a time: concurrent callers share it)."""
        return await self._tokens.refresh()

    # --- the connection --------------------------------------------------

    def _socket_url(self) -> str:
        query = dict(parse_qsl(self._parts.query))
        if self._tokens.token is not None:
            query["token"] = self._tokens.token
        elif self.user is not None:
            query["user"] = self.user
        if self.data is not None:
            query["data"] = orjson.dumps(self.data).decode()
        if self.last_id:
            query["since"] = self.last_id
        return urlunsplit(self._parts._replace(query=urlencode(query)))

    async def _run(self) -> None:
        end = _End()
        failures = 0
        try:
            while True:
                code, reason, welcomed = await self._attempt()
                self._fall_back(code, welcomed)
                failures = 0 if welcomed else failures + 1
                self.stats.closes.append(code)
                if code == _OVERFLOW:
                    # Our own close: wait for the consumer, then recover with since.
                    self._set_state("connecting", code, reason, None)
                    self._room.clear()
                    if self._queued > self.queue_size // 2:
                        await self._room.wait()
                    continue
                action = close_action(code)
                if action is Action.TOKEN and self._tokens.get is None:
                    action = Action.FATAL
                    reason = f"{reason} (and there is no get_token)"
                if action in (Action.STOP, Action.FATAL):
                    if action is Action.FATAL:
                        end = _End(Closed(code, reason))
                    break
                if not self.reconnect or (
                    self.max_retries is not None and failures > self.max_retries
                ):
                    end = _End(Closed(code, f"{reason} (not reconnecting)"))
                    break
                if action is Action.TOKEN and self._tokens.token == self._socket_token:
                    self._tokens.token = None  # expired: get a new one (unless a refresh did)
                delay = reconnect_delay(self.backoff, action, welcomed=welcomed)
                self._set_state("connecting", code, reason, delay)
                await asyncio.sleep(delay)
        except _Stop as stop:
            end = _End(stop.error)
        finally:
            error = end.error
            code, reason = (error.code, error.reason) if error else (1000, "closed")
            self._set_state("disconnected", code, reason, None)
            self._push(end)
            http, self._http = self._http, None
            if http is not None:
                await http.aclose()

    def _fall_back(self, code: int, welcomed: bool) -> None:
        """A transport that never got a welcome: after ``fallback_after`` abnormal ends
        (a refused upgrade, a broken connection, no welcome in time) the next one. A
        close code from the server is an answer, not a blocked transport."""
        if welcomed:
            self._t_kept = True
        if self._t_kept or code != LOST or len(self.transports) == 1:
            return
        self._t_fails += 1
        if self._t_fails >= self.fallback_after:
            self._t_fails = 0
            self._t = (self._t + 1) % len(self.transports)

    async def _attempt(self) -> tuple[int, str, bool]:
        """One connection, from the token to the close: (close code, reason, welcomed)."""
        self._set_state("connecting", 0, "connect", None)
        if self._tokens.get is not None and self._tokens.stale():
            try:
                await self.refresh_token()
            except Unauthorized as exc:
                raise _Stop(Closed(4500, f"get_token: {exc}")) from None
            except Exception as exc:
                self._error("token", f"get_token failed: {exc!r}")
                return LOST, "get_token failed", False
        self._welcomed = False
        self._socket_token = self._tokens.token
        try:
            if self.transport == "websocket":
                return await self._over_websocket()
            return await self._over_stream()
        except _Overflow:
            return _OVERFLOW, "queue full: the consumer is behind", self._welcomed
        except Ended as end:
            return end.code, end.reason, self._welcomed
        except TimeoutError:
            return LOST, "timeout" if self._welcomed else "no welcome in time", self._welcomed
        except websockets.ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else LOST
            reason = exc.rcvd.reason if exc.rcvd is not None else "connection lost"
            return code, reason, self._welcomed
        except websockets.InvalidStatus as exc:
            return LOST, f"HTTP {exc.response.status_code}", False
        except (OSError, websockets.InvalidHandshake, orjson.JSONDecodeError) as exc:
            return LOST, str(exc) or type(exc).__name__, self._welcomed

    async def _over_websocket(self) -> tuple[int, str, bool]:
        async with connect(
            self._socket_url(),
            open_timeout=self.timeout,
            ping_interval=self.ping_interval,
            ping_timeout=self.timeout,
            close_timeout=2,
            max_size=None,
            max_queue=None,  # our queue is the bound (a websockets queue would block reads)
        ) as ws:
            await self._serve(ws)
        return _close_of(ws)

    async def _over_stream(self) -> tuple[int, str, bool]:
        """An HTTP stream: it ends with the server's close frame (``Ended``) or 1006."""
        if self._http is None:
            # A silent stream (the server sends keep-alives) is lost after ping_interval + timeout.
            timeout = httpx.Timeout(self.timeout, read=self.ping_interval + self.timeout)
            self._http = httpx.AsyncClient(timeout=timeout)
        url = http_url(self._socket_url(), PATHS[self.transport])
        emulation = http_url(urlunsplit(self._parts._replace(query="")), "/emulation")
        ndjson = self.transport == "http_stream"
        async with StreamLink(self._http, url, emulation, ndjson) as link:
            await self._serve(link)
        return LOST, "stream ended", self._welcomed  # not reached: a stream ends with Ended

    async def _serve(self, link: _Link) -> None:
        """The welcome, then every frame until the connection ends."""
        self._ws = link
        try:
            welcome = orjson.loads(await asyncio.wait_for(link.recv(), self.timeout))
            if isinstance(welcome, dict) and welcome.get("type") == "close":
                raise close_of(welcome)  # refused on a stream (pod full, draining)
            if not isinstance(welcome, dict) or welcome.get("type") != "welcome":
                raise Ended(LOST, "no welcome")
            self._welcomed = True
            if isinstance(link, StreamLink) and isinstance(welcome.get("session"), str):
                link.session = welcome["session"]
            await self._welcome(link, welcome)
            refresher = asyncio.create_task(self._refresh_loop(link))
            sub_refresher = asyncio.create_task(self._sub_refresh_loop(link))
            try:
                async for raw in link:
                    await self._frame(link, raw)
            finally:
                refresher.cancel()
                sub_refresher.cancel()
        finally:
            self._ws = None

    async def _welcome(self, ws: _Link, frame: dict[str, Any]) -> None:
        self.backoff.reset()
        self.stats.connections += 1
        self._refresh_in_band, self._refreshing = True, None
        self.info = {k: frame.get(k) for k in ("pod", "conn", "user")}
        recovery = self._had_connection
        self._had_connection = True
        self.last_id = advance_since(self.last_id, frame)
        if isinstance(frame.get("recovered"), bool):
            self._push(Recovery(frame["recovered"], int(frame.get("missed") or 0), self.last_id))
        elif recovery:
            self._push(Recovery(False, 0, None))
        for channel, ch in list(self._channels.items()):
            if not ch.server:  # the server subscribes its own again
                await self._send_subscribe(ws, channel, ch)
        self._set_state("connected", 0, "welcome", None)

    async def _send_subscribe(self, ws: _Link, channel: str, ch: _Channel) -> None:
        frame: dict[str, Any] = {"type": "subscribe", "channel": channel}
        if ch.since:
            frame["since"] = ch.since
        if ch.tokens is not None:
            if ch.tokens.get is not None and ch.tokens.stale():
                try:
                    await ch.tokens.refresh()
                except Exception as exc:
                    self._error("token", f"{channel}: get_token failed: {exc!r}")
                    return
            frame["token"] = ch.tokens.token
            self._sub_wake.set()  # its refresh time may be the next one
        ch.pending = True
        await ws.send(orjson.dumps(frame).decode())

    async def _frame(self, ws: _Link, raw: str | bytes) -> None:
        try:
            frame = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return
        if not isinstance(frame, dict):
            return
        kind = frame.get("type")
        if kind == "message":
            self._message(frame)
        elif kind == "subscribed":
            self._subscribed(frame)
        elif kind == "refreshed" and isinstance(frame.get("channel"), str):
            self.stats.refreshes += 1  # a subscription token's
        elif kind == "refreshed":
            if self._refreshing is not None:
                self._socket_token, self._refreshing = self._refreshing, None
                self.stats.refreshes += 1
        elif kind == "unsubscribed" and isinstance(frame.get("reason"), str):
            # The server's own: the connection's new rights do not allow the channel.
            channel = frame.get("channel")
            if isinstance(channel, str) and self._channels.pop(channel, None) is not None:
                self._error(str(frame["reason"]), f"{channel}: {frame.get('message', '')}")
        elif kind == "error":
            self._server_error(frame)
        elif kind == "close":  # an HTTP stream's last frame
            raise close_of(frame)

    def _message(self, frame: dict[str, Any]) -> None:
        mid, target = frame.get("id"), frame.get("target")
        if not isinstance(mid, str) or not isinstance(target, dict):
            return
        if mid in self._seen:
            self.stats.duplicates += 1
            return
        channel = target.get("channel")
        ch = self._channels.get(channel) if isinstance(channel, str) else None
        if channel is not None and ch is None:
            return  # in flight when it was unsubscribed
        if self._queued >= self.queue_size:
            self.stats.overflows += 1
            raise _Overflow
        self._seen[mid] = None
        if len(self._seen) > self.dedupe_size:
            self._seen.popitem(last=False)
        if self.last_id is None or mid > self.last_id:
            self.last_id = mid
        if ch is not None and (ch.since is None or mid > ch.since):
            ch.since = mid
        ts = frame.get("ts")
        self._push(Message(mid, target, frame.get("data"), ts if isinstance(ts, int) else None))

    def _subscribed(self, frame: dict[str, Any]) -> None:
        channel = frame.get("channel")
        if not isinstance(channel, str):
            return
        ch = self._channels.get(channel)
        if ch is None:
            # Not asked for: the server subscribed this connection (the connect proxy's
            # backend named the channel); its messages are the subscriber's now.
            self._channels[channel] = ch = _Channel(server=True)
        ch.pending = False
        ch.since = advance_since(ch.since, frame)
        recovery = ch.subscribed_once
        ch.subscribed_once = True
        if isinstance(frame.get("recovered"), bool):
            rec = Recovery(frame["recovered"], int(frame.get("missed") or 0), ch.since, channel)
            self._push(rec)
        elif recovery:
            self._push(Recovery(False, 0, None, channel))

    def _server_error(self, frame: dict[str, Any]) -> None:
        code, text = str(frame.get("code", "error")), str(frame.get("message", ""))
        named = frame.get("channel")
        ch = self._channels.get(named) if isinstance(named, str) else None
        if ch is not None and ch.tokens is not None and self._sub_token_error(str(named), ch, code):
            self._error("token", f"{named}: {code}: {text}")
            return
        if self._refreshing is not None and code in REFRESH_ERRORS:
            self._refreshing = None
            if code == "unknown_type":  # an older server: reconnect after its 4001
                self._refresh_in_band = False
                return
            # Refused: ask for another token soon, within what is left.
            self._tokens.refresh_at = time.time() + min(5.0, self.refresh_margin / 4)
            self._refresh_wake.set()
            self._error("token", f"refresh refused: {code}: {text}")
            return
        channel = frame.get("channel")
        if not isinstance(channel, str):  # an answer to the oldest subscribe still waiting
            channel = next((c for c, ch in self._channels.items() if ch.pending), None)
        if channel is not None and code in ("forbidden", "too_many_subscriptions"):
            self._channels.pop(channel, None)
            text = f"{channel}: {text}"
        elif channel is not None and channel in self._channels:
            self._channels[channel].pending = False
        self._error(code, text)

    def _sub_token_error(self, channel: str, ch: _Channel, code: str) -> bool:
        """A subscription token's error: a refused refresh is asked again soon; a subscribe
        refused as expired gets one new token and is sent again. False: not the token's."""
        if not ch.pending and code in ("bad_token", "token_expired"):
            ch.tokens.refresh_at = time.time() + min(5.0, self.refresh_margin / 4)
            self._sub_wake.set()
            return True
        if ch.pending and code == "token_expired" and ch.tokens.get is not None and not ch.retried:
            ch.retried = True
            ch.tokens.token = None
            if self._ws is not None:
                ws = self._ws
                self._spawn(self._send_subscribe(ws, channel, ch))
            return True
        return False

    def _spawn(self, step: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(step)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sub_refresh_loop(self, ws: _Link) -> None:
        """Renews each subscription token from ``get_token`` before its ``exp`` and sends it in
        a ``refresh`` frame naming the channel."""
        while True:
            due = [
                (ch.tokens.refresh_at, c)
                for c, ch in self._channels.items()
                if ch.tokens is not None and ch.tokens.get is not None and ch.tokens.refresh_at
            ]
            self._sub_wake.clear()
            wait = max(0.0, min(due)[0] - time.time()) if due else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sub_wake.wait(), wait)
            for _, channel in due:
                ch = self._channels.get(channel)
                if ch is None or ch.tokens is None or time.time() < ch.tokens.refresh_at:
                    continue
                try:
                    token = await ch.tokens.refresh()
                except Exception as exc:
                    self._error("token", f"{channel}: get_token failed: {exc!r}")
                    ch.tokens.refresh_at = time.time() + self.backoff.base
                    continue
                frame = {"type": "refresh", "channel": channel, "token": token}
                with contextlib.suppress(websockets.ConnectionClosed):
                    await ws.send(orjson.dumps(frame).decode())

    async def _refresh_loop(self, ws: _Link) -> None:
        """Refreshes the token before its ``exp`` and sends it in a ``refresh`` frame, so
        the connection outlives it (an older server: the reconnect after its 4001 does
        not wait for get_token)."""
        while self._tokens.get is not None and self._tokens.refresh_at is not None:
            self._refresh_wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._refresh_wake.wait(), max(0.0, self._tokens.refresh_at - time.time())
                )
            if time.time() < self._tokens.refresh_at:
                continue
            try:
                token = await self.refresh_token()
                if self._refresh_in_band:
                    self._refreshing = token
                    frame = orjson.dumps({"type": "refresh", "token": token}).decode()
                    with contextlib.suppress(websockets.ConnectionClosed):
                        await ws.send(frame)
            except Unauthorized as exc:
                self._error("unauthorized", f"get_token: {exc}")
                return
            except Exception as exc:
                self._error("token", f"get_token failed: {exc!r}")
                await asyncio.sleep(self.backoff.base)

    # --- helpers ---------------------------------------------------------

    def _push(self, item: Message | Recovery | _End) -> None:
        if isinstance(item, Message):
            self._queued += 1
        self._items.append(item)
        self._wake.set()

    def _set_state(self, state: State, code: int, reason: str, delay: float | None) -> None:
        if state == self.state and delay is None:
            return
        change = StateChange(state, self.state, code, reason, delay)
        self.state = state
        self._call(self.on_state, change)

    def _error(self, code: str, message: str) -> None:
        log.warning("clarion subscriber: %s: %s", code, message)
        self._call(self.on_error, code, message)

    @staticmethod
    def _call(callback: Callable[..., object] | None, *args: Any) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:  # a listener's bug must not break the connection
            log.exception("clarion subscriber: a callback raised")


#: Error codes that answer a refresh frame (``unknown_type``: the server has none).
REFRESH_ERRORS = frozenset({"bad_token", "token_expired", "unknown_type"})

#: The subscriber's own close when its queue is full (a private code: never sent).
_OVERFLOW = -1


class _Link(Protocol):
    """What the subscriber uses of its connection: a WebSocket or a streams.StreamLink."""

    async def recv(self) -> str | bytes: ...

    def __aiter__(self) -> AsyncIterator[str | bytes]: ...

    async def send(self, message: str, /) -> None: ...


class _Stop(Exception):
    def __init__(self, error: Closed) -> None:
        self.error = error


def _close_of(ws: ClientConnection) -> tuple[int, str, bool]:
    """The close the server sent (the socket ended without an exception)."""
    rcvd = ws.protocol.close_rcvd
    if rcvd is None:
        return LOST, "connection lost", True
    return rcvd.code, rcvd.reason, True
