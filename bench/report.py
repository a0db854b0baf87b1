"""Medians, ratios, the tables and the plots, from result rows (JSON lines): the
scenarios' (``python -m bench --report``) and the scaling sweep's (bench/scale.py,
``python -m bench.scale FILE``). One figure helper draws every plot."""

from __future__ import annotations

import contextlib
import json
import statistics
from collections import defaultdict
from collections.abc import Iterator
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


def _markdown(head: list[str], lines: list[list[str]]) -> list[str]:
    """A markdown table's lines."""
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return out + ["| " + " | ".join(line) + " |" for line in lines]


@contextlib.contextmanager
def _figure(path: Path, ncols: int, figsize: tuple[float, float]) -> Iterator[list[Any]]:
    """Axes side by side to draw on; then each gets a grid (and its legend, if anything is
    labelled), and the figure is written to ``path`` (a PNG, without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=figsize, squeeze=False)
    try:
        yield list(axes[0])
        for ax in axes[0]:
            ax.grid(True, which="both", alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=80)
    finally:
        plt.close(fig)


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
            out += _markdown(head, lines)
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
    """Fan-out latency and pod CPU per delivery against sockets, per system."""
    with _figure(path, 2, (11, 4.2)) as (ax1, ax2):
        _plot_fanout(medians(rows), ax1, ax2)


def _plot_fanout(med: dict[tuple[str, str, int], Row], ax1: Any, ax2: Any) -> None:
    import matplotlib.pyplot as plt

    # Systems measured at several socket counts (single-size variants are in the table).
    systems = sorted(
        name
        for name in {k[1] for k in med if k[0] == "S1"}
        if len({k[2] for k in med if k[0] == "S1" and k[1] == name}) > 1
    )
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
    ax2.set_title("Pod CPU per delivery, broadcast bursts (median)")
    ax2.set_xlabel("sockets (over 2 pods)")
    ax2.set_ylabel("CPU microseconds per delivery")
    ax2.set_xscale("log")


# -- the scaling sweep (bench/scale.py's rows): its tables, its model, its plot ------------

#: A window where other people's processes used more than this share of the machine
#: (busy % minus the pods, RabbitMQ and the bench) is measured again, and not "clean".
FOREIGN_LIMIT = 10.0
#: RabbitMQ CPU (share of a core) above which an idle window is someone else's burst:
#: 16 idle pods cost it about 2%.
RABBIT_IDLE_MAX = 0.06

SCALE_MSG_COLUMNS = (
    ("rate_achieved", "msg/s", "{:.0f}"),
    ("publisher_us", "publisher µs", "{:.0f}"),
    ("holder_us", "holder µs", "{:.0f}"),
    ("none_us", "pod holding none µs", "{:.0f}"),
    ("per_pod_us", "per other pod µs", "{:.0f}"),
    ("rabbit_us", "RabbitMQ µs", "{:.0f}"),
    ("cluster_us", "cluster µs", "{:.0f}"),
    ("lost", "lost", "{:.0f}"),
    ("extra", "extra", "{:.0f}"),
    ("busy_pct", "machine busy %", "{:.0f}"),
)
SCALE_CONNECT_COLUMNS = (
    ("sockets", "sockets", "{:.0f}"),
    ("connects_per_s", "connects/s", "{:.0f}"),
    ("holder_us", "pod µs/cycle", "{:.0f}"),
    ("other_us", "other pod µs/cycle", "{:.0f}"),
    ("rabbit_us", "RabbitMQ µs/cycle", "{:.0f}"),
    ("cluster_us", "cluster µs/cycle", "{:.0f}"),
    ("close_settled_s", "close settled s", "{:.1f}"),
    ("bindings_peak", "bindings peak", "{:.0f}"),
    ("busy_pct", "machine busy %", "{:.0f}"),
)
SCALE_KINDS = ("user", "absent", "broadcast", "connect")
MODE_COLORS = {"fanout": "tab:red", "direct": "tab:blue"}


def scale_clean(row: Row) -> bool:
    """No burst of other people's work in the window or its idle baseline."""
    return (
        (row.get("foreign_pct") or 0.0) <= FOREIGN_LIMIT
        and (row.get("idle_foreign_pct") or 0.0) <= FOREIGN_LIMIT
        and (row.get("idle_rabbit_us_per_s") or 0.0) <= RABBIT_IDLE_MAX * 1e6
    )


def scale_medians(rows: list[Row]) -> dict[tuple[str, int, str], Row]:
    """Median of every numeric field per (routing, pods, kind), over the clean runs.

    Runs with other people's bursts in them (``scale_clean``) count only where a group
    has no clean run; ``runs`` says "clean/all".
    """
    groups: dict[tuple[str, int, str], list[Row]] = {}
    for r in rows:
        if r.get("scenario") in ("scale", "scale-connect"):
            groups.setdefault((r["routing"], int(r["pods"]), r["kind"]), []).append(r)
    out = {}
    for key, every in groups.items():
        rs = [r for r in every if scale_clean(r)] or every
        m: Row = {"runs": f"{sum(map(scale_clean, every))}/{len(every)}"}
        for k in rs[0]:
            vals = [r[k] for r in rs if isinstance(r.get(k), (int, float))]
            if vals and not isinstance(rs[0][k], bool):
                m[k] = statistics.median(vals)
        out[key] = m
    return out


