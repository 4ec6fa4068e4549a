"""Shared fixtures: a fake server per test, clients that are always stopped, and a thread-leak check."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import pytest

from kiyotaka_ws import KiyotakaClient
from kiyotaka_ws.testing import FakeKiyotakaServer

# The Autobahn runner (tests/autobahn/run.sh) needs a live fuzzing server on Python 2: not a test.
collect_ignore = ["autobahn"]


def pytest_addoption(parser: Any) -> None:
    parser.addoption("--soak-seconds", type=float, default=3.0,
                     help="how long the soak tests run (CI keeps the short default)")


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01) -> bool:
    """Poll a condition with a deadline (for state that offers nothing to wait on)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


class Collector:
    """A handler that records what it gets and lets a test wait for a count."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._cond = threading.Condition()

    def __call__(self, item: Any) -> None:
        with self._cond:
            self.items.append(item)
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = 5.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.items) >= count, timeout)

    def of(self, kind: type) -> list[Any]:
        with self._cond:
            return [i for i in self.items if isinstance(i, kind)]

    def __len__(self) -> int:
        return len(self.items)


def client_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("kiyotaka-ws-")]


@pytest.fixture(autouse=True)
def no_leaked_threads():
    yield
    assert wait_until(lambda: not client_threads(), timeout=5), f"leaked: {client_threads()}"


@pytest.fixture
def server():
    with FakeKiyotakaServer(api_key="test-key") as srv:
        yield srv


@pytest.fixture
def make_client(server: FakeKiyotakaServer):
    """Build clients wired to the fake server with fast timings; all are stopped at teardown."""
    clients: list[KiyotakaClient] = []

    def factory(srv: FakeKiyotakaServer = server, **kwargs: Any) -> KiyotakaClient:
        options = {**srv.client_kwargs(), "backoff_initial": 0.05, "backoff_max": 0.2,
                   "auth_timeout": 1.0, "subscribe_timeout": 2.0, **kwargs}
        client = KiyotakaClient(**options)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.stop()


@pytest.fixture(params=["orjson", "stdlib"])
def json_parser(request: Any):
    """Run a test under each frame parser. On CPython orjson is a runtime dependency: its absence
    fails the test rather than skipping it, so a run can never quietly test one parser only."""
    import platform

    from kiyotaka_ws import protocol

    if request.param == "orjson" and protocol._orjson is None:
        if platform.python_implementation() == "CPython":
            pytest.fail("orjson is a runtime dependency on CPython but is not installed")
        pytest.skip("orjson is not installed (not CPython)")
    previous = protocol.json_parser()
    protocol.use_json_parser(request.param)
    try:
        yield request.param
    finally:
        protocol.use_json_parser(previous)
