"""streams (``--only streams``): WebSocket, SSE and NDJSON streams side by side, one run.

Per repetition and transport, in turn (so a load that drifts on a shared
machine falls on all three alike): one fresh ``clarion serve`` pod on its own
vhost; the load generators (wsclient.WSClient, streamclient.StreamClient: the
same bare-protocol cost per connection) open ``connections`` of that
transport, each ready on its welcome; the pod's RSS before and after gives
**KiB per idle connection**; then a burst of ``deliveries / connections``
broadcasts straight into the pod's fanout exchange (as S1) gives **pod CPU
per delivery** (psutil user+system), deliveries/s, latency and losses.
Rows: scenario ``streams``, system ``clarion/<transport>``; report.py's
``streams`` table and ratios (SSE and NDJSON over WebSocket, medians).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from . import publish
from .scenarios import Bench, _base, _lat
from .servers import cpu_seconds, rss_bytes

#: transport -> (path, the load generator's dialect).
TRANSPORTS = {
    "websocket": ("/ws?user=u{i}", "clarion"),
    "sse": ("/sse?user=u{i}", "clarion-sse"),
    "http_stream": ("/stream?user=u{i}", "clarion-stream"),
}


def run(bench: Bench, connections: int, deliveries: int) -> list[dict[str, Any]]:
    lg = bench.lg
    rows: list[dict[str, Any]] = []
    for rep in range(bench.reps):
        for transport, (path, dialect) in TRANSPORTS.items():
            system = bench.start("clarion", 1)
            try:
                # Warm the code paths (imports, first allocations) before the baseline.
                lg.connect(system.addrs, path, dialect, 20)
                lg.call("close_all")
                time.sleep(0.5)
                rss0 = rss_bytes(system.pids)
                res = lg.connect(system.addrs, path, dialect, connections, user_offset=100)
                time.sleep(1.5)
                rss1 = rss_bytes(system.pids)
                ok = res["ok"]
                messages = max(10, deliveries // max(1, ok))
                lg.call("reset")
                cpu0 = cpu_seconds(system.pids)
                first, _ = asyncio.run(
                    publish.amqp_burst(system.amqp_url, system.kind, messages, bench.pad)
                )
                lg.wait_received(ok * messages)
                cpu1 = cpu_seconds(system.pids)
                got, last, lat = lg.stats()
                row = _base(
                    "streams",
                    f"clarion/{transport}",
                    rep,
                    transport=transport,
                    sockets=ok,
                    connect_failed=res["failed"],
                    rss_kib_per_connection=round((rss1 - rss0) / 1024 / max(1, ok), 1),
                    messages=messages,
                    expected=ok * messages,
                    delivered=got,
                    lost=ok * messages - got,
                    deliveries_per_s=round(got / max(1e-6, last - first)),
                    cpu_us_per_delivery=round((cpu1 - cpu0) / max(1, got) * 1e6, 2),
                )
                _lat(row, lat)
                rows.append(row)
                bench.emit(row)
            finally:
                lg.call("close_all")
                system.stop()
    return rows
