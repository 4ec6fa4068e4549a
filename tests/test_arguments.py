"""Every constructor argument, channel parameter and ``--retries``, checked as a careless user would call them.

The argument tables (``kiyotaka_ws._arguments``) are walked whole: every argument of every
constructor gets a value of a wrong type and a wrong value, each must raise ``ConfigurationError``
naming it, and no thread may have started. Channel parameters are checked per channel in the
library and on the real command line; ``--retries N`` is counted in real connection attempts.
"""

from __future__ import annotations

import inspect
import os
import pathlib
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable

import pytest

from kiyotaka_ws import ConfigurationError, ConnectionFailedError, KiyotakaClient
from kiyotaka_ws._arguments import CLIENT, EVENTS, FROM_NATS, RELAY, REPLAY, STOP, Table
from kiyotaka_ws.recording import Recorder
from kiyotaka_ws.testing import FakeKiyotakaServer

ROOT = pathlib.Path(__file__).resolve().parent.parent
NAN, INF = float("nan"), float("inf")


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("rec") / "empty.kwsrec"
    recorder = Recorder(path)
    recorder.open()
    assert recorder.close(5)
    return str(path)


def _relay(**kw: Any) -> Any:
    from kiyotaka_ws.nats import Relay

    return Relay(**{"servers": "nats://127.0.0.1:4222", **kw})


def _events(**kw: Any) -> Any:
    return KiyotakaClient("k").events("TRADE", exchange="X", symbol="Y", **kw)


def _stop(**kw: Any) -> None:
    KiyotakaClient("k").stop(**kw)


# constructor -> (its table, how to call it with some arguments, arguments it needs besides)
CONSTRUCTORS: dict[str, tuple[Table, Callable[..., Any]]] = {
    "KiyotakaClient": (CLIENT, lambda **kw: KiyotakaClient(**{"api_key": "k", **kw})),
    "replay": (REPLAY, KiyotakaClient.replay),
    "from_nats": (FROM_NATS, lambda **kw: KiyotakaClient.from_nats(**{"servers": "nats://127.0.0.1:4222", **kw})),
    "Relay": (RELAY, _relay),
    "events": (EVENTS, _events),
    "stop": (STOP, _stop),
}

# constructor -> argument -> (a value of a wrong type, a wrong value of the right type). Every
# argument of every table must be here (test_every_argument_of_every_table_is_tried).
BAD: dict[str, dict[str, tuple[Any, Any]]] = {
    "KiyotakaClient": {
        "api_key": (5, "   "),
        "region": (["singapore"], "mars"),
        "book_url": (5, "http://example.com/ws"),
        "nonbook_url": (b"ws://x", "ws://"),
        "compression": (1, "gzip"),
        "reconnect": ("yes", 1),
        "backoff_initial": ("0.5", 0),
        "backoff_max": ("30", INF),
        "ping_interval": ("20", NAN),
        "ping_timeout": ([10], -1),
        "stale_timeout": ({}, 0.0),
        "auth_timeout": ("5", -0.5),
        "subscribe_timeout": (None, 0),
        "queue_size": (10.0, 0),
        "overflow": (None, "explode"),
        "max_frame_bytes": ("16", 10),
        "sslopt": ([1], {"bogus": 1}),
        "proxy": (5, "ftp://host:1"),
        "max_retries": (1.5, -1),
        "max_channels_per_request": (2.0, 0),
        "max_subscriptions_per_connection": ("1000", 0),
        "max_requests_per_second": ("10", 0),
        "max_queue_bytes": (True, 10),
        "connect_timeout": ("1", 0),
        "send_timeout": ("1", -5),
        "rng": (5, "random"),
        "record": (5, "/no/such/directory/r.kwsrec"),
        "record_rotate_bytes": ("1", 10),
        "record_rotate_seconds": ("1", 0),
    },
    "replay": {"path": (5, ""), "speed": ("1", 0)},
    "from_nats": {
        "servers": (5, "http://127.0.0.1:4222"),
        "subject_prefix": (5, "a.*"),
        "jetstream": ("yes", 1),
        "start_time": ("2024-01-01", NAN),
    },
    "Relay": {
        "servers": ({"url": 1}, []),
        "subject_prefix": (None, "a..b"),
        "jetstream": ("no", 0),
        "stream": (5, "A.B"),
        "max_age": ("1", INF),
        "max_bytes": ("abc", -7),
        "buffer_size": (1.0, 0),
        "heartbeat": ("5", 0),
    },
    "events": {"maxsize": ("10", 0)},
    "stop": {"timeout": (None, -1)},
}
NEEDS: dict[tuple[str, str], dict[str, Any]] = {  # other arguments a check needs to be reached
    ("KiyotakaClient", "record_rotate_bytes"): {"record": "RECORD"},
    ("KiyotakaClient", "record_rotate_seconds"): {"record": "RECORD"},
    ("from_nats", "start_time"): {"jetstream": True},
}


