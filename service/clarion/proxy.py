"""The connect and refresh proxies: the application decides who connects, and for how long.

With ``--connect-proxy URL`` a connection (one without a token, or every one)
is authenticated by the backend: the pod POSTs what the request carries that
the operator allowed (``--proxy-headers``, ``--proxy-cookies``; never the
rest) and the client's ``?data=``, signed as webhooks are (webhooks.sign over
``<timestamp>.<body>``), and the answer names the user, the channel patterns
it may subscribe to, the channels it is subscribed to at once, an expiry and
opaque connection info. ``--refresh-proxy URL`` renews such a connection when
that expiry comes. ``--subscribe-proxy URL`` decides the subscriptions a
connection's rights do not cover (or every one of a namespace configured so):
the user, the channel and the connection info in, allow or deny out.

Fail closed: no answer within ``--proxy-timeout``, a 5xx, a redirect, a body
that is not a valid answer, or one too big, is ``Unavailable`` and the
connection is refused with a code that means "try again later"; only a valid
2xx answer lets anyone in. Calls in flight per pod are bounded
(``--proxy-concurrency``): a reconnect storm waits here, within the timeout,
instead of multiplying into the backend. The request's values (cookies,
headers, data) and the secret never reach a log line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from typing import Any, TypeVar

import h11
import orjson

from .auth import Identity
from .config import Settings
from .metrics import Metrics
from .names import MAX_NAME_LENGTH, PATTERN_CHARS
from .webhooks import POD_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, Poster, sign

log = logging.getLogger("clarion.proxy")

T = TypeVar("T")

#: The largest answer read; a longer one is not an answer.
MAX_ANSWER = 64 * 1024
#: The longest ``?data=`` a client may send to the connect proxy.
MAX_DATA = 4096
#: Patterns and channels one answer may name.
MAX_CHANNELS = 1000
#: The header naming which proxy is calling (signed with the body's ``proxy`` field too).
PROXY_HEADER = "X-Clarion-Proxy"

CONNECT_FIELDS = frozenset({"user", "channels", "subscribe", "expire_at", "info"})
REFRESH_FIELDS = frozenset({"user", "channels", "expire_at", "info"})


class Denied(Exception):
    """The backend said no; the reason is the backend's (sent to the client)."""


class Unavailable(Exception):
    """No usable answer (down, slow, 5xx, garbage): nobody is let in; try again later."""


def _reason(obj: object) -> str:
    """A deny's reason, printable and short, or empty."""
    raw = obj.get("reason") if isinstance(obj, dict) else None
    if not isinstance(raw, str):
        return ""
    return "".join(c for c in raw if c.isprintable())[:100]


def _names(obj: dict[str, Any], field: str, patterns: bool) -> tuple[str, ...]:
    value = obj.get(field, [])
    if not isinstance(value, list) or len(value) > MAX_CHANNELS:
        raise ValueError(f"'{field}' must be a list of at most {MAX_CHANNELS} strings")
    for item in value:
        if not isinstance(item, str) or not 0 < len(item) <= MAX_NAME_LENGTH:
            raise ValueError(f"'{field}' must hold strings of 1..{MAX_NAME_LENGTH} characters")
        if not patterns and not PATTERN_CHARS.isdisjoint(item):
            raise ValueError(f"'{field}' holds channel names, not patterns: {item[:64]!r}")
    return tuple(value)


