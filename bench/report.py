"""Medians, ratios, the table, and the plot, from result rows (JSON lines)."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

Row = dict[str, Any]


def load(path: Path) -> list[Row]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _med(rows: list[Row], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def groups(rows: list[Row]) -> dict[tuple[str, str, int], list[Row]]:
    g: dict[tuple[str, str, int], list[Row]] = defaultdict(list)
    for r in rows:
        g[(r["scenario"], r["system"], int(r.get("sockets") or 0))].append(r)
    return g


def medians(rows: list[Row]) -> dict[tuple[str, str, int], Row]:
    out: dict[tuple[str, str, int], Row] = {}
    for key, rs in groups(rows).items():
        m: Row = {"runs": len(rs)}
        for k in rs[0]:
            if k in ("scenario", "system", "run", "deflate", "cores"):
                continue
            if all(isinstance(r.get(k), (int, float)) for r in rs):
                m[k] = _med(rs, k)
        out[key] = m
    return out


COLUMNS = {
    "S1": [
        ("deliveries_per_s", "deliv/s", "{:.0f}"),
        ("cpu_us_per_delivery", "CPU us/deliv", "{:.1f}"),
        ("lat_p50_ms", "p50 ms", "{:.1f}"),
        ("lat_p99_ms", "p99 ms", "{:.1f}"),
        ("lost", "lost", "{:.0f}"),
        ("rss_mib", "RSS MiB (pods)", "{:.0f}"),
    ],
    "S1-API": [
        ("deliveries_per_s", "deliv/s", "{:.0f}"),
        ("cpu_us_per_delivery", "CPU us/deliv", "{:.1f}"),
        ("lat_p50_ms", "p50 ms", "{:.1f}"),
        ("lat_p99_ms", "p99 ms", "{:.1f}"),
        ("api_p50_ms", "API p50 ms", "{:.1f}"),
        ("api_p99_ms", "API p99 ms", "{:.1f}"),
        ("http_errors", "HTTP non-202", "{:.0f}"),
        ("lost", "lost", "{:.0f}"),
    ],
    "S1-paced": [
        ("lat_p50_ms", "p50 ms", "{:.1f}"),
        ("lat_p99_ms", "p99 ms", "{:.1f}"),
        ("lost", "lost", "{:.0f}"),
    ],
    "S2": [
        ("lat_p50_ms", "p50 ms", "{:.1f}"),
        ("lat_p99_ms", "p99 ms", "{:.1f}"),
        ("lost", "lost", "{:.0f}"),
        ("http_errors", "HTTP non-202", "{:.0f}"),
        ("api_p50_ms", "API p50 ms", "{:.1f}"),
        ("api_p99_ms", "API p99 ms", "{:.1f}"),
        ("cpu_us_per_message", "CPU us/msg", "{:.0f}"),
    ],
    "S3/S4": [
        ("rss_kib_per_socket", "RSS KiB/sock", "{:.1f}"),
        ("connects_per_s", "connects/s", "{:.0f}"),
        ("cpu_ms_per_connect", "CPU ms/conn", "{:.2f}"),
        ("connect_failed", "failed", "{:.0f}"),
    ],
    "deploy": [
        ("lost", "lost", "{:.0f}"),
        ("recovered_false", "recovered:false", "{:.0f}"),
        ("closes_1011", "1011", "{:.0f}"),
        ("attempt_p99_s", "to welcome p99 s", "{:.2f}"),
        ("back_max_s", "back within s", "{:.1f}"),
        ("lat_p99_ms", "deploy p99 ms", "{:.0f}"),
        ("connects_per_s", "connects/s", "{:.1f}"),
        ("drain_max_s", "drain max s", "{:.1f}"),
    ],
    "streams": [
        ("cpu_us_per_delivery", "CPU us/deliv", "{:.1f}"),
        ("rss_kib_per_connection", "RSS KiB/conn", "{:.1f}"),
        ("deliveries_per_s", "deliv/s", "{:.0f}"),
        ("lat_p50_ms", "p50 ms", "{:.1f}"),
        ("lat_p99_ms", "p99 ms", "{:.1f}"),
        ("lost", "lost", "{:.0f}"),
        ("connect_failed", "failed", "{:.0f}"),
    ],
    "S5": [
        ("delivered", "delivered", "{:.0f}"),
        ("lost", "lost", "{:.0f}"),
        ("rss_mib", "RSS MiB", "{:.0f}"),
        ("rss_kib_per_socket", "RSS KiB/sock", "{:.1f}"),
        ("connects_per_s", "connects/s", "{:.0f}"),
        ("lat_p99_ms", "p99 ms", "{:.0f}"),
    ],
}


def _fmt(v: Any, f: str) -> str:
    return "-" if v is None else f.format(v)


def table(rows: list[Row], markdown: bool = False) -> str:
    med = medians(rows)
    out: list[str] = []
    for scen, cols in COLUMNS.items():
        keys = sorted(k for k in med if k[0] == scen)
        if not keys:
            continue
        head = ["scenario", "system", "sockets", "runs", *(c[1] for c in cols)]
        lines = []
        for k in keys:
            m = med[k]
            lines.append(
                [scen, k[1], str(k[2]), str(m["runs"]), *(_fmt(m.get(c[0]), c[2]) for c in cols)]
            )
        if markdown:
            out.append("| " + " | ".join(head) + " |")
            out.append("|" + "---|" * len(head))
            out += ["| " + " | ".join(line) + " |" for line in lines]
        else:
            widths = [max(len(x) for x in col) for col in zip(head, *lines, strict=False)]
            out.append("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=False)))
            out += [
                "  ".join(x.ljust(w) for x, w in zip(line, widths, strict=False)) for line in lines
            ]
        out.append("")
    return "\n".join(out)


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}"


def ratios(rows: list[Row]) -> str:
    """Clarion against its baselines, each measured in the same run."""
    med = medians(rows)
    out = []
    s1 = sorted({k[2] for k in med if k[0] == "S1" and k[1] == "clarion"})
    for n in s1:
        c = med.get(("S1", "clarion", n), {})
        s = med.get(("S1", "sio", n), {})
        r = med.get(("S1", "raw", n), {})
        out.append(
            f"S1 {n} sockets: CPU/delivery clarion/sio = "
            f"{_ratio(c.get('cpu_us_per_delivery'), s.get('cpu_us_per_delivery'))} "
            "(target <= 0.35), "
            f"deliveries/s clarion/sio = "
            f"{_ratio(c.get('deliveries_per_s'), s.get('deliveries_per_s'))} (target >= 2), "
            f"raw/clarion deliveries/s = "
            f"{_ratio(r.get('deliveries_per_s'), c.get('deliveries_per_s'))}, "
            f"CPU/delivery clarion/raw = "
            f"{_ratio(c.get('cpu_us_per_delivery'), r.get('cpu_us_per_delivery'))} (target <= 2)"
        )
    for n in sorted({k[2] for k in med if k[0] == "S1-API"}):
        r = med.get(("S1-API", "raw", n), {})
        for name in sorted(k[1] for k in med if k[0] == "S1-API" and k[2] == n):
            if name.startswith("clarion"):
                c = med[("S1-API", name, n)]
                out.append(
                    f"S1-API {n} sockets: CPU/delivery {name} (HTTP API) / raw (AMQP) = "
                    f"{_ratio(c.get('cpu_us_per_delivery'), r.get('cpu_us_per_delivery'))} "
                    "(target <= 1.15)"
                )
    c2 = next((v for k, v in med.items() if k[0] == "S2" and k[1] == "clarion"), None)
    s2 = next((v for k, v in med.items() if k[0] == "S2" and k[1] == "sio"), None)
    if c2 and s2:
        out.append(
            f"S2: p99 clarion/sio = {_ratio(c2.get('lat_p99_ms'), s2.get('lat_p99_ms'))} "
            f"(target <= 1), lost clarion = {c2.get('lost')}"
        )
    out += _stream_ratios(rows)
    c3 = next((v for k, v in med.items() if k[0] == "S3/S4" and k[1] == "clarion"), None)
    if c3:
        out.append(
            f"S3: clarion {c3.get('rss_kib_per_socket')} KiB/socket (target <= 25); "
            f"S4: clarion {c3.get('connects_per_s')} connects/s (target >= 1000)"
        )
    return "\n".join(out)


def _stream_ratios(rows: list[Row]) -> list[str]:
    """Each HTTP stream over WebSocket: the median of the ratios of each repetition (the
    three transports of a repetition ran one after the other, under the same load)."""
    reps: dict[tuple[Any, Any], dict[str, Row]] = defaultdict(dict)
    for r in rows:
        if r["scenario"] == "streams":
            reps[(r.get("run_id"), r["run"])][r["transport"]] = r
    out = []
    for transport in ("sse", "http_stream"):
        cpu, mem = [], []
        for rep in reps.values():
            ws, other = rep.get("websocket"), rep.get(transport)
            if ws and other and ws["cpu_us_per_delivery"]:
                cpu.append(other["cpu_us_per_delivery"] / ws["cpu_us_per_delivery"])
                mem.append(other["rss_kib_per_connection"])
        if cpu:
            out.append(
                f"streams: {transport} CPU/delivery / WebSocket's = "
                f"{statistics.median(cpu):.2f} (target <= 1.5), "
                f"{statistics.median(mem):.1f} KiB per idle stream (target <= 25); "
                f"{len(cpu)} repetitions"
            )
    return out


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    med = medians(rows)
    # Systems measured at several socket counts (single-size variants are in the table).
    systems = sorted(
        name
        for name in {k[1] for k in med if k[0] == "S1"}
        if len({k[2] for k in med if k[0] == "S1" and k[1] == name}) > 1
    )
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colors = {name: palette[i % len(palette)] for i, name in enumerate(systems)}
    for sysname in systems:
        color = colors[sysname]
        paced = sorted((k[2], v) for k, v in med.items() if k[0] == "S1-paced" and k[1] == sysname)
        burst = sorted((k[2], v) for k, v in med.items() if k[0] == "S1" and k[1] == sysname)
        if paced:
            xs = [n for n, _ in paced]
            (line,) = ax1.plot(xs, [v.get("lat_p99_ms") for _, v in paced], "o-", label=sysname)
            ax1.plot(xs, [v.get("lat_p50_ms") for _, v in paced], "x--", color=line.get_color())
        if burst and burst[0][0] > 0:
            ax2.plot(
                [n for n, _ in burst],
                [v.get("cpu_us_per_delivery") for _, v in burst],
                "o-",
                color=color,
                label=sysname,
            )
    ax1.set_title("Fan-out latency, 10 broadcasts/s (p99 solid, p50 dashed)")
    ax1.set_xlabel("sockets (over 2 pods)")
    ax1.set_ylabel("ms, publish to socket")
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    if ax1.get_legend_handles_labels()[0]:
        ax1.legend()
    ax2.set_title("Pod CPU per delivery, broadcast bursts (median)")
    ax2.set_xlabel("sockets (over 2 pods)")
    ax2.set_ylabel("CPU microseconds per delivery")
    ax2.set_xscale("log")
    if ax2.get_legend_handles_labels()[0]:
        ax2.legend()
    for ax in (ax1, ax2):
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
