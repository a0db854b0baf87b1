"""Every way the server closes a socket: code, text sent on the wire, metric label.

One table, used by every call site; the metrics pre-create every label from
it, and docs/protocol.md's close-code table is generated from it (a test checks).
Codes 4000-4499 mean "reconnect", 4500-4999 "do not reconnect" (as
Centrifugo's); 1008 stays for policy violations a client cannot fix.
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
    #: What a client should do (the client libraries do it).
    action: str
    #: When it happens, for the docs.
    when: str

    def with_reason(self, reason: str) -> Disconnect:
        """The same disconnect with a more specific reason (at most 123 bytes on the wire)."""
        return Disconnect(self.code, reason[:120], self.label, self.action, self.when)


SOON = "reconnect soon (small random delay) with `since`"
BACKOFF = "reconnect with backoff and `since`"

#: The client closed the socket (or its connection dropped).
CLIENT = Disconnect(
    1000, "", "client", "—", "the client closed the socket, or its connection dropped"
)
#: The session failed on the server side (a bug: logged with its traceback).
ERROR = Disconnect(1011, "internal error", "error", BACKOFF, "a server error in this session")
#: SIGTERM: the pod is draining; reconnect (the load balancer picks another pod).
DRAIN = Disconnect(1001, "draining: reconnect", "drain", SOON, "the pod is draining (SIGTERM)")
#: The process is stopping (after the drain, or without one).
SHUTDOWN = Disconnect(
    1001, "server shutting down", "drain", SOON, "the process stops (SIGINT, or after the drain)"
)
#: The operator rebalances: reconnect elsewhere.
SHED = Disconnect(1012, "rebalance: reconnect", "shed", SOON, "shed by the operator to spread load")
#: The pod could not catch up after a broker outage: reconnect with since.
OUTAGE = Disconnect(
    1012,
    "broker outage: reconnect with since",
    "outage",
    SOON,
    "the pod could not catch up from history after a broker outage",
)
#: The pod holds --max-connections sockets.
POD_FULL = Disconnect(
    1013,
    "pod full: try again later",
    "overload",
    "reconnect with backoff, at least 2 s",
    "the pod holds `--max-connections` sockets",
)
#: --routing direct: the broker did not confirm the binding of the socket's user in time.
UNROUTED = Disconnect(
    1013,
    "broker busy: try again later",
    "unrouted",
    "reconnect with backoff, at least 2 s, and `since`",
    "`--routing direct`: the broker did not confirm the binding for the socket's user in time",
)
#: --max-connects-per-second: the pod admits no more new sockets this second.
ADMISSION = Disconnect(
    1013,
    "pod busy: try again later",
    "admission",
    "reconnect with backoff, at least 2 s, and `since`",
    "more new sockets than `--max-connects-per-second` (a reconnect storm): spread them out",
)
#: A since= replay could not read the history within --replay-timeout.
UNRECOVERED = Disconnect(
    1013,
    "history busy: try again with since",
    "unrecovered",
    "reconnect with backoff, at least 2 s, and the same `since`",
    "a `since` replay could not read the history within `--replay-timeout`: nothing was "
    "skipped, the client asks again",
)
#: This socket's send buffer overflowed.
SLOW_CLIENT = Disconnect(
    1013,
    "slow consumer: send buffer full",
    "slow_client",
    "reconnect with backoff, at least 2 s, and `since`",
    "this socket's send buffer overflowed (the client reads too slowly)",
)
#: A client frame over --max-frame-bytes (uvicorn closes the socket itself).
TOO_BIG = Disconnect(
    1009,
    "frame too big",
    "too_big",
    "stop: do not resend that frame",
    "a frame over `--max-frame-bytes`",
)
#: The token's exp passed (while connected, or before connecting).
TOKEN_EXPIRED = Disconnect(
    4001,
    "token expired",
    "token_expired",
    "get a new token, then reconnect with `since`",
    "the token's `exp` (plus `--refresh-grace`) passed and no valid `refresh` frame came",
)
#: A missing or invalid token (the reason says which).
UNAUTHORIZED = Disconnect(
    4500,
    "invalid token",
    "unauthorized",
    "stop: the token is not valid (a new token from the backend may be)",
    "a missing or invalid token, or one this gateway does not accept (the reason says why)",
)
#: The browser's Origin is not in --allowed-origins.
ORIGIN = Disconnect(
    4501,
    "origin not allowed",
    "origin",
    "stop",
    "the page's `Origin` is not in `--allowed-origins`",
)

#: --connect-proxy / --refresh-proxy: the backend did not answer usably (down, slow, 5xx,
#: garbage). Nobody is let in without its answer: the client comes back later.
PROXY_UNAVAILABLE = Disconnect(
    1013,
    "auth backend unavailable: try again later",
    "proxy_unavailable",
    "reconnect with backoff, at least 2 s, and `since`",
    "`--connect-proxy` or `--refresh-proxy` did not answer within `--proxy-timeout`, answered "
    "5xx, a redirect or no valid answer, or `--proxy-concurrency` calls were waiting: nobody "
    "is let in without the backend's yes",
)
#: A connection the connect proxy let in reached its expiry, and no refresh proxy renewed it.
SESSION_EXPIRED = Disconnect(
    4002,
    "session expired: reconnect",
    "session_expired",
    BACKOFF,
    "a connection let in by `--connect-proxy` reached the backend's `expire_at` (plus "
    "`--refresh-grace`) and no `--refresh-proxy` renewed it",
)
#: The backend said no (connect or refresh proxy).
DENIED = Disconnect(
    4503,
    "refused by the backend",
    "denied",
    "stop: the application refused this connection",
    "`--connect-proxy` or `--refresh-proxy` answered no (the reason, prefixed `refused: `, is "
    "the backend's)",
)

#: The user holds --max-connections-per-user sockets on this pod already.
USER_FULL = Disconnect(
    4504,
    "too many connections for this user",
    "user_limit",
    "stop: do not reconnect in a loop (close another of the user's connections first)",
    "the user already holds `--max-connections-per-user` sockets on this pod (counted per pod)",
)

#: The backend disconnected this user (POST /api/disconnect); it may choose another code.
DISCONNECTED = Disconnect(
    4502,
    "disconnected",
    "disconnected",
    "stop: do not reconnect (with a code the backend chose in 4000-4499: reconnect)",
    "the backend disconnected the user (`POST /api/disconnect`): a logout, a ban",
)

ALL: tuple[Disconnect, ...] = (
    CLIENT,
    DRAIN,
    SHUTDOWN,
    TOO_BIG,
    ERROR,
    SHED,
    OUTAGE,
    POD_FULL,
    UNROUTED,
    ADMISSION,
    UNRECOVERED,
    SLOW_CLIENT,
    PROXY_UNAVAILABLE,
    TOKEN_EXPIRED,
    SESSION_EXPIRED,
    UNAUTHORIZED,
    ORIGIN,
    DISCONNECTED,
    DENIED,
    USER_FULL,
)


def action_for(code: int, reason: str = "") -> str:
    """What a client does after a close with ``code`` and ``reason`` (a stream's last frame
    says it): the disconnect of that reason, else the first of that code."""
    same = [d for d in ALL if d.code == code]
    for d in same:
        if d.reason == reason:
            return d.action
    if same:
        return same[0].action
    return "reconnect with backoff and `since`" if code < 4500 else "stop"


#: Every label ``clarion_connections_closed_total`` can carry.
LABELS: tuple[str, ...] = tuple(dict.fromkeys(d.label for d in ALL))


def markdown_table() -> str:
    """docs/protocol.md's close-code table, as the code says it."""
    rows = [
        "| code | reason sent | when | metric `reason` | what a client does |",
        "|---|---|---|---|---|",
    ]
    for d in ALL:
        reason = f"`{d.reason}`" if d.reason else "—"
        rows.append(f"| {d.code} | {reason} | {d.when} | `{d.label}` | {d.action} |")
    return "\n".join(rows)
