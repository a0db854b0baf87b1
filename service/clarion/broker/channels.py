"""Closing a channel so that nothing can make it close twice.

aiormq sends ``Channel.Close`` again when the call waiting for the broker's
``Close-Ok`` is cancelled (a timeout, a task cancelled while it cleans up):
the broker, which freed the channel on the first one, answers the second with
``CHANNEL_ERROR - expected 'channel.open'`` and closes the whole connection,
with the pod's queue, its bindings and every read in flight (seen in the deploy
benchmark, reproduced in tests/test_channels.py). So a close is shielded: the
caller may stop waiting, the close itself runs to its end.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

#: How long a caller waits for the broker's answer to a close (it goes on after that).
CLOSE_WAIT = 5.0


async def close_channel(channel: Any, wait: float = CLOSE_WAIT) -> None:
    """Close ``channel`` (aio-pika's or aiormq's) once; never raises, never sends it twice."""
    if channel is None or channel.is_closed:
        return
    closing = asyncio.ensure_future(channel.close())
    closing.add_done_callback(lambda f: f.cancelled() or f.exception())
    with contextlib.suppress(Exception):
        await asyncio.wait_for(asyncio.shield(closing), wait)
