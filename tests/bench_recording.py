"""Measurements for recording and replay (not a test: run it by hand, it never fails on timing).

    python tests/bench_recording.py [--points 1000000] [--per-frame 5]

1. Recording cost on the reader's path: ``EventQueue.put_frame`` with and without the recorder's
   tap (its thread writing to a file meanwhile), per frame.
2. Replay speed: a capture of ``--points`` TRADE points (the bench's point shape, brotli frames of
   ``--per-frame`` points) replayed into a counting handler, in points per second; compare with
   the ``client`` column of ``kiyotaka-ws bench`` (live decoding of the same frames off a socket).
3. Pacing: 500 frames with random gaps of 0-20 ms replayed at speed 1.0: the error of each
   inter-arrival time against the recorded one (median, p99, max).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import brotli

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kiyotaka_ws import KiyotakaClient, protocol
from kiyotaka_ws.bench import _points
from kiyotaka_ws.dispatch import EventQueue
from kiyotaka_ws.recording import Recorder


def tap_cost(folder: str, frames: int = 50_000) -> None:
    payload = brotli.compress(json.dumps({"points": _points(5, 0, time.time_ns())}).encode(), quality=4)
    results = {}
    for label in ("no recorder", "recorder"):
        best = float("inf")
        for _ in range(5):
            queue = EventQueue(frames + 1, "block", 2**40)
            recorder = None
            if label == "recorder":
                recorder = Recorder(os.path.join(folder, f"tap{time.monotonic_ns()}.kwsrec"))
                recorder.open()
                queue.tap = recorder.tap("nonbook")
            put = queue.put_frame
            started = time.perf_counter()
            for _ in range(frames):
                put(payload, True, 1)
            best = min(best, time.perf_counter() - started)
            if recorder is not None:
                recorder.close()
                assert recorder.stats.dropped == 0, recorder.stats
        results[label] = best / frames * 1e9
    extra = results["recorder"] - results["no recorder"]
    print(f"1. put_frame: {results['no recorder']:.0f} ns/frame without, {results['recorder']:.0f} ns/frame "
          f"with the recorder's tap: +{extra:.0f} ns per frame on the reader ({len(payload)}-byte frames)")


def replay_speed(folder: str, points: int, per_frame: int) -> None:
    path = os.path.join(folder, "big.kwsrec")
    recorder = Recorder(path, max_buffer_frames=10**7, max_buffer_bytes=2**34)
    tap = recorder.tap("nonbook")
    now = time.time_ns()
    template = [brotli.compress(json.dumps({"points": _points(per_frame, i * per_frame, now)},
                                           separators=(",", ":")).encode(), quality=4) for i in range(100)]
    for i in range(points // per_frame):
        tap(template[i % 100], True, 1)
    recorder.open()
    recorder.close(600)
    size = os.path.getsize(path)
    count = [0]

    def handler(_: object) -> None:
        count[0] += 1

    client = KiyotakaClient.replay(path)
    client.on_trade(handler, exchange="BENCH", symbol="BTCUSDT")
    cpu, started = time.process_time(), time.perf_counter()
    client.run_forever()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    assert count[0] == points // per_frame * per_frame, count
    parser = getattr(protocol._loads, "__module__", None) or "orjson"
    print(f"2. replay of {count[0]:,} points ({per_frame}/frame, {size / 2**20:.1f} MiB file): {wall:.2f} s, "
          f"{count[0] / wall:,.0f} points/s ({count[0] / cpu:,.0f} per CPU second; parser: {parser})")


def pacing(folder: str) -> None:
    path = os.path.join(folder, "paced.kwsrec")
    rng = random.Random(1)
    clock = [time.time_ns()]
    recorder = Recorder(path, clock=lambda: clock[0])
    tap = recorder.tap("nonbook")
    gaps = [rng.uniform(0, 0.020) for _ in range(500)]
    payload = brotli.compress(json.dumps({"points": _points(1, 0, time.time_ns())}).encode())
    for gap in gaps:
        clock[0] += int(gap * 1e9)
        tap(payload, True, 1)
    recorder.open()
    recorder.close()
    arrivals: list[float] = []
    client = KiyotakaClient.replay(path, speed=1.0)
    client.on_trade(lambda _: arrivals.append(time.perf_counter()), exchange="BENCH", symbol="BTCUSDT")
    client.run_forever()
    errors = sorted(abs((b - a) - g) * 1000 for a, b, g in zip(arrivals, arrivals[1:], gaps[1:]))
    print(f"3. pacing at speed 1.0, {len(errors)} gaps of 0-20 ms: error median {statistics.median(errors):.3f} ms, "
          f"p99 {errors[int(len(errors) * 0.99)]:.3f} ms, max {errors[-1]:.3f} ms; total "
          f"{arrivals[-1] - arrivals[0]:.3f} s for {sum(gaps[1:]):.3f} s recorded")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--per-frame", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tap_cost(folder)
        replay_speed(folder, args.points, args.per_frame)
        pacing(folder)


if __name__ == "__main__":
    main()
