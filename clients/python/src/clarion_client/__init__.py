"""Python client of Clarion: ``Publisher`` for backends, ``Subscriber`` for listeners.

The same close-code policy, backoff and recovery as the TypeScript client in
clients/js (policy.py has the table). A distribution of its own (``clarion-client``:
httpx, websockets, orjson) so that a backend that only publishes does not install
the server.
"""

from importlib.metadata import PackageNotFoundError, version

from .policy import CLOSE_CODES, Action, Backoff, CloseCode, close_action, reconnect_delay
from .publisher import AsyncPublisher, Publisher, PublishError, message
from .subscriber import Subscriber
from .types import ClarionError, Closed, Message, Recovery, StateChange, Unauthorized, token_expiry

try:
    __version__ = version("clarion-client")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "CLOSE_CODES",
    "Action",
    "AsyncPublisher",
    "Backoff",
    "ClarionError",
    "CloseCode",
    "Closed",
    "Message",
    "PublishError",
    "Publisher",
    "Recovery",
    "StateChange",
    "Subscriber",
    "Unauthorized",
    "close_action",
    "message",
    "reconnect_delay",
    "token_expiry",
]
