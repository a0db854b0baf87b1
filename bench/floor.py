"""The AMQP client's floor: what aiormq alone costs per message, paced as S2 paces them.

Two processes on a vhost of the bench's own, nothing of Clarion's HTTP, hub or sockets:

* ``publish``: a confirmed publish of each message through the pods' own fast path
  (``broker/fastpublish.py``), each confirm awaited before the next, as a pod
  publishes what one ``POST /api/publish`` carries;
* ``consume``: the pods' own fast consume (``broker/fastconsume.py``) with their
  batched acks (``broker/acks.py``) and a callback that does nothing.

Each process takes its own CPU (``time.process_time``) from its first message to its
last, so start-up is left out. ``--rate`` paces the publisher (500/s, S2's rate: every
message arrives alone and each process sleeps between them); ``0`` publishes back to
back. A pod's targeted message costs at least one of each (the publishing pod and the
holder), before any HTTP request, envelope or socket write.

    python -m bench.floor --reps 3
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiormq
from pamqp.commands import Basic

from clarion.broker import fastconsume, fastpublish
from clarion.broker.acks import AckBatcher

from .servers import Vhost

HERE = Path(__file__).resolve().parent
#: About the size of a targeted envelope's body.
BODY = b'{"id":"0123456789abcdef","ts":1733550000000,"target":{"user":"u17"},' + (
    b'"data":{"order":42,"status":"paid","amount":"19.90"}}'
)


async def consume(url: str, queue: str, n: int) -> dict[str, float]:
    conn = await aiormq.connect(url)
    ch = await conn.channel()
    await ch.basic_qos(prefetch_count=1024)
    await ch.queue_declare(queue, arguments={"x-expires": 120_000})
    acks, got, done = AckBatcher(), 0, asyncio.Event()
    start = [0.0, 0.0]

    def on_delivery(channel: Any, frame: Basic.Deliver, header: Any, body: bytes) -> None:
        nonlocal got
        if got == 0:
            start[:] = [time.process_time(), time.monotonic()]
        got += 1
        acks.ack(channel, frame.delivery_tag or 0)
        if got == n:
            done.set()

    assert isinstance(ch, aiormq.Channel)
    await fastconsume.consume(ch, queue, on_delivery)
    print("ready", flush=True)
    await done.wait()
    cpu, wall = time.process_time() - start[0], time.monotonic() - start[1]
    await conn.close()
    return {"consume_us": cpu / n * 1e6, "consume_wall": wall}


async def publish(url: str, queue: str, n: int, rate: float) -> dict[str, float]:
    conn = await aiormq.connect(url)
    ch = await conn.channel(publisher_confirms=True)
    assert isinstance(ch, aiormq.Channel) and fastpublish._supported(ch)
    loop = asyncio.get_running_loop()
    t0, c0 = loop.time(), time.process_time()
    for i in range(n):
        if rate:
            delay = t0 + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        props = Basic.Properties(delivery_mode=1, message_id=f"m{i}")
        (result,) = await fastpublish.publish(ch, "", [(queue, BODY, props)], 5.0)
        if isinstance(result, BaseException):
            raise result
    cpu, wall = time.process_time() - c0, loop.time() - t0
    await conn.close()
    return {"publish_us": cpu / n * 1e6, "publish_wall": wall}


def role(args: argparse.Namespace) -> None:
    import uvloop  # the pods' loop

    if args.role == "consume":
        result = uvloop.run(consume(args.url, args.queue, args.messages))
    else:
        result = uvloop.run(publish(args.url, args.queue, args.messages, args.rate))
    print(json.dumps(result), flush=True)


def one_round(url: str, messages: int, rate: float) -> dict[str, float]:
    queue = f"bench.floor.{time.monotonic_ns()}"
    me = [sys.executable, "-m", "bench.floor", "--url", url, "--queue", queue]
    me += ["--messages", str(messages)]
    consumer = subprocess.Popen([*me, "--role", "consume"], stdout=subprocess.PIPE, text=True)
    assert consumer.stdout is not None
    if consumer.stdout.readline().strip() != "ready":
        consumer.kill()
        raise SystemExit("the consumer did not start")
    pub = subprocess.run(
        [*me, "--role", "publish", "--rate", str(rate)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    out, _ = consumer.communicate(timeout=60)
    return {**json.loads(pub.stdout.splitlines()[-1]), **json.loads(out.splitlines()[-1])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split("\n")[0])
    p.add_argument("--messages", type=int, default=3000)
    p.add_argument("--rates", default="500,0", help="publishes/s, comma-separated; 0: no pause")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--tag", default="floor")
    p.add_argument("--role", choices=["publish", "consume"], help=argparse.SUPPRESS)
    p.add_argument("--queue", help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--rate", type=float, default=0.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.role:
        role(args)
        return 0
    rates = [float(r) for r in args.rates.split(",")]
    out = HERE / "results" / f"{datetime.date.today().isoformat()}.jsonl"
    rows: list[dict[str, Any]] = []
    vhost = Vhost().create()  # BENCH_RABBIT_HOST, BENCH_RABBIT_PORT, BENCH_MGMT_URL
    try:
        for rep in range(1, args.reps + 1):
            for rate in rates:
                row = {"tag": args.tag, "scenario": "floor", "rate": rate, "rep": rep}
                row |= one_round(vhost.amqp_url, args.messages, rate)
                rows.append(row)
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(
                    f"rep {rep} rate {rate:g}/s: publish {row['publish_us']:.0f} µs, "
                    f"consume {row['consume_us']:.0f} µs of CPU per message",
                    flush=True,
                )
    finally:
        vhost.delete()
    print(f"\nmedians of {args.reps} ({args.messages} messages each; rows in {out}):")
    print("| rate | confirmed publish, CPU per message | consume, CPU per message |")
    print("|---|---|---|")
    for rate in rates:
        mine = [r for r in rows if r["rate"] == rate]
        pub = statistics.median(r["publish_us"] for r in mine)
        con = statistics.median(r["consume_us"] for r in mine)
        label = f"{rate:g}/s" if rate else "back to back"
        print(f"| {label} | {pub:.0f} µs | {con:.0f} µs |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
