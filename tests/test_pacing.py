"""The pacing rules (kiyotaka_ws.pacing) with a fake clock: bucket, classification,
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
    SUBSCRIPTION_LIMIT,
    RateLimitBackoff,
    Rejection,
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