def scale_table(rows: list[Row]) -> str:
    """Markdown tables of the medians (messages, then connects)."""
    med = scale_medians(rows)
    order = sorted(med, key=lambda k: (SCALE_KINDS.index(k[2]), k[0], k[1]))
    out = []
    for cols, kinds in (
        (SCALE_MSG_COLUMNS, SCALE_KINDS[:3]),
        (SCALE_CONNECT_COLUMNS, SCALE_KINDS[3:]),
    ):
        keys = [k for k in order if k[2] in kinds]
        if not keys:
            continue
        head = ["kind", "routing", "pods", "runs", *(c[1] for c in cols)]
        lines = [
            [k[2], k[0], str(k[1]), str(med[k]["runs"])]
            + [_fmt(med[k].get(c[0]), c[2]) for c in cols]
            for k in keys
        ]
        out += [*_markdown(head, lines), ""]
    return "\n".join(out)


def linfit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least squares y = a + b x."""
    n = len(xs)
    if n < 2:
        return (ys[0] if ys else 0.0), 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    return my - b * mx, b


def scale_model(rows: list[Row]) -> dict[str, dict[str, float]]:
    """Constants of: cluster = publish + H x consume + (P - H - 1) x idle copy + RabbitMQ a + b P.

    Fitted per routing mode from the ``user`` rows (one holder, H = 1):
    ``publish`` the median publishing pod, ``consume`` the holder's, ``copy``
    a pod holding none of the recipients, RabbitMQ a line in P.
    """
    med = scale_medians(rows)
    out: dict[str, dict[str, float]] = {}
    for mode in sorted({k[0] for k in med}):
        user = sorted((k[1], v) for k, v in med.items() if k[0] == mode and k[2] == "user")
        if not user:
            continue
        ps = [float(p) for p, _ in user]
        a, b = linfit(ps, [v.get("rabbit_us", 0.0) for _, v in user])
        ca, cb = linfit(ps, [v.get("cluster_us", 0.0) for _, v in user])
        copies = [v["none_us"] for _, v in user if v.get("none_us") is not None]
        out[mode] = {
            "publish_us": statistics.median(v.get("publisher_us", 0.0) for _, v in user),
            "consume_us": statistics.median(v.get("holder_us", 0.0) for _, v in user),
            "copy_us": statistics.median(copies) if copies else 0.0,
            "rabbit_a_us": a,
            "rabbit_b_us": b,
            "cluster_a_us": ca,
            "cluster_b_us": cb,
        }
    return out


def scale_model_text(rows: list[Row]) -> str:
    lines = []
    for mode, m in scale_model(rows).items():
        lines.append(
            f"{mode}: per targeted message (one holder) = publish {m['publish_us']:.0f} µs"
            f" + holder {m['consume_us']:.0f} µs + (P-2) x {m['copy_us']:.0f} µs per pod holding"
            f" none + RabbitMQ ({m['rabbit_a_us']:.0f} + {m['rabbit_b_us']:.0f} x P) µs;"
            f" cluster fit {m['cluster_a_us']:.0f} + {m['cluster_b_us']:.0f} x P µs"
        )
    return "\n".join(lines)


def plot_scale(rows: list[Row], path: Path) -> None:
    """CPU per targeted message (cluster and RabbitMQ) against pods, per routing mode."""
    with _figure(path, 1, (7.5, 4.5)) as (ax,):
        _plot_scale(scale_medians(rows), ax)


def _plot_scale(med: dict[tuple[str, int, str], Row], ax: Any) -> None:
    for mode in sorted({k[0] for k in med}):
        pts = sorted((k[1], v) for k, v in med.items() if k[0] == mode and k[2] == "user")
        if not pts:
            continue
        xs = [p for p, _ in pts]
        color = MODE_COLORS.get(mode, "tab:gray")
        ax.plot(
            xs,
            [v.get("cluster_us") for _, v in pts],
            "o-",
            color=color,
            label=f"{mode}: cluster (pods + RabbitMQ)",
        )
        ax.plot(
            xs, [v.get("rabbit_us") for _, v in pts], "s--", color=color, label=f"{mode}: RabbitMQ"
        )
    ax.set_title("CPU per targeted message (one recipient on one pod) vs pods")
    ax.set_xlabel("pods")
    ax.set_ylabel("CPU µs per message (idle subtracted)")
    ax.set_xscale("log", base=2)
    ax.set_xticks([2, 4, 8, 16], ["2", "4", "8", "16"])
    ax.set_ylim(bottom=0)


def summarize_scale(rows: list[Row], png: Path) -> str:
    if not rows:
        return "scale: no rows"
    plot_scale(rows, png)
    # The connect storm is flat out by design; the message windows must not saturate.
    msgs = [r for r in rows if r.get("kind") != "connect" and r.get("busy_pct") is not None]
    note = ""
    if msgs:
        ours = max(r["busy_pct"] - r.get("foreign_pct", 0.0) for r in msgs)
        busy = max(r["busy_pct"] for r in msgs)
        note = (
            f"\nmachine CPU in the message windows: at most {busy:.0f}% busy, of which the"
            f" bench's own (pods, RabbitMQ, clients) at most {ours:.0f}%"
        )
        if ours > 70:
            note += " -- SATURATED (> 70%): lower --rate"
    return f"{scale_table(rows)}\n{scale_model_text(rows)}{note}\nplot: {png}"
