"""The consume scenario: a pod's CPU per message taken off its queue, beside a plain consumer.

One real pod (``clarion serve`` on its own vhost) and, as the floor, a plain
aio-pika consumer process (prefetch 1024, acks batched with ``multiple=True``,
orjson decode of every body). Each round stops the process (SIGSTOP),
publishes ``messages`` straight into its queue over AMQP from the bench
process, resumes it and takes its CPU (utime + stime of /proc/<pid>/stat) until
it has consumed them all, minus its idle CPU over an equal window. So the
messages are already queued, publishing costs the measured process nothing,
and the pod and the floor consume the same bytes.

* ``absent``: messages to a user with no socket on the pod (consumed, dropped).
  The end is a last message to the connected user: the queue is in order.
* ``one socket``: messages to a user with one connected socket; it must
  receive every one.
* ``floor``: the aio-pika consumer (on uvloop, like the pod).

The pod runs with ``--routing fanout``: every message reaches it, wanted or
not. ``--ab REV`` measures that revision's pod beside the working tree's.

    python -m bench --only consume
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aio_pika
import orjson
import websockets

from testkit.net import free_port

from .servers import HOST, Pod, System, Vhost, _cmd, _http_ok

CLK_TCK = os.sysconf("SC_CLK_TCK")
#: The bench's own heartbeat: a stopped process must keep its connection.
HEARTBEAT = "heartbeat=120"
FLOOR_QUEUE = "bench.consume.floor"


def cpu_of(pid: int) -> float:
    """utime + stime of a process (all its threads), seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _with_heartbeat(url: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{HEARTBEAT}"


def _messages(user: str, n: int, pad: int) -> list[aio_pika.Message]:
    from clarion.broker.codec import envelope_to_message
    from clarion.message import Envelope, Target

    return [
        envelope_to_message(
            Envelope.create(Target("user", user), {"t": time.time(), "s": i, "p": "x" * pad})
        )
        for i in range(n)
    ]


async def _publish(url: str, exchange: str, routing_key: str, msgs: list[aio_pika.Message]) -> None:
    conn = await aio_pika.connect(url)
    try:
        ch = await conn.channel(publisher_confirms=True)
        ex = await ch.get_exchange(exchange) if exchange else ch.default_exchange
        for i in range(0, len(msgs), 1000):
            await asyncio.gather(*(ex.publish(m, routing_key) for m in msgs[i : i + 1000]))
    finally:
        await conn.close()


class Stopped:
    """The process is stopped (SIGSTOP) inside the block; its CPU is counted from SIGCONT."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.cpu0 = 0.0
        self.t0 = 0.0

    def __enter__(self) -> Stopped:
        os.kill(self.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while _state(self.pid) != "T":
            if time.monotonic() > deadline:
                raise RuntimeError(f"process {self.pid} did not stop")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu0 = cpu_of(self.pid)
        self.t0 = time.monotonic()
        os.kill(self.pid, signal.SIGCONT)


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def idle_cpu(pid: int, seconds: float) -> float:
    """CPU the process spends doing nothing for ``seconds``."""
    c0 = cpu_of(pid)
    time.sleep(seconds)
    return cpu_of(pid) - c0


class Socket:
    """One WebSocket of the connected user, counting the message frames it receives."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.received = 0
        self._ws: Any = None
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self._ws = await websockets.connect(self.url, max_queue=None)
        first = orjson.loads(await self._ws.recv())
        assert first.get("type") == "welcome", first
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for frame in self._ws:
            if orjson.loads(frame).get("type") == "message":
                self.received += 1

    async def wait(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.received < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the socket got {self.received} of {n} messages")
            await asyncio.sleep(0.002)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._ws is not None:
            await self._ws.close()


def _row(case: str, run: int, n: int, cpu: float, idle: float, elapsed: float) -> dict[str, Any]:
    net = max(0.0, cpu - idle)
    return {
        "scenario": "consume",
        "system": case,
        "run": run,
        "cores": os.cpu_count(),
        "load1": round(os.getloadavg()[0], 2),
        "messages": n,
        "elapsed_s": round(elapsed, 3),
        "cpu_s": round(cpu, 3),
        "idle_cpu_s": round(idle, 3),
        "cpu_us_per_message": round(net / n * 1e6, 1),
    }


async def _pod_rounds(
    label: str, pod_pid: int, url: str, port: int, reps: int, n: int, pad: int, emit: Any
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    sock = Socket(f"ws://127.0.0.1:{port}/ws?user=present")
    await sock.open()

    async def measure(case: str, run: int, msgs: list[aio_pika.Message], expect: int) -> None:
        with Stopped(pod_pid) as s:
            await _publish(url, "clarion.fanout", "", msgs)
        await sock.wait(expect, 120)
        cpu, elapsed = cpu_of(pod_pid) - s.cpu0, time.monotonic() - s.t0
        idle = await asyncio.to_thread(idle_cpu, pod_pid, elapsed)
        rows.append(_row(f"{label} {case}", run, n, cpu, idle, elapsed))
        emit(rows[-1])

    try:
        for run in range(reps):
            # (a) to an absent user, then one to the socket: it arrives after all of them.
            msgs = _messages("absent", n, pad) + _messages("present", 1, pad)
            await measure("absent user", run, msgs, sock.received + 1)
            # (b) to the user with one socket: it receives every one.
            await measure("one socket", run, _messages("present", n, pad), sock.received + n)
    finally:
        await sock.close()
    return rows


def _floor_rounds(
    url: str, log_dir: Path, reps: int, n: int, pad: int, emit: Any
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cmd = [sys.executable, "-m", "bench.consume", "floor", url, FLOOR_QUEUE]
    repo = str(Path(__file__).resolve().parent.parent)
    run_env = {**os.environ, "PYTHONPATH": repo}
    with open(log_dir / "consume-floor.log", "wb") as log:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, cwd=repo, env=run_env
        )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        if proc.stdout.readline().strip() != b"ready":
            raise RuntimeError("the floor consumer did not start")
        for run in range(reps):
            msgs = _messages("absent", n, pad)
            with Stopped(proc.pid) as s:
                asyncio.run(_publish(url, "", FLOOR_QUEUE, msgs))
            proc.stdin.write(f"{n}\n".encode())
            proc.stdin.flush()
            # It answers once it has consumed n more (and acked them).
            if proc.stdout.readline().strip() != b"done":
                raise RuntimeError("the floor consumer failed")
            cpu, elapsed = cpu_of(proc.pid) - s.cpu0, time.monotonic() - s.t0
            idle = idle_cpu(proc.pid, elapsed)
            rows.append(_row("aio-pika floor", run, n, cpu, idle, elapsed))
            emit(rows[-1])
    finally:
        proc.kill()
        proc.wait(5)
    return rows


def start_pod(log_dir: Path, env: dict[str, str]) -> System:
    """One ``clarion serve`` on a vhost of its own, with the bench's heartbeat in its URL."""
    vhost = Vhost().create()
    system = System(label="clarion", kind="clarion", vhost=vhost)
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("CLARION_")}
    run_env.update(env)
    repo = str(Path(__file__).resolve().parent.parent)
    run_env["PYTHONPATH"] = os.pathsep.join(p for p in (run_env.get("PYTHONPATH", ""), repo) if p)
    try:
        port = free_port(HOST)
        name = f"bench-consume-{os.getpid()}"
        _, cmd = _cmd("clarion", port, name, _with_heartbeat(vhost.amqp_url))
        # Every message reaches the pod, wanted or not (what --routing direct spares it).
        cmd += ["--routing", "fanout"]
        log_path = log_dir / f"consume-{name}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=run_env, cwd=repo
            )
        pod = Pod("clarion", port, proc, log_path, name)
        system.pods.append(pod)
        deadline = time.monotonic() + 40
        while not _http_ok(port, "/readyz") or vhost.consuming_queues() < 1:
            if not pod.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"consume: the pod did not start: {pod.log_tail()}")
            time.sleep(0.1)
    except BaseException:
        system.stop()
        raise
    return system


