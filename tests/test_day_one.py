"""Day one for a new user: the new errors, what gets logged, and the stopped-client contract.

Each runs the real client against the fake server on loopback.
"""

from __future__ import annotations

import logging
import pickle
import re
import time

import pytest
from conftest import Collector, wait_until

import kiyotaka_ws
from kiyotaka_ws import (
    ClientStoppedError,
    ConnectionFailedError,
    DecodeError,
    KiyotakaClient,
    KiyotakaError,
    State,
)
from kiyotaka_ws._transport import redact_url
from kiyotaka_ws.testing import FakeKiyotakaServer

EX, SYM = "BINANCE_FUTURES", "BTCUSDT"


def test_new_errors_are_exported_and_documented():
    for name in ("ConnectionFailedError", "ClientStoppedError"):
        assert name in kiyotaka_ws.__all__ and issubclass(getattr(kiyotaka_ws, name), KiyotakaError)
    # The library redacts the URL where it raises the error (tests/test_layers.py checks every
    # place): the error, vocabulary, keeps what it is given.
    secret = "wss://user:hunter2@eu-de3.ws.api.kiyotaka.ai:443/ws?encoding=json&token=abc"
    error = ConnectionFailedError("HTTP 404 Not Found: wrong URL", family="book", status=404, url=redact_url(secret))
    assert (error.family, error.status) == ("book", 404)
    assert error.url == "wss://***@eu-de3.ws.api.kiyotaka.ai:443/ws"  # no credentials, no query string
    assert "hunter2" not in repr(error) + str(error) and "abc" not in repr(error) + str(error)
    assert ConnectionFailedError("x").url is None and ConnectionFailedError("x").status is None
    assert ConnectionFailedError("x", url="ws://[::1]:9/ws").url == "ws://[::1]:9/ws"
    assert isinstance(ClientStoppedError("stopped"), KiyotakaError)


def test_stopped_client_raises_client_stopped_error(server, make_client):
    client = make_client()
    sub = client.on_trade(print, exchange=EX, symbol=SYM)
    client.start()
    assert client.wait_ready(5)
    client.stop()
    with pytest.raises(ClientStoppedError):
        client.on_trade(print, exchange=EX, symbol="ETHUSDT")
    with pytest.raises(ClientStoppedError):
        client.start()
    with pytest.raises(ClientStoppedError):
        sub.wait(1)


def test_reconnect_false_loss_is_connection_failed(server, make_client):
    client = make_client(reconnect=False)
    errors = Collector()
    client.on_error(errors)
    client.on_trade(print, exchange=EX, symbol=SYM)
    client.start()
    assert client.wait_ready(5)
    server.drop_connections()
    with pytest.raises(ConnectionFailedError) as info:
        client.run_forever()
    assert info.value.family == "nonbook" and info.value.url and "?" not in info.value.url
    assert errors.of(ConnectionFailedError)
    assert client.stats()["nonbook"].state is State.FAILED


def test_wait_ready_on_a_client_never_started_is_false_at_once():
    started = time.monotonic()
    assert KiyotakaClient("k").wait_ready(timeout=3) is False
    assert time.monotonic() - started < 1


def _records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("kiyotaka_ws") and r.levelno >= level]


def test_errors_given_to_on_error_are_not_logged_above_debug(server, make_client, caplog):
    caplog.set_level(logging.DEBUG, logger="kiyotaka_ws")
    client = make_client()
    errors = Collector()
    client.on_error(errors)
    client.on_trade(print, exchange=EX, symbol=SYM)
    client.start()
    assert client.wait_ready(5)
    for _ in range(3):
        server.publish_raw(b"not json at all")
    assert errors.wait_for(3)
    assert all(isinstance(e, DecodeError) for e in errors.items)
    assert not [r for r in _records(caplog, logging.INFO) if "not json" in r.getMessage()
                or "DecodeError" in r.getMessage()]


def test_repeated_errors_without_a_handler_are_rate_limited(server, make_client, caplog):
    caplog.set_level(logging.DEBUG, logger="kiyotaka_ws")
    client = make_client()
    client.on_trade(print, exchange=EX, symbol=SYM)
    client.start()
    assert client.wait_ready(5)
    for _ in range(50):
        server.publish_raw(b"not json at all")
    assert wait_until(lambda: client.stats()["nonbook"].decode_errors >= 50)
    client.stop()
    lines = [r.getMessage() for r in _records(caplog, logging.WARNING) if "DecodeError" in r.getMessage()
             or "not json" in r.getMessage()]
    assert 1 <= len(lines) <= 5, lines
    assert re.search(r"\d", " ".join(lines)), lines  # the repeats are counted (the frames hold no digits)


def test_lifecycle_lines_are_info_one_each(server, make_client, caplog):
    caplog.set_level(logging.DEBUG, logger="kiyotaka_ws")
    client = make_client()
    client.on_error(lambda error: None)
    client.on_trade(print, exchange=EX, symbol=SYM)
    client.start()
    assert client.wait_ready(5)
    server.drop_connections()
    assert wait_until(lambda: server.connection_count == 2) and client.wait_ready(5)
    client.stop()
    lifecycle = [r for r in caplog.records if r.name.startswith("kiyotaka_ws")
                 and any(word in r.getMessage() for word in ("connecting", "connected", "lost", "reconnecting"))]
    assert lifecycle and all(r.levelno == logging.INFO for r in lifecycle), [
        (r.levelname, r.getMessage()) for r in lifecycle]
    assert sum("lost" in r.getMessage() for r in lifecycle) == 1
    assert any("connecting" in r.getMessage() for r in lifecycle)
    assert any("connected" in r.getMessage() for r in lifecycle)
    assert "test-key" not in " ".join(r.getMessage() for r in caplog.records)


def test_api_key_never_in_logs_or_reprs(caplog):
    caplog.set_level(logging.DEBUG, logger="kiyotaka_ws")
    with FakeKiyotakaServer(api_key="right-key") as server:
        client = KiyotakaClient("super-secret-key", book_url=server.book_url, nonbook_url=server.nonbook_url,
                                backoff_initial=0.05)
        errors = Collector()
        client.on_error(errors)
        client.on_trade(print, exchange=EX, symbol=SYM)
        with pytest.raises(KiyotakaError) as info:
            client.run_forever()
    texts = [r.getMessage() for r in caplog.records] + [repr(client), str(info.value), repr(info.value)]
    texts += [str(e) for e in errors.items]
    assert "super-secret-key" not in "\n".join(texts)
    assert "super-secret-key" not in pickle.dumps(info.value, protocol=0).decode("latin-1")
