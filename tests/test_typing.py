"""The public API type-checks for users: ``mypy --strict`` over every example and the README's code."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed (dev extra)")

# What a user sees with the package installed: its public types, not its internals' own findings
# (mypy does not report errors inside installed packages either). brotli ships no type hints.
CONFIG = """\
[mypy]
strict = True

[mypy-kiyotaka_ws.*]
ignore_errors = True

[mypy-brotli.*]
ignore_missing_imports = True
"""

# Both forms of every registration method; decorated functions keep their own types.
TYPED_USE = '''\
from __future__ import annotations

from typing import Any

from typing_extensions import assert_type

from kiyotaka_ws import (BookSnapshot, ConnectionStatus, FundingRate, KiyotakaClient, KiyotakaError, Liquidation,
                         OpenInterest, Subscription, Trade, TradeAggregation, VolumeProfile)

client = KiyotakaClient("key")


@client.on_trade(exchange="X", symbol="Y")
def trade(event: Trade) -> int:
    return 1


@client.on_trade_agg(exchange="X", symbol="Y", batch_interval="1s")
def trade_agg(event: TradeAggregation) -> None: ...


@client.on_book(exchange="X", symbol="Y", block_size=25, max_depth=10, group_by_coin=True)
def book(event: BookSnapshot) -> None: ...


@client.on_liquidation(exchange="*", symbol="Y")
def liquidation(event: Liquidation) -> None: ...


@client.on_funding_rate(exchange="X", symbol="Y")
def funding(event: FundingRate) -> None: ...


@client.on_open_interest(exchange="X", symbol="Y")
def open_interest(event: OpenInterest) -> None: ...


@client.on_volume_profile(exchange="X", symbol="Y", quote="USD")
def volume_profile(event: VolumeProfile) -> None: ...


@client.subscribe("TRADE_AGG", exchange="X", symbol="Y", params={"batchInterval": "1s"})
def generic(event: TradeAggregation) -> str:
    return ""


@client.on_error
def error(err: KiyotakaError) -> None: ...


@client.on_status
def status(st: ConnectionStatus) -> None: ...




def kept_types(t: Trade, a: TradeAggregation) -> None:  # Any would fail these
    assert_type(trade(t), int)
    assert_type(generic(a), str)
    assert_type(book(BookSnapshot.__new__(BookSnapshot)), None)


assert_type(client.on_book(book, exchange="X", symbol="Y", block_size="0.5"), Subscription)
assert_type(client.on_trade(print, exchange="X", symbol="Y"), Subscription)
assert_type(client.subscribe("TRADE", lambda event: None, exchange="X", symbol="Y"), Subscription)
subs: list[Subscription] = [client.on_trade_agg(trade_agg, exchange="X", symbol="Y"),
                            client.on_liquidation(liquidation, exchange="X", symbol="Y"),
                            client.on_funding_rate(funding, exchange="X", symbol="Y"),
                            client.on_open_interest(open_interest, exchange="X", symbol="Y"),
                            client.on_volume_profile(volume_profile, exchange="X", symbol="Y")]
handlers: list[Any] = [error, status]
'''

# Each line must be an error: a handler for the wrong event, a missing filter, a bad decorator target.
MISTAKES = '''\
from kiyotaka_ws import BookSnapshot, ConnectionStatus, KiyotakaClient, Trade

client = KiyotakaClient("key")


@client.on_book(exchange="X", symbol="Y", block_size=25)
def wrong_event(event: Trade) -> None: ...


@client.on_status
def wrong_status(st: Trade) -> None: ...


client.on_trade(print, exchange="X")
client.on_liquidation(lambda e: None, exchange="X", symbol="Y").wait("soon")
client.on_funding_rate(lambda e: None, exchange=1, symbol="Y")
x: BookSnapshot = client.on_open_interest(print, exchange="X", symbol="Y")
y: ConnectionStatus = client.on_error(print)
'''


def readme_python_blocks() -> list[str]:
    """Every ```python block of the README, in order."""
    text = (ROOT / "README.md").read_text()
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def _mypy(tmp_path: pathlib.Path, files: list[pathlib.Path]) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "mypy.ini"
    config.write_text(CONFIG)
    # No MYPYPATH: mypy must find the package as a user's would, through the install.
    env = {name: value for name, value in os.environ.items() if name != "MYPYPATH"}
    return subprocess.run([sys.executable, "-m", "mypy", "--strict", "--config-file", str(config),
                           "--cache-dir", str(tmp_path / "cache"), "--no-error-summary", "--show-error-codes",
                           *map(str, files)], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300,
                          check=False)


def _installed_from_this_checkout() -> bool:
    """Whether the ``kiyotaka-ws`` installed here is an editable install of this checkout (as .ci/run makes)."""
    import importlib.metadata
    import json

    for dist in importlib.metadata.distributions(name="kiyotaka-ws"):  # the checkout's egg-info has none
        info = json.loads(dist.read_text("direct_url.json") or "{}")
        if info.get("dir_info", {}).get("editable") and info.get("url") == ROOT.as_uri():
            return True
    return False


def test_editable_install_is_visible_to_mypy_outside_the_checkout(tmp_path: pathlib.Path):
    """After the README's ``pip install -e .``, ``mypy --strict bot.py`` elsewhere finds the package.

    setuptools' default editable install is an import hook that mypy cannot see ("Cannot find
    implementation or library stub"); ``package_dir = =.`` in setup.cfg makes it a path entry.
    """
    if not _installed_from_this_checkout():
        pytest.skip("kiyotaka-ws is not installed in editable mode from this checkout (.ci/run does that)")
    (tmp_path / "bot.py").write_text("from kiyotaka_ws import KiyotakaClient, Trade\n\n"
                                     "client = KiyotakaClient()\n"
                                     "ready: bool = client.wait_ready(1.0)\n"
                                     "client.on_trade(lambda t: print(t.price), exchange='X', symbol='Y')\n"
                                     "last: Trade | None = None\n")
    env = {name: value for name, value in os.environ.items() if name not in ("MYPYPATH", "PYTHONPATH")}
    result = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental", "bot.py"],
                            cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_examples_and_readme_pass_mypy_strict(tmp_path: pathlib.Path):
    blocks = readme_python_blocks()
    assert len(blocks) >= 3
    assert "@client.on_book(" in blocks[1] and "@client.on_status" in blocks[1]  # the decorator forms are covered
    files = sorted((ROOT / "examples").glob("*.py"))
    assert len(files) >= 7
    for number, block in enumerate(blocks, 1):
        snippet = tmp_path / f"readme_block_{number}.py"
        snippet.write_text(block)
        files.append(snippet)
    (tmp_path / "typed_use.py").write_text(TYPED_USE)
    files.append(tmp_path / "typed_use.py")
    result = _mypy(tmp_path, files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_catches_misuse(tmp_path: pathlib.Path):
    """The overloads are real checks, not Any: each mistake is reported on its own line."""
    (tmp_path / "mistakes.py").write_text(MISTAKES)
    result = _mypy(tmp_path, [tmp_path / "mistakes.py"])
    assert result.returncode == 1, result.stdout + result.stderr
    lines_with_errors = {int(m) for m in re.findall(r"^[^:\n]+\.py:(\d+): error", result.stdout, flags=re.MULTILINE)}
    expected = {6, 10, 14, 15, 16, 17, 18}
    assert expected <= lines_with_errors, result.stdout


def test_the_package_itself_passes_mypy_strict(tmp_path: pathlib.Path):
    """``mypy --strict kiyotaka_ws``: the library's own code, not only its public face, type-checks
    (no per-module exemptions; brotli's untyped import is marked where it is made)."""
    env = {name: value for name, value in os.environ.items() if name != "MYPYPATH"}
    result = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"),
                             "--no-error-summary", "--show-error-codes", "kiyotaka_ws"],
                            cwd=ROOT, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
