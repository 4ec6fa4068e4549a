"""What exporting a capture costs, next to replaying it (measured, never asserted).

    python -m kiyotaka_ws._cli.bench_export [--points 1000000] [--per-frame 10]

Writes a capture of ``--points`` TRADE points (brotli frames of ``--per-frame`` points, through a
real ``Recorder``), then, each in a fresh process: the export to Parquet (``export_capture``),
and a replay into a counting handler (``KiyotakaClient.replay``). Prints points per second and the
peak RSS of each process (``ru_maxrss``), and the RSS of a process that only imported pyarrow (the
floor). Needs the analysis extra.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from typing import Any

import brotli  # type: ignore[import-untyped]

from ..recording import Recorder


def _frame(first: int, count: int, t0: int) -> bytes:
    points = [{"series": {"type": "TRADE", "exchange": "BINANCE_FUTURES", "symbol": "BTCUSDT", "coin": "BTC",
                          "category": "PERPETUAL", "side": "BUY" if n % 2 else "SELL"},
               "trade": {"id": str(n), "price": 90_000.0 + n % 1000 / 10, "amount": 0.001 * (n % 500 + 1),
                         "timestamp": {"seconds": (t0 + n * 1_000_000) // 10**9,
                                       "nanoseconds": (t0 + n * 1_000_000) % 10**9}}}
              for n in range(first, first + count)]
    return brotli.compress(json.dumps({"points": points}, separators=(",", ":")).encode(), quality=1)  # type: ignore[no-any-return]


def write_capture(path: str, points: int, per_frame: int) -> None:
    """Write a capture of ``points`` TRADE points, ``per_frame`` to a brotli frame, to ``path``."""
    recorder = Recorder(path)
    recorder.open()
    tap = recorder.tap("nonbook")
    t0 = time.time_ns()
    frames = (points + per_frame - 1) // per_frame
    for i in range(frames):
        tap(_frame(i * per_frame, min(per_frame, points - i * per_frame), t0), True, 1)
        if i % 5_000 == 4_999:  # let the recorder's thread catch up: a bench capture drops nothing
            while recorder.stats.frames < i - 1_000:
                time.sleep(0.01)
    recorder.close(60)
    if recorder.stats.dropped:
        raise RuntimeError(f"the recorder dropped {recorder.stats.dropped} frames")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def _floor(results: Any) -> None:
    import pyarrow.parquet  # type: ignore[import-untyped, unused-ignore]  # noqa: F401

    from .. import analysis  # noqa: F401
    results.put(("floor (import only)", 0, 0.0, _peak_mb()))


def _export(path: str, folder: str, results: Any) -> None:
    from ..analysis import export_capture

    started = time.perf_counter()
    stats = export_capture(path, folder, channels=["TRADE"])
    results.put(("export to Parquet", stats.points, time.perf_counter() - started, _peak_mb()))


def _replay(path: str, results: Any) -> None:
    from ..client import KiyotakaClient

    count = [0]

    def handler(event: Any) -> None:
        count[0] += 1

    client = KiyotakaClient.replay(path)
    client.on_trade(handler, exchange="BINANCE_FUTURES", symbol="BTCUSDT")
    started = time.perf_counter()
    client.run_forever()
    results.put(("replay to a handler", count[0], time.perf_counter() - started, _peak_mb()))


def main(argv: list[str] | None = None) -> int:
    """``python -m kiyotaka_ws._cli.bench_export``: export and replay speed and peak RSS, side by side."""
    parser = argparse.ArgumentParser(prog="python -m kiyotaka_ws._cli.bench_export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--per-frame", type=int, default=10)
    args = parser.parse_args(argv)
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "bench.kwsrec")
        started = time.perf_counter()
        write_capture(path, args.points, args.per_frame)
        size = os.path.getsize(path)
        print(f"capture: {args.points:,} points, {size / 2**20:.1f} MiB, written in {time.perf_counter() - started:.1f}s")
        for target, extra in ((_floor, ()), (_export, (path, os.path.join(folder, "out"))), (_replay, (path,))):
            process = context.Process(target=target, args=(*extra, results))
            process.start()
            label, points, seconds, peak = results.get(timeout=3600)
            process.join()
            rate = f"{points / seconds:>10,.0f} points/s ({seconds:.1f}s)" if seconds else " " * 10
            print(f"{label:<24} {rate}  peak RSS {peak:6.0f} MB")
        parquet = os.path.join(folder, "out", "trade.parquet")
        print(f"trade.parquet: {os.path.getsize(parquet) / 2**20:.1f} MiB")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
