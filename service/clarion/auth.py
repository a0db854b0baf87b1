"""Who is on the other end of a socket.

Two authenticators behind one seam: ``NoAuth`` (development: ``?user=ID``) and
``JwtAuth`` (HS256 shared secret, or RS256 with a PEM public key or a JWKS
file). Browsers cannot set headers on a WebSocket, so the token may come in
``?token=``.
"""

from __future__ import annotations

import functools
import hmac
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jwt

from .names import MAX_NAME_LENGTH


class AuthError(Exception):
    """Refused: the socket is closed (4500, or 4001 when ``expired``) with this reason."""

    def __init__(self, message: str, *, expired: bool = False) -> None:
        super().__init__(message)
        self.expired = expired


@functools.lru_cache(maxsize=4096)
def channel_pattern(pattern: str) -> re.Pattern[str]:
    """A ``channels`` claim entry: ``*`` is one dot-separated segment, ``**`` any run of them.

    ``orders.*`` allows ``orders.eu`` but not ``orders.eu.x`` (``orders.**`` does);
    ``?`` is one character of a segment; everything else is literal.
    """
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^.]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^.]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


@dataclass(frozen=True)
class Identity:
    user: str
    #: Patterns of the channels this socket may subscribe to; None: any channel.
    channel_patterns: tuple[str, ...] | None = None
    expires_at: float | None = None  # unix seconds
    #: Who vouched for it: ``jwt`` (a token), ``proxy`` (the connect proxy), ``none``.
    via: str = "jwt"
    #: Channels the backend subscribed it to (connect proxy): joined at the welcome.
    subscribe: tuple[str, ...] = ()
    #: The backend's connection info (connect proxy), passed on to the refresh proxy.
    info: Any = None

    def may_subscribe(self, channel: str) -> bool:
        if self.channel_patterns is None or channel in self.subscribe:
            return True
        return any(channel_pattern(p).match(channel) for p in self.channel_patterns)


class Authenticator(Protocol):
    def authenticate(self, query: Mapping[str, str], headers: Mapping[str, str]) -> Identity: ...

    def refresh(self, token: str, current: Identity) -> Identity:
        """The rights of a token sent in band (a ``refresh`` frame); AuthError if it is not
        one this connection may take (invalid, expired, another user's)."""
        ...

    def subscription(self, token: str, user: str, channel: str) -> float | None:
        """The expiry (unix seconds, or None) of a subscription token: a JWT naming this
        connection's user (``sub``) and this ``channel``; AuthError if it is not one."""
        ...


def has_token(query: Mapping[str, str], headers: Mapping[str, str]) -> bool:
    """Whether the request carries a token (``?token=`` or ``Authorization: Bearer``)."""
    return bool(query.get("token")) or bearer(headers) is not None


def bearer(headers: Mapping[str, str]) -> str | None:
    value = headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


class NoAuth:
    """Clients say who they are. For development only."""

    def authenticate(self, query: Mapping[str, str], headers: Mapping[str, str]) -> Identity:
        user = query.get("user") or f"anon-{secrets.token_hex(4)}"
        if len(user) > MAX_NAME_LENGTH:
            raise AuthError(f"user id longer than {MAX_NAME_LENGTH} characters")
        return Identity(user=user, via="none")

    def refresh(self, token: str, current: Identity) -> Identity:
        raise AuthError("this gateway takes no tokens (--auth none): nothing to refresh")

    def subscription(self, token: str, user: str, channel: str) -> float | None:
        raise AuthError("this gateway takes no tokens (--auth none): no subscription tokens")


