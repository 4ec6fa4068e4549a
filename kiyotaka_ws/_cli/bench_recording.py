"""``kiyotaka-ws bench --recording``: what recording and replay cost (measured, never asserted).

    kiyotaka-ws bench --recording [--points 1000000] [--per-frame 5] [--rounds 3]

1. Recording cost on the reader's path: ``EventQueue.put_frame`` with and without the recorder's
   tap (its thread writing to a file meanwhile), per frame.
2. Replay speed against live decoding: ``kiyotaka-ws bench``'s blaster sends ``--points`` TRADE
   points (brotli frames of ``--per-frame`` points); a client records them, then the live client
   (``bench.run_client``) and a replay of that recording, each into a counting handler, take
   turns ``--rounds`` times: medians in points per second.
   The same rounds also run the live client with ``record=`` (end-to-end cost of recording).
3. Pacing: 500 frames with random gaps of 0-20 ms replayed at speed 1.0: the error of each
   inter-arrival time against the recorded one (median, p99, max).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import statistics
import tempfile
import threading
import time

import brotli  # type: ignore[import-untyped]

from .. import protocol
from ..client import KiyotakaClient
from ..dispatch import EventQueue
from ..recording import Recorder
from .bench import EXCHANGE, SYMBOL, blaster_process, run_client, trade_points


def tap_cost(folder: str, frames: int = 50_000) -> None:
    """Print what the recorder's tap adds to the reader per frame, with and without the writer thread."""
    payload = brotli.compress(json.dumps({"points": trade_points(5, 0, time.time_ns())}).encode(), quality=4)
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


def _replay(path: str, points: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) to replay ``path`` into a counting TRADE handler."""
    count = [0]

    def handler(_: object) -> None:
        count[0] += 1

    client = KiyotakaClient.replay(path)
    client.on_trade(handler, exchange=EXCHANGE, symbol=SYMBOL)
    cpu, started = time.process_time(), time.perf_counter()
    client.run_forever()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    assert count[0] == points, count
    return wall, cpu


def _live_recording(url: str, points: int, path: str) -> float:
    """``bench.run_client`` with ``record=``: points per second."""
    done = threading.Event()
    seen = [0]

    def count(_: object) -> None:
        seen[0] += 1
        if seen[0] >= points:
            done.set()

    client = KiyotakaClient("x", nonbook_url=url, record=path)
    client.on_trade(count, exchange=EXCHANGE, symbol=SYMBOL)
    started = time.perf_counter()
    client.start()
    assert done.wait(600)
    wall = time.perf_counter() - started
    client.stop()
    return points / wall


def replay_vs_live(folder: str, points: int, per_frame: int, rounds: int) -> None:
    """The bench's blaster feeds the live client; the same frames, recorded, feed the replay.
    The two alternate, ``rounds`` times each (the machine's noise hits both alike)."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    blaster = ctx.Process(target=blaster_process, args=(child,), name="kiyotaka-ws-bench-blaster")
    blaster.start()
    try:
        url = f"ws://127.0.0.1:{parent.recv()}/nonbook/ws?encoding=json&mode=brotli&per={per_frame}&n={points}"
        path = os.path.join(folder, "live.kwsrec")
        _live_recording(url, points, path)  # the recording the replay rounds read
        live: list[float] = []
        replayed: list[float] = []
        recording_live: list[float] = []
        for n in range(rounds):
            live.append(run_client(url, points, "brotli").points_per_s)
            wall, _cpu = _replay(path, points)
            replayed.append(points / wall)
            recording_live.append(_live_recording(url, points, os.path.join(folder, f"again{n}.kwsrec")))
    finally:
        blaster.terminate()
        blaster.join()
    lv, rv, rl = statistics.median(live), statistics.median(replayed), statistics.median(recording_live)
    print(f"2. end to end, the same live stream: {lv:,.0f} points/s without recording, {rl:,.0f} with record= "
          f"(x{rl / lv:.2f})")
    print(f"3. {points:,} TRADE points, {per_frame}/frame, brotli ({os.path.getsize(path) / 2**20:.1f} MiB recorded), "
          f"medians of {rounds} alternating rounds: live client {lv:,.0f} points/s, replay {rv:,.0f} points/s "
          f"(x{rv / lv:.2f}; parser: {protocol.json_parser()})")


def pacing(folder: str) -> None:
    """Print how closely a replay at speed 1.0 keeps the recorded gaps between frames."""
    path = os.path.join(folder, "paced.kwsrec")
    rng = random.Random(1)
    clock = [time.time_ns()]
    recorder = Recorder(path, clock=lambda: clock[0])
    tap = recorder.tap("nonbook")
    gaps = [rng.uniform(0, 0.020) for _ in range(500)]
    payload = brotli.compress(json.dumps({"points": trade_points(1, 0, time.time_ns())}).encode())
    for gap in gaps:
        clock[0] += int(gap * 1e9)
        tap(payload, True, 1, None)
    recorder.open()
    recorder.close()
    arrivals: list[float] = []
    client = KiyotakaClient.replay(path, speed=1.0)
    client.on_trade(lambda _: arrivals.append(time.perf_counter()), exchange=EXCHANGE, symbol=SYMBOL)
    client.run_forever()
    errors = sorted(abs((b - a) - g) * 1000 for a, b, g in zip(arrivals, arrivals[1:], gaps[1:]))
    print(f"4. pacing at speed 1.0, {len(errors)} gaps of 0-20 ms: error median {statistics.median(errors):.3f} ms, "
          f"p99 {errors[int(len(errors) * 0.99)]:.3f} ms, max {errors[-1]:.3f} ms; total "
          f"{arrivals[-1] - arrivals[0]:.3f} s for {sum(gaps[1:]):.3f} s recorded")


def run_recording_bench(points: int = 1_000_000, per_frame: int = 5, rounds: int = 3) -> int:
    """Tap cost, replay against live decoding, and pacing; printed, never asserted."""
    with tempfile.TemporaryDirectory() as folder:
        tap_cost(folder)
        replay_vs_live(folder, points, per_frame, rounds)
        pacing(folder)
    return 0
