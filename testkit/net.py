"""Loopback ports, and a proxy that can hold a connection's bytes back."""

from __future__ import annotations

import asyncio
import contextlib
import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the OS picks it; a race is possible but rare)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class TcpProxy:
    """A TCP forwarder on loopback: a Kubernetes Service in front of some nodes, or a link
    whose two directions can be held back (a slow or frozen server on a live connection).

    Each new connection goes to the first of ``ports`` that accepts one (a Service sends
    it to some ready endpoint; a dead node's refuses or is gone); bytes are copied both
    ways until either side closes. While ``to_server`` or ``to_client`` is cleared, the
    bytes of that direction wait (kept, not lost).
    """

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.port = 0
        self.to_server = asyncio.Event()
        self.to_client = asyncio.Event()
        self.to_server.set()
        self.to_client.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def cut(self) -> None:
        """End every connection through the proxy now (both sides see it close)."""
        for task in list(self._tasks):
            task.cancel()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for port in self.ports:
            try:
                up_r, up_w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1)
                break
            except (OSError, TimeoutError):
                continue
        else:
            writer.close()
            return
        for src, dst, gate in ((reader, up_w, self.to_server), (up_r, writer, self.to_client)):
            task = asyncio.create_task(self._copy(src, dst, gate, (writer, up_w)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _copy(
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        gate: asyncio.Event,
        both: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        try:
            while data := await src.read(65536):
                await gate.wait()
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for w in both:
                with contextlib.suppress(Exception):
                    w.close()
