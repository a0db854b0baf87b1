"""The ``clarion`` command: dev, serve, listen, publish.

Every ``serve`` flag is also an environment variable ``CLARION_<FLAG>``
(``--amqp-url`` is ``CLARION_AMQP_URL``); a flag given on the command line wins.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import socket
import sys
from collections.abc import Sequence
from typing import Any

import orjson

from . import __version__
from .config import Settings

ENV_PREFIX = "CLARION_"


def _env(name: str) -> str | None:
    return os.environ.get(ENV_PREFIX + name.upper().replace("-", "_"))


def _bool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {value!r}")


def _list(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


class _EnvDefaults:
    """Adds flags whose default comes from CLARION_<FLAG>, then the built-in default."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.p = parser

    def opt(
        self,
        flag: str,
        type: Any = str,
        default: Any = None,
        help: str = "",
        env: str | None = None,
        **kw: Any,
    ) -> None:
        name = flag.lstrip("-")
        raw = _env(env or name)
        value = default
        if raw is not None:
            try:
                value = type(raw)
            except (ValueError, argparse.ArgumentTypeError) as exc:
                raise SystemExit(
                    f"clarion: bad value for {ENV_PREFIX}{name.upper()}: {exc}"
                ) from None
        envname = ENV_PREFIX + (env or name).upper().replace("-", "_")
        self.p.add_argument(
            flag,
            type=type,
            default=value,
            help=f"{help} [env {envname}, default {default!r}]",
            **kw,
        )

    def flag(self, flag: str, default: bool, help: str) -> None:
        name = flag.lstrip("-")
        raw = _env(name)
        value = _bool(raw) if raw is not None else default
        envname = ENV_PREFIX + name.upper().replace("-", "_")
        self.p.add_argument(
            flag,
            action=argparse.BooleanOptionalAction,
            default=value,
            help=f"{help} [env {envname}, default {default}]",
        )


def _add_pod_options(p: argparse.ArgumentParser, *, dev: bool) -> None:
    d = Settings.__dataclass_fields__
    e = _EnvDefaults(p)
    e.opt("--host", default="127.0.0.1" if dev else "0.0.0.0", help="address to listen on")
    e.opt("--port", type=int, default=8080, help="port (dev: first of --pods consecutive ports)")
    e.opt(
        "--amqp-url",
        default=None,
        help="RabbitMQ URL (amqp://user:pass@host:5672/vhost); none: the embedded broker",
    )
    if not dev:
        e.opt(
            "--pod-name",
            default=socket.gethostname(),
            help="this pod's name; its queue is clarion.pod.NAME",
        )
        e.opt(
            "--auth",
            default="jwt",
            choices=["none", "jwt"],
            help="client auth: jwt, or none (?user=ID, development only)",
        )
        e.flag("--allow-client-publish", False, "let clients publish (publish frames, bare text)")
    e.opt("--jwt-secret", default=None, help="HS256 secret for client tokens")
    e.opt("--jwt-public-key", default=None, help="PEM file: RS256 public key for client tokens")
    e.opt("--jwks-file", default=None, help="JWKS JSON file: RS256 keys for client tokens")
    e.opt("--jwt-audience", default=None, help="required 'aud' claim, if any")
    p.add_argument(
        "--api-key",
        action="append",
        default=_list(_env("api_keys")),
        help="API key for POST /api/publish; repeat for rotation "
        "[env CLARION_API_KEYS, comma-separated; default: none, API open]",
    )
    e.opt("--admin-token", default=None, help="token for POST /admin/shed (unset: endpoint off)")
    e.opt(
        "--allowed-origins",
        type=_list,
        default=[],
        help="comma-separated Origin allowlist for browsers (empty: any)",
    )
    e.opt(
        "--max-connections",
        type=int,
        default=d["max_connections"].default,
        help="sockets per pod; beyond it new sockets are closed 1013",
    )
    e.opt(
        "--max-subscriptions",
        type=int,
        default=d["max_subscriptions"].default,
        help="channel subscriptions per socket",
    )
    e.opt(
        "--max-frame-bytes",
        type=int,
        default=d["max_frame_bytes"].default,
        help="largest client frame; larger closes 1009",
    )
    e.opt(
        "--max-body-bytes",
        type=int,
        default=d["max_body_bytes"].default,
        help="largest publish API body; larger is 413",
    )
    e.opt(
        "--max-frames-per-second",
        type=float,
        default=d["max_frames_per_second"].default,
        help="client frames per second per socket (bursts of twice that)",
    )
    e.opt(
        "--send-buffer-messages",
        type=int,
        default=d["send_buffer_messages"].default,
        help="per-socket send buffer in messages; overflow closes 1013",
    )
    e.opt(
        "--send-buffer-bytes",
        type=int,
        default=d["send_buffer_bytes"].default,
        help="per-socket send buffer in bytes; overflow closes 1013",
    )
    e.opt("--exchange", default=d["exchange"].default, help="the fanout exchange")
    e.opt(
        "--queue-prefix",
        default=d["queue_prefix"].default,
        help="prefix of this pod's queue (the pod name follows)",
    )
    e.opt(
        "--queue-max-length",
        type=int,
        default=d["queue_max_length"].default,
        help="pod queue bound (x-max-length, oldest dropped)",
    )
    e.opt(
        "--queue-message-ttl-ms",
        type=int,
        default=d["queue_message_ttl_ms"].default,
        help="pod queue message TTL (x-message-ttl)",
    )
    e.opt(
        "--queue-expires-ms",
        type=int,
        default=d["queue_expires_ms"].default,
        help="unused pod queue expiry (x-expires), a safety net behind the operator",
    )
    e.opt(
        "--history-max-age",
        default=d["history_max_age"].default,
        help="how far back since= recovery reaches (clarion.history stream x-max-age)",
    )
    e.opt(
        "--history-max-bytes",
        type=int,
        default=d["history_max_bytes"].default,
        help="size bound of the clarion.history stream (x-max-length-bytes)",
    )
    e.opt(
        "--drain-delay",
        type=float,
        default=d["drain_delay"].default,
        help="seconds between SIGTERM (readiness 503) and the first close",
    )
    e.opt(
        "--drain-window",
        type=float,
        default=d["drain_window"].default,
        help="seconds over which sockets are closed (1001) on drain",
    )
    e.flag("--compression", False, "per-message deflate (costs memory and CPU per socket)")
    e.flag("--demo", True, "serve the demo page at /")
    e.opt(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log level",
    )