def _cases() -> list[Any]:
    return [pytest.param(ctor, name, kind, value, id=f"{ctor}-{name}-{kind}")
            for ctor, args in BAD.items() for name, pair in args.items()
            for kind, value in zip(("type", "value"), pair)]


def _threads() -> set[threading.Thread]:
    return set(threading.enumerate())


@pytest.mark.parametrize(("ctor", "name", "kind", "value"), _cases())
def test_a_bad_argument_names_itself_before_any_thread_starts(ctor: str, name: str, kind: str, value: Any,
                                                               recording: str, tmp_path: pathlib.Path) -> None:
    _, call = CONSTRUCTORS[ctor]
    kwargs = {k: str(tmp_path / "r.kwsrec") if v == "RECORD" else v for k, v in NEEDS.get((ctor, name), {}).items()}
    if ctor == "replay" and name != "path":
        kwargs["path"] = recording
    before = _threads()
    with pytest.raises(ConfigurationError, match=f"^{name}: ") as info:
        call(**kwargs, **{name: value})
    assert _threads() - before == set(), f"{ctor}({name}={value!r}) started a thread"
    assert len(str(info.value)) < 400 and "\n" not in str(info.value)


def test_every_argument_of_every_table_is_tried() -> None:
    for ctor, (table, _) in CONSTRUCTORS.items():
        assert set(BAD[ctor]) == set(table.args), ctor


def test_the_tables_are_the_signatures() -> None:
    """A new argument of a constructor is a new row of its table, and the other way round."""
    from kiyotaka_ws.nats import Relay

    def named(fn: Callable[..., Any], skip: tuple[str, ...] = ()) -> set[str]:
        kinds = (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
        return {p.name for p in inspect.signature(fn).parameters.values()
                if p.kind not in kinds and p.name not in ("self", "cls", *skip)}

    assert named(KiyotakaClient.__init__) == set(CLIENT.args)
    assert named(KiyotakaClient.replay) == set(REPLAY.args)
    assert named(KiyotakaClient.from_nats) == set(FROM_NATS.args)
    assert named(Relay.__init__) == set(RELAY.args)
    assert named(KiyotakaClient.events, ("channel", "exchange", "symbol", "category", "extra_params")) == set(EVENTS.args)
    assert named(KiyotakaClient.stop) == named(Relay.stop) == set(STOP.args)


def test_the_cases_of_the_issue() -> None:
    """Each accepted silently (or a TypeError/ValueError) before the tables."""
    for call, name in [
        (lambda: KiyotakaClient("k", rng=5), "rng"),
        (lambda: KiyotakaClient("k", region=["europe"]), "region"),
        (lambda: KiyotakaClient("k").events("BLOCK_BOOK_SNAPSHOT", exchange="X", symbol="Y", block_size=5,
                                            conflate=True), "conflate"),
        (lambda: KiyotakaClient.from_nats("nats://h:1", jetstream=True, start_time=NAN), "start_time"),
        (lambda: _relay(max_bytes="abc"), "max_bytes"),
        (lambda: _relay(max_bytes=-7), "max_bytes"),
        (lambda: _relay(max_age=INF), "max_age"),
        (lambda: KiyotakaClient("k").stop(None), "timeout"),  # type: ignore[arg-type]
    ]:
        with pytest.raises(ConfigurationError, match=f"^{name}: "):
            call()


def test_rules_between_arguments_and_forwarded_options() -> None:
    with pytest.raises(ConfigurationError, match=r"^backoff_max: must be >= backoff_initial \(2.0\), got 1.0"):
        KiyotakaClient("k", backoff_initial=2, backoff_max=1)
    with pytest.raises(ConfigurationError, match="^start_time: needs jetstream=True"):
        KiyotakaClient.from_nats("nats://h:1", start_time=0)
    with pytest.raises(ConfigurationError, match="^queue_size: expected a whole number >= 1, got 0"):
        _relay(queue_size=0)
    with pytest.raises(ConfigurationError, match="^queue_sise: not an argument of Relay; did you mean queue_size"):
        _relay(queue_sise=10)
    with pytest.raises(ConfigurationError, match="^api_key: a NATS consumer needs no key"):
        KiyotakaClient.from_nats("nats://h:1", api_key="k")
    with pytest.raises(ConfigurationError, match="^overflow: expected one of block, drop_oldest, drop_newest"):
        KiyotakaClient.from_nats("nats://h:1", overflow="lose")
    # A duration no wait can take (threading.TIMEOUT_MAX) is refused here, not by a crashed thread later.
    with pytest.raises(ConfigurationError, match="^ping_interval: expected a positive number of seconds up to 1e8"):
        KiyotakaClient("k", ping_interval=1e300)
    with pytest.raises(ConfigurationError, match="^speed: "):
        KiyotakaClient.replay("x.kwsrec", speed=1e300)


def test_good_arguments_still_pass_and_are_kept(recording: str) -> None:
    import datetime

    client = KiyotakaClient("k", backoff_initial=1, backoff_max=1, ping_interval=None, auth_timeout=0,
                            max_retries=0, proxy="socks5://u:p@127.0.0.1:1080", rng=lambda: 0.5)
    assert client._options.backoff_initial == 1.0 and client._options.proxy is not None
    consumer = KiyotakaClient.from_nats(["nats://a:1", "nats://b:2"], jetstream=True, start_time=0)
    assert consumer._sources.settings.start_time == datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)  # type: ignore[attr-defined]
    assert _relay(max_bytes=-1, max_age=60).max_bytes == -1
    KiyotakaClient.replay(recording, speed=2).stop(0)
    client.stop(0)