def parse_answer(
    obj: object, *, refresh: Identity | None = None, now: float | None = None
) -> Identity:
    """The identity a backend's 2xx answer gives; Denied if it says no, ValueError if it
    is not an answer (the caller fails closed).

    ``{"user": ID, "channels": [PATTERN], "subscribe": [CHANNEL], "expire_at": UNIX_S,
    "info": ANY}`` lets a connection in (only ``user`` is required; no ``channels``: no
    channel but those of ``subscribe``); ``{"deny": true, "reason": TEXT}`` refuses it.
    A refresh (``refresh``: the connection's identity) may leave ``user`` out, must not
    change it, and keeps the connection's ``subscribe``.
    """
    if not isinstance(obj, dict):
        raise ValueError("the answer is not a JSON object")
    if "deny" in obj:
        if obj["deny"] is not True or set(obj) - {"deny", "reason"}:
            raise ValueError('a deny is {"deny": true, "reason": TEXT}')
        raise Denied(_reason(obj))
    allowed = REFRESH_FIELDS if refresh is not None else CONNECT_FIELDS
    unknown = sorted(k for k in obj if k not in allowed)
    if unknown:
        raise ValueError(f"the answer has no field {unknown[0][:64]!r}")
    user = obj.get("user", refresh.user if refresh is not None else None)
    if not isinstance(user, str) or not 0 < len(user) <= MAX_NAME_LENGTH:
        raise ValueError(f"'user' must be a string of 1..{MAX_NAME_LENGTH} characters")
    if refresh is not None and user != refresh.user:
        raise ValueError("a refresh cannot change the connection's user")
    expire_at = obj.get("expire_at")
    if expire_at is not None:
        if isinstance(expire_at, bool) or not isinstance(expire_at, int | float):
            raise ValueError("'expire_at' must be a number (unix seconds) or null")
        if expire_at <= (time.time() if now is None else now):
            raise ValueError("'expire_at' is not in the future")
    return Identity(
        user=user,
        channel_patterns=_names(obj, "channels", patterns=True),
        expires_at=float(expire_at) if expire_at is not None else None,
        via="proxy",
        subscribe=refresh.subscribe if refresh is not None else _names(obj, "subscribe", False),
        info=obj.get("info"),
    )


def parse_subscribe_answer(obj: object) -> bool:
    """``{"allow": true}`` (True), or ``{"deny": true, "reason": TEXT}`` (Denied); anything
    else is not an answer (ValueError: the caller fails closed)."""
    if not isinstance(obj, dict):
        raise ValueError("the answer is not a JSON object")
    if "deny" in obj:
        parse_answer(obj)  # raises Denied, or ValueError for a malformed deny
    if set(obj) != {"allow"} or obj["allow"] is not True:  # 1 == True: not good enough
        raise ValueError('a subscribe answer is {"allow": true} or {"deny": true, "reason": TEXT}')
    return True


def allowed_request(
    headers: Mapping[str, str], names: frozenset[str], cookies: frozenset[str]
) -> tuple[dict[str, str], dict[str, str]]:
    """The headers and cookies of a request that the allow-lists name, and nothing else."""
    picked = {name: headers[name] for name in sorted(names) if name in headers}
    jar: dict[str, str] = {}
    raw = headers.get("cookie")
    if cookies and raw:
        for part in raw.split(";"):
            try:
                parsed: SimpleCookie = SimpleCookie(part.strip())
            except CookieError:
                continue  # one bad cookie does not hide the others
            for name, morsel in parsed.items():
                if name in cookies:
                    jar[name] = morsel.value
    return picked, jar


def parse_data(raw: str | None) -> Any:
    """A client's ``?data=`` (JSON, at most ``MAX_DATA`` characters); ValueError if not."""
    if raw is None:
        return None
    if len(raw) > MAX_DATA:
        raise ValueError(f"?data= is longer than {MAX_DATA} characters")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ValueError("?data= is not JSON") from None


