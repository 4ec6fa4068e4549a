"""The session's rules, driven without threads or sockets: events in, actions out, a fake clock in ms."""

from __future__ import annotations

import itertools
from typing import Any

import attrs
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kiyotaka_ws.channels import Channel, ChannelSpec
from kiyotaka_ws.errors import (
    AuthenticationError,
    ConnectionFailedError,
    RateLimited,
    SubscriptionError,
)
from kiyotaka_ws.session_core import (
    ACTIVE,
    ASSUMED,
    AUTH,
    MAX_PENDING,
    MAX_RETRY_AFTER,
    PENDING,
    REJECTED,
    SUBSCRIBE,
    UNSUBSCRIBE,
    BucketPacer,
    Connect,
    GiveUp,
    Heard,
    Kill,
    Overflow,
    Ping,
    Released,
    Report,
    Send,
    SessionCore,
    SetState,
    Settings,
    Settle,
    at_most,
)
from kiyotaka_ws.status import State


@attrs.define(eq=False)
class FakeSub:
    spec: ChannelSpec


def spec(symbol: str) -> ChannelSpec:
    return ChannelSpec(Channel.TRADE, "BINANCE", symbol, "SPOT")


def core(rng: float = 0.5, **overrides: Any) -> SessionCore:
    return SessionCore("nonbook", "wss://example/ws?k=1", Settings(**overrides), itertools.count(1),
                       rng=lambda: rng)


def sends(actions: list[Any], method: str | None = None) -> list[Send]:
    return [a for a in actions if isinstance(a, Send) and (method is None or a.request.method == method)]


def states(actions: list[Any]) -> list[State]:
    return [a.state for a in actions if isinstance(a, SetState)]


def up(c: SessionCore, conn: int = 1, now: float = 0.0) -> int:
    """Start (if needed) and connect; return the auth request's id."""
    if c.state is State.STOPPED:
        assert Connect() in c.start(now)
    (auth,) = sends(c.connected(conn, now), AUTH)
    return auth.request.id


def live(c: SessionCore, conn: int = 1, now: float = 0.0) -> list[Any]:
    """Connected and authenticated, with the server heard: the actions of the auth answer."""
    auth_id = up(c, conn, now)
    return c.answer(conn, {"id": auth_id, "result": True}, now)


def ok(request_id: int) -> dict[str, Any]:
    return {"id": request_id, "result": True}


def rejected(request_id: int, code: int = 10001, text: str = "bad symbol") -> dict[str, Any]:
    return {"id": request_id, "error": {"code": code, "message": text}}


# -- authentication ----------------------------------------------------------------------------------

def test_auth_answer_goes_live_and_ready_at_once() -> None:
    c = core()
    actions = live(c)
    assert states(actions) == [State.READY]


def test_no_auth_answer_goes_on_after_auth_timeout_to_the_millisecond() -> None:
    c = core(auth_timeout=5.0)
    up(c)
    c.add(FakeSub(spec("A")), 0.1)
    assert sends(c.tick(4.999)) == [] and c.wake_at == pytest.approx(5.0)
    (sub,) = sends(c.tick(5.0), SUBSCRIBE)
    assert sub.request.specs == (spec("A"),)


def test_auth_rejection_is_fatal() -> None:
    c = core()
    auth_id = up(c)
    (give_up,) = c.answer(1, rejected(auth_id, 401, "bad key"), 0.2)
    assert isinstance(give_up, GiveUp) and isinstance(give_up.error, AuthenticationError)
    assert "bad key" in str(give_up.error) and c.done
    assert c.tick(100.0) == [] and c.add(FakeSub(spec("B")), 100.0) == []


def test_an_authentication_refused_as_too_many_requests_is_retried_not_fatal() -> None:
    """Many shards authenticating at once (after every connection dropped) may meet a rate limit
    counting authentications: that is no rejected key. The connection ends and the next one waits
    at least retry_after."""
    c = core(backoff_initial=0.5, backoff_max=1.0)
    auth_id = up(c)
    limited = {"id": auth_id, "error": {"code": 429, "message": "TOO_MANY_REQUESTS", "data": {"retry_after": 3}}}
    out = c.answer(1, limited, 0.2)
    assert [a for a in out if isinstance(a, Kill)] == [Kill(1, "authentication refused as too many requests "
                                                          "(429: TOO_MANY_REQUESTS)")]
    assert not c.done and not [a for a in out if isinstance(a, GiveUp)]
    assert states(c.lost(1, 0.3, "closed")) == [State.DISCONNECTED]
    assert c.tick(3.2) == [] and c.wake_at == pytest.approx(3.3)
    assert Connect() in c.tick(3.3)


def test_auth_timeout_waits_while_the_reader_is_blocked_and_after() -> None:
    c = core(auth_timeout=5.0)
    up(c)
    c.tick(6.0, reader_blocked=True)
    assert c.state is State.CONNECTING and c.wake_at == pytest.approx(6.5)
    c.heard(1, Heard.BACKLOG, 6.2, 6.2)  # it waited on a full queue until 6.2: answers may be unread
    c.tick(11.1)
    assert c.state is State.CONNECTING and c.wake_at == pytest.approx(11.2)
    assert Ping(1) in c.tick(11.2)  # gone on; nothing heard yet, so READY asks for a pong


# -- subscriptions ---------------------------------------------------------------------------------

def test_subscribe_answered_settles_active() -> None:
    c = core()
    live(c)
    a = FakeSub(spec("A"))
    (send,) = sends(c.add(a, 1.0))
    assert Settle(a, ACTIVE) in c.answer(1, ok(send.request.id), 1.01)


