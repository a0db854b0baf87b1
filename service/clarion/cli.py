"""The ``clarion`` command: dev, serve, listen, publish.

Every ``serve`` flag is also an environment variable ``CLARION_<FLAG>``
(``--amqp-url`` is ``CLARION_AMQP_URL``); a flag given on the command line wins.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import random
import sys
from collections.abc import Sequence
from typing import Any

import orjson

from . import __version__, config, logs
from .config import Settings, options
from .envvars import describe


def _add_pod_options(p: argparse.ArgumentParser, *, dev: bool) -> None:
    """One flag per declared setting (config.py); its default comes from the environment."""
    for opt in options():
        if dev and opt.serve_only:
            continue
        default = config.default_of(opt.name, dev=dev)
        shown = "hidden" if opt.secret and default else (opt.doc_default or describe(default))
        env = opt.env + (", comma-separated" if opt.repeat_flag else "")
        kw: dict[str, Any] = {
            "dest": opt.name,
            "default": argparse.SUPPRESS,
            "help": f"{_plain(opt.help)} [env {env}; default {_plain(shown)}]",
        }
        if opt.is_bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif opt.repeat_flag:
            kw["action"] = "append"
        else:
            kw["type"] = opt.parse
            if opt.choices:
                kw["metavar"] = "{" + ",".join(opt.choices) + "}"
        p.add_argument(opt.flag, **kw)


def _plain(text: str) -> str:
    return text.replace("`", "").replace("%", "%%")


def _settings(args: argparse.Namespace, *, dev: bool, **fixed: Any) -> Settings:
    """Flags given on the command line win over ``CLARION_*`` variables, then defaults."""
    given = {o.name: getattr(args, o.name) for o in options() if hasattr(args, o.name)}
    return Settings.from_env(os.environ, dev=dev, **{**given, **fixed})


def cmd_serve(args: argparse.Namespace) -> int:
    from .gateway import Gateway
    from .server import run

    try:
        settings = _settings(args, dev=False)
        logs.setup(settings.log_level)
        gateway = Gateway(settings)
    except (ValueError, OSError) as exc:
        print(f"clarion serve: {exc}", file=sys.stderr)
        return 2
    run([gateway])
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from .broker import MemoryExchange
    from .gateway import Gateway
    from .server import run

    if args.pods < 1:
        print("clarion dev: --pods must be at least 1", file=sys.stderr)
        return 2
    exchange = MemoryExchange()
    gateways = []
    try:
        base = _settings(args, dev=True)
        logs.setup(base.log_level)
        for i in range(args.pods):
            settings = dataclasses.replace(
                base,
                pod_name=f"dev-{i}",
                port=base.port + i,
                api_port=base.api_port + i if base.api_port else 0,
            )
            gateways.append(Gateway(settings, memory_exchange=exchange))
    except (ValueError, OSError) as exc:
        print(f"clarion dev: {exc}", file=sys.stderr)
        return 2
    broker = "RabbitMQ" if base.amqp_url else "the embedded in-memory broker"
    print(f"clarion dev: {args.pods} pod(s) sharing {broker}", flush=True)
    for gw in gateways:
        s = gw.settings
        print(
            f"  pod {s.pod_name}: http://{s.host}:{s.port}/  (WebSocket ws://{s.host}:{s.port}/ws)",
            flush=True,
        )
    run(gateways)
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
                        mid = msg.get("id")
                        if isinstance(mid, str) and (last_id is None or mid > last_id):
                            last_id = mid  # the greatest id: replays are not in one order
                        print(orjson.dumps(msg).decode(), flush=True)
                    elif args.verbose:
                        print(orjson.dumps(msg).decode(), file=sys.stderr, flush=True)
                print(
                    f"clarion listen: closed {ws.close_code} {ws.close_reason}",
                    file=sys.stderr,
                    flush=True,
                )
                if ws.close_code is not None and (
                    ws.close_code in (1008, 1009) or 4500 <= ws.close_code <= 4999
                ):
                    return 1  # the server says do not come back as you are
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
    pub.add_argument(
        "--api-key",
        default=(os.environ.get(config.option("api_keys").env) or ",").split(",")[0] or None,
        help=f"API key [env {config.option('api_keys').env}: the first of its keys]",
    )
    pub.add_argument("data", help="JSON, or plain text sent as a JSON string")
    pub.set_defaults(func=cmd_publish)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
