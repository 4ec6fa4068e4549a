"""The pacing rules (kiyotaka_ws.pacing) with a fake clock: bucket, packer, classification,
bisection, rate-limit backoff. Pure: no sockets, no threads, no sleeping."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiyotaka_ws.pacing import (
    PERMANENT,
    RATE_LIMITED,
    SUBSCRIBE,
    SUBSCRIPTION_LIMIT,
    UNSUBSCRIBE,
    Packer,
    RateLimitBackoff,
    Rejection,
    Request,
    TokenBucket,
    classify,
    named,
    settle_permanent,
)

# -- token bucket ---------------------------------------------------------------------------


def test_bucket_lets_a_burst_through_then_paces_at_the_rate() -> None:
    bucket = TokenBucket(10.0)
    assert bucket.burst == 5.0
    assert [bucket.take(100.0) for _ in range(5)] == [0.0] * 5
    assert bucket.take(100.0) == pytest.approx(0.1)
    assert bucket.take(100.05) == pytest.approx(0.05)   # asking does not spend
    assert bucket.take(100.1) == 0.0
    assert bucket.take(100.1) == pytest.approx(0.1)


def test_bucket_burst_is_small_for_slow_rates_and_never_below_one() -> None:
    assert TokenBucket(2.0).burst == 2.0
    assert TokenBucket(0.1).burst == 1.0
    slow = TokenBucket(0.1)
    assert slow.take(0.0) == 0.0 and slow.take(0.0) == pytest.approx(10.0)


def test_bucket_treats_a_clock_stepping_back_as_no_time() -> None:
    bucket = TokenBucket(1.0, burst=1)
    assert bucket.take(50.0) == 0.0
    assert bucket.take(10.0) == pytest.approx(1.0)
    assert bucket.take(50.5) == pytest.approx(0.5)
    assert bucket.take(51.0) == 0.0


def test_bucket_refuses_nonsense() -> None:
    for bad in (0, -1.0, math.nan):
        with pytest.raises(ValueError, match="rate"):
            TokenBucket(bad)
    with pytest.raises(ValueError, match="burst"):
        TokenBucket(5.0, burst=0.5)


@settings(max_examples=200, deadline=None)
@given(rate=st.floats(0.5, 50.0), gaps=st.lists(st.floats(0.0, 0.5), min_size=1, max_size=200))
def test_bucket_never_exceeds_rate_times_window_plus_burst(rate: float, gaps: list[float]) -> None:
    """A greedy sender asking at arbitrary times: over every window [a, b] of its sends,
    count <= rate * (b - a) + burst."""
    bucket = TokenBucket(rate)
    now, sent = 0.0, []
    for gap in gaps:
        now += gap
        while bucket.take(now) == 0.0:
            sent.append(now)
    for i in range(len(sent)):
        for j in range(i, len(sent)):
            assert j - i + 1 <= rate * (sent[j] - sent[i]) + bucket.burst + 1e-6


# -- packer ---------------------------------------------------------------------------------


def drain(packer: Packer[Any]) -> list[Request[Any]]:
    """Send everything, each request applied by the server."""
    out = []
    while (request := packer.pop()) is not None:
        out.append(request)
        packer.done(request.channels)
    return out


def test_packer_packs_in_order_up_to_the_limit() -> None:
    packer: Packer[str] = Packer(2)
    for c in "abcde":
        assert packer.add(SUBSCRIBE, c)
    assert drain(packer) == [Request(SUBSCRIBE, ("a", "b")), Request(SUBSCRIBE, ("c", "d")),
                             Request(SUBSCRIBE, ("e",))]
    assert len(packer) == 0 and packer.in_flight == 0 and packer.pop() is None


def test_a_pending_subscribe_and_its_unsubscribe_cancel_and_nothing_reaches_the_server() -> None:
    packer: Packer[str] = Packer(50)
    packer.add(SUBSCRIBE, "a")
    packer.add(SUBSCRIBE, "b")
    assert packer.add(UNSUBSCRIBE, "a") is False
    assert packer.pending("a") is None and packer.pending("b") == SUBSCRIBE
    assert drain(packer) == [Request(SUBSCRIBE, ("b",))]


def test_methods_are_grouped_by_the_oldest_waiting_operation() -> None:
    packer: Packer[str] = Packer(50)
    packer.add(SUBSCRIBE, "a")
    packer.add(UNSUBSCRIBE, "x")
    packer.add(SUBSCRIBE, "b")
    assert drain(packer) == [Request(SUBSCRIBE, ("a", "b")), Request(UNSUBSCRIBE, ("x",))]


def test_an_operation_on_a_channel_in_flight_waits_for_the_answer() -> None:
    packer: Packer[str] = Packer(50)
    packer.add(SUBSCRIBE, "a")
    first = packer.pop()
    assert first == Request(SUBSCRIBE, ("a",)) and packer.in_flight == 1
    assert packer.add(UNSUBSCRIBE, "a") is True and packer.pending("a") == UNSUBSCRIBE
    packer.add(SUBSCRIBE, "b")
    assert packer.pop() == Request(SUBSCRIBE, ("b",))   # not the unsubscribe of a: a is in flight
    assert packer.pop() is None
    assert packer.done(["a"]) == []
    assert packer.pop() == Request(UNSUBSCRIBE, ("a",))


def test_an_operation_waiting_behind_a_rejected_or_retried_one_cancels_with_it() -> None:
    packer: Packer[str] = Packer(50)
    for c in "abc":
        packer.add(SUBSCRIBE, c)
    sent = packer.pop()
    assert sent is not None
    for c in "abc":
        packer.add(UNSUBSCRIBE, c)   # the user gave up on all three while in flight
    assert packer.add(SUBSCRIBE, "c") is False   # ... and took c back: nothing waits on c
    assert packer.rejected("a") == ["a"]            # never held: nothing to undo
    assert packer.retry(SUBSCRIBE, [("b",), ("c",)]) == ["b"]   # rate-limited: b cancels, c goes again
    assert drain(packer) == [Request(SUBSCRIBE, ("c",))]


def test_retry_puts_requests_back_in_front_as_they_are_and_an_opposite_add_cancels_there() -> None:
    packer: Packer[str] = Packer(3)
    for c in "abcdefg":
        packer.add(SUBSCRIBE, c)
    sent = packer.pop()
    assert sent == Request(SUBSCRIBE, ("a", "b", "c"))
    # the server refused the batch without naming the bad one: its halves go back in front
    assert packer.retry(SUBSCRIBE, [("a",), ("b", "c")]) == []
    assert packer.in_flight == 0 and packer.pending("c") == SUBSCRIBE and len(packer) == 7
    assert packer.add(UNSUBSCRIBE, "a") is False and packer.pending("a") is None   # cancelled in its retry
    assert packer.add(SUBSCRIBE, "c") is True                                    # merged
    assert drain(packer) == [Request(SUBSCRIBE, ("b", "c")),   # never merged with d, e, f
                             Request(SUBSCRIBE, ("d", "e", "f")), Request(SUBSCRIBE, ("g",))]


def test_packer_refuses_an_unknown_method() -> None:
    with pytest.raises(ValueError, match="method"):
        Packer[str](5).add("public/unsubscribe_all", "a")
    with pytest.raises(ValueError, match="max_channels"):
        Packer[str](0)


ops = st.lists(st.tuples(st.sampled_from([SUBSCRIBE, UNSUBSCRIBE]), st.integers(0, 12)), max_size=80)


@settings(max_examples=400, deadline=None)
@given(ops=ops, limit=st.integers(1, 7), steps=st.lists(st.sampled_from(["send", "answer"]), max_size=120),
       bad=st.sets(st.integers(0, 12), max_size=3), refusals=st.lists(st.booleans(), max_size=30))
def test_packer_keeps_per_channel_order_and_the_net_effect(ops: list[tuple[str, int]], limit: int, steps: list[str],
                                                           bad: set[int], refusals: list[bool]) -> None:
    """Interleave user operations, sends and answers (in send order, as one connection does) at
    arbitrary points, against a server that refuses some requests for the rate (retried whole)
    and every subscribe holding a ``bad`` channel without naming it (bisected). Every request
    holds one method and at most ``limit`` distinct channels; the server never gets a subscribe
    for what it holds nor an unsubscribe for what it lacks; at the end it holds exactly what the
    user wants, and only bad channels were rejected."""
    packer: Packer[int] = Packer(limit)
    server: set[int] = set()
    wanted: set[int] = set()     # the wire state the session wants
    rejected: set[int] = set()
    flight: list[Request[int]] = []
    rate_refusals = iter(refusals)

    def send() -> bool:
        request = packer.pop()
        if request is not None:
            assert 1 <= len(request.channels) <= limit and len(set(request.channels)) == len(request.channels)
            flight.append(request)
        return request is not None

    def answer() -> bool:
        if not flight:
            return False
        request = flight.pop(0)
        for channel in request.channels:
            assert (channel in server) == (request.method == UNSUBSCRIBE)
        if next(rate_refusals, False):
            packer.retry(request.method, [request.channels])
        elif request.method == SUBSCRIBE and bad & set(request.channels):
            out = settle_permanent(request.channels, classify({"code": -32602, "message": "INVALID_SYMBOL"}),
                                   symbols=lambda c: set())
            for channel in out.rejected:
                rejected.add(channel)
                if not packer.rejected(channel):   # the session tells the user; the wire stays without it
                    wanted.discard(channel)
            packer.retry(SUBSCRIBE, out.retry)
        else:
            (server.update if request.method == SUBSCRIBE else server.difference_update)(request.channels)
            packer.done(request.channels)
        return True

    actions = iter(steps)
    for method, channel in ops:
        step = next(actions, None)
        if step == "send":
            send()
        elif step == "answer":
            answer()
        # wire-level changes alternate: only a change from the state wanted is queued
        if (method == SUBSCRIBE) == (channel in wanted):
            continue
        (wanted.add if method == SUBSCRIBE else wanted.discard)(channel)
        packer.add(method, channel)
    for _ in range(10_000):
        if not (send() or answer()):
            break
    assert len(packer) == 0 and packer.in_flight == 0
    assert server == wanted
    assert rejected <= bad


# -- classification -------------------------------------------------------------------------


@pytest.mark.parametrize("error, kind", [
    ({"code": 429, "message": "slow down"}, RATE_LIMITED),
    ({"code": "429", "message": "x"}, RATE_LIMITED),
    ({"code": -32000, "message": "TOO_MANY_REQUESTS"}, RATE_LIMITED),
    ({"code": -32000, "message": "Too many requests, try later"}, RATE_LIMITED),
    ({"code": -32000, "message": "rate limit exceeded"}, RATE_LIMITED),
    ({"code": "RATE_LIMITED", "message": ""}, RATE_LIMITED),
    ({"code": -1, "message": "TOO_MANY"}, RATE_LIMITED),
    ({"code": -1, "message": "oops", "data": {"retry_after": 2}}, RATE_LIMITED),
    ("TOO_MANY_REQUESTS", RATE_LIMITED),
    ({"code": 4290, "message": "SUBSCRIPTION_LIMIT: at most 1000 subscriptions per connection"}, SUBSCRIPTION_LIMIT),
    ({"code": -32000, "message": "too many subscriptions"}, SUBSCRIPTION_LIMIT),
    ({"code": "TOO_MANY_SUBSCRIPTIONS", "message": ""}, SUBSCRIPTION_LIMIT),
    ({"code": 429, "message": "Subscription limit reached"}, SUBSCRIPTION_LIMIT),
    ({"code": -32602, "message": "TOO_MANY_CHANNELS: at most 50 channels per request"}, PERMANENT),
    ({"code": -32602, "message": "INVALID_SYMBOL"}, PERMANENT),
    ({"code": -32000, "message": "MANY_TOOLS unavailable"}, PERMANENT),
    ("INVALID_SYMBOL", PERMANENT),
    (None, PERMANENT),
])
def test_classify(error: Any, kind: str) -> None:
    assert classify(error).kind == kind


def test_classify_reads_retry_after_from_data_error_or_siblings_and_the_limit() -> None:
    assert classify({"code": 429, "message": "x", "data": {"retry_after": 1.5}}).retry_after == 1.5
    assert classify({"code": 429, "message": "x", "retry_after": "3"}).retry_after == 3.0
    assert classify("RATE_LIMIT", {"retryAfter": 7}).retry_after == 7.0
    assert classify({"code": 429, "message": "x", "data": {"retry_after": -1}}).retry_after is None
    assert classify({"code": 429, "message": "x", "data": {"retry_after": True}}).retry_after is None
    limited = classify({"code": 4290, "message": "SUBSCRIPTION_LIMIT: at most 1000 subscriptions per connection"})
    assert limited.limit == 1000
    assert classify({"code": 1, "message": "SUBSCRIPTION_LIMIT", "data": {"limit": 7}}).limit == 7
    too_large = classify({"code": -32602, "message": "TOO_MANY_CHANNELS"})
    assert too_large.too_large and too_large.kind == PERMANENT


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                               st.sampled_from(["code", "message", "data", "retry_after", "limit", "channel",
                                                "symbol", "x"]), inner, max_size=5), max_leaves=15)


@settings(max_examples=150, deadline=None)
@given(error=json_values, siblings=st.dictionaries(st.sampled_from(["message", "retry_after", "data"]), json_values))
def test_any_error_a_server_sends_is_classified_and_settled_without_raising(error: Any, siblings: Any) -> None:
    rejection = classify(error, siblings)
    assert rejection.kind in (RATE_LIMITED, SUBSCRIPTION_LIMIT, PERMANENT)
    assert rejection.retry_after is None or 0 <= rejection.retry_after < math.inf
    out = settle_permanent([ch("A"), ch("B"), ch("C")], rejection)
    assert sorted(c["symbol"] for part in (out.rejected, *out.retry) for c in part) == ["A", "B", "C"]


# -- isolating bad channels -----------------------------------------------------------------


def ch(symbol: str, type_: str = "TRADE") -> dict[str, str]:
    return {"type": type_, "exchange": "X", "symbol": symbol}


def test_a_channel_object_in_the_error_is_rejected_and_a_named_symbol_retried_alone() -> None:
    batch = [ch("A"), ch("BAD"), ch("C")]
    by_data = settle_permanent(batch, classify({"code": 1, "message": "no", "data": {"channel": ch("C")}}))
    assert by_data.rejected == (ch("C"),) and by_data.retry == ((ch("A"), ch("BAD")),)
    by_list = settle_permanent(batch, classify({"code": 1, "message": "no", "data": [ch("A")]}))
    assert by_list.rejected == (ch("A"),)
    # a symbol in the message or in data is a guess: retried alone, rejected only if it fails alone
    by_message = settle_permanent(batch, classify({"code": -32602, "message": "INVALID_SYMBOL: BAD"}))
    assert by_message.rejected == () and by_message.retry == ((ch("BAD"),), (ch("A"), ch("C")))
    by_symbol = settle_permanent(batch, classify({"code": 1, "message": "no", "data": {"symbol": "A"}}))
    assert by_symbol.retry == ((ch("A"),), (ch("BAD"), ch("C")))
    assert settle_permanent([ch("BAD")], classify({"code": -32602, "message": "INVALID_SYMBOL: BAD"})).rejected == (
        ch("BAD"),)


def test_a_word_inside_another_names_nothing_and_an_unnamed_batch_is_halved() -> None:
    batch = [ch("BTC"), ch("BTCUSDT"), ch("ETH")]
    assert named(batch, classify({"code": 1, "message": "INVALID_SYMBOL: BTCUSDT"})) == (ch("BTCUSDT"),)
    halves = settle_permanent(batch, classify({"code": -32602, "message": "INVALID_SYMBOL"}))
    assert halves.rejected == () and halves.retry == ((ch("BTC"),), (ch("BTCUSDT"), ch("ETH")))
    assert settle_permanent([ch("A")], classify("NOPE")).rejected == (ch("A"),)


def test_several_named_channels_are_retried_together_apart_from_the_rest() -> None:
    batch = [ch("A"), ch("BAD"), ch("BAD", "LIQUIDATION"), ch("C")]
    out = settle_permanent(batch, classify({"code": 1, "message": "unknown symbol BAD"}))
    assert out.rejected == () and out.retry == ((ch("BAD"), ch("BAD", "LIQUIDATION")), (ch("A"), ch("C")))


def bisect(n: int, bad: set[int], message: str = "INVALID_SYMBOL") -> tuple[set[int], set[int], int]:
    """Drive settle_permanent like a session against a server that rejects a whole batch holding
    a bad index without naming it: (accepted, rejected, requests sent)."""
    queue: list[tuple[int, ...]] = [tuple(range(n))]
    accepted: set[int] = set()
    rejected: set[int] = set()
    sent = 0
    while queue:
        batch = queue.pop()
        sent += 1
        if not bad & set(batch):
            accepted.update(batch)
            continue
        out = settle_permanent(batch, classify({"code": -32602, "message": message}), symbols=lambda c: set())
        rejected.update(out.rejected)
        queue.extend(out.retry)
    return accepted, rejected, sent


@settings(max_examples=300, deadline=None)
@given(data=st.data(), n=st.integers(1, 300))
def test_bisection_isolates_exactly_the_bad_channels_within_its_bound(data: st.DataObject, n: int) -> None:
    bad = data.draw(st.sets(st.integers(0, n - 1), max_size=min(n, 12)))
    accepted, rejected, sent = bisect(n, bad)
    assert rejected == bad
    assert accepted == set(range(n)) - bad
    assert sent <= 2 * len(bad) * max(1, math.ceil(math.log2(n))) + 1


def test_bisection_of_one_bad_among_3000_takes_few_requests() -> None:
    _, rejected, sent = bisect(3000, {1234})
    assert rejected == {1234} and sent <= 2 * 12 + 1


def test_a_too_large_batch_is_halved_even_when_a_symbol_appears_in_the_message() -> None:
    batch = [ch("A"), ch("B")]
    out = settle_permanent(batch, classify({"code": -32602, "message": "TOO_MANY_CHANNELS near A"}))
    assert out.rejected == () and out.retry == ((ch("A"),), (ch("B"),))


# -- rate-limit backoff ---------------------------------------------------------------------


def test_backoff_honours_retry_after_up_to_its_cap_with_a_little_jitter() -> None:
    backoff = RateLimitBackoff(initial=0.5, maximum=60.0, rng=lambda: 0.5)
    assert backoff.failed(2.0) == pytest.approx(2.1)
    assert backoff.failed(3600.0) == 60.0
    assert backoff.failed(0.0) == 0.0


def test_backoff_without_retry_after_grows_exponentially_within_full_jitter() -> None:
    top = RateLimitBackoff(initial=0.5, maximum=8.0, rng=lambda: 0.999999)
    assert [round(top.failed(), 3) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    bottom = RateLimitBackoff(initial=0.5, maximum=8.0, rng=lambda: 0.0)
    assert {bottom.failed() for _ in range(6)} == {0.5}


def test_backoff_warns_once_after_n_consecutive_failures_and_resets_on_success() -> None:
    backoff = RateLimitBackoff(warn_after=3, rng=lambda: 0.0)
    warned = []
    for _ in range(6):
        backoff.failed()
        warned.append(backoff.warn_now)
    assert warned == [False, False, True, False, False, False]
    backoff.succeeded()
    assert backoff.failures == 0
    for _ in range(3):
        backoff.failed()
    assert backoff.warn_now


def test_rejection_defaults() -> None:
    assert Rejection(PERMANENT).retry_after is None and not Rejection(PERMANENT).too_large
