"""What the command and the demo share: running a client for a while, SIGTERM as a clean stop, and
one line per event."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator

from ..client import KiyotakaClient
from ..events import (
    BookSnapshot,
    Event,
    FundingRate,
    Liquidation,
    OpenInterest,
    Trade,
    TradeAggregation,
    VolumeProfile,
)

__all__ = ["format_event", "run_for", "sigterm_stops", "terminated"]


# Set by SIGTERM while a command runs: the streaming commands stop cleanly, as on --seconds.
terminated = threading.Event()


@contextlib.contextmanager
def sigterm_stops() -> Iterator[None]:
    """For the command's duration, SIGTERM asks for a clean stop (exit 0) instead of killing it.

    Service managers (systemd, ``docker stop``) send SIGTERM and expect a prompt exit 0; the
    handler only sets an event that ``run_for`` and the relay's loop look at every 0.2 s, so the
    stop itself (recorder flush, relay buffer) runs on the main thread, as on Ctrl-C. Outside the
    main thread (``main`` called from a thread) no handler can be installed and nothing changes.
    """
    terminated.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: terminated.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def format_event(event: Event) -> str:
    """One human-readable line for an event."""
    when = event.datetime.strftime("%H:%M:%S.%f")[:-3] + "Z" if event.datetime else "--:--:--.---Z"  # UTC
    where = f"{event.exchange or '*'}:{event.symbol or event.coin or '?'}"
    if isinstance(event, (Trade, Liquidation)):
        side = event.side.value if event.side else "?"
        kind = "TRADE" if isinstance(event, Trade) else "LIQUIDATION"
        return f"{when} {kind:<11} {where:<24} {side:<4} {event.amount:>12.6g} @ {event.price:,.2f}"
    if isinstance(event, TradeAggregation):
        side = event.side.value if event.side else "?"
        return (f"{when} TRADE_AGG   {where:<24} {side:<4} o={event.open:,.2f} h={event.high:,.2f} "
                f"l={event.low:,.2f} c={event.close:,.2f} v={event.volume:.6g}")
    if isinstance(event, BookSnapshot):
        bid, ask = event.best_bid, event.best_ask
        bid_text = f"{bid.size:.4g} @ {bid.price:,.2f}" if bid else "-"
        ask_text = f"{ask.size:.4g} @ {ask.price:,.2f}" if ask else "-"
        spread = f"{event.spread:,.2f}" if event.spread is not None else "-"
        return (f"{when} BOOK        {where:<24} bid {bid_text}  ask {ask_text}  spread {spread}  "
                f"levels {len(event.bids)}/{len(event.asks)}")
    if isinstance(event, FundingRate):
        rate = f"{event.rate:.6%}" if event.rate is not None else "n/a"
        predicted = f"{event.predicted_rate:.6%}" if event.predicted_rate is not None else "n/a"
        return f"{when} FUNDING     {where:<24} rate {rate}  predicted {predicted}"
    if isinstance(event, OpenInterest):
        return f"{when} OPEN_INT    {where:<24} {event.open_interest:,.2f}"
    if isinstance(event, VolumeProfile):
        poc = max(event.levels, key=lambda lv: lv.buy_volume + lv.sell_volume, default=None)
        poc_text = f"POC {poc.price:,.2f}" if poc else "empty"
        return f"{when} VOL_PROFILE {where:<24} {len(event.levels)} levels  {poc_text}"
    return f"{when} {event.channel.value} {where}"  # pragma: no cover - every channel is handled above


def run_for(client: KiyotakaClient, seconds: float | None) -> bool:
    """Run the client until ``seconds`` pass (when given), it stops, or it fails; returns True on timeout.

    ``run_forever()`` runs on a helper thread while this (main) thread waits in short slices, so
    Ctrl-C is noticed at once whatever the client's threads are doing: it stops the client and
    raises ``KeyboardInterrupt``. SIGTERM (see ``sigterm_stops``) stops the client and returns
    False, like a clean end. A fatal error of the client (``run_forever()`` raised) is raised here.
    """
    failure: list[BaseException] = []

    def _run() -> None:
        try:
            client.run_forever()
        except BaseException as exc:  # noqa: BLE001 - handed over to the main thread
            failure.append(exc)

    runner = threading.Thread(target=_run, name="kiyotaka-ws-cli-run", daemon=True)
    deadline = None if seconds is None else time.monotonic() + seconds
    timed_out = False
    runner.start()
    try:
        while runner.is_alive():
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                timed_out = True
                client.stop()
                break
            if terminated.is_set():
                client.stop()
                break
            runner.join(0.2 if remaining is None else min(remaining, 0.2))
    except KeyboardInterrupt:
        client.stop()
        raise
    finally:
        runner.join(10)
    if failure:
        raise failure[0]
    return timed_out
