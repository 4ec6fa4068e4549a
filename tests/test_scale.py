"""Thousands of subscriptions through the real client against a fake server enforcing limits (issue 23).

The server allows 10 control requests/s per connection (a token bucket, burst 5) and 50 channels
per request, and rejects any batch holding the bad symbol without naming it. The client (default
``max_channels_per_request=50``, ``max_requests_per_second=10``) must end READY with every good
channel held and delivering, the bad one rejected once, and no rate limit reported, at start and
after the server resets every connection. With 1,000 subscriptions per connection, 3,000
channels go over three connections (shards), the limit given or learned from the server.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any, Callable

import pytest
from conftest import wait_until

from kiyotaka_ws import KiyotakaClient, RateLimited, SubscriptionError
from kiyotaka_ws.errors import AuthenticationError, KiyotakaError
from kiyotaka_ws.testing import FakeKiyotakaServer, trade_point

EX = "BINANCE"
BAD = "S0613USDT"


class Counter:
    """Trades delivered per symbol, and every error reported."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.got: dict[str, int] = {}
        self.errors: list[KiyotakaError] = []

    def trade(self, trade: Any) -> None:
        with self.lock:
            self.got[trade.symbol] = self.got.get(trade.symbol, 0) + 1

    def error(self, error: KiyotakaError) -> None:
        with self.lock:
            self.errors.append(error)

    def delivered(self) -> int:
        with self.lock:
            return sum(self.got.values())

    def reaches(self, count: int) -> Callable[[Any], bool]:
        """A predicate for ``server.wait_for``: ``count`` trades delivered in all."""
        return lambda _: self.delivered() == count


def test_a_thousand_channels_with_a_bad_symbol_at_ten_requests_a_second() -> None:
    symbols = [f"S{i:04d}USDT" for i in range(1000)]
    good = [s for s in symbols if s != BAD]
    with FakeKiyotakaServer(max_requests_per_second=10.0, max_channels_per_request=50) as server:
        server.reject_symbol(BAD)
        counter = Counter()
        client = KiyotakaClient(**server.client_kwargs(), compression=None, backoff_initial=0.1, backoff_max=0.5)
        client.on_error(counter.error)
        for symbol in symbols:
            client.on_trade(counter.trade, exchange=EX, symbol=symbol)
        try:
            client.start()
            for round_ in (1, 2):
                assert client.wait_ready(20), round_
                assert server.wait_for(lambda s: len(s.subscriptions()) == len(good), timeout=20), round_
                assert {c["symbol"] for c in server.subscriptions()} == set(good)
                server.publish([trade_point(EX, s, price=1.0, amount=1.0) for s in symbols])
                assert server.wait_for(counter.reaches(round_ * len(good)), timeout=10), round_
                with counter.lock:
                    errors = list(counter.errors)
                assert not [e for e in errors if isinstance(e, RateLimited)]
                assert [e.channel["symbol"] for e in errors if isinstance(e, SubscriptionError)  # type: ignore[index]
                        ] == [BAD], errors
                assert server.max_burst(1.0) <= 16  # the server's own limit: 10 a second, a burst of 5
                if round_ == 1:
                    sent = client.stats()["nonbook"].requests_sent
                    assert 21 <= sent <= 60  # auth, 20 packed batches, a bisection of one of them
                    assert server.drop_connections() == 1
                    assert server.wait_for(lambda s: s.connection_count == 2, timeout=10)
        finally:
            client.stop(5)


def test_a_client_faster_than_the_server_is_rate_limited_and_loses_nothing() -> None:
    """Paced at 100 requests/s against a server allowing 10 and 5 channels per request: many 429s,
    each batch sent again after the server's retry_after; none becomes a SubscriptionError."""
    symbols = [f"S{i:04d}USDT" for i in range(200)]
    bad = symbols[77]
    good = [s for s in symbols if s != bad]
    with FakeKiyotakaServer(max_requests_per_second=10.0, max_channels_per_request=5) as server:
        server.reject_symbol(bad)
        counter = Counter()
        client = KiyotakaClient(**server.client_kwargs(), compression=None, max_requests_per_second=100.0,
                                max_channels_per_request=5)
        client.on_error(counter.error)
        for symbol in symbols:
            client.on_trade(counter.trade, exchange=EX, symbol=symbol)
        try:
            client.start()
            assert client.wait_ready(30)
            assert server.wait_for(lambda s: len(s.subscriptions()) == len(good), timeout=5)
            assert server.rejections().get(429, 0) > 0  # the rate limit was hit, and retried
            with counter.lock:
                errors = list(counter.errors)
            assert [e.channel["symbol"] for e in errors if isinstance(e, SubscriptionError)  # type: ignore[index]
                    ] == [bad], errors
            assert all(isinstance(e, (SubscriptionError, RateLimited)) for e in errors), errors
        finally:
            client.stop(5)


