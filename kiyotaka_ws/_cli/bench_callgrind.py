"""Instructions per point, client against the bare loops, under callgrind (load-independent).

    python -m kiyotaka_ws._cli.bench_callgrind [--per 50] [--frames 200] [--series 1,8]

``kiyotaka-ws bench`` times whole runs and needs a quiet machine; this counts instructions, which
another process on the machine does not change, so a change to the hot path can be judged on a
shared one. Each consumer runs in a process of its own under ``valgrind --tool=callgrind``, twice
(``--frames`` and twice as many): the difference, divided by the extra points, is the cost of one
point with start-up, imports and set-up cancelled out. The frames are the bench blaster's (TRADE
points of ``--series`` symbols interleaved, brotli quality 4, one frame repeated as when it sends
flat out). The consumers:

- ``client``: the real ``EventQueue``, ``FrameDecoder`` and ``Dispatcher`` (its thread, on
  batches taken from the queue: brotli, the client's parser, routing, events, delivery) into the
  bench's counting handler, one registration per series (what ``bench.run_client`` registers);
- ``json`` and ``orjson``: the bench's bare loop (``brotli.decompress``, ``loads``, count).

Not counted on either side: receiving the frames (the client's reader thread, websocket-client's
``recv`` in the bare loops), a cost per frame, not per point. Instructions are not time (the
parsers' C code retires more instructions per cycle than the interpreter does), so the ratios here
are close to, not equal to, the bench's; they tell which way a change goes and by how much.
Requires valgrind (not a dependency: this is a development tool).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Any

import brotli  # type: ignore[import-untyped]

from .bench import EXCHANGE, symbols, trade_points

CONSUMERS = ("client", "json", "orjson")
FRAME_TIME_NS = 1_764_000_000_123_456_789  # fixed: the same frame bytes in every process


def frame_bytes(per: int, series: int) -> bytes:
    """One brotli frame of ``per`` TRADE points over ``series`` symbols, as the blaster sends it."""
    text = json.dumps({"points": trade_points(per, 0, FRAME_TIME_NS, series)}, separators=(",", ":")).encode()
    return brotli.compress(text, quality=4)  # type: ignore[no-any-return]


def work(consumer: str, per: int, series: int, frames: int) -> int:
    """Consume ``frames`` frames with ``consumer``; returns the points seen (for a check)."""
    frame = frame_bytes(per, series)
    total = per * frames
    if consumer != "client":
        import orjson

        loads: Any = json.loads if consumer == "json" else orjson.loads
        seen = 0
        for _ in range(frames):  # the bench's bare loop, without recv()
            data = brotli.decompress(frame)
            message = loads(data)
            points = message.get("points")
            if points:
                seen += len(points)
        return seen

    from ..channels import Channel, make_spec
    from ..dispatch import Dispatcher, EventQueue, Hooks, RouteTable
    from ..protocol import FrameDecoder

    count = 0
    latency = False

    def handler(trade: Any) -> None:  # the bench's handler (bench.run_client)
        nonlocal count
        count += 1
        if latency:
            pass
        if count >= total:
            pass

    # Every frame queued first, then the dispatcher's own thread drains the queue (in batches of
    # up to BATCH_FRAMES) while this one only waits: no GIL hand-offs in the count.
    queue = EventQueue(frames + 1, "block", max_bytes=2**40)
    dispatcher = Dispatcher("nonbook", queue, Hooks(), FrameDecoder(16 * 2**20), lambda *_: None, lambda _: None)
    routes = RouteTable()
    for symbol in symbols(series):
        routes = routes.updated(make_spec(Channel.TRADE, exchange=EXCHANGE, symbol=symbol), (handler,))
    dispatcher.routes = routes
    for _ in range(frames):
        queue.put_frame(frame, True, 1)
    queue.close()
    dispatcher.start()
    if not dispatcher.join(time.monotonic() + 600):
        raise RuntimeError("the dispatcher did not finish")
    return count


def instructions(consumer: str, per: int, series: int, frames: int) -> int:
    """Instructions callgrind counts for one ``work`` process."""
    with tempfile.TemporaryDirectory() as folder:
        command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={os.path.join(folder, 'out')}",
                   sys.executable, "-m", "kiyotaka_ws._cli.bench_callgrind", "--work", consumer,
                   "--per", str(per), "--series", str(series), "--frames", str(frames)]
        # A fixed hash seed: string hashes decide dict probe sequences, hence the instruction count.
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        result = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    found = re.search(r"Collected : (\d+)", result.stderr)
    if found is None or f"seen {per * frames}" not in result.stdout:
        raise RuntimeError(f"unexpected callgrind output: {result.stdout!r} {result.stderr[-500:]!r}")
    return int(found.group(1))


def per_point(consumer: str, per: int, series: int, frames: int) -> float:
    """Instructions per point: the difference between ``frames`` and ``2 * frames`` frames."""
    low = instructions(consumer, per, series, frames)
    high = instructions(consumer, per, series, 2 * frames)
    return (high - low) / (per * frames)


def main(argv: list[str] | None = None) -> int:
    """``python -m kiyotaka_ws._cli.bench_callgrind``: print the table (or, with ``--work``, be one run)."""
    parser = argparse.ArgumentParser(prog="python -m kiyotaka_ws._cli.bench_callgrind", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per", type=int, default=50, help="points per frame (default 50)")
    parser.add_argument("--frames", type=int, default=200, help="frames in the shorter run (default 200)")
    parser.add_argument("--series", default="1,8", help="series interleaved per frame, a list (default 1,8)")
    parser.add_argument("--consumers", default=",".join(CONSUMERS), help="which to count (default: all)")
    parser.add_argument("--work", choices=CONSUMERS, help=argparse.SUPPRESS)  # the process under valgrind
    args = parser.parse_args(argv)
    if args.work:
        print(f"seen {work(args.work, args.per, int(args.series), args.frames)}")
        return 0
    consumers = args.consumers.split(",")
    print(f"instructions per point (callgrind), {args.per} TRADE points per frame, brotli, "
          f"{args.frames} and {2 * args.frames} frames, Python {sys.version.split()[0]}")
    print(f"{'series':<8}" + "".join(f"{name:>10}" for name in consumers)
          + "".join(f"{'vs ' + name:>12}" for name in consumers if name != "client"))
    for series in (int(n) for n in args.series.split(",")):
        cost = {name: per_point(name, args.per, series, args.frames) for name in consumers}
        # The bench's ratio is the bare loop's cost over the client's (points per second).
        ratios = "".join(f"{cost[name] / cost['client']:>12.2f}" for name in consumers
                         if name != "client" and "client" in cost)
        print(f"{series:<8}" + "".join(f"{cost[name]:>10,.0f}" for name in consumers) + ratios, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