def test_the_reader_looks_for_answers_only_while_one_is_awaited() -> None:
    """``expecting`` (the reader decompresses binary frames to find answers) holds from a request
    until nothing awaits an answer, not for the whole window after the last request: a stream
    that starts right after its subscribe is answered keeps brotli on the dispatcher."""
    c = core()
    auth_id = up(c)
    assert c.expecting
    c.answer(1, ok(auth_id), 0.1)
    assert not c.expecting
    (first,) = sends(c.add(FakeSub(spec("A")), 1.0))
    (second,) = sends(c.add(FakeSub(spec("B")), 1.0))
    assert c.expecting
    c.answer(1, ok(first.request.id), 1.1)
    assert c.expecting  # B's answer is still awaited
    c.answer(1, {"id": 999, "result": True}, 1.2)  # an answer to nothing changes nothing
    assert c.expecting
    c.answer(1, ok(second.request.id), 1.3)
    assert not c.expecting
    c.tick(1.4)
    assert not c.expecting


def test_subscribe_timeout_assumes_then_a_late_rejection_still_counts() -> None:
    c = core(subscribe_timeout=10.0, ping_interval=None)
    auth_id = up(c)
    a = FakeSub(spec("A"))
    c.add(a, 0.0)
    (send,) = sends(c.answer(1, ok(auth_id), 0.5), SUBSCRIBE)
    c.tick(10.499)
    assert c.sub_state(a.spec) == PENDING and c.wake_at == pytest.approx(10.5)
    actions = c.tick(10.5)
    assert Settle(a, ASSUMED) in actions and states(actions) == [State.READY]
    late = c.answer(1, rejected(send.request.id), 11.0)
    (settle,) = [x for x in late if isinstance(x, Settle)]
    assert settle.state == REJECTED and isinstance(settle.error, SubscriptionError)
    assert Report(settle.error) in late


def test_subscribe_timeout_never_concluded_while_the_reader_waits_on_a_full_queue() -> None:
    c = core(subscribe_timeout=10.0, ping_interval=None)
    live(c)
    a = FakeSub(spec("A"))
    c.add(a, 1.0)
    c.tick(30.0, reader_blocked=True)
    assert c.sub_state(a.spec) == PENDING
    c.heard(1, Heard.BACKLOG, 30.0, 30.0)
    c.tick(39.999)
    assert c.sub_state(a.spec) == PENDING
    assert Settle(a, ASSUMED) in c.tick(40.0)


def test_unsubscribe_never_overtakes_its_subscribe_and_a_removed_spec_is_not_replayed() -> None:
    c = core()
    live(c)
    a = FakeSub(spec("A"))
    sent = sends(c.add(a, 1.0)) + sends(c.remove(a.spec, 1.0))
    assert [s.request.method for s in sent] == [SUBSCRIBE, UNSUBSCRIBE]
    assert sent[0].request.id < sent[1].request.id
    c.lost(1, 2.0, "reset")
    c.tick(10.0)
    replay = live(c, 2, 10.0)
    assert sends(replay, SUBSCRIBE) == []


def test_a_rejected_subscription_is_not_unsubscribed_nor_replayed() -> None:
    c = core()
    live(c)
    a, b = FakeSub(spec("A")), FakeSub(spec("B"))
    (sa,) = sends(c.add(a, 1.0))
    c.add(b, 1.0)
    c.answer(1, rejected(sa.request.id), 1.1)
    assert c.remove(a.spec, 1.2) == [] or not sends(c.remove(a.spec, 1.2))
    c.lost(1, 2.0, "reset")
    c.tick(100.0)
    assert [s.request.specs for s in sends(live(c, 2, 100.0), SUBSCRIBE)] == [(b.spec,)]


def test_remove_of_a_queued_subscribe_drops_both() -> None:
    class Closed:
        def take(self, now: float) -> bool:
            return now >= 5.0

        def ready_at(self, now: float) -> float:
            return 5.0

        def reset(self, now: float) -> None:
            pass

    a, b = FakeSub(spec("A")), FakeSub(spec("B"))
    c2 = SessionCore("nonbook", "wss://x", Settings(ping_interval=None), itertools.count(1), pacer=Closed())
    c2.start(0.0)
    c2.add(a, 0.0)
    c2.connected(1, 0.0)  # the auth goes out unpaced: it is not in the outbox
    assert sends(c2.answer(1, ok(1), 0.0)) == [] and [i.sub for i in c2.outbox] == [a]
    assert c2.state is not State.READY  # READY waits for the queued subscribe
    assert sends(c2.remove(a.spec, 0.2)) == [] and c2.outbox == []
    c2.add(b, 0.3)
    assert c2.tick(1.0) == [] and c2.wake_at == pytest.approx(5.0)
    assert [s.request.specs for s in sends(c2.tick(5.0))] == [(b.spec,)]


def test_a_packer_puts_several_channels_in_one_request() -> None:
    c = SessionCore("nonbook", "wss://x", Settings(ping_interval=None), itertools.count(1),
                    packer=lambda intents: 2)
    subs = [FakeSub(spec(s)) for s in "ABC"]
    for sub in subs:
        c.add(sub, 0.0)
    auth_id = up(c)
    replay = sends(c.answer(1, ok(auth_id), 0.1), SUBSCRIBE)
    assert [s.request.specs for s in replay] == [(subs[0].spec, subs[1].spec), (subs[2].spec,)]
    answered = c.answer(1, ok(replay[0].request.id), 0.2)
    assert Settle(subs[0], ACTIVE) in answered and Settle(subs[1], ACTIVE) in answered


# -- packing, pacing, splitting and rate limits (issue 23) -----------------------------------------

def paced(rate: float = 10.0, most: int = 50, **overrides: Any) -> SessionCore:
    return SessionCore("nonbook", "wss://x", Settings(ping_interval=None, **overrides), itertools.count(1),
                       rng=lambda: 0.5, packer=at_most(most), pacer=BucketPacer(rate))


def serve(c: SessionCore, actions: list[Any], now: float, bad: frozenset[str] = frozenset(),
          log: list[Send] | None = None) -> list[Any]:
    """Answer every subscribe in ``actions`` as a server would that rejects a whole batch holding a
    ``bad`` symbol without naming it; returns every action seen (answers' included)."""
    seen = list(actions)
    todo = sends(actions)
    while todo:
        send = todo.pop(0)
        if log is not None:
            log.append(send)
        if send.request.method != SUBSCRIBE:
            continue
        symbols = {sp.symbol for sp in send.request.specs}
        answer = rejected(send.request.id, -32602, "INVALID_SYMBOL") if symbols & bad else ok(send.request.id)
        more = c.answer(1, answer, now)
        seen += more
        todo += sends(more)
    return seen


