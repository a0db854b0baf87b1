"""Who is connected, cluster-wide: any pod answers for all pods, within a bounded time.

Scatter-gather over the fanout exchange, with no store of its own: the asking
pod publishes a ``presence`` command, every pod answers with what its own hub
holds, and the asking pod waits at most ``--presence-timeout`` for the pods it
knows. Pods know each other by ``hello`` commands (at start, every
``--presence-interval``, and in answer to a stranger's hello) and forget a pod
after three silent intervals or its ``bye``. So an answer is a snapshot taken
within the timeout; a pod that died is named in ``missing`` for up to three
intervals, then it is forgotten (and so are its users, who are gone anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from .hub import Hub
from .message import Envelope, Target

log = logging.getLogger("clarion.presence")


class Publish(Protocol):
    """Publishes a command to every pod, or to one pod's queue alone (``to_pod``)."""

    def __call__(
        self, command: str, args: dict[str, Any], to_pod: str | None = None
    ) -> Awaitable[None]: ...


#: The commands this module handles (protocol.COMMANDS lists them).
HELLO, BYE, QUERY, REPLY = "hello", "bye", "presence", "presence_reply"
COMMANDS = frozenset({HELLO, BYE, QUERY, REPLY})


@dataclass
class _Pending:
    expected: set[str]
    answers: dict[str, dict[str, int]] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True)
class Answer:
    """Sockets per user (``?channel=``) or per pod (``?user=``), and which pods answered."""

    counts: dict[str, int]
    answered: list[str]
    missing: list[str]


class Presence:
    def __init__(
        self, hub: Hub, pod_name: str, publish: Publish, interval: float, timeout: float
    ) -> None:
        self.hub = hub
        self.pod_name = pod_name
        self._publish = publish
        self.interval = interval
        self.timeout = timeout
        #: Other pods, by the monotonic time they were last heard of.
        self.members: dict[str, float] = {}
        self._pending: dict[str, _Pending] = {}
        self._task: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Future[None]] = set()

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._heartbeat(), name=f"presence-{self.pod_name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._publish(BYE, {"pod": self.pod_name}, None), 1.0)

    async def _heartbeat(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # the broker may be down: try again later
                await self._publish(HELLO, {"pod": self.pod_name}, None)
            await asyncio.sleep(self.interval)

    def alive(self) -> list[str]:
        horizon = time.monotonic() - 3 * self.interval
        for pod in [p for p, seen in self.members.items() if seen < horizon]:
            del self.members[pod]
        return sorted(self.members)

    # -- the commands --------------------------------------------------------

    def on_command(self, env: Envelope) -> None:
        args = orjson.loads(env.body)
        pod = args.get("pod")
        if not isinstance(pod, str) or pod == self.pod_name:
            return
        if env.command == BYE:
            self.members.pop(pod, None)
            return
        stranger = pod not in self.members
        self.members[pod] = time.monotonic()
        if env.command == HELLO and stranger:
            # Tell the newcomer about this pod now, not an interval later.
            self._send(HELLO, {"pod": self.pod_name})
        elif env.command == QUERY:
            counts = self.local(args["kind"], args["name"])
            reply = {"pod": self.pod_name, "q": args["q"], "to": pod, "counts": counts}
            self._send(REPLY, reply, to_pod=pod)  # to the asking pod's queue alone
        elif env.command == REPLY and args.get("to") == self.pod_name:
            pending = self._pending.get(args.get("q", ""))
            if pending is not None:
                pending.answers[pod] = args["counts"]
                if pending.expected <= set(pending.answers):
                    pending.done.set()

    def _send(self, command: str, args: dict[str, Any], to_pod: str | None = None) -> None:
        """Publish from the consumer without waiting (the confirm comes later)."""
        task = asyncio.ensure_future(self._quietly(command, args, to_pod))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _quietly(self, command: str, args: dict[str, Any], to_pod: str | None) -> None:
        try:
            await self._publish(command, args, to_pod)
        except Exception as exc:
            log.debug("presence %s not sent: %r", command, exc)

    # -- answering -----------------------------------------------------------

    def local(self, kind: str, name: str) -> dict[str, int]:
        """This pod's part: sockets per user of a channel, or the user's sockets here."""
        if kind == "user":
            n = len(self.hub.by_user.get(name, ()))
            return {self.pod_name: n} if n else {}
        counts: dict[str, int] = {}
        for conn in self.hub.by_channel.get(name, ()):
            counts[conn.user] = counts.get(conn.user, 0) + 1
        return counts

    async def query(self, target: Target) -> Answer:
        """Ask every known pod; raises BrokerUnavailable if the question cannot go out."""
        assert target.name is not None
        kind, name = target.kind, target.name
        expected = set(self.alive())
        q = uuid.uuid4().hex
        pending = self._pending[q] = _Pending(expected)
        try:
            if expected:
                await self._publish(
                    QUERY, {"pod": self.pod_name, "q": q, "kind": kind, "name": name}
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(pending.done.wait(), self.timeout)
        finally:
            del self._pending[q]
        counts = self.local(kind, name)
        for part in pending.answers.values():
            for key, n in part.items():
                counts[key] = counts.get(key, 0) + n
        answered = sorted({self.pod_name, *pending.answers})
        return Answer(counts, answered, sorted(expected - set(pending.answers)))