class JwtAuth:
    def __init__(
        self,
        secret: str | None = None,
        public_key_file: str | None = None,
        jwks_file: str | None = None,
        audience: str | None = None,
        *,
        require_exp: bool = True,
        any_channel: bool = False,
    ) -> None:
        self.audience = audience
        self.require_exp = require_exp
        #: Tokens without a ``channels`` claim may subscribe anywhere (else nowhere).
        self.any_channel = any_channel
        self._keys: list[tuple[Any, str]] = []
        if secret:
            self._keys.append((secret, "HS256"))
        if public_key_file:
            self._keys.append((Path(public_key_file).read_text(), "RS256"))
        if jwks_file:
            jwks = jwt.PyJWKSet.from_json(Path(jwks_file).read_text())
            self._jwks = {k.key_id: k for k in jwks.keys}
        else:
            self._jwks = {}
        if not self._keys and not self._jwks:
            raise ValueError("JWT auth needs a secret, a public key or a JWKS file")

    def authenticate(self, query: Mapping[str, str], headers: Mapping[str, str]) -> Identity:
        token = query.get("token") or bearer(headers)
        if not token:
            raise AuthError("missing token (?token= or Authorization: Bearer)")
        return self.check(token)

    def refresh(self, token: str, current: Identity) -> Identity:
        """The same checks as at connect, and the same ``sub``: a connection never changes
        hands."""
        ident = self.check(token)
        if ident.user != current.user:
            raise AuthError("token is for another user ('sub' differs from the connection's)")
        return ident

    def subscription(self, token: str, user: str, channel: str) -> float | None:
        """Signed with the gateway's key, unexpired, for this user and this channel: a
        token for another user or channel is refused, and so is a connection's token."""
        claims = self._decode(token)
        if "channel" not in claims:
            raise AuthError("not a subscription token (no 'channel' claim)")
        if claims.get("sub") != user:
            raise AuthError("subscription token is for another user ('sub' differs)")
        if claims["channel"] != channel:
            raise AuthError("subscription token is for another channel")
        exp = claims.get("exp")
        return float(exp) if isinstance(exp, int | float) else None

    def check(self, token: str) -> Identity:
        """A token's identity and rights, or AuthError saying why not."""
        claims = self._decode(token)
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > MAX_NAME_LENGTH:
            raise AuthError("token has no valid 'sub' claim")
        if "channel" in claims:
            # It would otherwise open a connection (with any channel, --jwt-any-channel).
            raise AuthError("a subscription token (it has a 'channel' claim) is not a connection's")
        patterns = claims.get("channels")
        if patterns is not None and (
            not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns)
        ):
            raise AuthError("'channels' claim must be a list of strings")
        exp = claims.get("exp")
        if patterns is not None:
            allowed: tuple[str, ...] | None = tuple(patterns)
        else:
            allowed = None if self.any_channel else ()
        return Identity(
            user=sub,
            channel_patterns=allowed,
            expires_at=float(exp) if isinstance(exp, int | float) else None,
        )

    def _decode(self, token: str) -> dict[str, Any]:
        # A token made for another audience is refused even when this gateway names
        # none: PyJWT then refuses any token that carries an aud.
        options: Any = {"require": ["sub", "exp"] if self.require_exp else ["sub"]}
        candidates: Sequence[tuple[Any, str]] = self._keys
        if self._jwks:
            try:
                kid = jwt.get_unverified_header(token).get("kid")
            except jwt.PyJWTError as exc:
                raise AuthError(f"invalid token: {exc}") from None
            key = self._jwks.get(kid) if kid else None
            if key is None and len(self._jwks) == 1:
                key = next(iter(self._jwks.values()))
            if key is not None:
                candidates = [*candidates, (key.key, key.algorithm_name or "RS256")]
        last: Exception | None = None
        for key, alg in candidates:
            try:
                return jwt.decode(
                    token, key, algorithms=[alg], audience=self.audience, options=options
                )
            except jwt.ExpiredSignatureError:
                raise AuthError("token expired", expired=True) from None
            except jwt.InvalidSignatureError as exc:
                last = exc
            except jwt.PyJWTError as exc:
                last = exc
        raise AuthError(f"invalid token: {last}")


def api_key_ok(headers: Mapping[str, str], keys: Sequence[str]) -> bool:
    """Constant-time check of ``Authorization: Bearer KEY`` against every valid key."""
    if not keys:
        return True
    token = bearer(headers)
    if token is None:
        return False
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(token.encode(), key.encode())
    return ok


def token_ok(headers: Mapping[str, str], token: str | None) -> bool:
    """The admin token check; without a configured token the endpoint is closed."""
    if not token:
        return False
    given = bearer(headers)
    return given is not None and hmac.compare_digest(given.encode(), token.encode())