def _settings(
    args: argparse.Namespace, *, pod_name: str, auth: str, client_publish: bool
) -> Settings:
    return Settings(
        pod_name=pod_name,
        amqp_url=args.amqp_url or None,
        auth=auth,
        jwt_secret=args.jwt_secret,
        jwt_public_key=args.jwt_public_key,
        jwks_file=args.jwks_file,
        jwt_audience=args.jwt_audience,
        api_keys=list(args.api_key or []),
        admin_token=args.admin_token,
        allow_client_publish=client_publish,
        allowed_origins=args.allowed_origins,
        max_connections=args.max_connections,
        max_subscriptions=args.max_subscriptions,
        max_frame_bytes=args.max_frame_bytes,
        max_body_bytes=args.max_body_bytes,
        max_frames_per_second=args.max_frames_per_second,
        send_buffer_messages=args.send_buffer_messages,
        send_buffer_bytes=args.send_buffer_bytes,
        exchange=args.exchange,
        queue_prefix=args.queue_prefix,
        queue_max_length=args.queue_max_length,
        queue_message_ttl_ms=args.queue_message_ttl_ms,
        queue_expires_ms=args.queue_expires_ms,
        history_max_age=args.history_max_age,
        history_max_bytes=args.history_max_bytes,
        drain_delay=args.drain_delay,
        drain_window=args.drain_window,
        compression=args.compression,
        demo=args.demo,
    )


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from .app import Gateway
    from .server import PodSpec, run

    _setup_logging(args.log_level)
    try:
        settings = _settings(
            args, pod_name=args.pod_name, auth=args.auth, client_publish=args.allow_client_publish
        )
        gateway = Gateway(settings)
    except (ValueError, OSError) as exc:
        print(f"clarion serve: {exc}", file=sys.stderr)
        return 2
    run([PodSpec(gateway, args.host, args.port)], args.log_level)
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from .app import Gateway
    from .broker import MemoryExchange
    from .server import PodSpec, run

    _setup_logging(args.log_level)
    if args.pods < 1:
        print("clarion dev: --pods must be at least 1", file=sys.stderr)
        return 2
    exchange = MemoryExchange()
    specs = []
    for i in range(args.pods):
        settings = _settings(args, pod_name=f"dev-{i}", auth="none", client_publish=True)
        # Draining is for Kubernetes; on a laptop Ctrl-C should be instant.
        settings.drain_delay = 0
        specs.append(PodSpec(Gateway(settings, memory_exchange=exchange), args.host, args.port + i))
    broker = "RabbitMQ at " + args.amqp_url if args.amqp_url else "the embedded in-memory broker"
    print(f"clarion dev: {args.pods} pod(s) sharing {broker}", flush=True)
    for spec in specs:
        print(
            f"  pod {spec.gateway.pod_name}: http://{spec.host}:{spec.port}/  "
            f"(WebSocket ws://{spec.host}:{spec.port}/ws)",
            flush=True,
        )
    run(specs, args.log_level)
    return 0


