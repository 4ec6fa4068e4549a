"""``kiyotaka-ws demo``: a synthetic market on a local FakeKiyotakaServer, watched by a real client.

On a terminal it draws one frame in the alternate screen, sized to the terminal (80x24 and up:
the ladder's depth and the tape's length follow the height, every line is cut to the width, and
the last row gets no newline, so nothing ever scrolls); it restores the screen on exit and on
Ctrl-C, then prints the summary. ``NO_COLOR`` (https://no-color.org) turns colours off.
Otherwise (``--plain`` or a pipe) it prints one line per event.

The market is coherent: buys print at the best ask and sells at the best bid of the last book
published, so the tape never shows a buy below the bid.
"""

from __future__ import annotations

import collections
import contextlib
import os
import random
import re
import shutil
import threading
import time
from collections.abc import Iterator
from typing import Any, TextIO

from ..client import KiyotakaClient
from ..errors import KiyotakaError
from ..events import BookSnapshot, Event, FundingRate, Liquidation, OpenInterest, Trade
from ..status import ConnectionStats, ConnectionStatus
from .console import format_event, run_for

EXCHANGE, SYMBOL, BLOCK = "BINANCE_FUTURES", "BTCUSDT", 10.0
_GREEN, _RED, _DIM, _BOLD, _RESET = "\x1b[32m", "\x1b[31m", "\x1b[2m", "\x1b[1m", "\x1b[0m"
_ALT_SCREEN_ON, _ALT_SCREEN_OFF = "\x1b[?1049h\x1b[?25l", "\x1b[?25h\x1b[?1049l"  # also hides the cursor
_SGR = re.compile("\x1b\\[[0-9;]*m")


def _series(kind: str, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "exchange": EXCHANGE, "symbol": SYMBOL, "normalizedSymbol": "BTC-USDT",
            "coin": "BTC", "category": "PERPETUAL", **extra}


