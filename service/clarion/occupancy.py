"""Cluster-wide transitions (channel occupied/vacated, user online/offline, join/leave), each
decided by exactly one pod.

Every name has one owner: the pod that wins a rendezvous hash of the name over the
pods this pod knows alive (presence.py's members and itself). Each pod tells the
owner its *local* transitions only (a channel's first socket here, its last one
gone) in an ``occupancy`` command, batched per event-loop iteration; the owner
keeps, per name, the set of pods that hold it (``Tally``), and a name whose set
goes from empty to non-empty (or back) is a cluster-wide transition: the owner
alone fires it (webhooks.py, or a ``joinleave`` command for the join/leave frames).

When a pod's view of the members changes (a pod joins, says bye, or falls silent
for three presence intervals), it sends a ``sync`` to every owner, and asks every
pod to do the same at its next tick: all its non-zero names (those it announced),
each to its owner, which then replaces what it held of that pod (names the
pod no longer has go, and may fire; names new to the owner are taken silently:
their previous owner already announced them). An owner forgets a dead pod's
names (firing the vacated/offline that its death caused) and silently drops the
names it no longer owns. From its start and after each view change an owner holds
its transitions until every pod of its view has synced (at most one presence
interval), then sends those that still stand: a takeover neither repeats an
event nor invents one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from .frames import control
from .hub import Connection, Hub
from .message import Envelope
from .presence import Presence, Publish
from .protocol import encode

log = logging.getLogger("clarion.occupancy")

#: ("channel", C) | ("user", U) | ("member", C, U): the member of a channel (join/leave).
Key = tuple[str, ...]
#: Called on a cluster-wide transition of a channel or user key, owner side: (key, up).
Fire = Callable[[Key, bool], None]

CHANGES, JOINLEAVE = "occupancy", "joinleave"
COMMANDS = frozenset({CHANGES, JOINLEAVE})


def _score(pod: str, name: str) -> int:
    digest = hashlib.blake2b(f"{pod}\0{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(key: Key, pods: Iterable[str]) -> str:
    """The pod that decides ``key``'s transitions: rendezvous (highest random weight) hashing.

    A member key hashes by its channel, so one pod sees a channel's whole membership.
    Adding a pod moves only the keys it wins; removing one moves only the keys it had.
    """
    name = f"user:{key[1]}" if key[0] == "user" else f"channel:{key[1]}"
    return max(pods, key=lambda pod: (_score(pod, name), pod))


class Tally:
    """The owner's side: which pods hold each key it owns. Pure; returns the transitions."""

    def __init__(self) -> None:
        self.holders: dict[Key, set[str]] = {}

    def change(self, pod: str, key: Key, up: bool) -> bool:
        """One pod's local transition; True if the key changed cluster-wide."""
        pods = self.holders.get(key)
        if up:
            if pods is None:
                self.holders[key] = {pod}
                return True
            pods.add(pod)
            return False
        if pods is None or pod not in pods:
            return False
        pods.discard(pod)
        if pods:
            return False
        del self.holders[key]
        return True

    def sync(self, pod: str, keys: Iterable[Key]) -> list[Key]:
        """Replace what ``pod`` holds by ``keys``; the keys that went empty (vacated).

        A key new to this owner is taken without a transition (its previous owner
        announced it), so a resync after an ownership change sends nothing twice.
        """
        keys = set(keys)
        gone = [k for k, pods in self.holders.items() if pod in pods and k not in keys]
        for key in keys:
            self.holders.setdefault(key, set()).add(pod)
        return [k for k in gone if self.change(pod, k, False)]

    def forget(self, pod: str) -> list[Key]:
        """A dead pod's keys go: those it alone held are vacated."""
        return self.sync(pod, ())

    def drop(self, owns: Callable[[Key], bool]) -> None:
        """Forget, silently, the keys another pod now owns."""
        for key in [k for k in self.holders if not owns(k)]:
            del self.holders[key]


def event_name(key: Key, up: bool) -> str:
    """The webhook event of a channel or user key's transition."""
    if key[0] == "channel":
        return "channel_occupied" if up else "channel_vacated"
    return "user_online" if up else "user_offline"


