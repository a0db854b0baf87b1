"""Every setting of a gateway pod, declared once.

Each field of ``Settings`` carries its flag, its ``CLARION_*`` environment
variable, its type (the parser), its default and its help. The command line
(``cli.py``), the environment reading, docs/configuration.md's settings table and the
operator's pod environment are all generated from these declarations.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from . import envvars, names

ENV_PREFIX = "CLARION_"


@dataclass(frozen=True)
class Option:
    """How one setting appears outside the code."""

    name: str  # the field name
    help: str
    parse: Callable[[str], Any]
    #: Shown in the docs' default column when the default is computed.
    doc_default: str | None = None
    #: The default under ``clarion dev`` when it differs (None: the same).
    dev_default: Any = None
    #: ``clarion dev`` sets this itself; it has no dev flag.
    serve_only: bool = False
    #: A repeatable flag instead of a comma-separated one (``--api-key K1 --api-key K2``).
    repeat_flag: str | None = None
    #: Secret values: never logged, never shown as a default.
    secret: bool = False
    choices: tuple[str, ...] | None = None

    @property
    def flag(self) -> str:
        return self.repeat_flag or "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return envvars.env_name(ENV_PREFIX, self.name)

    @property
    def is_bool(self) -> bool:
        return self.parse is envvars.parse_bool


def _choice(*values: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        v = raw.strip().lower()
        if v not in values:
            raise ValueError(f"must be one of {', '.join(values)}, not {raw!r}")
        return v

    parse.choices = values  # type: ignore[attr-defined]
    return parse


def _optional(raw: str) -> str | None:
    return raw or None


def check_url(url: str, flag: str) -> str:
    """The URL of a backend the pod calls (webhooks, proxies), or ValueError naming what is
    wrong with it and the ``flag`` that gave it."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{flag} must be an http:// or https:// URL")
    try:
        port = parts.port  # raises on a port that is not a number or out of range
    except ValueError:
        raise ValueError(f"{flag} has a bad port") from None
    if not parts.hostname or port == 0:
        raise ValueError(f"{flag} needs a host (and a port other than 0)")
    if parts.fragment or any(c.isspace() for c in url):
        raise ValueError(f"{flag} must have no fragment and no spaces")
    return url


def setting(default: Any, help: str, parse: Callable[[str], Any] = str, **kw: Any) -> Any:
    """A ``Settings`` field with its outside appearance (see ``Option``)."""
    meta = {"parse": parse, "help": help, **kw}
    if getattr(parse, "choices", None):
        meta["choices"] = parse.choices  # type: ignore[attr-defined]
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"clarion": meta})
    if callable(default):
        return field(default_factory=default, metadata={"clarion": meta})
    return field(default=default, metadata={"clarion": meta})