def _ts(now_ns: int) -> dict[str, int]:
    return {"seconds": now_ns // 10**9, "nanoseconds": now_ns % 10**9}


class Market:
    """A random-walk market publishing every channel the demo shows, in its own (joined) thread."""

    def __init__(self, server: Any, seed: int | None = None, drop_after: float | None = None) -> None:
        self.server = server
        self.rng = random.Random(seed)
        self.mid = 90_000.0
        self.drop_after = drop_after
        self.dropped_at: float | None = None
        self._trade_id = 7_126_482_260
        self._quote = self._best(self.mid)  # (bid, ask) of the last book published: trades print there
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kiyotaka-ws-demo-market")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        started = time.monotonic()
        tick = 0
        while not self._stop.wait(0.05):
            tick += 1
            now = time.time_ns()
            self.mid = max(1000.0, self.mid + self.rng.gauss(0, 6))
            points: list[dict[str, Any]] = [self._trade(now) for _ in range(self.rng.randint(0, 3))]
            if tick % 5 == 0:
                points.append(self._book(now))
            if tick % 20 == 0:
                points.append({"series": _series("OPEN_INTEREST"),
                               "openInterest": {"openInterest": round(72_450 + self.rng.gauss(0, 40), 2),
                                                "timestamp": _ts(now)}})
            if tick % 40 == 0:
                rate = 0.0001 + self.rng.gauss(0, 0.00002)
                points.append({"series": _series("FUNDING_RATE"),
                               "fundingRate": {"fundingRate": rate, "predictedFundingRate": rate * 1.1,
                                               "timestamp": _ts(now)}})
            if tick % 10 == 0:
                points.append(self._volume_profile(now))
            if self.rng.random() < 0.02:
                side = self.rng.choice(["BUY", "SELL"])
                points.append({"series": _series("LIQUIDATION", side=side),
                               "liquidation": {"id": str(self.rng.randint(1, 10**9)),
                                               "price": round(self.mid, 1),
                                               "amount": round(self.rng.uniform(0.05, 3), 3),
                                               "timestamp": _ts(now)}})
            if points:
                self.server.publish(points)
            if self.drop_after and self.dropped_at is None and time.monotonic() - started >= self.drop_after:
                self.dropped_at = time.monotonic()
                self.server.drop_connections()  # a fault on purpose: watch the client recover

    @staticmethod
    def _best(mid: float) -> tuple[float, float]:
        best_bid = (mid // BLOCK) * BLOCK
        return best_bid, best_bid + BLOCK

    def _trade(self, now: int) -> dict[str, Any]:
        self._trade_id += 1
        side = self.rng.choice(["BUY", "SELL"])
        bid, ask = self._quote
        price = ask if side == "BUY" else bid  # a buyer lifts the offer, a seller hits the bid
        amount = round(self.rng.expovariate(1 / 0.05), 4)
        return {"series": _series("TRADE", side=side),
                "trade": {"id": str(self._trade_id), "price": price, "amount": amount, "timestamp": _ts(now)}}

    def _volume_profile(self, now: int) -> dict[str, Any]:
        base = (self.mid // 25) * 25
        profile: list[float] = []
        for level in range(-8, 9):
            weight = 10 / (1 + abs(level))
            profile += [base + level * 25, round(self.rng.uniform(0.5, 1.5) * weight, 3),
                        round(self.rng.uniform(0.5, 1.5) * weight, 3)]
        return {"series": _series("VOLUME_PROFILE_AGG", blockSize=25),
                "volumeProfileAggregation": {"profile": profile, "timestamp": _ts(now)}}

    def _book(self, now: int) -> dict[str, Any]:
        best_bid, _ = self._quote = self._best(self.mid)
        bids, asks = [], []
        for level in range(12):
            bids += [best_bid - level * BLOCK, round(self.rng.uniform(0.5, 6) * (1 + level / 4), 3)]
            asks += [best_bid + (level + 1) * BLOCK, round(self.rng.uniform(0.5, 6) * (1 + level / 4), 3)]
        return {"series": _series("BLOCK_BOOK_SNAPSHOT", blockSize=BLOCK),
                "blockBookSnapshot": {"bids": bids, "asks": asks, "timestamp": _ts(now)}}


class View:
    """What the demo shows. Handlers run on the client's dispatcher threads, so state is locked."""

    def __init__(self, out: TextIO, seconds: float, redraw: bool, color: bool = True) -> None:
        self.out = out
        self.color = color
        self.seconds = seconds
        self.redraw = redraw
        self.started = time.monotonic()
        self.lock = threading.Lock()
        self.tape: collections.deque[Trade] = collections.deque(maxlen=10)
        self.book: BookSnapshot | None = None
        self.funding: FundingRate | None = None
        self.open_interest: OpenInterest | None = None
        self.liquidation: Liquidation | None = None
        self.counts: dict[str, int] = collections.Counter()
        self.states: dict[str, str] = {}
        self.notes: collections.deque[str] = collections.deque(maxlen=3)
        self._last_draw = 0.0
        self._last_book_line = 0.0

    def on_event(self, event: Event) -> None:
        with self.lock:
            self.counts[event.channel.value] += 1
            if isinstance(event, Trade):
                self.tape.appendleft(event)
            elif isinstance(event, BookSnapshot):
                self.book = event
            elif isinstance(event, FundingRate):
                self.funding = event
            elif isinstance(event, OpenInterest):
                self.open_interest = event
            elif isinstance(event, Liquidation):
                self.liquidation = event
            if self.redraw:
                self._maybe_draw()
            elif not isinstance(event, BookSnapshot) or time.monotonic() - self._last_book_line >= 1:
                if isinstance(event, BookSnapshot):
                    self._last_book_line = time.monotonic()
                self.out.write(format_event(event) + "\n")

    def on_status(self, status: ConnectionStatus) -> None:
        with self.lock:
            self.states[status.family] = status.state.value
            reason = f" ({status.reason})" if status.reason else ""
            self._note(f"{status.family} {status.state.value}{reason}")

    def on_error(self, error: KiyotakaError) -> None:
        with self.lock:
            self._note(f"{type(error).__name__}: {error}")

    def _note(self, text: str) -> None:
        line = f"[{time.monotonic() - self.started:5.1f}s] {text}"
        self.notes.append(line)
        if not self.redraw:
            self.out.write(line + "\n")

    def _maybe_draw(self) -> None:
        now = time.monotonic()
        if now - self._last_draw < 0.2:
            return
        self._last_draw = now
        width, height = shutil.get_terminal_size((80, 24))
        lines = [_fit(line, width, self.color) for line in self._panel(height)[:height]]
        # Home, each row cleared to its end, nothing below: no newline after the last row, no scroll.
        self.out.write("\x1b[H" + "\n".join(line + "\x1b[K" for line in lines) + "\x1b[J")
        self.out.flush()

    def _panel(self, height: int = 24) -> list[str]:
        """The frame for a terminal ``height`` rows tall (at most ``height`` lines; 24 rows: 22)."""
        elapsed = time.monotonic() - self.started
        states = " ".join(f"{fam} {state}" for fam, state in sorted(self.states.items()))
        title = f"{_BOLD}kiyotaka-ws demo{_RESET} {SYMBOL} {elapsed:4.1f}/{self.seconds:.0f}s"
        lines = [f"{title}  {_DIM}{states}{_RESET}"]
        depth = max(1, min(6, (height - 10) // 2))  # 11 rows besides the ladder's 2 x depth
        left: list[str] = [f"{_BOLD}{'ORDER BOOK':<30}{_RESET}"]
        if self.book:
            for level in reversed(self.book.asks[:depth]):
                left.append(f"{_RED}ask {level.price:>12,.1f} {level.size:>9.3f}{_RESET}")
            left.append(f"{_DIM}--- spread {self.book.spread or 0:,.1f}  mid {self.book.mid or 0:,.1f}{_RESET}")
            for level in self.book.bids[:depth]:
                left.append(f"{_GREEN}bid {level.price:>12,.1f} {level.size:>9.3f}{_RESET}")
        right: list[str] = [f"{_BOLD}TRADE TAPE{_RESET}"]
        for trade in list(self.tape)[:2 * depth + 1]:
            color = _GREEN if trade.side == "BUY" else _RED
            clock = trade.datetime.strftime("%H:%M:%S") + "Z" if trade.datetime else ""
            right.append(f"{clock} {color}{(trade.side or '?'):<4} {trade.amount:>8.4f} @ {trade.price:,.1f}{_RESET}")
        for i in range(max(len(left), len(right))):
            a = left[i] if i < len(left) else ""
            b = right[i] if i < len(right) else ""
            pad = 30 + (len(a) - _visible_len(a))
            lines.append(f"  {a:<{pad}}   {b}")
        extras = []
        if self.funding and self.funding.rate is not None:
            extras.append(f"funding {self.funding.rate:.4%}")
        if self.open_interest:
            extras.append(f"open interest {self.open_interest.open_interest:,.2f}")
        if self.liquidation:
            extras.append(f"last liquidation {self.liquidation.side or '?'} {self.liquidation.amount} "
                          f"@ {self.liquidation.price:,.1f}")
        lines += ["", "  " + "   ".join(extras), *("  " + n for n in self.notes)]
        return lines

    def summary(self, stats: dict[str, ConnectionStats], dropped_at: float | None) -> str:
        elapsed = time.monotonic() - self.started
        counts = ", ".join(f"{name} {count}" for name, count in sorted(self.counts.items())) or "none"
        reconnects = sum(s.reconnects for s in stats.values())
        lines = [f"kiyotaka-ws demo finished after {elapsed:.1f}s",
                 f"  events per channel: {counts}",
                 f"  reconnects: {reconnects}" + (" (one connection drop injected on purpose)" if dropped_at else ""),
                 "  frames: {}, decode errors: {}, handler errors: {}, dropped: {}".format(
                     *(sum(getattr(s, name) for s in stats.values())
                       for name in ("frames", "decode_errors", "handler_errors", "dropped")))]
        return "\n".join(lines) + "\n"


def _visible_len(text: str) -> int:
    return len(_SGR.sub("", text))


def _fit(line: str, width: int, color: bool) -> str:
    """``line`` cut to ``width`` visible columns (colour codes kept, or all removed without colour)."""
    if not color:
        return _SGR.sub("", line)[:width]
    out, visible = [], 0
    for part in re.split(f"({_SGR.pattern})", line):
        if _SGR.fullmatch(part):
            out.append(part)
        else:
            part = part[:max(0, width - visible)]
            visible += len(part)
            out.append(part)
    return "".join(out) + _RESET


def use_color(environ: Any = None) -> bool:
    """False when ``NO_COLOR`` is set to anything non-empty (https://no-color.org)."""
    return not (os.environ if environ is None else environ).get("NO_COLOR")


@contextlib.contextmanager
def fake_market(seed: int | None = None) -> Iterator[dict[str, Any]]:
    """A local FakeKiyotakaServer with the demo's synthetic market; yields ``KiyotakaClient`` kwargs."""
    from ..testing import FakeKiyotakaServer  # needs the "testing" extra

    with FakeKiyotakaServer(api_key="demo-key") as server:
        market = Market(server, seed=seed)
        market.start()
        try:
            yield server.client_kwargs()
        finally:
            market.stop()


def run_demo(seconds: float, out: TextIO, plain: bool = False, seed: int | None = None) -> int:
    """Run the offline demo for ``seconds`` (Ctrl-C ends it early). Returns the exit code."""
    from ..testing import FakeKiyotakaServer  # needs the "testing" extra

    redraw = not plain and out.isatty()
    view = View(out, seconds, redraw, color=use_color())
    with FakeKiyotakaServer(api_key="demo-key") as server:
        if not redraw:
            out.write(f"kiyotaka-ws demo: fake Kiyotaka server on 127.0.0.1:{server.port}, real client, "
                      f"{seconds:.0f}s (a connection drop is injected half way)\n")
        client = KiyotakaClient("demo-key", book_url=server.book_url, nonbook_url=server.nonbook_url,
                                ping_interval=5, ping_timeout=5, backoff_initial=0.2, backoff_max=2)
        for register in (client.on_trade, client.on_liquidation, client.on_funding_rate, client.on_open_interest):
            register(view.on_event, exchange=EXCHANGE, symbol=SYMBOL)
        client.on_book(view.on_event, exchange=EXCHANGE, symbol=SYMBOL, block_size=BLOCK, max_depth=12)
        client.on_status(view.on_status)
        client.on_error(view.on_error)
        market = Market(server, seed=seed, drop_after=seconds / 2 if seconds >= 4 else None)
        market.start()
        interrupted = False
        if redraw:
            out.write(_ALT_SCREEN_ON)
        try:
            run_for(client, seconds)
        except KeyboardInterrupt:
            interrupted = True  # Ctrl-C ends the demo early; the summary is still shown
        finally:
            market.stop()
            client.stop()
            if redraw:
                with view.lock:  # no frame drawn after the screen is restored
                    view.redraw = False
                    out.write(_ALT_SCREEN_OFF)
                    out.flush()
    out.write(view.summary(client.stats(), market.dropped_at))
    out.flush()
    return 130 if interrupted else 0