class Proxy:
    """Signed POSTs to one backend URL over a few kept-alive connections, at most
    ``concurrency`` at once, each within ``timeout`` (its wait for a slot included)."""

    def __init__(
        self,
        kind: str,
        url: str,
        secret: str,
        metrics: Metrics,
        *,
        pod_name: str,
        timeout: float,
        concurrency: int,
    ) -> None:
        self.kind = kind
        self.url = url
        self._secret = secret
        self.metrics = metrics
        self.pod_name = pod_name
        self.timeout = timeout
        self._slots = asyncio.Semaphore(concurrency)
        self._idle: list[Poster] = []

    async def call(self, payload: dict[str, Any], parse: Callable[[Any], T]) -> T:
        """``parse`` of the backend's JSON answer (a 2xx); Denied on a 401/403 or when
        ``parse`` says so, Unavailable otherwise (``parse`` raising ValueError included)."""
        started = time.perf_counter()
        result = "error"
        try:
            answer = await self._call(payload)
            try:
                parsed = parse(answer)
            except ValueError as exc:
                log.warning("pod=%s %s proxy: not an answer: %s", self.pod_name, self.kind, exc)
                raise Unavailable(f"not an answer: {exc}") from None
            result = "allow"
            return parsed
        except Denied:
            result = "deny"
            raise
        except TimeoutError:
            result = "timeout"
            raise Unavailable(f"no answer within {self.timeout:g} s") from None
        finally:
            self.metrics.proxy_requests.labels(proxy=self.kind, result=result).inc()
            self.metrics.proxy_seconds.labels(proxy=self.kind).observe(
                time.perf_counter() - started
            )

    async def _call(self, payload: dict[str, Any]) -> Any:
        body = orjson.dumps({"proxy": self.kind, **payload})
        async with asyncio.timeout(self.timeout), self._slots:
            poster = self._idle.pop() if self._idle else Poster(self.url)
            ok = False
            try:
                timestamp = str(int(time.time()))
                headers = {
                    "Content-Type": "application/json",
                    SIGNATURE_HEADER: sign(self._secret, timestamp, body),
                    TIMESTAMP_HEADER: timestamp,
                    POD_HEADER: self.pod_name,
                    PROXY_HEADER: self.kind,
                }
                status, answer = await poster.request(body, headers, MAX_ANSWER)
                ok = True
            except (OSError, h11.ProtocolError, EOFError) as exc:
                raise Unavailable(f"{type(exc).__name__} talking to the backend") from None
            finally:
                if ok:
                    self._idle.append(poster)
                else:
                    poster.close()  # its state is unknown (cancelled, failed)
        if status in (401, 403):
            raise Denied(_reason(_json_or_none(answer)))
        if not 200 <= status < 300:
            raise Unavailable(f"the backend answered HTTP {status}")
        if answer is None:
            raise Unavailable(f"the backend's answer is over {MAX_ANSWER} bytes")
        obj = _json_or_none(answer)
        if obj is None:
            raise Unavailable("the backend's answer is not JSON")
        return obj

    def close(self) -> None:
        for poster in self._idle:
            poster.close()
        self._idle.clear()


def _json_or_none(raw: bytes | None) -> Any:
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


@dataclass
class Proxies:
    """The pod's proxies (None: off) and what the connect proxy is given."""

    connect: Proxy | None
    refresh: Proxy | None
    subscribe: Proxy | None
    always: bool
    headers: frozenset[str]
    cookies: frozenset[str]
    pod_name: str

    @classmethod
    def from_settings(cls, s: Settings, metrics: Metrics) -> Proxies:
        def proxy(kind: str, url: str | None) -> Proxy | None:
            if url is None:
                return None
            assert s.proxy_secret is not None  # Settings.validate says so
            return Proxy(
                kind,
                url,
                s.proxy_secret,
                metrics,
                pod_name=s.pod_name,
                timeout=s.proxy_timeout,
                concurrency=s.proxy_concurrency,
            )

        return cls(
            connect=proxy("connect", s.connect_proxy),
            refresh=proxy("refresh", s.refresh_proxy),
            subscribe=proxy("subscribe", s.subscribe_proxy),
            always=s.connect_proxy_mode == "always",
            headers=frozenset(h.strip().lower() for h in s.proxy_headers if h.strip()),
            cookies=frozenset(c.strip() for c in s.proxy_cookies if c.strip()),
            pod_name=s.pod_name,
        )

    async def authenticate(
        self, headers: Mapping[str, str], query: Mapping[str, str], transport: str
    ) -> Identity:
        """Who the connect proxy says this is; Denied, Unavailable, or ValueError (a bad
        ``?data=``: the client's fault)."""
        assert self.connect is not None
        data = parse_data(query.get("data"))
        picked, jar = allowed_request(headers, self.headers, self.cookies)
        payload = {"transport": transport, "headers": picked, "cookies": jar, "data": data}
        return await self.connect.call(payload, parse_answer)

    async def renew(self, ident: Identity, conn: str, transport: str) -> Identity:
        """The refresh proxy's new rights for a connection; Denied or Unavailable."""
        assert self.refresh is not None
        payload = {"user": ident.user, "conn": conn, "transport": transport, "info": ident.info}
        return await self.refresh.call(payload, lambda a: parse_answer(a, refresh=ident))

    async def may_subscribe(self, ident: Identity, channel: str, conn: str, transport: str) -> None:
        """The subscribe proxy's yes (returns), or Denied, or Unavailable."""
        assert self.subscribe is not None
        payload = {
            "user": ident.user,
            "channel": channel,
            "conn": conn,
            "transport": transport,
            "info": ident.info,
        }
        await self.subscribe.call(payload, parse_subscribe_answer)

    def close(self) -> None:
        for proxy in (self.connect, self.refresh, self.subscribe):
            if proxy is not None:
                proxy.close()