def run_until_idle(c: SessionCore, actions: list[Any], bad: frozenset[str] = frozenset(),
                   log: list[Send] | None = None, now: float = 0.0) -> tuple[list[Any], float]:
    """Serve, then tick at each ``wake_at`` until nothing is left to send; the actions and the time.
    Like the session's loop, it ticks after the answers it serves (they may schedule retries)."""
    seen = serve(c, actions, now, bad, log)
    seen += serve(c, c.tick(now), now, bad, log)
    while (c.outbox or c.retries) and c.wake_at is not None:
        now = c.wake_at
        seen += serve(c, c.tick(now), now, bad, log)
        seen += serve(c, c.tick(now), now, bad, log)
    return seen, now


def test_subscribes_are_packed_and_paced_in_the_users_order() -> None:
    c = paced(rate=10.0, most=50)
    subs = [FakeSub(spec(f"S{i:04d}")) for i in range(1000)]
    for sub in subs:
        c.add(sub, 0.0)
    auth_id = up(c)
    log: list[Send] = []
    seen, end = run_until_idle(c, c.answer(1, ok(auth_id), 0.0), log=log)
    assert [len(s.request.specs) for s in log] == [50] * 20
    assert [sp for s in log for sp in s.request.specs] == [sub.spec for sub in subs]  # the user's order
    # a burst of 5, then 10 a second: the 20th request goes at 1.5 s, not before
    assert end == pytest.approx(1.5, abs=1e-6)
    assert states(seen)[-1] is State.READY and c.requests_sent == 21


def test_a_batch_rejected_without_naming_its_channel_is_split_until_the_bad_one_is_alone() -> None:
    c = paced(rate=1000.0, most=50)
    subs = [FakeSub(spec(f"S{i:04d}")) for i in range(200)]
    for sub in subs:
        c.add(sub, 0.0)
    auth_id = up(c)
    log: list[Send] = []
    seen, _ = run_until_idle(c, c.answer(1, ok(auth_id), 0.0), bad=frozenset({"S0077"}), log=log)
    reports = [a.error for a in seen if isinstance(a, Report)]
    assert len(reports) == 1 and isinstance(reports[0], SubscriptionError)
    assert reports[0].channel == spec("S0077").wire()
    assert {c.sub_state(sub.spec) for sub in subs if sub.spec.symbol != "S0077"} == {ACTIVE}
    assert c.sub_state(spec("S0077")) == REJECTED
    assert len(log) <= 4 + 2 * 6 + 1  # 4 batches, then a bisection of one of 50
    assert states(seen)[-1] is State.READY


def test_a_rate_limit_is_retried_after_retry_after_and_never_rejects() -> None:
    c = paced(rate=1000.0, most=50)
    a, b = FakeSub(spec("A")), FakeSub(spec("B"))
    c.add(a, 0.0)
    c.add(b, 0.0)
    auth_id = up(c)
    (first,) = sends(c.answer(1, ok(auth_id), 0.0))
    limited = {"id": first.request.id, "error": {"code": 429, "message": "TOO_MANY_REQUESTS",
                                                  "data": {"retry_after": 2.0}}}
    out = c.answer(1, limited, 0.1)
    assert [x for x in out if isinstance(x, (Report, Send, Settle))] == []
    assert c.state is not State.READY and c.tick(0.2) == [] and c.wake_at == pytest.approx(0.1 + 2.1)
    (again,) = sends(c.tick(2.2))
    assert again.request.specs == (a.spec, b.spec)
    assert Settle(a, ACTIVE) in c.answer(1, ok(again.request.id), 2.3) and c.state is State.READY


def test_repeated_rate_limits_reach_on_error_once_as_a_warning() -> None:
    c = paced(rate=1000.0, most=50)
    a = FakeSub(spec("A"))
    c.add(a, 0.0)
    auth_id = up(c)
    (send,) = sends(c.answer(1, ok(auth_id), 0.0))
    now, reports = 0.0, []
    for _ in range(8):
        out = c.answer(1, {"id": send.request.id, "error": {"code": "RATE_LIMIT_EXCEEDED", "message": "slow down"}},
                       now)
        reports += [x.error for x in out if isinstance(x, Report)]
        assert not [x for x in out if isinstance(x, Settle)]
        resent: list[Send] = sends(c.tick(now))
        while not resent:
            assert c.wake_at is not None
            now = c.wake_at
            resent = sends(c.tick(now))
        (send,) = resent
    assert len(reports) == 1 and isinstance(reports[0], RateLimited) and reports[0].failures == 5
    assert c.sub_state(a.spec) == PENDING


def test_answers_to_one_rate_limited_burst_count_as_one_failure() -> None:
    c = paced(rate=1000.0, most=1)
    subs = [FakeSub(spec(s)) for s in "ABCDEFG"]
    for sub in subs:
        c.add(sub, 0.0)
    auth_id = up(c)
    burst = sends(c.answer(1, ok(auth_id), 0.0))
    assert len(burst) == 5
    reports = []
    for send in burst:  # every request of the burst refused: one failure, not five
        out = c.answer(1, {"id": send.request.id, "error": {"code": 429, "message": "TOO_MANY_REQUESTS"}}, 0.1)
        reports += [x for x in out if isinstance(x, Report)]
    assert reports == [] and [sub.spec for _, group in c.retries for sub in group] == [s.spec for s in subs[:5]]


def test_an_unsubscribe_never_goes_for_a_subscribe_waiting_to_be_sent_again() -> None:
    c = paced(rate=1000.0, most=50)
    a, b = FakeSub(spec("A")), FakeSub(spec("B"))
    c.add(a, 0.0)
    c.add(b, 0.0)
    auth_id = up(c)
    (send,) = sends(c.answer(1, ok(auth_id), 0.0))
    c.answer(1, {"id": send.request.id, "error": {"code": 429, "message": "TOO_MANY_REQUESTS"}}, 0.1)
    assert sends(c.remove(a.spec, 0.2)) == []  # its subscribe was not applied: nothing to undo
    c.tick(0.2)
    assert c.wake_at is not None
    (again,) = sends(c.tick(c.wake_at))
    assert again.request.specs == (b.spec,)


