"""Closing a channel so that nothing can make it close twice.

aiormq sends ``Channel.Close`` again when the call waiting for the broker's
``Close-Ok`` is cancelled (a caller's timeout, a task cancelled while it cleans
up) or takes longer than one heartbeat interval (its own timeout for a close,
2 s here: a broker busy with a reconnect storm takes longer). The broker, which
freed the channel on the first one, answers the second with ``CHANNEL_ERROR -
expected 'channel.open'`` and closes the whole connection, with the pod's
queue, its bindings and every read in flight (the deploy benchmark's lost pod
connections; tests/test_channels.py reproduces both).

Two things here, then: ``close_channel`` shields a close (the caller may stop
waiting, the close runs to its end), and aiormq's channel is kept from sending a
second ``Channel.Close`` after a failed wait for the first one's answer: the
channel is marked closed (nothing more is sent on it) and the broker's late
``Close-Ok`` ends it. This reaches into aiormq (a name-mangled method; aiormq is
pinned, see broker/fastconsume.py, the other place that does) and says whether it
did in ``GUARDED``, which tests/test_channels.py checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import aiormq
from pamqp.commands import Channel as ChannelMethods

log = logging.getLogger("clarion.broker")

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


def _guard_second_close() -> bool:
    """Keep aiormq from answering a slow or cancelled close with a second Channel.Close."""
    name = "_Channel__close_after_failure"
    original = getattr(aiormq.Channel, name, None)
    if original is None or not callable(original):
        log.warning("aiormq has no %s: a slow channel close may cost the connection", name)
        return False
    if getattr(original, "clarion_guard", False):
        return True

    async def close_after_failure(self: Any, frame: Any) -> None:
        if isinstance(frame, ChannelMethods.Close):
            # The broker has the first Close: send nothing more on this channel; its
            # Close-Ok (or the connection's end) finishes it.
            self._Channel__close_event.set()
            return
        await original(self, frame)

    close_after_failure.clarion_guard = True  # type: ignore[attr-defined]
    setattr(aiormq.Channel, name, close_after_failure)
    return True


#: aiormq's channels send no second Channel.Close (tests/test_channels.py checks it).
GUARDED = _guard_second_close()