class Occupancy:
    """One pod's part: its local transitions out, the keys it owns in, the syncs."""

    def __init__(
        self,
        hub: Hub,
        presence: Presence,
        publish: Publish,
        fire: Fire,
        kinds: frozenset[str],
        members: Callable[[str], bool] | None = None,
    ) -> None:
        self.hub = hub
        self.presence = presence
        self.pod_name = presence.pod_name
        self._publish = publish
        self._fire = fire
        #: Which keys are tracked: "channel", "user", "member" (only what is asked for).
        self.kinds = kinds
        #: The channels whose members are tracked (join/leave: a namespace's ``join_leave``);
        #: None: every channel.
        self.members = members
        self.tally = Tally()
        self.view: tuple[str, ...] = (self.pod_name,)
        #: This pod's sockets per (channel, user), for member keys.
        self._members: dict[tuple[str, str], int] = {}
        self._pending: list[tuple[Key, bool]] = []
        #: The keys this pod told an owner it holds (what a sync says; pending ones aside).
        self._announced: set[Key] = set()
        self._flush_handle: asyncio.Handle | None = None
        #: Until the answers to its first hello are in, a new pod holds its transitions back
        #: (alone, it would think it owns every key and announce what is already known).
        self._settled = False
        self._resync = False
        #: The takeover window (from the start, and after every view change): the owner's
        #: transitions wait until every pod of the view has synced (at most an interval),
        #: then those whose first and last direction agree go out (None: closed).
        self._awaiting: set[str] | None = set()
        self._window_ends = math.inf
        self._deferred: dict[Key, tuple[bool, bool]] = {}
        #: Within the window: which pods synced each key, and which announced it (an up).
        self._synced: dict[Key, set[str]] = {}
        self._upped: dict[Key, set[str]] = {}
        self._task: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Future[None]] = set()

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        self.hub.watch = self.watch
        self._task = asyncio.create_task(self._tick(), name=f"occupancy-{self.pod_name}")

    def _settle(self) -> None:
        self._settled = True
        self._window_ends = time.monotonic() + max(1.0, self.presence.interval)
        self.flush()
        self._maybe_close()

    async def stop(self) -> None:
        """Send the last transitions (the closed sockets') before the pod says bye."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.flush()
        if self._sending:
            await asyncio.wait(self._sending, timeout=2.0)

    async def _tick(self) -> None:
        await asyncio.sleep(min(1.0, self.presence.interval))
        self._settle()
        while True:
            await asyncio.sleep(min(1.0, self.presence.interval / 4))
            self.refresh()
            if self._resync:
                self._send_sync()
            if self._awaiting is not None and time.monotonic() > self._window_ends:
                self._close_window()  # a pod that never synced: go with what is known

    # -- local transitions ---------------------------------------------------

    def watch(self, conn: Connection, channel: str | None, up: bool) -> None:
        """The hub's hook: a socket added/removed (channel None) or (un)subscribed."""
        hub, user = self.hub, conn.user
        if channel is None:
            if "user" in self.kinds and (user in hub.by_user) == up:
                if not up or len(hub.by_user[user]) == 1:
                    self._local(("user", user), up)
            return
        if "channel" in self.kinds and (channel in hub.by_channel) == up:
            if not up or len(hub.by_channel[channel]) == 1:
                self._local(("channel", channel), up)
        if "member" in self.kinds and (self.members is None or self.members(channel)):
            pair = (channel, user)
            n = self._members.get(pair, 0) + (1 if up else -1)
            if n > 0:
                self._members[pair] = n
            else:
                self._members.pop(pair, None)
            if n == (1 if up else 0):
                self._local(("member", channel, user), up)

    def _local(self, key: Key, up: bool) -> None:
        self._pending.append((key, up))
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Send this iteration's transitions, one command for all owners."""
        self._flush_handle = None
        if not self._settled:
            return
        self.refresh()
        pending, self._pending = self._pending, []
        if not pending:
            return
        remote: dict[str, list[list[Any]]] = {}
        for key, up in pending:
            if up:
                self._announced.add(key)
            else:
                self._announced.discard(key)
            to = owner(key, self.view)
            if to == self.pod_name:
                self._apply(self.pod_name, key, up)
            else:
                remote.setdefault(to, []).append([up, *key])
        if remote:
            self._send(CHANGES, {"pod": self.pod_name, "changes": remote})

    # -- membership ----------------------------------------------------------

    def refresh(self) -> None:
        """Follow presence's members; on a change, forget the dead and resync every owner."""
        view = tuple(sorted({self.pod_name, *self.presence.alive()}))
        if view == self.view:
            return
        gone = set(self.view) - set(view)
        log.debug("pod=%s view %s -> %s", self.pod_name, self.view, view)
        self.view = view
        self._awaiting = set(view) - {self.pod_name}
        self._window_ends = time.monotonic() + max(1.0, self.presence.interval)
        for pod in gone:
            for key in self.tally.forget(pod):
                self._transition(key, False)
        self.tally.drop(lambda k: owner(k, view) == self.pod_name)
        # And every other pod resyncs too: this pod may now own keys whose holders' views
        # did not change (it dropped them while it knew only some of the pods).
        self._send_sync(ask=True)

    def _send_sync(self, ask: bool = False) -> None:
        self._resync = False
        parts: dict[str, list[Key]] = {pod: [] for pod in self.view}
        for key in self._announced:
            parts[owner(key, self.view)].append(key)
        mine = parts.pop(self.pod_name)
        self._note_synced(self.pod_name, mine)
        for key in self.tally.sync(self.pod_name, mine):
            self._transition(key, False)
        self._maybe_close()
        if parts:
            self._send(CHANGES, {"pod": self.pod_name, "sync": parts, "ask": ask})

    def _send(self, command: str, args: dict[str, Any]) -> None:
        task = asyncio.ensure_future(self._quietly(command, args))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _quietly(self, command: str, args: dict[str, Any]) -> None:
        try:
            await self._publish(command, args)
        except Exception as exc:
            log.warning("pod=%s %s not sent (%r)", self.pod_name, command, exc)
            if command == CHANGES:  # lost transitions: a full sync at the next tick
                self._resync = True

    # -- the owner's side ----------------------------------------------------

    def _fired(self, key: Key, up: bool) -> None:
        if key[0] == "member":
            self._send(JOINLEAVE, {"channel": key[1], "user": key[2], "up": up})
        else:
            self._fire(key, up)

    def _note_synced(self, pod: str, keys: list[Key]) -> None:
        if self._awaiting is not None:
            for key in keys:
                self._synced.setdefault(key, set()).add(pod)

    def _apply(self, pod: str, key: Key, up: bool) -> None:
        if up and self._awaiting is not None:
            self._upped.setdefault(key, set()).add(pod)
        if self.tally.change(pod, key, up):
            self._transition(key, up)

    def _transition(self, key: Key, up: bool) -> None:
        if self._awaiting is None:
            self._fired(key, up)
        else:
            first = self._deferred.get(key, (up, up))[0]
            self._deferred[key] = (first, up)

    def _maybe_close(self) -> None:
        if self._awaiting is not None and not self._awaiting and self._settled:
            self._close_window()

    def _close_window(self) -> None:
        """Send what the takeover held: net transitions, not a key's repeats."""
        deferred, synced, upped = self._deferred, self._synced, self._upped
        self._awaiting, self._deferred, self._synced, self._upped = None, {}, {}, {}
        for key, (first, last) in deferred.items():
            held = key in self.tally.holders
            # A pod that holds it without having announced it in the window: not new.
            known = synced.get(key, set()) - upped.get(key, set())
            if first and last and held and not known:
                self._fired(key, True)
            elif not first and not last and not held:
                self._fired(key, False)

    def on_command(self, env: Envelope) -> None:
        args = orjson.loads(env.body)
        if env.command == JOINLEAVE:
            self._join_leave(args["channel"], args["user"], bool(args["up"]))
            return
        pod = args.get("pod")
        if not isinstance(pod, str) or pod == self.pod_name:
            return
        for change in args.get("changes", {}).get(self.pod_name, ()):
            self._apply(pod, tuple(change[1:]), bool(change[0]))
        keys = args.get("sync", {}).get(self.pod_name)
        if keys is not None:
            synced = [tuple(k) for k in keys]
            self._note_synced(pod, synced)
            for key in self.tally.sync(pod, synced):
                self._transition(key, False)
            if self._awaiting is not None:
                self._awaiting.discard(pod)
                self._maybe_close()
        if args.get("ask"):
            self._resync = True  # answered at the next tick: many asks, one sync

    def _join_leave(self, channel: str, user: str, up: bool) -> None:
        """Tell this pod's subscribers of ``channel`` (the user's own sockets aside)."""
        kind = "join" if up else "leave"
        out = control(encode({"type": kind, "channel": channel, "user": user}))
        for conn in list(self.hub.by_channel.get(channel, ())):
            if conn.user != user:
                conn.send(out)