def test_a_reconnect_replays_packed_and_paced() -> None:
    c = paced(rate=10.0, most=50)
    subs = [FakeSub(spec(f"S{i:04d}")) for i in range(400)]
    for sub in subs:
        c.add(sub, 0.0)
    auth_id = up(c)
    run_until_idle(c, c.answer(1, ok(auth_id), 0.0), bad=frozenset({"S0123"}))
    c.lost(1, 10.0, "dropped")
    c.tick(20.0)
    (auth,) = sends(c.connected(2, 20.0), AUTH)
    log: list[Send] = []
    first = c.answer(2, ok(auth.request.id), 20.0)
    assert len(sends(first)) == 5  # the burst, no more

    def serve2(actions: list[Any], now: float) -> None:
        for s in sends(actions):
            log.append(s)
            c.answer(2, ok(s.request.id), now)
    serve2(first, 20.0)
    now = 20.0
    while c.outbox:
        c.tick(now)
        assert c.wake_at is not None
        now = c.wake_at
        serve2(c.tick(now), now)
    assert [len(s.request.specs) for s in log] == [50] * 7 + [49]  # the rejected one is not replayed
    assert now == pytest.approx(20.3) and c.state is State.READY


# -- liveness ----------------------------------------------------------------------------------------

def test_ping_every_interval_and_a_pong_in_time_keeps_the_link() -> None:
    c = core(ping_interval=10.0, ping_timeout=10.0)
    live(c)
    assert c.tick(9.999) == [] and c.wake_at == pytest.approx(10.0)
    assert c.tick(10.0) == [Ping(1)]
    c.heard(1, Heard.PONG, 19.999, 19.999)
    assert c.tick(19.999) == [] and c.tick(20.0) == [Ping(1)]


def test_a_missing_pong_kills_the_link_to_the_millisecond() -> None:
    c = core(ping_interval=10.0, ping_timeout=10.0)
    live(c)
    c.tick(10.0)
    assert c.tick(19.999) == [] and c.wake_at == pytest.approx(20.0)
    assert c.tick(20.0) == [Kill(1, "no pong within 10.0s")]
    assert c.tick(21.0) == []  # once
    (state,) = c.lost(1, 21.0, "aborted")
    assert state == SetState(State.DISCONNECTED, 1, "no pong within 10.0s")


def test_any_byte_answers_a_ping_but_not_before_it_was_sent() -> None:
    c = core(ping_interval=10.0, ping_timeout=10.0)
    live(c)
    c.heard(1, Heard.BYTES, 9.0, 9.0)
    c.tick(10.0)
    assert c.tick(20.0) == [Kill(1, "no pong within 10.0s")]
    c2 = core(ping_interval=10.0, ping_timeout=10.0)
    live(c2)
    c2.tick(10.0)
    c2.heard(1, Heard.BYTES, 10.5, 10.5)  # a partial frame after the ping: the link lives
    assert c2.tick(20.0) == [Ping(1)]


def test_stale_counts_data_bytes_not_pongs() -> None:
    c = core(stale_timeout=30.0, ping_interval=None)
    live(c)
    c.heard(1, Heard.DATA, 20.0, 20.0)
    assert c.tick(49.999) == [] and c.wake_at == pytest.approx(50.0)
    c.heard(1, Heard.PONG, 49.0, 49.0)
    c.heard(1, Heard.BYTES, 49.5, 49.5)
    assert c.tick(50.0) == [Kill(1, "no data for 30.0s")]


# -- READY needs the server --------------------------------------------------------------------------

def test_ready_by_timers_alone_asks_for_a_pong() -> None:
    c = core(auth_timeout=1.0)
    up(c)
    actions = c.tick(1.0)
    assert Ping(1) in actions and State.READY not in states(actions)
    assert states(c.heard(1, Heard.PONG, 1.01, 1.01)) == [State.READY]


def test_ready_proof_ping_unanswered_kills() -> None:
    c = core(auth_timeout=1.0, ping_interval=10.0, ping_timeout=3.0)
    up(c)
    c.tick(1.0)
    assert c.tick(3.999) == [] and c.tick(4.0) == [Kill(1, "no pong within 3.0s")]
    assert c.state is State.CONNECTING


def test_answers_on_an_old_connection_are_ignored() -> None:
    c = core()
    auth_id = up(c)
    c.lost(1, 1.0, "reset")
    c.tick(5.0)
    up(c, 2, 5.0)
    assert c.answer(1, ok(auth_id), 5.1) == []
    assert c.heard(1, Heard.FRAME, 5.1, 5.1) == [] and c.state is State.CONNECTING
    assert c.lost(1, 5.2, "late") == [] and c.conn == 2
    actions = c.tick(10.0)  # past auth_timeout: live, but nothing came on connection 2 itself
    assert Ping(2) in actions and State.READY not in states(actions)


# -- reconnecting ------------------------------------------------------------------------------------

def test_backoff_full_jitter_bounds_with_a_fixed_rng() -> None:
    for rng, expected in ((0.0, [0.5, 0.5, 0.5]), (1.0, [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0])):
        c = core(rng=rng, backoff_initial=0.5, backoff_max=30.0)
        c.start(0.0)
        now = 0.0
        for delay in expected:
            c.failed_to_connect(now, "refused")
            assert c.wake_at == pytest.approx(now + delay)
            assert c.tick(now + delay - 0.001) == []
            now += delay
            assert Connect() in c.tick(now)


