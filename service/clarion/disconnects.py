"""Every way the server closes a socket: code, text sent on the wire, metric label.

One table, used by every call site; the metrics pre-create every label from it,
and the README's close-code table documents the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Disconnect:
    #: The WebSocket close code.
    code: int
    #: The close reason sent to the client.
    reason: str
    #: The ``reason`` label of ``clarion_connections_closed_total``.
    label: str

    def with_reason(self, reason: str) -> Disconnect:
        """The same disconnect with a more specific reason (at most 123 bytes on the wire)."""
        return Disconnect(self.code, reason[:120], self.label)


#: The client closed the socket (or its connection dropped).
CLIENT = Disconnect(1000, "", "client")
#: The session failed on the server side (a bug: logged with its traceback).
ERROR = Disconnect(1011, "internal error", "error")
#: SIGTERM: the pod is draining; reconnect (the load balancer picks another pod).
DRAIN = Disconnect(1001, "draining: reconnect", "drain")
#: The process is stopping (after the drain, or without one).
SHUTDOWN = Disconnect(1001, "server shutting down", "drain")
#: The operator rebalances: reconnect elsewhere.
SHED = Disconnect(1012, "rebalance: reconnect", "shed")
#: The pod could not catch up after a broker outage: reconnect with since.
OUTAGE = Disconnect(1012, "broker outage: reconnect with since", "outage")
#: The pod holds --max-connections sockets.
POD_FULL = Disconnect(1013, "pod full: try again later", "overload")
#: This socket's send buffer overflowed.
SLOW_CLIENT = Disconnect(1013, "slow consumer: send buffer full", "slow_client")
#: A client frame over --max-frame-bytes (uvicorn closes the socket itself).
TOO_BIG = Disconnect(1009, "frame too big", "too_big")
#: The token's exp passed while connected.
TOKEN_EXPIRED = Disconnect(1008, "token expired", "token_expired")
#: A missing or invalid token (the reason says which).
UNAUTHORIZED = Disconnect(1008, "invalid token", "policy")
#: The browser's Origin is not in --allowed-origins.
ORIGIN = Disconnect(1008, "origin not allowed", "policy")

ALL: tuple[Disconnect, ...] = (
    CLIENT,
    ERROR,
    DRAIN,
    SHUTDOWN,
    SHED,
    OUTAGE,
    POD_FULL,
    SLOW_CLIENT,
    TOO_BIG,
    TOKEN_EXPIRED,
    UNAUTHORIZED,
    ORIGIN,
)
#: Every label ``clarion_connections_closed_total`` can carry.
LABELS: tuple[str, ...] = tuple(dict.fromkeys(d.label for d in ALL))
