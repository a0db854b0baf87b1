"""``python -m bench``: run the benchmark, print the table, append JSON lines.

    python -m bench                 # full: S1 sweep, S2, S3/S4, S5, baselines (5-8 min)
    python -m bench --quick         # one repetition, small sizes (~1 min)
    python -m bench --only s1,s2    # a subset of: s1 s1api s2 s3 s5 broker deflate variants
    python -m bench --only s1api --ab HEAD   # S1 through POST /api/publish, raw beside it
    python -m bench --only consume  # a pod's CPU per consumed message, a plain consumer beside it
    python -m bench --only deploy --sockets 2000 --pods 4   # rolling restart + crash under load
    python -m bench --only streams --sockets 1000   # WebSocket, SSE, NDJSON: CPU/delivery, KiB/conn
    python -m bench --profile       # also py-spy the first Clarion pod during S1 and S2
    python -m bench --clarion-rev HEAD~1   # measure another revision of the gateway
    python -m bench --ab 56673a0    # and that revision beside the working tree, same run
    python -m bench --report bench/results/2026-11-26.jsonl --tag after --compare before

See bench/README.md for what each scenario measures.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from . import report
from .loadgen import LoadGen, raise_nofile
from .scenarios import Bench

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ALL = (
    "s1",
    "s1api",
    "s2",
    "s3",
    "s5",
    "broker",
    "deflate",
    "variants",
    "scale",
    "consume",
    "deploy",
    "streams",
)
#: Clarion under the bench launcher: uvicorn's other WebSocket implementations, a tuned GC.
VARIANTS = ("clarion[ws=websockets]", "clarion[ws=wsproto]", "clarion[gc]")


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def _snapshot(rev: str, into: Path) -> str:
    """Extract ``service/`` of a git revision; returns its commit."""
    commit = _git("rev-parse", rev)
    if not commit:
        raise SystemExit(f"bench: unknown revision {rev!r}")
    archive = into / "src.tar"
    with open(archive, "wb") as f:
        subprocess.run(["git", "archive", commit, "service"], cwd=REPO, stdout=f, check=True)
    with tarfile.open(archive) as t:
        t.extractall(into, filter="data")
    return commit


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes, one repetition")
    p.add_argument("--reps", type=int, default=None, help="repetitions per measurement")
    p.add_argument("--only", default="", help="comma-separated subset of: " + " ".join(ALL))
    p.add_argument("--profile", action="store_true", help="py-spy a Clarion pod in S1 and S2")
    p.add_argument("--clarion-rev", default=None, help="git revision of service/ to measure")
    p.add_argument("--ab", default=None, help="also measure this git revision, same run")
    p.add_argument("--sizes", default="", help="S1 socket counts, e.g. 100,400,1000")
    p.add_argument(
        "--systems", default="", help="S1 systems, e.g. clarion,clarion[gc+nometrics],raw"
    )
    p.add_argument("--loadgen", type=int, default=2, help="load-generator processes")
    p.add_argument("--pad", type=int, default=200, help="payload padding, bytes")
    p.add_argument("--out", default=None, help="JSON lines file (default results/<date>.jsonl)")
    p.add_argument("--tag", default="", help="label stored in every row (e.g. before/after)")
    p.add_argument("--report", default=None, help="only print the table and plot of a file")
    p.add_argument("--plot", default=str(HERE / "s1-scaling.png"), help="PNG path")
    p.add_argument("--compare", default=None, help="with --report: also Clarion of this tag")
    p.add_argument("--pods", default="", help="scale: pod counts (default 2,4,8,16); deploy: pods")
    p.add_argument("--routing", default="fanout,direct", help="scale: routing modes")
    p.add_argument("--rate", type=float, default=None, help="scale (150), deploy (200): msgs/s")
    p.add_argument(
        "--sockets", type=int, default=None, help="deploy (2000), streams (1000): connections"
    )
    p.add_argument("--seconds", type=float, default=5.0, help="scale: seconds per window")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        everything = report.load(Path(args.report))
        loaded = [r for r in everything if not args.tag or r.get("tag") == args.tag]
        if args.compare:
            # Clarion of another run (e.g. the revision before the changes) beside this one.
            for r in everything:
                if r.get("tag") == args.compare and r["system"] == "clarion":
                    loaded.append({**r, "system": f"clarion ({args.compare})"})
        print(report.table(loaded))
        print(report.ratios(loaded))
        report.plot(loaded, Path(args.plot))
        return 0

    raise_nofile()
    quick = args.quick
    reps = args.reps or (1 if quick else 3)
    only = set(filter(None, args.only.split(","))) or set(ALL)
    if quick:
        only -= {"s5", "variants"} if not args.only else set()
    today = datetime.date.today().isoformat()
    out = Path(args.out) if args.out else HERE / "results" / f"{today}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    log_dir = Path(tempfile.mkdtemp(prefix="clarion-bench-"))

    env: dict[str, str] = {}
    dirty = bool(_git("status", "--porcelain", "--", "service"))
    commit = _git("rev-parse", "HEAD")
    source = f"{commit[:10]}{'+dirty' if dirty else ''} (working tree)"
    if args.clarion_rev:
        commit = _snapshot(args.clarion_rev, log_dir)
        env["PYTHONPATH"] = str(log_dir / "service")
        source = f"{commit[:10]} ({args.clarion_rev})"
    ab: list[str] = []
    envs: dict[str, dict[str, str]] = {}
    if args.ab:
        # Another revision of the gateway, measured in the same run beside this one.
        into = log_dir / "ab"
        into.mkdir()
        ab_commit = _snapshot(args.ab, into)
        label = f"clarion@{args.ab}"
        ab.append(label)
        envs[label] = {"PYTHONPATH": str(into / "service")}
        source += f"; {label} = {ab_commit[:10]}"

    run_id = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    started = time.monotonic()
    load_before = os.getloadavg()
    rows: list[dict[str, Any]] = []

    def emit(row: dict[str, Any]) -> None:
        row.update(run_id=run_id, clarion=source, tag=args.tag, quick=quick)
        rows.append(row)
        with open(out, "a") as f:
            f.write(json.dumps(row) + "\n")
        brief = {
            k: v
            for k, v in row.items()
            if k
            not in ("run_id", "clarion", "tag", "quick", "cores", "expected", "pods", "deflate")
        }
        print("  " + json.dumps(brief), flush=True)

    print(
        f"clarion bench {run_id}: {os.cpu_count()} cores, load {load_before[0]:.2f}, "
        f"clarion {source}, reps {reps}{', quick' if quick else ''}; logs {log_dir}",
        flush=True,
    )
    lg = LoadGen(args.loadgen)
    bench = Bench(lg, log_dir, reps, args.pad, env, emit)
    bench.envs = envs
    if args.profile:
        bench.profile_dir = HERE / "results"
    try:
        sizes = [200] if quick else [100, 400, 1000]
        if args.sizes:
            sizes = [int(x) for x in args.sizes.split(",")]
        deliveries = 10_000 if quick else 20_000
        s1_systems = ["clarion", *ab, "sio", "raw", "raw+coalesce"]
        if args.systems:
            s1_systems = args.systems.split(",")
        if "s1" in only:
            for label in s1_systems:
                print(f"S1 broadcast: {label}", flush=True)
                bench.s1_broadcast(label, sizes, deliveries)
        if "s1api" in only:
            # Broadcasts through POST /api/publish, as a backend sends them; raw
            # (no HTTP API) over AMQP in the same run: the floor.
            api_systems = args.systems.split(",") if args.systems else ["clarion", *ab, "raw"]
            for label in api_systems:
                print(f"S1-API broadcast through the HTTP API: {label}", flush=True)
                # Three of S1's bursts per CPU window: psutil's 10 ms tick is under 2% of it.
                bench.s1_api(label, sizes, deliveries, rounds=3)
        if "broker" in only:
            print("S1 baseline: aio-pika publish -> consume", flush=True)
            bench.broker_baseline(3_000 if quick else 5_000)
        if "deflate" in only:
            print("S1 with permessage-deflate negotiated: clarion --compression", flush=True)
            bench.s1_broadcast(
                "clarion+deflate", [sizes[-1] if quick else 400], deliveries, deflate=True, reps=1
            )
        if "variants" in only and "s1" in only:
            for label in VARIANTS:
                print(f"S1 variant: {label}", flush=True)
                bench.s1_broadcast(label, [400], deliveries, paced=False)
        if "s2" in only:
            for label in ("clarion", "clarion+fanout", *ab, "sio"):
                print(f"S2 targeted, 500/s through HTTP: {label}", flush=True)
                bench.s2_targeted(label, 200 if quick else 400, 500.0, 2.0 if quick else 4.0)
        if "s3" in only:
            n = 1000 if quick else 2000
            for label in ("clarion", "clarion+fanout", *ab, "sio", "raw"):
                print(f"S3/S4 idle sockets and connect storm: {label}", flush=True)
                bench.s3_s4_idle(label, n)
            if "deflate" in only:
                print("S3/S4: clarion --compression, client offers deflate", flush=True)
                bench.s3_s4_idle("clarion+deflate", n, reps=1, deflate=True)
            if "variants" in only:
                for label in VARIANTS:
                    print(f"S3/S4 variant: {label}", flush=True)
                    bench.s3_s4_idle(label, n)
        if "s5" in only:
            print("S5: one pod, 10,000 sockets, broadcasts", flush=True)
            bench.s5_capacity("clarion", 10_000)
        if "scale" in only:
            from . import scale

            pods = [int(x) for x in args.pods.split(",")] if args.pods else None
            sc = scale.Scale(
                lg,
                log_dir,
                reps,
                args.pad,
                env,
                emit,
                rate=args.rate or 150.0,
                seconds=args.seconds,
            )
            sc.run(pods or ([2, 4] if quick else [2, 4, 8, 16]), args.routing.split(","))
            print(report.summarize_scale(sc.rows, HERE / "scale.png"))
        if "consume" in only:
            from . import consume

            print("consume: a pod's CPU per consumed message, aio-pika alone beside it", flush=True)
            n = 5_000 if quick else 20_000
            print(consume.run(log_dir, reps, n, args.pad, env, emit, ab=envs))
        if "streams" in only:
            from . import streams

            print("streams: WebSocket, SSE, NDJSON on one pod each, in turn", flush=True)
            # Five of S1's bursts in one CPU window: psutil's 10 ms tick is ~2% of it.
            streams.run(bench, args.sockets or (300 if quick else 1000), 5 * deliveries)
        if "deploy" in only:
            from . import deploy

            opts = deploy.Options(
                sockets=args.sockets or (300 if quick else 2000),
                pods=int(args.pods.split(",")[0]) if args.pods else (3 if quick else 4),
                rate=args.rate or 200.0,
                pad=args.pad,
            )
            deploy.run(opts, log_dir, env, emit, lambda s: print(s, flush=True))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        lg.close()
    load_after = os.getloadavg()
    print()
    print(
        f"{os.cpu_count()} cores; load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after; {time.monotonic() - started:.0f} s; clarion {source}"
    )
    print(report.table(rows))
    print(report.ratios(rows))
    print(f"\nJSON lines: {out}")
    if any(r["scenario"] in ("S1", "S1-paced") for r in rows):
        report.plot(rows, Path(args.plot))
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