def test_backoff_resets_after_a_stable_connection() -> None:
    c = core(rng=1.0, backoff_initial=1.0, backoff_max=30.0)
    c.start(0.0)
    c.failed_to_connect(0.0, "refused")
    c.tick(1.0)
    c.failed_to_connect(1.0, "refused")   # attempt 1: up to 2 s
    assert c.wake_at == pytest.approx(3.0)
    c.tick(3.0)
    live(c, 1, 3.0)
    (state,) = c.lost(1, 12.999, "reset")  # up 9.999 s: not stable
    assert state.attempt == 3 and c.wake_at == pytest.approx(12.999 + 4.0)
    c.tick(17.0)
    live(c, 2, 17.0)
    c.lost(2, 27.0, "reset")  # up 10 s: stable, the backoff starts over
    assert c.wake_at == pytest.approx(28.0)


def test_retry_after_is_honoured_and_capped() -> None:
    c = core(rng=0.0)
    c.start(0.0)
    (state,) = c.failed_to_connect(0.0, "HTTP 503 Service Unavailable", status=503, retry_after=7.0,
                                   rejected=True)
    assert state == SetState(State.DISCONNECTED, 1, "HTTP 503 Service Unavailable")
    assert c.wake_at == pytest.approx(7.0)
    c.tick(7.0)
    c.failed_to_connect(7.0, "HTTP 429", status=429, retry_after=10**9, rejected=True)
    assert c.wake_at == pytest.approx(7.0 + MAX_RETRY_AFTER)


@pytest.mark.parametrize("status, error", [(401, AuthenticationError), (403, AuthenticationError),
                                           (404, ConnectionFailedError), (400, ConnectionFailedError)])
def test_permanent_handshake_rejections_give_up(status: int, error: type) -> None:
    c = core()
    c.start(0.0)
    (give_up,) = c.failed_to_connect(0.0, f"HTTP {status}", status=status, rejected=True)
    assert isinstance(give_up, GiveUp) and type(give_up.error) is error
    assert "k=1" not in str(give_up.error)  # the query (a secret, maybe) is never said


@pytest.mark.parametrize("max_retries", [0, 1, 3])
def test_max_retries_gives_up_after_n_plus_1_failed_attempts(max_retries: int) -> None:
    c = core(max_retries=max_retries, backoff_initial=0.01, backoff_max=0.01)
    attempts = 0
    now = 0.0
    actions = c.start(now)
    while Connect() in actions:
        attempts += 1
        up(c, attempts, now)
        actions = c.lost(attempts, now + 0.001, "closed")  # never READY
        now += 1.0
        actions += c.tick(now)
    (give_up,) = [a for a in actions if isinstance(a, GiveUp)]
    assert attempts == max_retries + 1
    assert f"(max_retries={max_retries})" in str(give_up.error)


def test_a_connection_that_reached_ready_resets_the_failure_count() -> None:
    c = core(max_retries=1, backoff_initial=0.01, backoff_max=0.01)
    c.start(0.0)
    c.failed_to_connect(0.0, "refused")
    c.tick(1.0)
    live(c, 1, 1.0)
    c.lost(1, 2.0, "reset")
    c.tick(3.0)
    assert not c.done and not any(isinstance(a, GiveUp) for a in c.failed_to_connect(3.0, "refused"))


def test_reconnect_false_gives_up_on_the_first_loss() -> None:
    c = core(reconnect=False)
    live(c)
    (give_up,) = c.lost(1, 1.0, "reset")
    assert isinstance(give_up, GiveUp) and "reconnect=False" in str(give_up.error)


def test_a_close_rejecting_the_key_during_auth_is_fatal_and_after_it_is_not() -> None:
    c = core()
    up(c)
    (give_up,) = c.lost(1, 0.1, "policy", close_code=4001)
    assert isinstance(give_up.error, AuthenticationError)
    c2 = core()
    live(c2)
    assert states(c2.lost(1, 0.1, "policy", close_code=4001)) == [State.DISCONNECTED]


# -- bookkeeping ----------------------------------------------------------------------------------------

def test_request_ids_never_reused_across_connections() -> None:
    c = core(ping_interval=None)
    ids: list[int] = []
    for conn in range(1, 4):
        now = conn * 100.0
        c.tick(now)
        actions = c.connected(conn, now)
        actions += c.add(FakeSub(spec(f"A{conn}")), now)
        actions += c.answer(conn, ok(sends(actions, AUTH)[0].request.id), now)  # replays A1.. and sends
        actions += c.add(FakeSub(spec(f"B{conn}")), now)
        ids += [s.request.id for s in sends(actions)]
        c.lost(conn, now + 1, "reset")
    assert len(ids) == len(set(ids)) == 3 + (1 + 3 + 5) + 3  # auths, replays (A1; A1 B1 A2; ...), B adds


def test_pending_requests_are_bounded() -> None:
    c = core(ping_interval=None)
    live(c)
    for i in range(MAX_PENDING + 50):
        c.add(FakeSub(ChannelSpec(Channel.TRADE, "X", f"S{i}", "SPOT")), 1.0)
    assert len(c.pending_ids) == MAX_PENDING


def test_stop_ends_everything() -> None:
    c = core()
    live(c)
    assert c.stop(1.0) == [SetState(State.STOPPED)]
    assert c.tick(100.0) == [] and c.wake_at is None and c.stop(2.0) == []


# -- random event sequences ---------------------------------------------------------------------------

SYMBOLS = [spec(s) for s in "ABCDE"]


