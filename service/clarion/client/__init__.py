"""Python client of Clarion: ``Publisher`` for backends, ``Subscriber`` for listeners.

The same close-code policy, backoff and recovery as the TypeScript client in
clients/js (policy.py has the table).
"""

from .policy import CLOSE_CODES, Action, Backoff, CloseCode, close_action, reconnect_delay
from .publisher import AsyncPublisher, Publisher, PublishError, message
from .subscriber import Subscriber
from .types import ClarionError, Closed, Message, Recovery, StateChange, Unauthorized, token_expiry

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