def test_secrets_never_appear_in_argument_errors() -> None:
    for call in [lambda: KiyotakaClient(["sk-SECRET-1"]),  # type: ignore[arg-type]
                 lambda: KiyotakaClient("k", proxy="socks5://user:SECRET-1@host"),
                 lambda: KiyotakaClient("k", nonbook_url="http://host/ws?token=SECRET-1"),
                 lambda: _relay(servers=["http://u:SECRET-1@host:4222"])]:
        with pytest.raises(ConfigurationError) as info:
            call()
        assert "SECRET" not in str(info.value), str(info.value)


# -- channel parameters, per channel -------------------------------------------------------------------

def test_unknown_channel_parameters_are_refused_with_the_closest_and_the_valid_ones() -> None:
    client = KiyotakaClient("k")
    with pytest.raises(ConfigurationError, match=r"^params\['foo'\]: not a parameter of TRADE; TRADE takes no parameters"):
        client.subscribe("TRADE", print, exchange="X", symbol="Y", params={"foo": 1})
    with pytest.raises(ConfigurationError, match=r"^params\['blockSize'\]: not a parameter of TRADE") as info:
        client.subscribe("TRADE", print, exchange="X", symbol="Y", params={"blockSize": 5})
    assert "extra_params={'blockSize': ...}" in str(info.value)
    with pytest.raises(ConfigurationError, match="^max_dept: .*did you mean max_depth\\?") as info:
        client.events("BLOCK_BOOK_SNAPSHOT", exchange="X", symbol="Y", block_size=5, max_dept=5)
    assert "block_size (blockSize), max_depth (maxDepth), update_frequency (updateFrequency), quote" in str(info.value)
    with pytest.raises(ConfigurationError, match="^block_size: not a parameter of VOLUME_PROFILE_AGG"):
        client.events("VOLUME_PROFILE_AGG", exchange="X", symbol="Y", block_size=5)  # the server derives it
    with pytest.raises(ConfigurationError, match=r"^params\['batchintervall'\]: .*did you mean batch_interval"):
        client.subscribe("TRADE_AGG", print, exchange="X", symbol="Y", params={"batchintervall": "1s"})
    with pytest.raises(ConfigurationError, match=r"^extra_params\['maxDepth'\]: a parameter of BLOCK_BOOK_SNAPSHOT"):
        client.subscribe("BLOCK_BOOK_SNAPSHOT", print, exchange="X", symbol="Y", params={"blockSize": 5},
                         extra_params={"maxDepth": "abc"})  # a known field is checked: no way around it
    with pytest.raises(ConfigurationError, match=r"^extra_params\['symbol'\]"):
        client.subscribe("TRADE", print, exchange="X", symbol="Y", extra_params={"symbol": "Z"})
    assert not client._registry  # nothing half-registered