class CoreMachine(RuleBasedStateMachine):
    """Random events, the invariants the shell relies on checked after each."""

    def __init__(self) -> None:
        super().__init__()
        self.core = SessionCore("nonbook", "wss://x", Settings(max_retries=None), itertools.count(1),
                                rng=lambda: 0.5)
        self.now = 0.0
        self.conns = itertools.count(1)
        self.ids_seen: set[int] = set()
        self.removed: dict[ChannelSpec, FakeSub] = {}
        self.subs: dict[ChannelSpec, FakeSub] = {}
        self.sent_on: dict[int, int] = {}     # request id -> connection
        self.heard_on: set[int] = set()       # connections the server was heard on
        self.ready_conn: int | None = None
        self.apply(self.core.start(0.0))

    def apply(self, actions: list[Any]) -> None:
        for action in actions:
            if isinstance(action, Send):
                rid = action.request.id
                assert rid not in self.ids_seen, "a request id was reused"
                self.ids_seen.add(rid)
                self.sent_on[rid] = action.conn
                assert action.conn == self.core.conn
                if action.request.method == SUBSCRIBE:
                    for s in action.request.specs:
                        sub = self.subs.get(s)
                        assert sub is not None, "a removed subscription was sent again"
            elif isinstance(action, SetState) and action.state is State.READY:
                assert self.core.conn in self.heard_on, "READY before anything was heard"
                self.ready_conn = self.core.conn

    @rule(dt=st.floats(0.0, 20.0), blocked=st.booleans())
    def tick(self, dt: float, blocked: bool) -> None:
        self.now += dt
        self.apply(self.core.tick(self.now, reader_blocked=blocked))

    @precondition(lambda self: self.core.conn is None and not self.core.done)
    @rule()
    def connect(self) -> None:
        if self.core.wake_at is not None:
            self.now = max(self.now, self.core.wake_at)
            self.apply(self.core.tick(self.now))
        self.apply(self.core.connected(next(self.conns), self.now))

    @precondition(lambda self: self.core.dialing)
    @rule()
    def dial_fails(self) -> None:
        self.apply(self.core.failed_to_connect(self.now, "refused"))

    @precondition(lambda self: self.core.conn is not None)
    @rule(kind=st.sampled_from(list(Heard)))
    def heard(self, kind: Heard) -> None:
        conn = self.core.conn
        assert conn is not None
        if kind in (Heard.FRAME, Heard.PONG):
            self.heard_on.add(conn)
        self.apply(self.core.heard(conn, kind, self.now, self.now))

    @precondition(lambda self: self.core.conn is not None)
    @rule(data=st.data(), fail=st.booleans())
    def answer(self, data: st.DataObject, fail: bool) -> None:
        pending = self.core.pending_ids
        conn = self.core.conn
        assert conn is not None
        if not pending:
            return
        rid = data.draw(st.sampled_from(pending))
        if self.sent_on[rid] == conn:
            self.heard_on.add(conn)
        if fail and rid == min(pending):
            fail = False  # keep auth rejections rare: the machine would stop at once
        self.apply(self.core.answer(conn, rejected(rid) if fail else ok(rid), self.now))

    @precondition(lambda self: self.core.conn is not None)
    @rule()
    def lose(self) -> None:
        conn = self.core.conn
        assert conn is not None
        self.apply(self.core.lost(conn, self.now, "reset"))
        assert self.core.pending_ids == [], "pending requests outlived their connection"

    @rule(symbol=st.sampled_from(SYMBOLS))
    def add(self, symbol: ChannelSpec) -> None:
        sub = FakeSub(symbol)
        if symbol not in self.subs:
            self.subs[symbol] = sub
        self.apply(self.core.add(sub, self.now))

    @rule(symbol=st.sampled_from(SYMBOLS))
    def remove(self, symbol: ChannelSpec) -> None:
        self.subs.pop(symbol, None)
        self.apply(self.core.remove(symbol, self.now))

    @invariant()
    def deadlines_are_finite_and_ahead(self) -> None:
        wake = self.core.wake_at
        assert wake is None or wake < float("inf")

    @invariant()
    def pending_belong_to_the_current_connection(self) -> None:
        for rid in self.core.pending_ids:
            assert self.sent_on[rid] == self.core.conn

    @invariant()
    def ready_only_with_the_server_heard(self) -> None:
        if self.core.state is State.READY:
            assert self.core.conn in self.heard_on


TestCoreMachine = CoreMachine.TestCase
TestCoreMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


# -- a connection's subscription limit: hand the batch back, or split it, or reject (issue 23) -------

def limited(request_id: int, limit: int | None = None) -> dict[str, Any]:
    data = {"limit": limit} if limit is not None else {}
    return {"id": request_id, "error": {"code": 4290, "message": "SUBSCRIPTION_LIMIT", "data": data}}


def sharded(most: int = 2) -> SessionCore:
    return SessionCore("nonbook", "wss://x", Settings(ping_interval=None), itertools.count(1),
                       rng=lambda: 0.5, packer=at_most(most), sharded=True)


def batches(c: SessionCore, subs: list[FakeSub]) -> list[Send]:
    """Register ``subs``, then connect and authenticate: the packed subscribes of the replay."""
    for sub in subs:
        c.add(sub, 0.0)
    return sends(live(c), SUBSCRIBE)


def test_a_full_connection_hands_the_batch_back_with_what_it_holds() -> None:
    c = sharded()
    subs = [FakeSub(spec(s)) for s in "ABCD"]
    first, second = batches(c, subs)
    assert first.request.specs == (subs[0].spec, subs[1].spec)
    c.answer(1, ok(first.request.id), 0.2)
    out = c.answer(1, limited(second.request.id), 0.3)
    assert [a for a in out if isinstance(a, Overflow)] == [Overflow((subs[2], subs[3]), 2)]  # it holds 2, no limit said
    assert not [a for a in out if isinstance(a, (Settle, Report))]  # not a rejection: no error anywhere
    assert [sub.spec for sub in c.subs()] == [subs[0].spec, subs[1].spec]  # forgotten here
    assert c.remove(subs[2].spec, 0.4) == []  # it never held it: no unsubscribe
    assert states(out) == [State.READY]


def test_the_servers_stated_limit_is_the_capacity() -> None:
    c = sharded()
    subs = [FakeSub(spec(s)) for s in "ABCD"]
    first, second = batches(c, subs)
    c.answer(1, ok(first.request.id), 0.2)
    assert Overflow((subs[2], subs[3]), 2, 3) in c.answer(1, limited(second.request.id, limit=3), 0.3)


