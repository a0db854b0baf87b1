"""Bidirectional emulation: a stream's client frames, POSTed to any pod, reach its session.

An HTTP stream (streams.py) only flows from the server to the client; the
client sends its frames (subscribe, unsubscribe, publish, ping) with ``POST
/emulation``. Without sticky sessions that POST may land on any pod, so it
names its connection with the session token the welcome handed out. The pod
that holds the connection takes the frames at once; any other pod forwards
them through the broker to the holder's queue alone (``to_pod``, as
presence.py's replies) and waits for its answer. The frames then run in the
session exactly as on a WebSocket (rate limit, errors), and their answers come
back on the stream.

The token is ``<pod>.<conn>.<mac>``: an HMAC over the pod, the connection and
its user with a key only the holding pod knows (random per process), so only
that pod can check it, nobody can make one for a connection they were not
given, and one user's token never opens another user's connection.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from .broker import BrokerUnavailable
from .message import Envelope
from .presence import Publish

log = logging.getLogger("clarion.emulation")

#: The commands this module handles (protocol.COMMANDS lists them).
FORWARD, ANSWER = "emulate", "emulate_reply"
COMMANDS = frozenset({FORWARD, ANSWER})

#: Frames one POST may carry.
MAX_FRAMES = 100
#: How long a pod waits for the holding pod's answer to a forwarded POST.
FORWARD_TIMEOUT = 2.0


class Inbox(Protocol):
    """A stream session as emulation sees it (streams.StreamSession)."""

    @property
    def user(self) -> str: ...

    @property
    def open(self) -> bool: ...

    def post(self, frames: list[str]) -> bool:
        """Queue client frames; False when too many are queued already."""


@dataclass(frozen=True)
class Outcome:
    """The answer to a POST: an HTTP status and its JSON body."""

    status: int
    body: dict[str, Any]


ACCEPTED = 202


def _refused(status: int, code: str, message: str) -> Outcome:
    return Outcome(status, {"error": code, "message": message})


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class BadToken(ValueError):
    """A session token that is not one at all."""


def parse_token(token: object) -> tuple[str, str, str]:
    """``(pod, conn, mac)`` of a session token; BadToken when it has not that shape."""
    if not isinstance(token, str) or len(token) > 1024 or token.count(".") != 2:
        raise BadToken("'session' must be the session token of the stream's welcome")
    pod, conn, mac = token.split(".")
    try:
        return _unb64(pod).decode(), _unb64(conn).decode(), mac
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadToken("'session' must be the session token of the stream's welcome") from None


class Emulation:
    """This pod's stream sessions by connection id, and the forwarding of POSTed frames."""

    def __init__(self, pod_name: str, publish: Publish, pods: Callable[[], list[str]]) -> None:
        self.pod_name = pod_name
        self._publish = publish
        #: The other pods alive (presence.py's members).
        self._pods = pods
        self._key = secrets.token_bytes(32)
        self.sessions: dict[str, Inbox] = {}
        self._pending: dict[str, asyncio.Future[Outcome]] = {}
        self._sending: set[asyncio.Future[None]] = set()

    # -- tokens --------------------------------------------------------------

    def _mac(self, conn: str, user: str) -> str:
        msg = f"{self.pod_name}\0{conn}\0{user}".encode()
        return _b64(hmac.new(self._key, msg, hashlib.sha256).digest()[:18])

    def token(self, conn: str, user: str) -> str:
        """The session token of a connection this pod holds (in the stream's welcome)."""
        return f"{_b64(self.pod_name.encode())}.{_b64(conn.encode())}.{self._mac(conn, user)}"

    # -- the frames ------------------------------------------------------------

    async def post(self, token: object, frames: list[str]) -> Outcome:
        """Hand ``frames`` to the session ``token`` names, on whichever pod holds it."""
        try:
            pod, conn, mac = parse_token(token)
        except BadToken as exc:
            return _refused(400, "bad_session", str(exc))
        if pod == self.pod_name:
            return self.take(conn, mac, frames)
        return await self._forward(pod, conn, mac, frames)

    def take(self, conn: str, mac: str, frames: list[str]) -> Outcome:
        """Frames for a connection of this pod."""
        session = self.sessions.get(conn)
        if session is None or not session.open:
            return _refused(
                404,
                "unknown_connection",
                f"no open stream {conn!r} on pod {self.pod_name!r} (it closed): "
                "open a new stream and use its session token",
            )
        if not hmac.compare_digest(mac.encode(), self._mac(conn, session.user).encode()):
            return _refused(
                403, "forbidden", "the session token was not issued for this connection"
            )
        if not session.post(frames):
            return _refused(429, "rate_limited", "too many frames waiting for this stream")
        return Outcome(ACCEPTED, {"accepted": len(frames)})

    async def _forward(self, pod: str, conn: str, mac: str, frames: list[str]) -> Outcome:
        if pod not in self._pods():
            return _refused(
                404, "unknown_connection", f"pod {pod!r} is not running: open a new stream"
            )
        q = uuid.uuid4().hex
        answer: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._pending[q] = answer
        args = {"pod": self.pod_name, "q": q, "conn": conn, "mac": mac, "frames": frames}
        try:
            try:
                await self._publish(FORWARD, args, pod)
            except BrokerUnavailable:
                return _refused(503, "unavailable", "broker unavailable: frames not sent")
            try:
                return await asyncio.wait_for(answer, FORWARD_TIMEOUT)
            except TimeoutError:
                return _refused(
                    504,
                    "no_answer",
                    f"pod {pod!r} did not answer within {FORWARD_TIMEOUT:.0f} s: "
                    "post again, or open a new stream",
                )
        finally:
            del self._pending[q]

    # -- the commands ----------------------------------------------------------

    def on_command(self, env: Envelope) -> None:
        args = orjson.loads(env.body)
        if env.command == FORWARD:
            frames = args.get("frames")
            if not isinstance(frames, list) or not all(isinstance(f, str) for f in frames):
                return
            outcome = self.take(str(args.get("conn")), str(args.get("mac")), frames)
            reply = {"q": args.get("q"), "status": outcome.status, "body": outcome.body}
            self._send(ANSWER, reply, str(args.get("pod")))
        elif env.command == ANSWER:
            pending = self._pending.get(str(args.get("q")))
            if pending is not None and not pending.done():
                pending.set_result(Outcome(int(args["status"]), dict(args["body"])))

    def _send(self, command: str, args: dict[str, Any], to_pod: str) -> None:
        """Answer from the consumer without waiting (the confirm comes later)."""
        task = asyncio.ensure_future(self._quietly(command, args, to_pod))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _quietly(self, command: str, args: dict[str, Any], to_pod: str) -> None:
        try:
            await self._publish(command, args, to_pod)
        except Exception as exc:
            log.debug("emulation %s to %s not sent: %r", command, to_pod, exc)


def parse_frames(obj: object, max_frame_bytes: int) -> list[str]:
    """The frames of a POST body ``{"session": TOKEN, "frames": [FRAME, ...]}``: each a
    JSON object (a client frame) or a string (a text frame as a WebSocket sends it)."""
    if not isinstance(obj, dict):
        raise ValueError('body must be a JSON object {"session": TOKEN, "frames": [...]}')
    unknown = sorted(k for k in obj if k not in ("session", "frames"))
    if unknown:
        raise ValueError(f"the body has no field {unknown[0][:64]!r} (known: frames, session)")
    frames = obj.get("frames")
    if not isinstance(frames, list) or not 1 <= len(frames) <= MAX_FRAMES:
        raise ValueError(f"'frames' must be a list of 1..{MAX_FRAMES} frames")
    texts = []
    for i, frame in enumerate(frames):
        if isinstance(frame, str):
            text = frame
        elif isinstance(frame, dict):
            text = orjson.dumps(frame).decode()
        else:
            raise ValueError(f"frames[{i}] must be a JSON object or a string")
        if len(text.encode()) > max_frame_bytes:
            raise ValueError(f"frames[{i}] is over {max_frame_bytes} bytes")
        texts.append(text)
    return texts
