"""Seeded chaos soak and memory over reconnects. ``--soak-seconds`` scales the soak (CI: short)."""

from __future__ import annotations

import os
import random
import threading
import time

import pytest
from conftest import Collector, client_threads, wait_until

from kiyotaka_ws import State
from kiyotaka_ws.testing import trade_point

EX, SYM = "BINANCE_FUTURES", "BTCUSDT"


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Publisher:
    """Publishes trades with increasing ids until stopped (joined)."""

    def __init__(self, server) -> None:
        self.server = server
        self.next_id = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self.stop.wait(0.002):
            batch = [trade_point(EX, SYM, price=1, amount=1, id=self.next_id + i) for i in range(3)]
            self.next_id += 3
            self.server.publish(batch)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


@pytest.mark.soak
def test_chaos_soak(server, make_client, request):
    seconds = request.config.getoption("--soak-seconds")
    rng = random.Random(20261123)
    client = make_client(ping_interval=0.2, ping_timeout=0.5, stale_timeout=1.0, backoff_initial=0.02,
                         backoff_max=0.2)
    got, errors, statuses = Collector(), Collector(), Collector()
    client.on_error(errors)
    client.on_status(statuses)
    client.on_trade(got, exchange=EX, symbol=SYM)
    client.start()
    assert client.wait_ready(5)
    faults, max_threads = [], 0
    with Publisher(server):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(0.05, 0.3))
            fault = rng.choice(["drop", "close", "garbage", "error", "bomb", "silence"])
            faults.append(fault)
            connections = server.connection_count
            if fault == "drop":
                server.drop_connections()
            elif fault == "close":
                server.close_connections(rng.choice([1000, 1001, 1011, 4000, 4999]))
            elif fault == "garbage":
                server.publish_raw(rng.randbytes(rng.randint(1, 200)))
            elif fault == "error":
                server.send_error({"code": rng.randint(1, 999), "message": "chaos"})
            elif fault == "bomb":
                server.publish_raw(b"\x1b\xff\xff" + rng.randbytes(50))
            else:
                server.set_silent(True)
                time.sleep(rng.uniform(0.05, 0.3))
                server.set_silent(False)
            if fault in ("drop", "close"):  # a new connection with the subscription restored
                assert server.wait_for(lambda s, n=connections: s.connection_count > n
                                       and len(s.subscriptions()) == 1, 5), f"no reconnect after {faults}"
            # Recovery within the backoff bound plus timeouts, after every fault.
            assert client.wait_ready(5), f"no recovery after {fault} (faults so far: {faults})"
            max_threads = max(max_threads, len(client_threads()))
        assert server.wait_subscribed(1)
        before = len(got)
        assert got.wait_for(before + 3)  # still streaming at the end
    ids = [int(e.id) for e in got.items]
    assert ids == sorted(set(ids)), "out of order or duplicated"
    assert max_threads <= 3  # one family: reader, watchdog, dispatcher
    started = time.monotonic()
    client.stop()
    assert time.monotonic() - started < 2 and not client_threads()
    assert client.stats()["nonbook"].state is State.STOPPED


def test_memory_stays_flat_over_many_reconnects(server, make_client):
    client = make_client(backoff_initial=0.01, backoff_max=0.02)
    got = Collector()
    client.on_trade(got, exchange=EX, symbol=SYM)
    client.on_book(lambda e: None, exchange=EX, symbol=SYM, block_size=25)
    client.start()
    assert client.wait_ready(5)

    def cycles(count: int) -> None:
        for _ in range(count):
            connections = server.connection_count
            server.drop_connections()
            assert server.wait_for(lambda s, n=connections: s.connection_count >= n + 2
                                   and len(s.subscriptions()) == 2)
            assert client.wait_ready(5)
            server.publish([trade_point(EX, SYM, price=1, amount=1)])

    cycles(20)  # warm up: caches, first allocations
    warm = rss_mib()
    cycles(100)
    grown = rss_mib() - warm
    print(f"RSS {warm:.1f} MiB after 20 reconnect cycles, {warm + grown:.1f} MiB after 120")
    assert client.stats()["nonbook"].reconnects >= 120
    assert grown < 8, f"RSS grew {grown:.1f} MiB over 100 reconnect cycles of both families"
    assert wait_until(lambda: len(got) >= 110)


@pytest.mark.soak
def test_sustained_load_with_block_loses_nothing(server, make_client, request):
    seconds = request.config.getoption("--soak-seconds")
    client = make_client(queue_size=200, overflow="block")
    seen = {"count": 0, "last": -1, "disorder": 0}
    done = threading.Event()
    total = {"sent": None}

    def handler(trade):  # a little work per event, like a real bot
        n = int(trade.id)
        if n != seen["last"] + 1:
            seen["disorder"] += 1
        seen["last"] = n
        seen["count"] += 1
        if total["sent"] is not None and seen["count"] >= total["sent"]:
            done.set()

    client.on_trade(handler, exchange=EX, symbol=SYM)
    client.start()
    assert client.wait_ready(5)
    sent, started = 0, time.monotonic()
    while time.monotonic() - started < seconds:
        server.publish([trade_point(EX, SYM, price=1, amount=1, id=sent + i) for i in range(50)])
        sent += 50
    total["sent"] = sent
    if seen["count"] >= sent:
        done.set()
    assert done.wait(60), f"{seen['count']} of {sent} points arrived"
    elapsed = time.monotonic() - started
    print(f"sustained: {sent} points in {elapsed:.1f}s ({sent / elapsed:,.0f} points/s), none lost")
    assert seen["disorder"] == 0 and seen["count"] == sent
    assert client.stats()["nonbook"].dropped == 0 and client.stats()["nonbook"].reconnects == 0