def test_refused_on_an_empty_connection_a_batch_is_split_and_a_lone_channel_rejected() -> None:
    """A server whose limit is below a batch (or that lies) costs requests, never a shard loop."""
    c = sharded(most=4)
    subs = [FakeSub(spec(s)) for s in "ABCD"]
    (batch,) = batches(c, subs)
    out = c.answer(1, limited(batch.request.id), 0.2)
    assert not [a for a in out if isinstance(a, Overflow)]
    halves = sends(out + c.tick(0.2), SUBSCRIBE)
    assert [h.request.specs for h in halves] == [(subs[0].spec, subs[1].spec), (subs[2].spec, subs[3].spec)]
    c.answer(1, ok(halves[0].request.id), 0.3)  # the first half fits: now the connection holds 2
    assert Overflow((subs[2], subs[3]), 2) in c.answer(1, limited(halves[1].request.id), 0.3)
    lone = sharded()
    live(lone)
    (one,) = sends(lone.add(FakeSub(spec("Z")), 0.1), SUBSCRIBE)
    out = lone.answer(1, limited(one.request.id), 0.2)
    (error,) = [a.error for a in out if isinstance(a, Report)]
    assert isinstance(error, SubscriptionError) and error.code == 4290


def test_an_unsharded_core_rejects_each_channel_over_the_limit() -> None:
    c = paced(most=2)
    subs = [FakeSub(spec(s)) for s in "ABCD"]
    first, second = batches(c, subs)
    c.answer(1, ok(first.request.id), 0.2)
    out = c.answer(1, limited(second.request.id), 0.3)
    assert [a.sub for a in out if isinstance(a, Settle) and a.state == REJECTED] == [subs[2], subs[3]]
    assert not [a for a in out if isinstance(a, Overflow)]


def released(actions: list[Any]) -> list[Any]:
    return [sub for a in actions if isinstance(a, Released) for sub in a.subs]


def test_a_removed_subscription_is_released_only_once_off_the_connection() -> None:
    """A shard keeps a removed channel's room until its unsubscribe is settled (shards.py): so
    the core says when the server no longer sends it there."""
    c = sharded()
    a, b, q = FakeSub(spec("A")), FakeSub(spec("B")), FakeSub(spec("Q"))
    (batch,) = batches(c, [a, b])
    c.answer(1, ok(batch.request.id), 0.1)
    out = c.remove(a.spec, 0.2)
    (unsub,) = sends(out, UNSUBSCRIBE)
    assert released(out) == []  # on its way: the server may still send A here
    assert released(c.answer(1, ok(unsub.request.id), 0.3)) == [a]
    out = c.remove(b.spec, 0.4)
    (unsub_b,) = sends(out, UNSUBSCRIBE)
    assert released(out) == []
    assert released(c.answer(1, rejected(unsub_b.request.id), 0.5)) == [b]  # refused: not held either way
    c.add(q, 0.6)
    assert released(c.lost(1, 0.7, "reset")) == []  # Q is registered: nothing to release
    assert released(c.remove(q.spec, 0.8)) == [q]  # no connection: the replay leaves it out


def test_unsubscribes_queued_or_unanswered_are_released_when_the_connection_goes() -> None:
    c = SessionCore("nonbook", "wss://x", Settings(ping_interval=None), itertools.count(1), rng=lambda: 0.5,
                    packer=at_most(1), pacer=BucketPacer(1.0), sharded=True)
    subs = [FakeSub(spec(s)) for s in "ABC"]
    for sub in subs:
        c.add(sub, 0.0)
    actions = live(c)
    for t in range(1, 4):
        actions += c.tick(float(t))
    for send in sends(actions, SUBSCRIBE):
        c.answer(1, ok(send.request.id), 3.5)
    out = c.remove(subs[0].spec, 4.0) + c.remove(subs[1].spec, 4.0)  # one sent, one queued
    assert len(sends(out, UNSUBSCRIBE)) == 1 and released(out) == []
    assert released(c.lost(1, 4.1, "reset")) == subs[:2]


def test_an_unsharded_core_says_nothing_of_releases() -> None:
    c = paced()
    sub = FakeSub(spec("A"))
    (batch,) = batches(c, [sub])
    c.answer(1, ok(batch.request.id), 0.1)
    (unsub,) = sends(c.remove(sub.spec, 0.2), UNSUBSCRIBE)
    assert released(c.answer(1, ok(unsub.request.id), 0.3)) == []


SHARD_SYMBOLS = [spec(s) for s in "ABCDEF"]


def _limited(rid: int) -> dict[str, Any]:
    return {"id": rid, "error": {"code": 4290, "message": "SUBSCRIPTION_LIMIT"}}


def _rate_limited(rid: int) -> dict[str, Any]:
    return {"id": rid, "error": {"code": 429, "message": "TOO_MANY_REQUESTS", "data": {"retry_after": 0.5}}}


