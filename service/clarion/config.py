"""Settings of one gateway pod.

Every field is a ``clarion serve`` flag and a ``CLARION_<FLAG>`` environment
variable (see cli.py); the defaults here are the documented ones.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field


@dataclass
class Settings:
    pod_name: str = field(default_factory=socket.gethostname)
    amqp_url: str | None = None
    exchange: str = "clarion.fanout"
    queue_prefix: str = "clarion.pod."
    # Auth: "none" (clients name themselves with ?user=) or "jwt".
    auth: str = "jwt"
    jwt_secret: str | None = None
    jwt_public_key: str | None = None  # path of a PEM file (RS256)
    jwks_file: str | None = None  # path of a JWKS JSON file (RS256)
    jwt_audience: str | None = None
    api_keys: list[str] = field(default_factory=list)
    admin_token: str | None = None
    allow_client_publish: bool = False
    allowed_origins: list[str] = field(default_factory=list)  # empty: any origin
    # Limits.
    max_connections: int = 20_000
    max_subscriptions: int = 100
    max_frame_bytes: int = 1024 * 1024
    max_body_bytes: int = 1024 * 1024
    max_frames_per_second: float = 50.0
    send_buffer_messages: int = 1000
    send_buffer_bytes: int = 4 * 1024 * 1024
    # Broker queue bounds.
    queue_max_length: int = 100_000
    queue_message_ttl_ms: int = 300_000
    queue_expires_ms: int = 1_800_000
    history_max_age: str = "1h"
    history_max_bytes: int = 512 * 1024 * 1024
    # Drain on SIGTERM.
    drain_delay: float = 5.0
    drain_window: float = 10.0
    # Serve the demo page at "/".
    demo: bool = True
    # Per-message deflate: browsers offer it; it costs memory and CPU per socket.
    compression: bool = False

    def validate(self) -> None:
        if not self.pod_name:
            raise ValueError("pod name must not be empty")
        if self.auth not in ("none", "jwt"):
            raise ValueError(f"--auth must be 'none' or 'jwt', not {self.auth!r}")
        if self.auth == "jwt" and not (self.jwt_secret or self.jwt_public_key or self.jwks_file):
            raise ValueError(
                "--auth jwt needs --jwt-secret, --jwt-public-key or --jwks-file "
                "(or use --auth none for development)"
            )
        for name in (
            "max_connections",
            "max_subscriptions",
            "max_frame_bytes",
            "max_body_bytes",
            "send_buffer_messages",
            "send_buffer_bytes",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive")
        if self.drain_delay < 0 or self.drain_window < 0:
            raise ValueError("--drain-delay and --drain-window must be >= 0")