def run(
    log_dir: Path,
    reps: int,
    messages: int,
    pad: int,
    env: dict[str, str],
    emit: Any,
    ab: dict[str, dict[str, str]] | None = None,
) -> str:
    """Every round of the pod (and of ``ab``'s revisions) and of the floor; the summary."""
    rows: list[dict[str, Any]] = []
    for label, pod_env in {"clarion": env, **(ab or {})}.items():
        system = start_pod(log_dir, pod_env)
        try:
            pod = system.pods[0]
            url = _with_heartbeat(system.amqp_url)
            rows += asyncio.run(
                _pod_rounds(label, pod.pid, url, pod.port, reps, messages, pad, emit)
            )
        finally:
            system.stop()
    vhost = Vhost().create()
    try:
        rows += _floor_rounds(_with_heartbeat(vhost.amqp_url), log_dir, reps, messages, pad, emit)
    finally:
        vhost.delete()
    return summary(rows)


def summary(rows: list[dict[str, Any]]) -> str:
    med: dict[str, float] = {}
    for case in dict.fromkeys(r["system"] for r in rows):
        med[case] = statistics.median(r["cpu_us_per_message"] for r in rows if r["system"] == case)
    floor = med.get("aio-pika floor")
    lines = ["consume: pod CPU per message (median of runs, idle subtracted)"]
    for case, v in med.items():
        ratio = f", {v / floor:.2f}x the floor" if floor and case != "aio-pika floor" else ""
        lines.append(f"  {case:32s} {v:7.1f} us/message{ratio}")
    return "\n".join(lines)


# -- the floor: a plain aio-pika consumer (its own process) ------------------------


async def _floor(url: str, queue_name: str) -> None:
    conn = await aio_pika.connect(url)
    ch = await conn.channel()
    await ch.set_qos(prefetch_count=1024)
    queue = await ch.declare_queue(queue_name, auto_delete=True)
    loop = asyncio.get_running_loop()
    consumed = 0
    target = -1
    done = asyncio.Event()
    pending: list[Any] = [None, False]  # the last message, a flush scheduled
    acks: set[asyncio.Task[None]] = set()

    def flush() -> None:
        msg, pending[0], pending[1] = pending[0], None, False
        if msg is not None:
            task = loop.create_task(msg.ack(multiple=True))
            acks.add(task)
            task.add_done_callback(acks.discard)

    async def on_message(msg: aio_pika.abc.AbstractIncomingMessage) -> None:
        nonlocal consumed
        orjson.loads(msg.body)
        consumed += 1
        pending[0] = msg
        if not pending[1]:
            pending[1] = True
            loop.call_soon(flush)
        if consumed == target:
            done.set()

    await queue.consume(on_message)
    print("ready", flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        target = consumed + int(line)
        done.clear()
        await done.wait()
        await asyncio.sleep(0)  # the last ack goes out
        print("done", flush=True)
    await conn.close()


if __name__ == "__main__":
    if sys.argv[1:2] == ["floor"]:
        try:  # the loop the pod runs on
            import uvloop

            uvloop.run(_floor(sys.argv[2], sys.argv[3]))
        except ImportError:
            asyncio.run(_floor(sys.argv[2], sys.argv[3]))
