"""A TCP forwarder standing in for a Kubernetes Service in front of the RabbitMQ nodes.

Each new connection goes to the first node, in a fixed order, that accepts one
(a Service sends it to some ready endpoint; a dead node's endpoint refuses or is
gone); bytes are copied both ways until either side closes.
"""

from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()

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
        for src, dst in ((reader, up_w), (up_r, writer)):
            task = asyncio.create_task(self._copy(src, dst, (writer, up_w)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _copy(
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        both: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for w in both:
                with contextlib.suppress(Exception):
                    w.close()
