"""``kiyotaka-ws demo`` in a real terminal: tmux, an 80x24 pane, the real command.

Skipped when tmux is not installed (``apt-get install tmux``). Each test runs its own tmux server
(``-L`` with a unique socket name) and kills only that one.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


class Pane:
    def __init__(self, socket: str) -> None:
        self.socket = socket

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout

    def lines(self, *flags: str) -> list[str]:
        return self.tmux("capture-pane", "-p", "-J", *flags, "-t", "demo").split("\n")

    def value(self, name: str) -> str:
        return self.tmux("display-message", "-p", "-t", "demo", f"#{{{name}}}").strip()

    def wait_for(self, predicate: object, timeout: float = 20) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():  # type: ignore[operator]
                return True
            time.sleep(0.1)
        return False


@pytest.fixture
def demo_pane() -> Iterator[callable]:  # type: ignore[valid-type]
    socket = f"kiyotaka-ws-test-{uuid.uuid4().hex[:8]}"
    pane = Pane(socket)

    def start(seconds: float, **env: str) -> Pane:
        exports = " ".join(f"{k}={v}" for k, v in {"PYTHONPATH": str(ROOT), "TERM": "xterm-256color", **env}.items())
        command = f"env {exports} {sys.executable} -m kiyotaka_ws demo --seconds {seconds}; sleep 30"
        subprocess.run(["tmux", "-L", socket, "-f", os.devnull, "new-session", "-d", "-s", "demo", "-x", "80",
                        "-y", "24", command], check=True, timeout=10, cwd=ROOT)
        return pane

    try:
        yield start
    finally:
        subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True, check=False, timeout=10)


def test_demo_fits_80x24_in_the_alternate_screen_and_restores_it(demo_pane):
    pane = demo_pane(4)
    assert pane.wait_for(lambda: "ORDER BOOK" in "\n".join(pane.lines()) and "ask " in "\n".join(pane.lines()))
    assert pane.value("alternate_on") == "1"
    for _ in range(5):  # several redraws
        frame = pane.lines()
        assert all(len(line) <= 80 for line in frame), [line for line in frame if len(line) > 80]
        assert frame[0].startswith("kiyotaka-ws demo"), frame  # the top row stays the title: nothing scrolled
        assert pane.value("history_size") == "0"
        time.sleep(0.3)
    assert pane.wait_for(lambda: "events per channel" in "\n".join(pane.lines()), timeout=20)
    assert pane.value("alternate_on") == "0"  # restored, the summary on the normal screen
    screen = "\n".join(pane.lines())
    assert "ORDER BOOK" not in screen and "kiyotaka-ws demo finished" in screen


def test_demo_honours_no_color(demo_pane):
    pane = demo_pane(3, NO_COLOR="1")
    assert pane.wait_for(lambda: "ORDER BOOK" in "\n".join(pane.lines()))
    coloured = "\n".join(pane.lines("-e"))
    assert "\x1b[3" not in coloured and "\x1b[1m" not in coloured, coloured[:300]


def test_demo_colours_without_no_color(demo_pane):
    pane = demo_pane(3)
    assert pane.wait_for(lambda: "\x1b[" in "\n".join(pane.lines("-e")))


def test_ctrl_c_restores_the_terminal(demo_pane):
    pane = demo_pane(30)
    assert pane.wait_for(lambda: "ORDER BOOK" in "\n".join(pane.lines()))
    pane.tmux("send-keys", "-t", "demo", "C-c")
    assert pane.wait_for(lambda: "events per channel" in "\n".join(pane.lines()), timeout=20)
    assert pane.value("alternate_on") == "0"


class _Collect:
    """Stands where the FakeKiyotakaServer stands for ``Market``: keeps what it publishes."""

    def __init__(self) -> None:
        self.points: list[dict[str, object]] = []

    def publish(self, points: list[dict[str, object]]) -> None:
        self.points.extend(points)

    def drop_connections(self) -> None:  # pragma: no cover - no drop asked for here
        pass


def test_demo_market_trades_at_the_book_buys_at_the_ask_sells_at_the_bid():
    from kiyotaka_ws._cli.demo import Market

    server = _Collect()
    market = Market(server, seed=7)
    market.start()
    try:
        deadline = time.monotonic() + 10
        while sum("blockBookSnapshot" in p for p in list(server.points)) < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        market.stop()
    book = None
    checked = 0
    for point in server.points:
        if "blockBookSnapshot" in point:
            book = point["blockBookSnapshot"]
        elif "trade" in point and book is not None:
            side = point["series"]["side"]  # type: ignore[index]
            price = point["trade"]["price"]  # type: ignore[index]
            best = book["asks"][0] if side == "BUY" else book["bids"][0]  # type: ignore[index]
            assert price == best, (side, price, book["bids"][0], book["asks"][0])  # type: ignore[index]
            checked += 1
    assert checked > 5