# -- sharding: more channels than a connection holds -------------------------------------------------

SHARD_LIMIT = 1000


def _thousands(count: int) -> tuple[list[str], str]:
    symbols = [f"S{i:04d}USDT" for i in range(count)]
    return symbols, symbols[count // 2 + 13]


def _statuses(client: KiyotakaClient) -> list[Any]:
    seen: list[Any] = []
    client.on_status(seen.append)
    return seen


def _round_holds(server: FakeKiyotakaServer, client: KiyotakaClient, counter: Counter, symbols: list[str],
                 bad: str, round_: int) -> None:
    """READY with every good channel held once, each shard within the limit, data from all of them,
    one SubscriptionError (the bad symbol) and no rate limit reported."""
    good = len(symbols) - 1
    assert client.wait_ready(60), (round_, client.stats()["nonbook"])
    # READY means every channel is answered, those moved between shards included: held already
    assert len(server.subscriptions()) == good, (round_, len(server.subscriptions()))
    held = server.subscriptions()
    assert sorted(c["symbol"] for c in held) == sorted(s for s in symbols if s != bad)  # each once
    assert all(n <= SHARD_LIMIT for n in server.subscription_counts().values())
    server.publish([trade_point(EX, s, price=1.0, amount=1.0) for s in symbols])
    assert server.wait_for(counter.reaches(round_ * good), timeout=20), (round_, counter.delivered())
    with counter.lock:
        errors = list(counter.errors)
        got = dict(counter.got)
    assert set(got) == set(symbols) - {bad} and set(got.values()) == {round_}  # every good channel, once a round
    assert not [e for e in errors if isinstance(e, RateLimited)], errors
    assert [e.channel["symbol"] for e in errors if isinstance(e, SubscriptionError)  # type: ignore[index]
            ] == [bad], errors


def _three_thousand(configured: bool) -> None:
    symbols, bad = _thousands(3000)
    with FakeKiyotakaServer(max_requests_per_second=10.0, max_channels_per_request=50,
                            max_subscriptions_per_connection=SHARD_LIMIT) as server:
        server.reject_symbol(bad)
        counter = Counter()
        client = KiyotakaClient(**server.client_kwargs(), compression=None, backoff_initial=0.1, backoff_max=0.5,
                                max_subscriptions_per_connection=SHARD_LIMIT if configured else None)
        client.on_error(counter.error)
        statuses = _statuses(client)
        for symbol in symbols:
            client.on_trade(counter.trade, exchange=EX, symbol=symbol)
        try:
            client.start()
            _round_holds(server, client, counter, symbols, bad, 1)
            stats = client.stats()["nonbook"]
            assert stats.shards == 3 and stats.state == "READY", stats
            assert {s.shard for s in statuses if s.state == "READY"} == {0, 1, 2}
            if configured:  # nothing refused as over the limit: the client knew it
                assert 4290 not in server.rejections(), server.rejections()
            assert server.max_burst(1.0) <= 3 * 16  # each connection: 10 a second, a burst of 5
            assert server.drop_connections() == 3
            assert server.wait_for(lambda s: s.open_connections() == 3 and s.connection_count == 6, timeout=20)
            _round_holds(server, client, counter, symbols, bad, 2)
            assert client.stats()["nonbook"].shards == 3  # the learned capacity held: no fourth
        finally:
            client.stop(5)


def test_three_thousand_channels_over_connections_of_a_thousand_configured() -> None:
    _three_thousand(configured=True)


def test_three_thousand_channels_learn_the_limit_from_the_server() -> None:
    _three_thousand(configured=False)


def _sharded_client(server: FakeKiyotakaServer, counter: Counter, cap: int | None, **more: Any) -> KiyotakaClient:
    client = KiyotakaClient(**server.client_kwargs(), compression=None, backoff_initial=0.1, backoff_max=0.5,
                            max_subscriptions_per_connection=cap, **more)
    client.on_error(counter.error)
    return client


def _home(server: FakeKiyotakaServer, symbol: str) -> int:
    """The connection number holding ``symbol``."""
    with server._lock:  # the test kit's own table, read consistently
        return next(s.number for s in server._sessions.values()
                    if any(c.get("symbol") == symbol for c in s.channels.values()))


def test_a_lost_shard_reconnects_and_replays_alone() -> None:
    symbols = [f"S{i:02d}" for i in range(30)]
    with FakeKiyotakaServer(max_channels_per_request=5) as server:
        counter = Counter()
        client = _sharded_client(server, counter, 10, max_channels_per_request=5)
        statuses = _statuses(client)
        for symbol in symbols:
            client.on_trade(counter.trade, exchange=EX, symbol=symbol)
        try:
            client.start()
            assert client.wait_ready(10)
            assert server.wait_for(lambda s: sorted(s.subscription_counts().values()) == [10, 10, 10])
            victim = _home(server, "S15")
            before = server.request_counts()
            assert server.drop_connections(numbers={victim}) == 1
            assert server.wait_for(lambda s: s.connection_count == 4 and len(s.subscriptions()) == 30, timeout=10)
            assert client.wait_ready(10)
            after = server.request_counts()
            assert {n: after[n] for n in before if n != victim} == {n: c for n, c in before.items() if n != victim}
            (newcomer,) = set(after) - set(before)
            assert after[newcomer] == 2  # its 10 channels again, 5 to a request: only the lost shard's
            def back() -> list[int]:  # statuses reach on_status through the dispatcher: wait for it
                seen = list(statuses)
                lost = [i for i, s in enumerate(seen) if s.state == "DISCONNECTED"]
                return [s.shard for s in seen[lost[0]:] if s.state == "READY"] if lost else []
            assert wait_until(lambda: back())
            (lost,) = [s for s in statuses if s.state == "DISCONNECTED"]  # that shard alone was lost...
            assert back() == [lost.shard]  # ... and came back
            server.publish([trade_point(EX, s, price=1.0, amount=1.0) for s in symbols])
            assert server.wait_for(counter.reaches(30))
        finally:
            client.stop(5)


def test_a_channel_subscribed_again_goes_back_to_its_shard() -> None:
    """Never on two connections at once: its data could then come twice, or out of order."""
    symbols = [f"S{i:02d}" for i in range(20)]
    with FakeKiyotakaServer() as server:
        counter = Counter()
        client = _sharded_client(server, counter, 10)
        subs = {s: client.on_trade(counter.trade, exchange=EX, symbol=s) for s in symbols}
        try:
            client.start()
            assert client.wait_ready(10)
            assert server.wait_for(lambda s: len(s.subscriptions()) == 20)
            shards = client._families["nonbook"].session
            home = _home(server, "S03")
            subs["S03"].unsubscribe()
            assert wait_until(lambda: sorted(shards.counts()) == [9, 10])  # its unsubscribe answered: room
            client.on_trade(counter.trade, exchange=EX, symbol="S99")  # takes the room S03 left
            client.on_trade(counter.trade, exchange=EX, symbol="S03").wait(5)
            assert _home(server, "S03") != home  # its shard was full: it went elsewhere...
            subs["S04"].unsubscribe()  # room on the first connection...
            again = _home(server, "S15")  # ... but S15 lives on the second: it goes back there
            subs["S15"].unsubscribe()
            assert wait_until(lambda: shards.counts() == [9, 9, 1])
            client.on_trade(counter.trade, exchange=EX, symbol="S15").wait(5)
            assert _home(server, "S15") == again != _home(server, "S05")
            assert client.stats()["nonbook"].shards == 3
        finally:
            client.stop(5)


def test_past_the_shard_bound_a_subscription_is_rejected_saying_so(monkeypatch: Any) -> None:
    from kiyotaka_ws import shards

    monkeypatch.setattr(shards, "MAX_SHARDS", 3)
    with FakeKiyotakaServer() as server:
        counter = Counter()
        client = _sharded_client(server, counter, 2)
        subs = [client.on_trade(counter.trade, exchange=EX, symbol=f"S{i}") for i in range(8)]
        try:
            client.start()
            assert client.wait_ready(10)
            assert server.wait_for(lambda s: len(s.subscriptions()) == 6)
            for sub in subs[6:]:
                with pytest.raises(SubscriptionError, match="3 connections of at most 2 subscriptions"):
                    sub.wait(5)
            with counter.lock:
                assert len([e for e in counter.errors if isinstance(e, SubscriptionError)]) == 2
            assert client.stats()["nonbook"].shards == 3 and server.open_connections() == 3
        finally:
            client.stop(5)


def test_a_server_lying_about_its_limit_costs_a_connection_not_a_loop() -> None:
    """Every batch holding LIAR is refused as "over the limit", on every connection. Each refusal
    moves LIAR's part of a batch to a new connection, where it is split (refused on an empty
    connection), so the part halves at each move: at most ceil(log2(50)) + 1 more connections, and
    the capacity learned (50, what the first connection held) never shrinks to the liar's word."""
    symbols = [f"S{i:03d}" for i in range(100)]
    liar = symbols[60]
    with FakeKiyotakaServer() as server:
        server.reject_symbol(liar, 4290, "SUBSCRIPTION_LIMIT: too many subscriptions")
        counter = Counter()
        client = _sharded_client(server, counter, None)
        subs = [client.on_trade(counter.trade, exchange=EX, symbol=s) for s in symbols]
        try:
            client.start()
            assert client.wait_ready(20)
            assert server.wait_for(lambda s: len(s.subscriptions()) == 99)
            with pytest.raises(SubscriptionError, match="SUBSCRIPTION_LIMIT"):
                subs[60].wait(5)
            assert client.stats()["nonbook"].shards <= 1 + 6 + 1
            assert client._families["nonbook"].session.capacity == 50
            assert wait_until(lambda: counter.errors)  # on_error comes through the dispatcher, after wait()
            with counter.lock:
                assert [e.channel["symbol"] for e in counter.errors] == [liar]  # type: ignore[attr-defined]
        finally:
            client.stop(5)


def test_unsubscribing_and_subscribing_again_while_channels_move_leaves_each_held_once() -> None:
    """Another thread churns registrations while the client learns the limit and moves channels:
    at the end the server holds exactly the registered channels, each on one connection, each
    connection within the limit, and nothing was rejected."""
    symbols = [f"S{i:03d}" for i in range(600)]
    rng = random.Random(23)
    with FakeKiyotakaServer(max_subscriptions_per_connection=200, max_channels_per_request=50) as server:
        counter = Counter()
        client = _sharded_client(server, counter, None)
        subs = {s: client.on_trade(counter.trade, exchange=EX, symbol=s) for s in symbols}
        try:
            client.start()  # the churn spans the first refusal, the moves and the new shards' replays
            churn_until = time.monotonic() + 1.0
            while time.monotonic() < churn_until:
                time.sleep(0.005)
                symbol = rng.choice(symbols)
                subs[symbol].unsubscribe()
                if rng.random() < 0.7:
                    subs[symbol] = client.on_trade(counter.trade, exchange=EX, symbol=symbol)
                else:
                    del subs[symbol]
                    symbols.remove(symbol)
            assert server.rejections().get(4290, 0) >= 1 and client.stats()["nonbook"].shards >= 3  # moves happened
            assert client.wait_ready(20)
            # READY does not wait for requests made after it: wait for the paced rest to go out
            assert server.wait_for(lambda s: sorted(c["symbol"] for c in s.subscriptions()) == sorted(subs),
                                   timeout=20), (len(server.subscriptions()), len(subs))
            assert all(n <= 200 for n in server.subscription_counts().values())
            for sub in subs.values():
                sub.wait(5)
            with counter.lock:
                assert counter.errors == []
        finally:
            client.stop(5)


def _held(server: FakeKiyotakaServer, symbol: str) -> list[int]:
    """The connections holding ``symbol`` (more than one: its points come twice)."""
    with server._lock:
        return sorted(s.number for s in server._sessions.values()
                      if any(c.get("symbol") == symbol for c in s.channels.values()))


def test_a_channel_subscribed_again_before_its_unsubscribe_went_out_is_never_held_twice() -> None:
    """S0's unsubscribe waits for its shard's next token (2 s at 0.5 requests/s) while S9 takes the
    room S0 left and S0 is subscribed again: S0 must not be subscribed on another connection before
    its unsubscribe is applied, else every point of S0 comes twice in between (and out of order)."""
    with FakeKiyotakaServer() as server:
        counter = Counter()
        client = _sharded_client(server, counter, 2, max_requests_per_second=0.5)
        subs = {s: client.on_trade(counter.trade, exchange=EX, symbol=s) for s in ("S0", "S1", "S2", "S3")}
        try:
            client.start()
            assert client.wait_ready(10)
            assert server.wait_for(lambda s: len(s.subscriptions()) == 4)
            (home,) = _held(server, "S0")
            subs["S0"].unsubscribe()  # waits for a token on its connection
            client.on_trade(counter.trade, exchange=EX, symbol="S9")
            again = client.on_trade(counter.trade, exchange=EX, symbol="S0")
            again.wait(10)
            assert len(_held(server, "S0")) == 1, (home, _held(server, "S0"))
            server.publish([trade_point(EX, "S0", price=1.0, amount=1.0)])
            assert server.wait_for(lambda s: len(s.subscriptions()) == 5, timeout=10)  # every request answered
            assert server.wait_for(counter.reaches(1))
            server.publish([trade_point(EX, "S0", price=2.0, amount=1.0)])
            assert server.wait_for(counter.reaches(2))
            with counter.lock:
                assert counter.got == {"S0": 2} and counter.errors == []
        finally:
            client.stop(5)


def test_a_shard_whose_key_is_refused_fails_the_whole_family() -> None:
    """The key is revoked after the first shard is up; the second shard's authentication is
    refused. The family FAILED: like an unsharded one, it delivers nothing more, every wait raises
    the error, no shard is opened for later subscriptions, and run_forever() raises it."""
    with FakeKiyotakaServer() as server:
        counter = Counter()
        client = _sharded_client(server, counter, 2)
        first = [client.on_trade(counter.trade, exchange=EX, symbol=s) for s in ("S0", "S1")]
        try:
            client.start()
            assert client.wait_ready(10)
            server.api_key = "revoked"
            late = client.on_trade(counter.trade, exchange=EX, symbol="S9")  # a second shard
            with pytest.raises(AuthenticationError):
                late.wait(5)
            assert server.wait_for(lambda s: s.open_connections() == 0), server.subscription_counts()
            for sub in first:
                with pytest.raises(AuthenticationError):
                    sub.wait(1)
            with pytest.raises(AuthenticationError):
                client.on_trade(counter.trade, exchange=EX, symbol="S5").wait(1)
            assert client.stats()["nonbook"].shards == 2 and client.stats()["nonbook"].state == "FAILED"
            assert not client.wait_ready(0.5)
            with pytest.raises(AuthenticationError):
                client.run_forever()
        finally:
            client.stop(5)


def test_a_dead_dispatcher_ends_the_waits_on_every_shard(monkeypatch: Any) -> None:
    """The family's dispatcher dies while a subscription waits for its answer on the second
    shard: its wait() raises the failure at once (it waited for its timeout)."""
    from kiyotaka_ws.dispatch import Dispatcher

    die = threading.Event()
    dispatch = Dispatcher._dispatch

    def dying(self: Dispatcher) -> bool:
        if die.is_set():
            raise RuntimeError("boom")
        return dispatch(self)

    monkeypatch.setattr(Dispatcher, "_dispatch", dying)
    with FakeKiyotakaServer() as server:
        counter = Counter()
        client = _sharded_client(server, counter, 2, subscribe_timeout=30.0)
        for symbol in ("S0", "S1"):
            client.on_trade(counter.trade, exchange=EX, symbol=symbol)
        try:
            client.start()
            assert client.wait_ready(10)
            server.subscribe_reply = "silent"
            late = client.on_trade(counter.trade, exchange=EX, symbol="S9")  # a second shard, no answer
            assert server.wait_for(lambda s: len(s.requests("public/subscribe")) == 2)
            die.set()
            server.publish([trade_point(EX, "S0", price=1.0, amount=1.0)])  # wakes the dispatcher
            t0 = time.monotonic()
            with pytest.raises(KiyotakaError, match="dispatcher thread failed"):
                late.wait(10)
            assert time.monotonic() - t0 < 5
            assert server.wait_for(lambda s: s.open_connections() == 0)
        finally:
            client.stop(5)


class _FakeShard:
    """A session as ``Shards`` sees it: what it was told, nothing sent."""

    def __init__(self, shard: int) -> None:
        self.shard = shard
        self.told: list[tuple[str, Any]] = []
        self.ready = threading.Event()
        self.fatal: KiyotakaError | None = None

    def add(self, sub: Any) -> None:
        self.told.append(("add", sub.spec))

    def remove(self, spec: Any) -> None:
        self.told.append(("remove", spec))

    def shed(self, capacity: int) -> None:
        self.told.append(("shed", capacity))

    def start(self) -> None:
        pass


def test_a_channel_with_no_room_left_leaves_no_refusal_behind(monkeypatch: Any) -> None:
    """The table of refusals holds only registered channels: a channel rejected for want of room
    is forgotten there, so registered again later it may use every shard again."""
    from kiyotaka_ws import shards
    from kiyotaka_ws.channels import Channel, ChannelSpec
    from kiyotaka_ws.dispatch import EventQueue
    from kiyotaka_ws.session_core import Overflow
    from kiyotaka_ws.source import WireSub

    monkeypatch.setattr(shards, "MAX_SHARDS", 2)
    made: list[_FakeShard] = []

    def make(number: int, *callbacks: Any) -> Any:
        made.append(_FakeShard(number))
        return made[-1]

    family = shards.Shards("nonbook", EventQueue(100, "drop_oldest"), make, None)
    family.start()
    sub = WireSub(ChannelSpec(Channel.TRADE, EX, "X", "*"))
    family.add(sub)
    family._overflow(made[0], Overflow((sub,), 1))  # type: ignore[arg-type]
    family._overflow(made[1], Overflow((sub,), 1))  # type: ignore[arg-type]
    assert sub.state == WireSub.REJECTED and len(made) == 2
    assert family._refused == {}
    again = WireSub(sub.spec)
    family.add(again)
    family._overflow(made[0], Overflow((again,), 1))  # type: ignore[arg-type]
    assert made[1].told[-1] == ("add", sub.spec)  # shard 1 is tried again


@pytest.mark.parametrize("message", ["SUBSCRIPTION_LIMIT (error 2)", "conn 1: too many subscriptions"])
def test_a_number_in_a_limit_message_below_what_the_connection_holds_is_not_its_limit(message: str) -> None:
    """The server refuses a batch as over the limit with a message whose only number is not the
    limit: the connection holds 50 already, so the capacity learned is 50, not 2 (or 1), which
    would cost a connection per channel or two."""
    symbols = [f"S{i:03d}" for i in range(100)]
    with FakeKiyotakaServer() as server:
        server.reject_symbol(symbols[60], 4290, message)
        counter = Counter()
        client = _sharded_client(server, counter, None)
        for symbol in symbols:
            client.on_trade(counter.trade, exchange=EX, symbol=symbol)
        try:
            client.start()
            assert client.wait_ready(20)
            assert server.wait_for(lambda s: len(s.subscriptions()) == 99)
            assert client._families["nonbook"].session.capacity == 50
            assert client.stats()["nonbook"].shards <= 1 + 6 + 1  # as for a liar without a number
        finally:
            client.stop(5)


def test_churn_from_handlers_and_on_status_keeps_each_series_once_and_in_order() -> None:
    """Handlers and on_status unsubscribe and subscribe again while the client learns the limit
    and channels move between shards, under pacing: every series' points are delivered in the
    order published, none twice (a channel on two connections at once would repeat them), and
    no handler is called after its unsubscribe() returned."""
    rng = random.Random(7)
    symbols = [f"S{i:02d}" for i in range(30)]
    with FakeKiyotakaServer(max_subscriptions_per_connection=5, max_channels_per_request=3) as server:
        counter = Counter()
        client = _sharded_client(server, counter, None, max_channels_per_request=3, max_requests_per_second=2.0)
        lock = threading.Lock()
        seen: dict[str, list[float]] = {}
        late: list[str] = []  # calls after unsubscribe() returned
        subs: dict[str, tuple[Any, threading.Event]] = {}

        def register(symbol: str) -> None:
            gone = threading.Event()

            def handler(trade: Any) -> None:
                with lock:
                    if gone.is_set():
                        late.append(trade.symbol)
                    seen.setdefault(trade.symbol, []).append(trade.price)
                if rng.random() < 0.2:
                    churn(trade)

            subs[symbol] = (client.on_trade(handler, exchange=EX, symbol=symbol), gone)

        def churn(_: Any) -> None:
            with lock:
                symbol = rng.choice(symbols)
                if symbol in subs:
                    sub, gone = subs.pop(symbol)
                    sub.unsubscribe()
                    gone.set()
                elif not client.done:
                    register(symbol)

        client.on_status(churn)
        with lock:
            for symbol in symbols[:20]:
                register(symbol)
        try:
            client.start()
            for seq in range(1, 200):
                server.publish([trade_point(EX, s, price=float(seq), amount=1.0) for s in symbols])
                time.sleep(0.01)
            with lock:
                series = {symbol: list(prices) for symbol, prices in seen.items()}
                assert late == []
            assert sum(map(len, series.values())) > 100
            for symbol, prices in series.items():
                assert all(a < b for a, b in zip(prices, prices[1:])), (symbol, prices)
            with counter.lock:
                assert counter.errors == []
        finally:
            client.stop(5)


def _fake_shards(monkeypatch: Any, most: int, capacity: int | None) -> tuple[Any, list[_FakeShard]]:
    from kiyotaka_ws import shards
    from kiyotaka_ws.dispatch import EventQueue

    monkeypatch.setattr(shards, "MAX_SHARDS", most)
    made: list[_FakeShard] = []

    def make(number: int, *callbacks: Any) -> Any:
        made.append(_FakeShard(number))
        return made[-1]

    family = shards.Shards("nonbook", EventQueue(100, "drop_oldest"), make, capacity)
    family.start()
    return family, made


def test_a_channel_removed_while_its_connection_hands_it_back_frees_its_room(monkeypatch: Any) -> None:
    """unsubscribe() races the connection's refusal: the core forgot the channel (refused, never
    applied), so it sends no unsubscribe and says nothing more of it; its room must not stay
    taken for good."""
    from kiyotaka_ws.channels import Channel, ChannelSpec
    from kiyotaka_ws.session_core import Overflow
    from kiyotaka_ws.source import WireSub

    family, made = _fake_shards(monkeypatch, 4, 2)
    subs = [WireSub(ChannelSpec(Channel.TRADE, EX, s, "*")) for s in ("A", "B")]
    for sub in subs:
        family.add(sub)
    family.remove(subs[1].spec)  # the user's thread, just before the session thread hands B back
    family._overflow(made[0], Overflow((subs[1],), 1))
    assert family.counts() == [1] and family._leaving == {}


def test_stop_from_on_status_while_an_overflow_opens_a_shard() -> None:
    """stop() from on_status as the second shard (opened by a refusal) dials: it returns, every
    wait ends, no connection stays or opens, and every thread is joined (conftest checks)."""
    with FakeKiyotakaServer(max_subscriptions_per_connection=3) as server:
        counter = Counter()
        client = _sharded_client(server, counter, None)
        stopped = threading.Event()

        def on_status(status: Any) -> None:
            if status.shard == 1 and status.state == "CONNECTING" and not stopped.is_set():
                client.stop(5)
                stopped.set()

        client.on_status(on_status)
        subs = [client.on_trade(counter.trade, exchange=EX, symbol=f"S{i}") for i in range(12)]
        client.start()
        assert stopped.wait(10)
        for sub in subs:
            with pytest.raises(KiyotakaError):
                sub.wait(2)
        assert server.wait_for(lambda s: s.open_connections() == 0)  # no shard opened after it
        assert client.stats()["nonbook"].state == "STOPPED"
        client.stop(5)


def test_a_shard_whose_authentication_is_rate_limited_tries_again() -> None:
    """A server counting authentications in its rate limit refuses the second shard's with a 429:
    no rejected key, so not fatal; that shard reconnects after retry_after and the family ends
    READY with every channel."""
    with FakeKiyotakaServer() as server:
        answer = server._answer
        limited: list[int] = []

        def rate_limited_auth(session: Any, message: dict[str, Any]) -> bool:
            if message.get("method") == "public/authenticate" and session.number == 2:
                limited.append(session.number)
                server._reply(session, message.get("id"), error={
                    "code": 429, "message": "TOO_MANY_REQUESTS", "data": {"retry_after": 0.2}})
                return True
            return answer(session, message)

        server._answer = rate_limited_auth  # type: ignore[method-assign]
        counter = Counter()
        client = _sharded_client(server, counter, 2)
        subs = [client.on_trade(counter.trade, exchange=EX, symbol=f"S{i}") for i in range(4)]
        try:
            client.start()
            assert client.wait_ready(10), client.stats()["nonbook"]
            for sub in subs:
                sub.wait(5)
            assert limited == [2] and server.wait_for(lambda s: len(s.subscriptions()) == 4)
            assert client.fatal is None
            with counter.lock:
                assert counter.errors == []
        finally:
            client.stop(5)


def test_a_channel_churned_twice_waits_for_every_unsubscribe_of_it(monkeypatch: Any) -> None:
    """X is unsubscribed (its unsubscribe queued on shard 0), subscribed again (back on shard 0),
    unsubscribed again before that subscribe went out (dropped: released at once). The first
    unsubscribe is still unsettled: shard 0 may still send X, so X keeps its room there and,
    subscribed a third time, goes back there, not to the new shard Y opened."""
    from kiyotaka_ws.channels import Channel, ChannelSpec
    from kiyotaka_ws.source import WireSub

    family, made = _fake_shards(monkeypatch, 4, 1)
    x = ChannelSpec(Channel.TRADE, EX, "X", "*")
    first, second, third = WireSub(x), WireSub(x), WireSub(x)
    family.add(first)
    family.remove(x)
    family.add(second)
    family.remove(x)
    family._released(made[0], (second,))  # its subscribe never went out
    family.add(WireSub(ChannelSpec(Channel.TRADE, EX, "Y", "*")))
    family.add(third)
    assert family.counts() == [1, 1] and made[0].told[-1] == ("add", x)
    family.remove(x)
    family._released(made[0], (first,))
    assert family.counts() == [1, 1]  # the third's unsubscribe is still on its way
    family._released(made[0], (third,))
    assert family.counts() == [0, 1] and family._leaving == {}


def test_a_server_closing_a_full_connection_teaches_its_limit() -> None:
    """Over 5 subscriptions the server closes the connection saying why, instead of answering:
    the client replays what each connection was granted and moves the rest, so 12 channels end
    READY on 3 connections (it reconnected with every channel for ever, never READY)."""
    with FakeKiyotakaServer(max_subscriptions_per_connection=5) as server:
        over = server._over_limit

        def closing(session: Any, method: str, channels: list[dict[str, Any]]) -> Any:
            error = over(session, method, channels)
            if error is not None and error["code"] == 4290:
                session.conn.close(1008, "too many subscriptions")
            return error

        server._over_limit = closing  # type: ignore[method-assign]
        counter = Counter()
        client = _sharded_client(server, counter, None, max_channels_per_request=2)
        for i in range(12):
            client.on_trade(counter.trade, exchange=EX, symbol=f"S{i:02d}")
        try:
            client.start()
            assert client.wait_ready(20), (client.stats()["nonbook"], server.subscription_counts())
            assert server.wait_for(lambda s: len(s.subscriptions()) == 12)
            assert client.stats()["nonbook"].shards == 3
            server.publish([trade_point(EX, f"S{i:02d}", price=1.0, amount=1.0) for i in range(12)])
            assert server.wait_for(counter.reaches(12))
            with counter.lock:
                assert counter.errors == []
        finally:
            client.stop(5)


def test_a_stated_limit_is_kept_when_channels_are_shed(monkeypatch: Any) -> None:
    """The server said 1,000 when a connection holding 950 was refused; a later hand-back of
    unsent channels (``shed``: nothing refused, nothing stated) teaches nothing and must not
    lower the capacity to 950."""
    from kiyotaka_ws.channels import Channel, ChannelSpec
    from kiyotaka_ws.session_core import Overflow
    from kiyotaka_ws.source import WireSub

    family, made = _fake_shards(monkeypatch, 4, None)
    sub = WireSub(ChannelSpec(Channel.TRADE, EX, "A", "*"))
    family.add(sub)
    family._overflow(made[0], Overflow((sub,), 950, 1000))
    assert family.capacity == 1000
    family._overflow(made[0], Overflow((), 0))
    assert family.capacity == 1000
