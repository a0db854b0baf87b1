"""The long soak: ``tests/test_soak.py`` made bigger and longer.

    .venv/bin/python -m bench.soak                       # 2,000 sockets, ~5 minutes
    .venv/bin/python -m bench.soak --sockets 5000 --rate 200 --phase 20000

Real RabbitMQ node of its own (stopped and restarted mid-stream), three real
pods, one of them SIGKILLed mid-stream; asserts zero loss, zero duplicates and
bounded RSS, and prints the counts. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    p.add_argument("--sockets", type=int, default=2000, help="sockets across the three pods")
    p.add_argument("--rate", type=float, default=150.0, help="publishes per second")
    p.add_argument(
        "--phase", type=int, default=10_000, help="accepted messages per phase (three phases)"
    )
    p.add_argument("--timeout", type=int, default=1800, help="give up after this many seconds")
    args = p.parse_args(argv)
    env = {
        **os.environ,
        "CLARION_SOAK_SOCKETS": str(args.sockets),
        "CLARION_SOAK_RATE": str(args.rate),
        "CLARION_SOAK_PHASE": str(args.phase),
        "CLARION_SOAK_TIMEOUT": str(args.timeout),
    }
    print(
        f"soak: {args.sockets} sockets, {args.rate:g} publishes/s, "
        f"3 phases of {args.phase} accepted messages (broker restart, pod kill between)",
        flush=True,
    )
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "tests/test_soak.py",
        "-s",
        "-q",
        "-p",
        "no:cacheprovider",
    ]
    return subprocess.call(cmd, cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