class ReleaseMachine(RuleBasedStateMachine):
    """A sharded core under random events: every removed subscription is released exactly once
    (subscribed again meanwhile or not), and none is left unreleased once its connection is gone;
    else a shard would keep its room for good (shards.py)."""

    def __init__(self) -> None:
        super().__init__()
        self.core = SessionCore("nonbook", "wss://x", Settings(ping_interval=None), itertools.count(1),
                                rng=lambda: 0.5, packer=at_most(2), pacer=BucketPacer(2.0), sharded=True)
        self.now = 0.0
        self.conns = itertools.count(1)
        self.in_core: dict[Any, FakeSub] = {}   # spec -> sub the core holds
        self.leaving: set[int] = set()          # ids of removed subs awaiting Released
        self.objs: dict[int, FakeSub] = {}
        self.reclaimed: set[int] = set()        # removed, then subscribed again: a release is moot
        self.auths: set[int] = set()
        self.apply(self.core.start(0.0))

    def apply(self, actions: list[Any]) -> None:
        for a in actions:
            if isinstance(a, Overflow):
                for moved in a.subs:
                    assert self.in_core.pop(moved.spec) is moved
            elif isinstance(a, Released):
                for sub in a.subs:
                    assert id(sub) in self.leaving or id(sub) in self.reclaimed, ("released twice or never removed", sub)
                    self.leaving.discard(id(sub))
                    self.reclaimed.discard(id(sub))
            elif isinstance(a, Send) and a.request.method == "auth":
                self.auths.add(a.request.id)
            elif isinstance(a, GiveUp):
                raise AssertionError("gave up")  # auth is always answered ok here

    @rule(dt=st.floats(0.0, 5.0))
    def tick(self, dt: float) -> None:
        self.now += dt
        self.apply(self.core.tick(self.now))

    @precondition(lambda self: self.core.conn is None and not self.core.done)
    @rule()
    def connect(self) -> None:
        if self.core.wake_at is not None:
            self.now = max(self.now, self.core.wake_at)
            self.apply(self.core.tick(self.now))
        if self.core.dialing:
            self.apply(self.core.connected(next(self.conns), self.now))

    @precondition(lambda self: self.core.conn is not None)
    @rule(data=st.data(), kind=st.sampled_from(["ok", "bad", "limit", "rate"]))
    def answer(self, data: st.DataObject, kind: str) -> None:
        pending = self.core.pending_ids
        if not pending:
            return
        rid = data.draw(st.sampled_from(pending))
        if rid in self.auths:
            kind = "ok"
        msg = {"ok": ok, "bad": rejected, "limit": _limited, "rate": _rate_limited}[kind](rid)
        conn = self.core.conn
        assert conn is not None
        self.apply(self.core.answer(conn, msg, self.now))

    @precondition(lambda self: self.core.conn is not None)
    @rule()
    def lose(self) -> None:
        conn = self.core.conn
        assert conn is not None
        self.apply(self.core.lost(conn, self.now, "reset"))
        assert not self.reclaimed, [self.objs[i].spec for i in self.reclaimed]
        assert not self.leaving, [self.objs[i].spec for i in self.leaving]

    @rule(symbol=st.sampled_from(SHARD_SYMBOLS))
    def add(self, symbol: Any) -> None:
        if symbol in self.in_core:
            return
        sub = FakeSub(symbol)
        for old in [i for i in self.leaving if self.objs[i].spec == symbol]:
            self.leaving.discard(old)
            self.reclaimed.add(old)
        self.objs[id(sub)] = sub
        self.in_core[symbol] = sub
        self.apply(self.core.add(sub, self.now))

    @rule(symbol=st.sampled_from(SHARD_SYMBOLS))
    def remove(self, symbol: Any) -> None:
        sub = self.in_core.pop(symbol, None)
        if sub is None:
            return
        self.leaving.add(id(sub))
        self.apply(self.core.remove(symbol, self.now))

    @rule(dt=st.floats(100.0, 200.0))
    def long_wait(self, dt: float) -> None:
        self.now += dt
        self.apply(self.core.tick(self.now))


TestReleaseMachine = ReleaseMachine.TestCase
TestReleaseMachine.settings = settings(max_examples=200, stateful_step_count=60, deadline=None)


def test_a_connection_closed_as_full_hands_back_what_it_had_not_granted() -> None:
    """A server that closes the connection (its reason saying so) instead of answering "over the
    limit": what was granted before is replayed on the next connection, the rest is handed back
    (else every replay would overflow again and the shard never be READY)."""
    c = sharded()
    subs = [FakeSub(spec(s)) for s in "ABCD"]
    first, _ = batches(c, subs)
    c.answer(1, ok(first.request.id), 0.2)
    out = c.lost(1, 0.3, "closed by the peer (1008 'too many subscriptions')", 1008,
                 close_reason="too many subscriptions")
    assert [a for a in out if isinstance(a, Overflow)] == [Overflow((subs[2], subs[3]), 2)]  # 1008 is no limit
    assert states(out) == [State.DISCONNECTED] and [s.spec for s in c.subs()] == [subs[0].spec, subs[1].spec]
    c.tick(10.0)
    (replay,) = sends(live(c, conn=2, now=10.0), SUBSCRIBE)
    assert replay.request.specs == (subs[0].spec, subs[1].spec)
    other = sharded()
    for sub in subs:
        other.add(sub, 0.0)
    live(other)  # nothing granted yet: nothing to learn from, the close is a close
    assert not [a for a in other.lost(1, 0.3, "closed", 1008, close_reason="too many subscriptions")
                if isinstance(a, Overflow)]


def test_shed_hands_back_unsent_subscribes_beyond_a_capacity_newest_first() -> None:
    """Learned elsewhere that a connection holds 4: of 10 registered, those not yet sent beyond
    4 go back (not sent only to be refused); those in flight stay, their answers decide."""
    c = sharded(most=2)
    subs = [FakeSub(spec(s)) for s in "ABCDEFGHIJ"]
    for sub in subs:
        c.add(sub, 0.0)
    (moved,) = [a for a in c.shed(4, 0.0) if isinstance(a, Overflow)]  # not live yet: none sent
    assert moved == Overflow(tuple(subs[4:]), 0)
    assert [s.spec for s in c.subs()] == [s.spec for s in subs[:4]]
    assert [s.request.specs for s in sends(live(c), SUBSCRIBE)] == [
        (subs[0].spec, subs[1].spec), (subs[2].spec, subs[3].spec)]
    assert c.shed(4, 0.1) == [] and c.shed(2, 0.1) == []  # the rest is in flight: nothing to shed
    paced_core = SessionCore("nonbook", "wss://x", Settings(ping_interval=None), itertools.count(1),
                             rng=lambda: 0.5, packer=at_most(2), pacer=BucketPacer(1.0), sharded=True)
    live(paced_core)
    more = [FakeSub(spec(s)) for s in "KLMNOP"]
    sent = sends([a for sub in more for a in paced_core.add(sub, 0.1)], SUBSCRIBE)  # the bucket: one more
    assert [s.request.specs for s in sent] == [(more[0].spec,)]
    (moved,) = [a for a in paced_core.shed(3, 0.1) if isinstance(a, Overflow)]
    assert moved.subs == tuple(more[3:])  # K in flight, L and M kept in the outbox
    assert [i.sub for i in paced_core.outbox] == [more[1], more[2]]
    assert paced_core.shed(3, 0.2) == [] and SessionCore(
        "nonbook", "wss://x", Settings(), itertools.count(1)).shed(0, 0.0) == []  # unsharded: never