def test_params_take_both_names_and_extra_params_reach_the_wire(server: FakeKiyotakaServer) -> None:
    client = KiyotakaClient(**server.client_kwargs())
    try:
        client.subscribe("TRADE_AGG", print, exchange="X", symbol="Y", params={"batch_interval": "1s"},
                         extra_params={"fooBar": 3, "blockSize": 0.5})
        with client.events("BLOCK_BOOK_SNAPSHOT", exchange="X", symbol="Y", blockSize=25, max_depth=10,
                           extra_params={"depthMode": "fast"}):
            client.start()
            assert server.wait_subscribed(2)
            channels = [c for r in server.requests("public/subscribe") for c in r.message["params"]["channels"]]
    finally:
        client.stop()
    assert {"type": "TRADE_AGG", "exchange": "X", "symbol": "Y", "category": "*", "batchInterval": "1s",
            "fooBar": "3", "blockSize": "0.5"} in channels
    assert {"type": "BLOCK_BOOK_SNAPSHOT", "exchange": "X", "symbol": "Y", "category": "*", "blockSize": "25",
            "maxDepth": "10", "depthMode": "fast"} in channels


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KIYOTAKA_API_KEY"}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "kiyotaka_ws", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, check=False, env=env)


def test_cli_unknown_param_exits_2_naming_it(tmp_path: pathlib.Path) -> None:
    result = _cli("stream", "BLOCK_BOOK_SNAPSHOT", "--exchange", "X", "--symbol", "Y", "--param", "block_size=5",
                  "--param", "max_dept=5")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [(
        "kiyotaka-ws: error: --param max_dept: not a parameter of BLOCK_BOOK_SNAPSHOT; did you mean max_depth? "
        "BLOCK_BOOK_SNAPSHOT takes block_size (blockSize), max_depth (maxDepth), update_frequency "
        "(updateFrequency), quote, group_by_coin (groupByType). A field this version does not know yet goes in "
        "--param extra.max_dept=VALUE")]
    out = tmp_path / "r.kwsrec"
    result = _cli("record", "--sub", "TRADE:X:Y:blockSize=5", "--out", str(out), "--api-key", "k")
    assert result.returncode == 2 and "--param blockSize: not a parameter of TRADE" in result.stderr
    assert not out.exists()


def test_cli_extra_param_reaches_the_wire() -> None:
    with FakeKiyotakaServer(api_key="k") as server:
        result = _cli("stream", "TRADE", "--exchange", "X", "--symbol", "Y", "--param", "extra.fooBar=1",
                      "--url", server.nonbook_url, "--api-key", "k", "--seconds", "1")
        channel = server.requests("public/subscribe")[0].message["params"]["channels"][0]
    assert result.returncode == 0, result.stderr
    assert channel == {"type": "TRADE", "exchange": "X", "symbol": "Y", "category": "*", "fooBar": "1"}


# -- --retries / max_retries: N retries after a failed attempt, N+1 attempts in all ------------------------

class _Refuser:
    """A port that takes each connection and closes it at once: every attempt fails, and is counted."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"ws://127.0.0.1:{self.sock.getsockname()[1]}/nonbook/ws"
        self.attempts = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.attempts += 1
            conn.close()

    def __enter__(self) -> _Refuser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)


@pytest.mark.parametrize(("retries", "says"), [
    (0, "gave up after 1 failed attempt (max_retries=0)"),
    (2, "gave up after 3 failed attempts in a row (max_retries=2)"),
])
def test_cli_retries_n_makes_n_plus_1_attempts(retries: int, says: str) -> None:
    with _Refuser() as port:
        started = time.monotonic()
        result = _cli("stream", "TRADE", "--exchange", "X", "--symbol", "Y", "--url", port.url, "--api-key", "k",
                      "--retries", str(retries), "--seconds", "30")
        elapsed = time.monotonic() - started
        attempts = port.attempts
    assert result.returncode == 3 and elapsed < 20, (result.returncode, elapsed, result.stderr)
    assert attempts == retries + 1
    assert says in result.stderr and "1 failed attempts" not in result.stderr


def test_max_retries_counts_the_same_in_the_library() -> None:
    with _Refuser() as port:
        client = KiyotakaClient("k", nonbook_url=port.url, max_retries=1, backoff_initial=0.05, backoff_max=0.1)
        client.on_trade(print, exchange="X", symbol="Y")
        with pytest.raises(ConnectionFailedError, match=r"^nonbook: gave up after 2 failed attempts in a row "
                                                        r"\(max_retries=1\); last: "):
            client.run_forever()
        assert port.attempts == 2


def test_cli_help_says_retries_as_the_library_does() -> None:
    from kiyotaka_ws._cli.command import build_parser

    for command in ("stream", "record", "relay"):
        parser = build_parser()
        sub = next(a for a in parser._actions if a.dest == "command").choices[command]  # type: ignore[union-attr]
        text = sub.format_help().replace("\n", " ")
        assert "retry at most N times in a row" in " ".join(text.split()), command
        assert "N+1 failed attempts" in " ".join(text.split()), command
