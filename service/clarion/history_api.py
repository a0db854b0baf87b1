"""``GET /api/history``: what a reconnecting client would get, for a backend to read.

The same history window, the same selection and the same order as a
``since=`` replay (replays.py): ``user=U`` is U's messages and every
broadcast, ``channel=C`` the channel's messages. Without ``since`` it is the
whole window. ``limit`` bounds the answer (``more`` says there is more: ask
again with ``since`` = the last id); ``reverse=true`` gives the newest first.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from . import envvars
from .broker import Broker
from .message import Envelope, Target
from .protocol import ProtocolError, parse_since, parse_target
from .replays import UNAVAILABLE, ReplayCollector, first_reading, wanted

log = logging.getLogger("clarion.history")

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
PARAMS = frozenset({"user", "channel", "since", "limit", "reverse"})


@dataclass(frozen=True)
class HistoryQuery:
    target: Target
    since: str | None = None
    limit: int = DEFAULT_LIMIT
    reverse: bool = False

    def match(self, env: Envelope) -> bool:
        return wanted(self.target, env)


def parse_query(params: Mapping[str, str]) -> HistoryQuery:
    """The query of ``GET /api/history``; ProtocolError (a 400) names what is wrong."""
    unknown = sorted(set(params) - PARAMS)
    if unknown:
        raise ProtocolError(
            "unknown_field",
            f"no parameter {unknown[0][:64]!r} (known: {', '.join(sorted(PARAMS))})",
        )
    named = {k: params[k] for k in ("user", "channel") if k in params}
    if len(named) != 1:
        raise ProtocolError("bad_target", "exactly one of 'user' or 'channel' must be given")
    target = parse_target(named)
    since = parse_since(params["since"]) if "since" in params else None
    limit = DEFAULT_LIMIT
    if "limit" in params:
        raw = params["limit"]
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
            raise ProtocolError("bad_field", f"'limit' must be an integer 1..{MAX_LIMIT}")
        limit = int(raw)
    reverse = False
    if "reverse" in params:
        try:
            reverse = envvars.parse_bool(params["reverse"])
        except ValueError:
            raise ProtocolError("bad_field", "'reverse' must be true or false") from None
    return HistoryQuery(target, since, limit, reverse)


async def query(broker: Broker, q: HistoryQuery, timeout: float) -> dict[str, Any] | None:
    """The answer (``messages`` are the stored frames), or None if history is unreadable."""
    try:
        return await _query(broker, q, timeout)
    except Exception as exc:  # the broker's history_start could not be read
        log.warning("history query failed: %r", exc)
        return None


async def _query(broker: Broker, q: HistoryQuery, timeout: float) -> dict[str, Any] | None:
    seen: set[str] = set()
    if q.since is not None:
        collector = ReplayCollector(q.since, q.target)
        start = collector.since_ts
        picked = collector.add
    else:
        start = await broker.history_start() or 0
        matched: list[Envelope] = []

        def picked(env: Envelope) -> None:
            if q.match(env):
                matched.append(env)

    def each(env: Envelope) -> None:
        if first_reading(seen, env):
            picked(env)

    if not await broker.read_history(start, each, timeout):
        return None
    answer: dict[str, Any] = {}
    if q.since is not None:
        replay = collector.result(await broker.history_start())
        messages = replay.messages
        answer["complete"] = replay.complete
        if not replay.complete:
            answer["reason"] = replay.reason or UNAVAILABLE
    else:
        messages = matched
        answer["complete"] = True
    answer["more"] = len(messages) > q.limit
    chosen = messages[-q.limit :][::-1] if q.reverse else messages[: q.limit]
    # The stored frames as they are: no decode and re-encode per message.
    answer["messages"] = [orjson.Fragment(env.body) for env in chosen]
    return answer
