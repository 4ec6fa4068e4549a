"""Process lifecycle, permanent vs transient failures, logging, and the queue's byte bound.

Real processes (subprocess) for exit and Ctrl-C, raw HTTP servers on loopback for upgrade
answers, the fake server for the rest.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from conftest import Collector, client_threads, wait_until

from kiyotaka_ws import (
    AuthenticationError,
    ConfigurationError,
    KiyotakaClient,
    State,
    SubscriptionError,
)
from kiyotaka_ws.dispatch import EventQueue
from kiyotaka_ws.errors import ConnectionFailedError
from kiyotaka_ws.testing import trade_point

EX, SYM = "BINANCE_FUTURES", "BTCUSDT"


class HttpAnswer:
    """A raw HTTP server on loopback that answers every upgrade with one fixed status."""

    def __init__(self, status: int, headers: str = "") -> None:
        self.status, self.headers = status, headers
        self.accepted: list[float] = []
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self._sock.getsockname()[1]}/nonbook/ws"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            self.accepted.append(time.monotonic())
            with conn:
                conn.settimeout(2)
                try:
                    conn.recv(65536)
                    conn.sendall(f"HTTP/1.1 {self.status} Nope\r\n{self.headers}Content-Length: 0\r\n\r\n".encode())
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


@pytest.fixture
def http_answer():
    servers: list[HttpAnswer] = []

    def make(status: int, headers: str = "") -> HttpAnswer:
        servers.append(HttpAnswer(status, headers))
        return servers[-1]

    yield make
    for srv in servers:
        srv.close()


def _client(url: str, **kwargs) -> KiyotakaClient:
    return KiyotakaClient(api_key="k", nonbook_url=url, backoff_initial=0.05, backoff_max=0.2, **kwargs)


# -- permanent and transient failures ---------------------------------------------------------------

@pytest.mark.parametrize("status", [401, 403])
def test_http_401_403_is_a_rejected_key(http_answer, status):
    srv = http_answer(status)
    client = _client(srv.url)
    client.on_trade(lambda e: None, exchange=EX, symbol=SYM)
    with pytest.raises(AuthenticationError, match=str(status)):
        client.run_forever()
    assert len(srv.accepted) == 1


@pytest.mark.parametrize("status", [400, 404, 410])
def test_http_wrong_url_fails_at_once(http_answer, status):
    srv = http_answer(status)
    client = _client(srv.url)
    errors = Collector()
    client.on_error(errors)
    client.on_trade(lambda e: None, exchange=EX, symbol=SYM)
    with pytest.raises(ConnectionFailedError) as info:
        client.run_forever()
    assert info.value.status == status and info.value.family == "nonbook" and "?" not in info.value.url
    assert len(srv.accepted) == 1 and isinstance(errors.items[0], ConnectionFailedError)
    assert client.stats()["nonbook"].state is State.FAILED


def test_http_429_waits_retry_after(http_answer):
    srv = http_answer(429, "Retry-After: 1\r\n")
    client = _client(srv.url)
    client.on_trade(lambda e: None, exchange=EX, symbol=SYM)
    client.start()
    try:
        assert wait_until(lambda: len(srv.accepted) >= 2, timeout=5)
        assert srv.accepted[1] - srv.accepted[0] >= 0.9  # the backoff alone would be 0.05-0.2 s
    finally:
        client.stop()


def test_max_retries_gives_up(http_answer):
    srv = http_answer(503)
    client = _client(srv.url, max_retries=2)
    client.on_trade(lambda e: None, exchange=EX, symbol=SYM)
    with pytest.raises(ConnectionFailedError, match="3 failed attempts"):
        client.run_forever()
    assert len(srv.accepted) == 3


def test_reconnect_false_fails_with_connection_failed(server, make_client):
    client = make_client(reconnect=False)
    client.on_trade(lambda e: None, exchange=EX, symbol=SYM)
    client.start()
    assert client.wait_ready(5)
    server.drop_connections()
    with pytest.raises(ConnectionFailedError, match="reconnect=False"):
        client.run_forever()


def test_bad_arguments_name_themselves():
    for kwargs, name in [({"max_retries": -1}, "max_retries"), ({"max_queue_bytes": 10}, "max_queue_bytes"),
                         ({"proxy": "ftp://x:1"}, "proxy"), ({"send_timeout": 0}, "send_timeout")]:
        with pytest.raises(ConfigurationError, match=name):
            KiyotakaClient(api_key="k", **kwargs)


def test_registering_on_a_stopped_client_raises():
    from kiyotaka_ws.errors import ClientStoppedError
    client = KiyotakaClient(api_key="k")
    client.stop()
    with pytest.raises(ClientStoppedError):
        client.on_trade(lambda e: None, exchange=EX, symbol=SYM)
    with pytest.raises(ClientStoppedError):
        client.start()


# -- the process -------------------------------------------------------------------------------------

def _script(body: str, url: str) -> list[str]:
    code = textwrap.dedent(f"""
        import sys, time
        from kiyotaka_ws import KiyotakaClient
        client = KiyotakaClient(api_key="test-key", nonbook_url={url!r}, backoff_initial=0.05, backoff_max=0.2)
        client.on_trade(lambda e: time.sleep(0.2), exchange="{EX}", symbol="{SYM}")
    """) + textwrap.dedent(body)
    return [sys.executable, "-c", code]


@pytest.mark.parametrize("ending", ["client.start(); client.wait_ready(5); print('ready', flush=True)",
                                    "client.start(); client.wait_ready(5); print('ready', flush=True); 1/0"])
def test_a_script_that_ends_without_stop_exits(server, ending):
    started = time.monotonic()
    proc = subprocess.run(_script(ending, server.nonbook_url), capture_output=True, text=True, timeout=20,
                          check=False)
    assert "ready" in proc.stdout, proc.stderr
    assert time.monotonic() - started < 10
    assert proc.returncode == (1 if "1/0" in ending else 0), proc.stderr


def _interrupt(proc: subprocess.Popen, times: int, gap: float) -> float:
    started = time.monotonic()
    for _ in range(times):
        proc.send_signal(signal.SIGINT)
        time.sleep(gap)
    proc.wait(10)
    return time.monotonic() - started


def test_ctrl_c_while_connecting_returns_promptly():
    # A listener with a full backlog: connect() hangs, as behind a silent firewall.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = [socket.socket() for _ in range(4)]
    for s in fillers:
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
    try:
        proc = subprocess.Popen(_script("print('go', flush=True); client.run_forever(); print('returned', flush=True)",
                                        f"ws://127.0.0.1:{port}/ws"), stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "go"
        time.sleep(0.3)
        took = _interrupt(proc, 1, 0)
        assert took < 2.5 and "returned" in proc.stdout.read()
    finally:
        for s in fillers:
            s.close()
        listener.close()


def test_two_ctrl_c_in_a_row_never_hang(server):
    for gap in (0.0005, 0.05):
        proc = subprocess.Popen(_script("""
            client.start(); client.wait_ready(5); print('ready', flush=True)
            client.run_forever()
        """, server.nonbook_url), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        for i in range(20):  # the handler is busy: stop() has a handler to wait for
            server.publish([trade_point(EX, SYM, price=i, amount=1)])
        took = _interrupt(proc, 2, gap)
        assert took < 5, took
        assert proc.returncode is not None


# -- logging -----------------------------------------------------------------------------------------

def test_errors_given_to_on_error_are_not_logged_above_debug(server, make_client, caplog):
    caplog.set_level(logging.DEBUG, logger="kiyotaka_ws")
    server.reject_symbol("DOGEUSDT")
    client = make_client()
    errors = Collector()
    client.on_error(errors)
    client.on_trade(lambda e: None, exchange=EX, symbol="DOGEUSDT")
    client.start()
    assert errors.wait_for(1) and isinstance(errors.items[0], SubscriptionError)
    assert client.wait_ready(5)
    noisy = [r for r in caplog.records if r.name.startswith("kiyotaka_ws") and r.levelno > logging.INFO]
    assert noisy == []
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("connecting to" in m for m in info) and any(m.endswith("ready") for m in info)


def test_repeated_identical_errors_are_rate_limited_without_on_error(server, make_client, caplog):
    caplog.set_level(logging.WARNING, logger="kiyotaka_ws")
    client = make_client()
    got = Collector()
    client.on_trade(got, exchange=EX, symbol=SYM)
    client.start()
    assert client.wait_ready(5)
    for _ in range(50):
        server.publish_raw("{not json")
    server.publish([trade_point(EX, SYM, price=1, amount=1)])
    assert got.wait_for(1)
    assert wait_until(lambda: client.stats()["nonbook"].decode_errors == 50)
    logged = [r.getMessage() for r in caplog.records if "not JSON" in r.getMessage()]
    assert len(logged) == 2 and "10 times" in logged[1]  # the 1st and the 10th of the window


def test_a_failing_handler_logs_one_traceback_not_one_per_event(server, make_client, caplog):
    caplog.set_level(logging.WARNING, logger="kiyotaka_ws")
    client = make_client()

    def broken(event):
        raise BrokenPipeError("stdout closed")

    client.on_trade(broken, exchange=EX, symbol=SYM)
    client.start()
    assert client.wait_ready(5)
    for i in range(30):
        server.publish([trade_point(EX, SYM, price=i, amount=1)])
    assert wait_until(lambda: client.stats()["nonbook"].handler_errors == 30)
    assert len([r for r in caplog.records if r.exc_info]) == 1


# -- the queue's byte bound --------------------------------------------------------------------------

def test_queue_is_bounded_in_bytes_as_well_as_frames():
    queue = EventQueue(capacity=1000, policy="drop_newest", max_bytes=10_000)
    for _ in range(30):
        queue.put_frame(b"x" * 1000, True)
    assert queue.depth == 10 and queue.depth_bytes == 10_000 and queue.dropped_total == 20
    batch, dropped, _ = queue.take()
    assert len(batch) == 10 and dropped == 20
    queue.put_frame(b"y" * 1000, True)  # the batch in flight still holds its room
    assert queue.dropped_total == 21
    queue.take()  # done with the batch: room again
    queue.put_frame(b"y" * 1000, True)
    assert queue.depth == 1
    big = EventQueue(capacity=10, policy="block", max_bytes=1000)
    assert big.put_frame(b"z" * 5000, True) is False  # one oversized frame passes when the queue is empty


def test_queue_drop_oldest_keeps_the_newest_within_the_byte_bound():
    queue = EventQueue(capacity=1000, policy="drop_oldest", max_bytes=3000)
    for i in range(10):
        queue.put_frame(bytes([i]) * 1000, True)
    batch, _, _ = queue.take()
    assert [item[0][0] for item in batch] == [7, 8, 9]


def test_slow_handler_and_big_frames_stay_within_max_queue_bytes(server, make_client):
    client = make_client(compression=None, max_queue_bytes=4 * 2**20, queue_size=10_000, overflow="block")
    entered, release = threading.Event(), threading.Event()

    def stuck(event):
        entered.set()
        release.wait(30)

    client.on_trade(stuck, exchange=EX, symbol=SYM)
    client.start()
    assert client.wait_ready(5)
    point = trade_point(EX, SYM, price=1, amount=1, id="x" * (2**20))  # 1 MiB frames
    frame = json.dumps({"points": [point]})
    publisher = threading.Thread(target=lambda: [server.publish_raw(frame) for _ in range(24)], daemon=True)
    publisher.start()
    assert entered.wait(5)
    queue = client._families["nonbook"].queue
    assert wait_until(lambda: queue.blocked, timeout=10)  # the reader waits: back-pressure, not memory
    assert queue.depth_bytes <= 4 * 2**20 + len(frame)
    release.set()
    assert wait_until(lambda: client.stats()["nonbook"].events == 24, timeout=20)


def test_thread_names_and_daemons(server, make_client):
    client = make_client()
    client.on_trade(lambda e: None, exchange=EX, symbol=SYM)
    client.start()
    assert client.wait_ready(5)
    names = sorted(t.name for t in client_threads())
    assert names == ["kiyotaka-ws-nonbook-dispatch", "kiyotaka-ws-nonbook-reader", "kiyotaka-ws-nonbook-session"]
    assert all(t.daemon for t in client_threads())
    assert os.getpid()  # the same process: no subprocess here
