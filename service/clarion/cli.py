"""The ``clarion`` command: dev, serve, listen, publish.

Every ``serve`` flag is also an environment variable ``CLARION_<FLAG>``
(``--amqp-url`` is ``CLARION_AMQP_URL``); a flag given on the command line wins.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
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
    from clarion_client import Closed, Recovery, StateChange, Subscriber

    def on_state(change: StateChange) -> None:
        if change.state == "connected" and sub.info:
            say(f"connected to pod {sub.info['pod']} as {sub.info['user']}")
        elif change.state == "connecting" and change.delay is not None:
            say(f"closed {change.code} {change.reason}; reconnecting in {change.delay:.1f}s", True)

    def on_recovery(rec: Recovery) -> None:
        what = f"channel {rec.channel}" if rec.channel else "connection"
        if rec.recovered:
            say(f"{what}: recovered {rec.missed} missed message(s)")
        else:
            say(f"{what}: resync (something may be lost; since={rec.since})", always=True)

    def say(text: str, always: bool = False) -> None:
        if always or args.verbose:
            print(f"clarion listen: {text}", file=sys.stderr, flush=True)

    try:
        sub = Subscriber(
            args.url,
            user=args.user,
            token=args.token,
            channels=args.channel,
            reconnect=not args.once,
            max_retries=args.max_retries,
            on_state=on_state,
            on_recovery=on_recovery,
            on_error=lambda code, text: say(f"{code}: {text}", always=True),
        )
    except ValueError as exc:
        print(f"clarion listen: {exc}", file=sys.stderr)
        return 2
    try:
        async with sub:
            async for message in sub:
                print(orjson.dumps(message.frame()).decode(), flush=True)
    except Closed as exc:
        print(f"clarion listen: stopped: {exc.code} {exc.reason}", file=sys.stderr, flush=True)
        return 1
    return 0


def cmd_listen(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_listen(args))
    except KeyboardInterrupt:
        return 0


#: The first character of a DATA argument that says "this is JSON": such an
#: argument must parse. Anything else that is not valid JSON is sent as a string.
_JSON_START = ("{", "[", '"')


def publish_data(text: str) -> Any:
    """The data of ``clarion publish DATA``: JSON, or plain text sent as a string.

    Text that starts (after blanks) like an object, array or string must be
    valid JSON: ``{"a":`` is a mistake, not a message (ValueError). Numbers,
    ``true``, ``false`` and ``null`` are JSON when they parse; ``3 apples`` is text.
    """
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        if text.lstrip().startswith(_JSON_START):
            raise ValueError(f"DATA looks like JSON but is not valid JSON: {exc}") from None
        return text


def cmd_publish(args: argparse.Namespace) -> int:
    from clarion_client import Publisher, PublishError

    try:
        data = publish_data(args.data)
    except ValueError as exc:
        print(f"clarion publish: {exc}", file=sys.stderr)
        return 2
    target: dict[str, Any] = (
        {"user": args.user}
        if args.user is not None
        else {"channel": args.channel}
        if args.channel is not None
        else {"broadcast": True}
    )
    try:
        with Publisher(args.url, args.api_key, retries=args.retries) as publisher:
            print(publisher.publish(data, **target))
    except PublishError as exc:
        print(f"clarion publish: {exc}", file=sys.stderr)
        return 1
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
    listen.add_argument(
        "--max-retries", type=int, default=None, help="give up after N failed attempts in a row"
    )
    listen.add_argument(
        "-v", "--verbose", action="store_true", help="print connects, closes, recoveries to stderr"
    )
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
    pub.add_argument(
        "--retries", type=int, default=3, help="retries on 503 and connection errors (default 3)"
    )
    pub.add_argument(
        "data",
        help='JSON, or text sent as a string (text starting with { [ or " must be JSON)',
    )
    pub.set_defaults(func=cmd_publish)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
