"""The disconnect API's part on every pod: close a user's sockets, or one of them.

``POST /api/disconnect`` reaches one pod; that pod publishes a ``disconnect``
command addressed to the user (under ``--routing direct`` RabbitMQ hands it only
to the pods holding the user), and every pod that receives it closes the
user's sockets it holds (all of them, or the one ``conn`` names) with the
requested code and reason, or ``disconnects.DISCONNECTED``. The gateway runs a
command once however often it is delivered.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import orjson

from . import disconnects
from .disconnects import Disconnect
from .hub import Hub
from .message import Envelope, Target

log = logging.getLogger("clarion.kick")

#: The command this module handles (message.COMMANDS lists them).
DISCONNECT = "disconnect"
COMMANDS = frozenset({DISCONNECT})


class Kick:
    """Closes users' sockets on request, on every pod."""

    def __init__(
        self, hub: Hub, pod_name: str, publish: Callable[[Envelope], Awaitable[object]]
    ) -> None:
        self.hub = hub
        self.pod_name = pod_name
        self._publish = publish

    async def request(
        self, user: str, code: int | None, reason: str | None, conn: str | None
    ) -> str:
        """Ask every pod to close ``user``'s sockets (or the one ``conn`` names); returns the
        command's id. Raises BrokerUnavailable."""
        args = {"code": code, "reason": reason, "conn": conn}
        env = Envelope.create_command(DISCONNECT, Target("user", user), args)
        await self._publish(env)
        return env.id

    def on_command(self, env: Envelope) -> int:
        """Close the sockets this pod holds of the command's user; returns how many."""
        args = orjson.loads(env.body)
        user = env.target.name or ""
        how = disconnects.DISCONNECTED
        if args.get("code") is not None:
            how = Disconnect(args["code"], how.reason, how.label, how.action, how.when)
        if args.get("reason"):
            how = how.with_reason(args["reason"])
        conns = [
            c
            for c in self.hub.by_user.get(user, ())
            if args.get("conn") is None or c.id == args["conn"]
        ]
        for conn in conns:
            conn.close(how)
        if conns:
            log.info("pod=%s disconnected %d sockets of user %s", self.pod_name, len(conns), user)
        return len(conns)