async def _listen(args: argparse.Namespace) -> int:
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    import websockets

    parts = urlsplit(args.url)
    if parts.scheme not in ("ws", "wss"):
        print("clarion listen: URL must start with ws:// or wss://", file=sys.stderr)
        return 2
    last_id: str | None = None
    delay = 0.5
    attempts = 0
    while True:
        query = dict(parse_qsl(parts.query))
        if args.user:
            query["user"] = args.user
        if args.token:
            query["token"] = args.token
        if last_id:
            query["since"] = last_id
        url = urlunsplit(parts._replace(query=urlencode(query)))
        try:
            async with websockets.connect(url, max_size=None, open_timeout=10) as ws:
                attempts = 0
                delay = 0.5
                for ch in args.channel:
                    frame: dict[str, Any] = {"type": "subscribe", "channel": ch}
                    if last_id:
                        frame["since"] = last_id
                    await ws.send(orjson.dumps(frame).decode())
                async for raw in ws:
                    try:
                        msg = orjson.loads(raw)
                    except orjson.JSONDecodeError:
                        continue
                    if not isinstance(msg, dict):
                        continue
                    if msg.get("type") == "message":
                        last_id = msg.get("id") or last_id
                        print(orjson.dumps(msg).decode(), flush=True)
                    elif args.verbose:
                        print(orjson.dumps(msg).decode(), file=sys.stderr, flush=True)
                print(
                    f"clarion listen: closed {ws.close_code} {ws.close_reason}",
                    file=sys.stderr,
                    flush=True,
                )
                if ws.close_code == 1008:
                    return 1
        except (TimeoutError, OSError, websockets.exceptions.WebSocketException) as exc:
            print(f"clarion listen: {exc}", file=sys.stderr, flush=True)
        attempts += 1
        if args.once or (args.max_retries is not None and attempts > args.max_retries):
            return 1
        pause = delay * (0.5 + random.random())
        print(f"clarion listen: reconnecting in {pause:.1f}s", file=sys.stderr, flush=True)
        await asyncio.sleep(pause)
        delay = min(delay * 2, 30.0)


def cmd_listen(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_listen(args))
    except KeyboardInterrupt:
        return 0


def cmd_publish(args: argparse.Namespace) -> int:
    import httpx

    try:
        data = orjson.loads(args.data)
    except orjson.JSONDecodeError:
        data = args.data  # plain text is sent as a JSON string
    body: dict[str, Any] = {"data": data}
    if args.user:
        body["user"] = args.user
    elif args.channel:
        body["channel"] = args.channel
    else:
        body["broadcast"] = True
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    url = args.url.rstrip("/") + "/api/publish"
    try:
        r = httpx.post(url, json=body, headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        print(f"clarion publish: {exc}", file=sys.stderr)
        return 1
    if r.status_code != 202:
        print(f"clarion publish: HTTP {r.status_code}: {r.text}", file=sys.stderr)
        return 1
    print(r.json()["id"])
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clarion", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"clarion {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="N pods in one process, embedded broker, auth off, demo page")
    dev.add_argument("--pods", type=int, default=2, help="number of pods (ports PORT..PORT+N-1)")
    _add_pod_options(dev, dev=True)
    dev.set_defaults(func=cmd_dev)

    serve = sub.add_parser("serve", help="one gateway pod")
    _add_pod_options(serve, dev=False)
    serve.set_defaults(func=cmd_serve)

    listen = sub.add_parser("listen", help="print pushed messages as JSON lines")
    listen.add_argument("url", help="ws://HOST:PORT/ws")
    who = listen.add_mutually_exclusive_group()
    who.add_argument("--user", help="user id (gateways with --auth none)")
    who.add_argument("--token", help="JWT (gateways with --auth jwt)")
    listen.add_argument("--channel", action="append", default=[], help="subscribe (repeatable)")
    listen.add_argument("--once", action="store_true", help="do not reconnect")
    listen.add_argument("--max-retries", type=int, default=None, help="give up after N failures")
    listen.add_argument("-v", "--verbose", action="store_true", help="print other frames to stderr")
    listen.set_defaults(func=cmd_listen)

    pub = sub.add_parser("publish", help="publish one message through the HTTP API")
    pub.add_argument("--url", required=True, help="http://HOST:PORT of any gateway pod")
    target = pub.add_mutually_exclusive_group(required=True)
    target.add_argument("--user")
    target.add_argument("--channel")
    target.add_argument("--broadcast", action="store_true")
    pub.add_argument("--api-key", default=_env("api_key"), help="[env CLARION_API_KEY]")
    pub.add_argument("data", help="JSON, or plain text sent as a JSON string")
    pub.set_defaults(func=cmd_publish)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
