"""py-spy on a live pod, and a summary of where its time went.

``py-spy record --format raw`` writes collapsed stacks (``f1;f2;...;fn COUNT``);
the summary lists the functions with the most samples on top of the stack
(self time) and anywhere in it (inclusive time), which is what
docs/performance.md quotes.
"""

from __future__ import annotations

import collections
import shutil
import signal
import subprocess
import sys
from pathlib import Path


def _py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


class PySpy:
    def __init__(self, pid: int, summary: Path, rate: int = 200) -> None:
        self.pid = pid
        self.summary = summary
        self.raw = summary.with_suffix(".collapsed.tmp")
        self.rate = rate
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PySpy:
        exe = _py_spy()
        if exe is None:
            print("py-spy not found: no profile", file=sys.stderr)
            return self
        self.proc = subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(self.pid),
                "--rate",
                str(self.rate),
                "--format",
                "raw",
                "--nonblocking",
                "--output",
                str(self.raw),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return self

    def stop(self) -> str:
        if self.proc is None:
            return ""
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        text = summarize(self.raw) if self.raw.exists() else "no samples\n"
        self.summary.write_text(text)
        return text


def _short(frame: str) -> str:
    """``func (path/to/file.py:12)`` -> ``func (file.py:12)``."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    parts = where.split("/")
    tail = "/".join(parts[-2:]) if len(parts) > 1 else where
    return f"{name} ({tail})"


def summarize(path: Path, top: int = 20) -> str:
    self_counts: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_short(f) for f in stack.split(";")]
        # Line numbers split one function into many frames: count by function.
        funcs = [f.rsplit(":", 1)[0] + ")" if ":" in f else f for f in frames]
        self_counts[funcs[-1]] += n
        for f in set(funcs):
            incl[f] += n
    out = [f"samples: {total} (non-idle)", "", "self time (top of stack):"]
    for f, n in self_counts.most_common(top):
        out.append(f"  {100 * n / max(1, total):5.1f}%  {f}")
    out += ["", "inclusive time:"]
    for f, n in incl.most_common(top + 10):
        out.append(f"  {100 * n / max(1, total):5.1f}%  {f}")
    return "\n".join(out) + "\n"