@dataclass
class Settings:
    host: str = setting("0.0.0.0", "address to listen on", dev_default="127.0.0.1")
    port: int = setting(8080, "port (`dev`: the first of `--pods` consecutive ports)", int)
    pod_name: str = setting(
        socket.gethostname,
        "this pod's name; its queue is `clarion.pod.<name>`",
        doc_default="the hostname",
        serve_only=True,
    )
    amqp_url: str | None = setting(
        None,
        "RabbitMQ URL, `amqp://user:pass@host:5672/vhost`; several, comma-separated, are "
        "tried in turn (one per node of a cluster)",
        _optional,
        doc_default="none: embedded broker",
        secret=True,
    )
    exchange: str = setting(names.EXCHANGE, "the fanout exchange")
    queue_prefix: str = setting(names.QUEUE_PREFIX, "prefix of the pod's queue")
    auth: str = setting(
        "jwt",
        "`jwt`, or `none` (clients name themselves with `?user=`; development only, "
        "logs a warning)",
        _choice("jwt", "none"),
        dev_default="none",
        serve_only=True,
    )
    jwt_secret: str | None = setting(
        None, "HS256 secret for client tokens", _optional, doc_default="—", secret=True
    )
    jwt_public_key: str | None = setting(
        None, "PEM file with the RS256 public key", _optional, doc_default="—"
    )
    jwks_file: str | None = setting(
        None, "JWKS JSON file with RS256 keys (picked by `kid`)", _optional, doc_default="—"
    )
    jwt_audience: str | None = setting(
        None,
        "required `aud` claim; without it a token that has an `aud` is refused",
        _optional,
        doc_default="—",
    )
    jwt_require_exp: bool = setting(
        True,
        "refuse tokens without an `exp` claim (`--no-jwt-require-exp` accepts them)",
        envvars.parse_bool,
    )
    jwt_any_channel: bool = setting(
        False,
        "a token without a `channels` claim may subscribe to any channel (by default: none)",
        envvars.parse_bool,
    )
    api_keys: list[str] = setting(
        [],
        "keys for `POST /api/publish`; several at once for rotation",
        envvars.parse_list,
        doc_default="none (`--auth jwt` then needs `--public-api`)",
        repeat_flag="--api-key",
        secret=True,
    )
    public_api: bool = setting(
        False,
        "let `POST /api/publish` run without API keys under `--auth jwt` (without it, a pod "
        "with no `--api-key` refuses to start: the API fails closed)",
        envvars.parse_bool,
    )
    api_port: int = setting(
        0,
        "port of the internal API (`/api/*`, `/admin/*`, `/metrics`); then the public port "
        "serves only `/ws`, the demo page (`/`, `/clarion.js`) and `/healthz`, `/readyz`. "
        "`0`: the public port serves both",
        int,
    )
    admin_token: str | None = setting(
        None,
        "token for `POST /admin/shed`",
        _optional,
        doc_default="none: endpoint off",
        secret=True,
    )
    allow_client_publish: bool = setting(
        False,
        "let clients publish (publish frames, bare text)",
        envvars.parse_bool,
        dev_default=True,
        serve_only=True,
    )
    allowed_origins: list[str] = setting(
        [],
        "comma-separated `Origin` allowlist for browsers",
        envvars.parse_list,
        doc_default="any",
    )
    max_connections: int = setting(20_000, "sockets per pod; beyond it new sockets close 1013", int)
    max_connects_per_second: float = setting(
        1000.0,
        "new sockets a pod admits per second (bursts of twice that); beyond it they close 1013 "
        "(`admission`) and come back later: a reconnect storm is spread, not absorbed at once; "
        "0: no limit",
        float,
    )
    max_connections_per_user: int = setting(
        0,
        "sockets one user may hold on one pod (counted per pod: no pod asks another, so the "
        "limit costs nothing on the connect path; across N pods a user may hold N times it); "
        "one more is closed 4504 and the client stops; 0: no limit",
        int,
    )
    max_subscriptions: int = setting(100, "channel subscriptions per socket", int)
    max_frame_bytes: int = setting(1024 * 1024, "largest client frame; larger closes 1009", int)
    max_body_bytes: int = setting(1024 * 1024, "largest publish body; larger is 413", int)
    max_frames_per_second: float = setting(
        50.0, "client frames per second per socket (bursts of twice that)", float
    )
    send_buffer_messages: int = setting(1000, "per-socket send buffer; overflow closes 1013", int)
    send_buffer_bytes: int = setting(4 * 1024 * 1024, "per-socket send buffer in bytes", int)
    queue_max_length: int = setting(
        100_000, "pod queue bound (`x-max-length`, oldest dropped)", int
    )
    queue_message_ttl_ms: int = setting(300_000, "pod queue message TTL (`x-message-ttl`)", int)
    queue_expires_ms: int = setting(
        1_800_000,
        "unused pod queue expiry (`x-expires`), a safety net behind the operator",
        int,
    )
    pod_queue_type: str = setting(
        "exclusive",
        "`exclusive` (lives and dies with the pod's connection; caught up from history after "
        "each reconnect), `classic` (transient non-exclusive: RabbitMQ before 4.3, or with "
        "`deprecated_features.permit.transient_nonexcl_queues`) or `quorum` (replicated; see "
        "[broker HA](broker-ha.md))",
        _choice("exclusive", "classic", "quorum"),
    )
    routing: str = setting(
        "direct",
        "`fanout` (every pod receives every message) or `direct` (RabbitMQ routes user and "
        "channel messages only to the pods holding them; each pod binds its queue to the keys "
        "of its users and channels; see [scaling out](scaling.md))",
        _choice("fanout", "direct"),
    )
    history_max_age: str = setting(
        "1h", "how far back `since=` recovery reaches (stream `x-max-age`)"
    )
    replay_timeout: float = setting(
        30.0,
        "seconds a `since=` replay may wait for the history (its reads are retried) before "
        "the socket is closed 1013 to come back with the same `since`",
        float,
    )
    idempotency_window: float = setting(
        300.0,
        "seconds an idempotency key is remembered: a publish with a key seen within it "
        "answers the first message's id and is not delivered again",
        float,
    )
    publish_settle_timeout: float = setting(
        1.0,
        "seconds a publish with an idempotency key waits to see its own message come back "
        "(so that a retry racing another pod answers with the winner's id)",
        float,
    )
    presence_interval: float = setting(
        5.0,
        "seconds between a pod's hellos to the others; a pod silent for three intervals is "
        "forgotten by presence queries",
        float,
    )
    presence_timeout: float = setting(
        1.0,
        "seconds a presence query waits for the other pods (those that do not answer are "
        "named in `missing`)",
        float,
    )
    webhook_url: str | None = setting(
        None,
        "where webhook events are POSTed (`http://` or `https://`); unset: webhooks off. "
        "See [webhooks](server-api.md#webhooks)",
        _optional,
        doc_default="none: off",
        secret=True,
    )
    webhook_secret: str | None = setting(
        None,
        "HMAC-SHA256 key of the `X-Clarion-Signature` header (required with a URL)",
        _optional,
        doc_default="—",
        secret=True,
    )
    webhook_events: list[str] = setting(
        list(names.WEBHOOK_EVENTS),
        "comma-separated events to send: `channel_occupied`, `channel_vacated`, "
        "`user_online`, `user_offline`",
        envvars.parse_list,
    )
    webhook_queue_size: int = setting(
        1000, "webhook events a pod holds unsent; beyond it new ones are dropped (counted)", int
    )
    webhook_retries: int = setting(
        5, "retries of a webhook POST answered non-2xx or timed out (then it counts as failed)", int
    )
    webhook_retry_delay: float = setting(
        0.5, "seconds before the first retry; doubled each time, at most 30", float
    )
    webhook_timeout: float = setting(5.0, "seconds a webhook POST may take", float)
    refresh_grace: float = setting(
        0.0,
        "seconds a connection outlives its token's `exp` (or the connect proxy's `expire_at`) "
        "waiting for a `refresh` frame (or the refresh proxy) before it is closed 4001 "
        "(4002, 1013)",
        float,
    )
    connect_proxy: str | None = setting(
        None,
        "the backend URL that authenticates connections (`http://` or `https://`): the pod "
        "POSTs the allowed headers and cookies and the client's `?data=`, signed, and the "
        "answer says who it is and what it may do. See [connect proxy](auth.md#connect-proxy)",
        _optional,
        doc_default="none: off",
        secret=True,
    )
    connect_proxy_mode: str = setting(
        "no-token",
        "`no-token` (only connections without a token go to the connect proxy; a token is "
        "checked as always) or `always` (every connection, a token is not looked at)",
        _choice("no-token", "always"),
    )
    refresh_proxy: str | None = setting(
        None,
        "the backend URL that renews a connection the connect proxy let in, when its "
        "`expire_at` comes (needs `--connect-proxy`); unset: such a connection is closed 4002 "
        "then and the client reconnects through the connect proxy",
        _optional,
        doc_default="none: off",
        secret=True,
    )
    subscribe_proxy: str | None = setting(
        None,
        "the backend URL that decides subscriptions the connection's rights do not cover "
        "(and every one of a namespace with `subscribe=proxy`): the pod POSTs the user, the "
        "channel and the connection info, signed; the answer allows or denies. Unset: such a "
        "subscription needs a subscription token. See [auth](auth.md)",
        _optional,
        doc_default="none: off",
        secret=True,
    )
    proxy_secret: str | None = setting(
        None,
        "HMAC-SHA256 key of the proxies' `X-Clarion-Signature` (as webhooks'; required with "
        "a proxy URL)",
        _optional,
        doc_default="—",
        secret=True,
    )
    proxy_headers: list[str] = setting(
        [],
        "request headers passed to the connect proxy (comma-separated allow-list, any case); "
        "`Cookie` is not one of them: name the cookies in `--proxy-cookies`",
        envvars.parse_list,
        doc_default="none",
    )
    proxy_cookies: list[str] = setting(
        [],
        "cookies passed to the connect proxy (comma-separated allow-list of names); the others "
        "never leave the pod",
        envvars.parse_list,
        doc_default="none",
    )
    proxy_timeout: float = setting(
        2.0,
        "seconds a proxy call may take, waiting for a free slot included; then the connection "
        "is closed 1013 (`proxy_unavailable`)",
        float,
    )
    proxy_concurrency: int = setting(
        64,
        "proxy calls in flight from one pod at most (the rest wait, within `--proxy-timeout`): "
        "a reconnect storm cannot become a backend outage",
        int,
    )
    namespaces: str = setting(
        "",
        "channel namespaces (`<namespace>:<rest>`) and their options, a JSON object: "
        '`{"orders": {"history": false, "subscribe": "proxy", "rate": 5}}`; the key `""` holds '
        "plain names' options. See [namespaces](protocol.md#channel-namespaces)",
        doc_default="none",
    )
    join_leave: bool = setting(
        False,
        "send `join`/`leave` frames to a channel's subscribers when a user's first socket in "
        "the cluster subscribes to it or their last one leaves",
        envvars.parse_bool,
    )
    history_max_bytes: int = setting(512 * 1024 * 1024, "size bound of the history stream", int)
    drain_delay: float = setting(
        5.0,
        "seconds between SIGTERM (readiness 503 at once) and the first close",
        float,
        dev_default=0.0,
    )
    drain_window: float = setting(
        10.0, "seconds over which sockets are closed with 1001, at least", float
    )
    drain_rate: float = setting(
        500.0,
        "sockets closed per second at most during a drain: the window stretches to "
        "sockets / rate, so the other pods are never handed more reconnects than they admit "
        "(keep it at or below `--max-connects-per-second`; 0: the window alone)",
        float,
    )
    sse: bool = setting(
        True,
        "serve Server-Sent Events at `GET /sse` (see [HTTP streams](http-streams.md))",
        envvars.parse_bool,
    )
    http_stream: bool = setting(
        True,
        "serve newline-delimited JSON streams at `GET /stream`; with either stream on, "
        "`POST /emulation` takes the streams' client frames",
        envvars.parse_bool,
    )
    stream_keepalive: float = setting(
        15.0,
        "seconds an idle HTTP stream waits before a keep-alive (an SSE comment, an empty "
        "NDJSON line) so proxies do not cut it; 0: none",
        float,
    )
    compression: bool = setting(
        False, "per-message deflate (see [performance](performance.md))", envvars.parse_bool
    )
    demo: bool = setting(True, "serve the demo page at `/`", envvars.parse_bool)
    log_level: str = setting(
        "info",
        "`debug`, `info`, `warning`, `error`",
        _choice("debug", "info", "warning", "error"),
    )

    def validate(self) -> None:
        if not self.pod_name:
            raise ValueError("pod name must not be empty")
        if self.auth not in ("none", "jwt"):
            raise ValueError(f"--auth must be 'none' or 'jwt', not {self.auth!r}")
        if self.auth == "jwt" and not (self.jwt_secret or self.jwt_public_key or self.jwks_file):
            raise ValueError(
                "--auth jwt needs --jwt-secret, --jwt-public-key or --jwks-file "
                "(or use --auth none for development)"
            )
        if self.auth == "jwt" and not self.api_keys and not self.public_api:
            raise ValueError(
                "--auth jwt without --api-key would leave POST /api/publish open to anyone: "
                "give API keys (--api-key, CLARION_API_KEYS), or --public-api to open it on purpose"
            )
        if not 0 <= self.api_port <= 65535 or (self.api_port and self.api_port == self.port):
            raise ValueError("--api-port must be 0 (the public port) or another port than --port")
        for name in (
            "max_connections",
            "max_subscriptions",
            "max_frame_bytes",
            "max_body_bytes",
            "send_buffer_messages",
            "send_buffer_bytes",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive")
        if self.max_connections_per_user < 0:
            raise ValueError("--max-connections-per-user must be >= 0 (0: no limit)")
        self._validate_namespaces()
        if self.max_connects_per_second < 0:
            raise ValueError("--max-connects-per-second must be >= 0 (0: no limit)")
        if self.drain_delay < 0 or self.drain_window < 0 or self.drain_rate < 0:
            raise ValueError("--drain-delay, --drain-window and --drain-rate must be >= 0")
        if self.stream_keepalive < 0:
            raise ValueError("--stream-keepalive must be >= 0 (0: none)")
        self._validate_webhooks()
        self._validate_proxies()

    def _validate_namespaces(self) -> None:
        from .namespaces import Namespaces

        namespaces = Namespaces.parse(self.namespaces)
        if namespaces.any_subscribe("proxy") and self.subscribe_proxy is None:
            raise ValueError(
                "--namespaces: a namespace with subscribe=proxy needs --subscribe-proxy"
            )
        if namespaces.any_subscribe("token") and self.auth != "jwt":
            raise ValueError("--namespaces: a namespace with subscribe=token needs --auth jwt")

    def _validate_proxies(self) -> None:
        if self.refresh_grace < 0:
            raise ValueError("--refresh-grace must be >= 0")
        for flag, url in (
            ("--connect-proxy", self.connect_proxy),
            ("--refresh-proxy", self.refresh_proxy),
            ("--subscribe-proxy", self.subscribe_proxy),
        ):
            if url is not None:
                check_url(url, flag)
                if not self.proxy_secret:
                    raise ValueError(
                        f"{flag} needs --proxy-secret (the backend verifies the signature)"
                    )
        if self.refresh_proxy is not None and self.connect_proxy is None:
            raise ValueError(
                "--refresh-proxy renews connections the connect proxy let in: it needs "
                "--connect-proxy"
            )
        if any(h.strip().lower() == "cookie" for h in self.proxy_headers):
            raise ValueError(
                "--proxy-headers cannot pass Cookie whole: name the cookies in --proxy-cookies"
            )
        if self.proxy_timeout <= 0 or self.proxy_concurrency <= 0:
            raise ValueError("--proxy-timeout and --proxy-concurrency must be positive")

    def _validate_webhooks(self) -> None:
        unknown = sorted(set(self.webhook_events) - set(names.WEBHOOK_EVENTS))
        if unknown:
            raise ValueError(
                f"--webhook-events: unknown {', '.join(map(repr, unknown))} "
                f"(known: {', '.join(names.WEBHOOK_EVENTS)})"
            )
        if self.webhook_url is None:
            return
        check_url(self.webhook_url, "--webhook-url")
        if not self.webhook_secret:
            raise ValueError("--webhook-url needs --webhook-secret (receivers verify signatures)")
        if not self.webhook_events:
            raise ValueError("--webhook-events must name at least one event with --webhook-url")
        if self.webhook_queue_size <= 0 or self.webhook_retries < 0:
            raise ValueError("--webhook-queue-size must be positive, --webhook-retries >= 0")
        if not (self.webhook_retry_delay > 0 and self.webhook_timeout > 0):
            raise ValueError("--webhook-retry-delay and --webhook-timeout must be positive")

    @classmethod
    def from_env(cls, environ: Mapping[str, str], *, dev: bool = False, **given: Any) -> Settings:
        """Settings from ``CLARION_*`` variables; ``given`` (flags) win over them."""
        values: dict[str, Any] = {}
        for opt, f in _declared():
            if opt.name in given:
                values[opt.name] = given[opt.name]
                continue
            default = default_of(f, dev=dev)
            values[opt.name] = envvars.read(environ, opt.env, opt.parse, default)
        return cls(**values)


def _declared() -> Iterator[tuple[Option, dataclasses.Field[Any]]]:
    for f in dataclasses.fields(Settings):
        meta = f.metadata.get("clarion")
        if meta is not None:
            yield Option(name=f.name, **meta), f


def options() -> list[Option]:
    """Every declared setting, in declaration order."""
    return [opt for opt, _ in _declared()]


def option(name: str) -> Option:
    for opt in options():
        if opt.name == name:
            return opt
    raise KeyError(name)


def default_of(f: dataclasses.Field[Any] | str, *, dev: bool = False) -> Any:
    if isinstance(f, str):
        f = next(x for x in dataclasses.fields(Settings) if x.name == f)
    meta = f.metadata["clarion"]
    if dev and meta.get("dev_default") is not None:
        return meta["dev_default"]
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def drain_seconds(sockets: int, window: float, rate: float) -> float:
    """How long a drain spreads its closes: ``window`` at least, and no more than ``rate``
    closes a second (0: the window alone). The reconnects land on the other pods at
    that rate, which must stay below what they admit (``--max-connects-per-second``)."""
    return max(window, sockets / rate) if rate > 0 else window


def markdown_table() -> str:
    """docs/configuration.md's settings table, as the declarations say it."""
    rows = ["| flag | env var | default | meaning |", "|---|---|---|---|"]
    for opt, f in _declared():
        flag = f"`{opt.flag}`" + (" (repeatable)" if opt.repeat_flag else "")
        env = f"`{opt.env}`" + (" (comma-separated)" if opt.repeat_flag else "")
        if opt.doc_default is not None:
            default = opt.doc_default
        else:
            default = f"`{envvars.describe(default_of(f))}`"
        dev = opt.dev_default
        if dev is not None:
            default += f" (`dev`: `{envvars.describe(dev)}`)"
        rows.append(f"| {flag} | {env} | {default} | {opt.help} |")
    return "\n".join(rows)
