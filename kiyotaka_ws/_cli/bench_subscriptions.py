"""``kiyotaka-ws bench --subscriptions N[,N...]``: thousands of subscriptions against a server with limits.

For each N, a ``FakeKiyotakaServer`` enforcing 10 requests/s, 50 channels per request and 1,000
subscriptions per connection (``LIMITS``), and a client with N TRADE handlers on distinct symbols:

- start: from ``start()`` to ``wait_ready()``;
- reconnect: from the server dropping every connection (a TCP reset) to READY again on each
  connection (every shard) that was READY; a READY counts only after that connection's own
  DISCONNECTED (statuses arrive through the dispatcher, a stale one may come late);

and, for each phase, how many of the N channels the server holds when it ends, the requests it
saw, the rejections by limit, the connections (shards) and the ``SubscriptionError``s the client
reported. A phase that does not end within the time bound is a "not READY in X s" row, not a
crash; READY with channels missing on the server is shown as such (the "held" column). Numbers
are meaningless on a loaded machine.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import TextIO

import attrs

from ..client import KiyotakaClient
from ..errors import KiyotakaError, SubscriptionError
from ..status import ConnectionStatus, State
from ..testing import FakeKiyotakaServer

RATE, PER_REQUEST, PER_CONNECTION = 10.0, 50, 1_000
COUNTS = (100, 1_000, 5_000)
EXCHANGE = "BENCH"


@attrs.frozen
class Phase:
    """One measured phase: seconds to READY (None: not READY within the bound) and what the
    server and the client saw by its end."""

    name: str
    seconds: float | None
    bound: float
    held: int
    requests: int
    rejections: dict[int, int]
    shards: int
    subscription_errors: int


class _Watch:
    """The client's statuses and errors, for waiting on "READY again after the drop"."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self.statuses: list[tuple[float, ConnectionStatus]] = []
        self.subscription_errors = 0
        self.other_errors = 0

    def status(self, status: ConnectionStatus) -> None:
        with self._changed:
            self.statuses.append((time.monotonic(), status))
            self._changed.notify_all()

    def error(self, error: KiyotakaError) -> None:
        with self._changed:
            if isinstance(error, SubscriptionError):
                self.subscription_errors += 1
            else:
                self.other_errors += 1

    def ready_again(self, since: float, connections: set[tuple[str, int]], deadline: float) -> float | None:
        """When every connection in ``connections`` (family, shard) went READY after leaving it
        after ``since``, or None. Statuses come through the dispatchers, so a READY from before the
        drop may arrive after ``since``: only a READY following that connection's own later
        non-READY status counts."""
        with self._changed:
            while True:
                back: dict[tuple[str, int], float] = {}
                down: set[tuple[str, int]] = set()
                for t, s in self.statuses:
                    key = (s.family, s.shard)
                    if t < since or key not in connections:
                        continue
                    if s.state != State.READY:
                        down.add(key)
                        back.pop(key, None)
                    elif key in down:
                        back[key] = t
                if connections <= set(back):
                    return max(back.values())
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._changed.wait(min(remaining, 0.1))


def _measure(count: int, bound: float) -> list[Phase]:
    watch = _Watch()
    with FakeKiyotakaServer(max_requests_per_second=RATE, max_channels_per_request=PER_REQUEST,
                            max_subscriptions_per_connection=PER_CONNECTION) as server:
        client = KiyotakaClient(**server.client_kwargs(), compression=None, backoff_initial=0.1, backoff_max=1.0,
                                subscribe_timeout=bound)
        client.on_status(watch.status)
        client.on_error(watch.error)
        for i in range(count):
            client.on_trade(lambda trade: None, exchange=EXCHANGE, symbol=f"S{i}USDT")

        def phase(name: str, seconds: float | None) -> Phase:
            return Phase(name, seconds, bound, len(server.subscriptions()), sum(server.request_counts().values()),
                         server.rejections(), server.open_connections(), watch.subscription_errors)

        try:
            started = time.monotonic()
            client.start()
            ready = client.wait_ready(bound)
            phases = [phase("start", time.monotonic() - started if ready else None)]
            if not ready:
                return phases
            connections = {(name, shard) for name, stats in client.stats().items() if stats.state == State.READY
                           for shard in range(stats.shards)}
            dropped = time.monotonic()
            server.drop_connections()
            at = watch.ready_again(dropped, connections, dropped + bound)
            phases.append(phase("reconnect", None if at is None else at - dropped))
            return phases
        finally:
            client.stop(10)


def _row(count: int, phase: Phase) -> str:
    took = f"{phase.seconds:8.2f} s" if phase.seconds is not None else f"not READY in {phase.bound:g} s"
    refused = ", ".join(f"{code}: {n}" for code, n in sorted(phase.rejections.items())) or "-"
    return (f"{count:>8,} {phase.name:<10} {took:>20} {phase.held:>8,} {phase.requests:>9,} "
            f"{phase.shards:>7} {phase.subscription_errors:>8,}  {refused}")


def run_subscriptions_bench(counts: Sequence[int] = COUNTS, *, quick: bool = False, bound: float | None = None,
                            out: TextIO | None = None) -> int:
    """Measure each count in turn and print a table, then whether every phase ended READY with
    every channel held on the server. Returns 0: a benchmark reports, it does not judge.
    ``bound``: seconds per phase (default 60, 5 with ``quick``); each count takes at most
    ``2 * bound + 10`` seconds (the last 10 for ``stop()``)."""
    import sys

    out = out or sys.stdout
    bound = bound if bound is not None else (5.0 if quick else 60.0)
    out.write(f"subscriptions against a server enforcing {RATE:g} requests/s, {PER_REQUEST} channels per "
              f"request, {PER_CONNECTION:,} subscriptions per connection\n")
    out.write(f"{'channels':>8} {'phase':<10} {'to READY':>20} {'held':>8} {'requests':>9} "
              f"{'shards':>7} {'rejected':>8}  server refusals by code\n")
    complete = True
    for count in counts:
        for phase in _measure(count, bound):
            out.write(_row(count, phase) + "\n")
            out.flush()
            complete = complete and phase.seconds is not None and phase.held == count
    out.write("held: channels the server holds at the end of the phase; requests, shards (open connections), "
              "rejected (SubscriptionErrors the client reported) and refusals (429 rate, -32602 channels per "
              "request, 4290 subscriptions per connection): counted from the start\n")
    out.write(f"every phase READY with every channel held: {'yes' if complete else 'NO'}\n")
    return 0
