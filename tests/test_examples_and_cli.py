"""Every example and the command line, run for real as subprocesses against the fake server."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from kiyotaka_ws._cli.command import main
from kiyotaka_ws.testing import FakeKiyotakaServer, trade_point

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = {  # what each example must print in a short --fake run
    "trade_tape.py": (" @ ",),
    "liquidation_alerts.py": ("LIQUIDATION BINANCE_FUTURES BTCUSDT", "LIQUIDATION BYBIT BTCUSDT"),  # exchange="*"
    "spread_monitor.py": ("spread 10.0", "<-- wide"),
    "funding_oi_watcher.py": ("open interest", "funding ", "(next n/a)"),
    "volume_profile_poc.py": ("POC ", "(bucket 25.0)"),
    "multi_channel_bot.py": ("vs mid", "[lost] nonbook", "[gap] nonbook was down", "[gap] book was down",
                             "2 gap(s) detected"),
    "capture_to_bars.py": ("recorded 3s of BTCUSDT trades", "exported ", "one-minute bars"),
    "backtest_replay.py": ("recorded 3s of BTCUSDT trades", "backtest: ", "position changes", "pulled: buy volume"),
}


def _spawn(args, **kwargs):
    # PYTHONPATH: run against this checkout even when another copy of the package is installed.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, **kwargs)


def test_every_example_runs_against_the_fake_server():
    procs = {name: _spawn([f"examples/{name}", "--fake", "--seconds", "3"]) for name in EXAMPLES}
    procs["bot_test_with_fake_server.py"] = _spawn(["examples/bot_test_with_fake_server.py"])
    results = {name: proc.communicate(timeout=60) for name, proc in procs.items()}
    for name, proc in procs.items():
        out, err = results[name]
        assert proc.returncode == 0, f"{name} failed:\n{out}\n{err}"
        for expected in EXAMPLES.get(name, ("ok",)):
            assert expected in out, f"{name} printed:\n{out}"
    assert sorted(p.name for p in (ROOT / "examples").glob("*.py")) == sorted(procs)


def test_examples_use_only_the_public_api():
    """Examples are meant to be copied: no private modules, no helpers outside the file."""
    allowed = re.compile(r"^(from kiyotaka_ws(\.testing|\.analysis)? import|import (argparse|duckdb|random|tempfile|threading|time)$|"
                         r"from __future__ import|from typing import|from collections.abc import)")
    for path in sorted((ROOT / "examples").glob("*.py")):
        imports = [line for line in path.read_text().splitlines() if line.startswith(("import ", "from "))]
        assert imports and all(allowed.match(line) for line in imports), (path.name, imports)
        assert "_runner" not in path.read_text() and "kiyotaka_ws._cli" not in path.read_text()
    assert not (ROOT / "examples" / "_runner.py").exists()


def test_demo_runs_and_summarises(capsys):
    assert main(["demo", "--seconds", "5", "--plain"]) == 0
    out = capsys.readouterr().out
    assert "TRADE" in out and "BOOK" in out
    assert "events per channel" in out and "reconnects: 2" in out  # the injected drop, both families


def test_stream_against_fake_server_json(capsys):
    with FakeKiyotakaServer(api_key="k") as server:
        publisher = _Publisher(server)
        with publisher:
            code = main(["stream", "trade", "--exchange", "BINANCE_FUTURES", "--symbol", "BTCUSDT",
                         "--url", server.nonbook_url, "--api-key", "k", "--json", "--seconds", "1.5"])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines and lines[0]["channel"] == "TRADE" and lines[0]["price"] == 42.0 and "raw" not in lines[0]


def test_stream_book_params_human_readable(capsys):
    with FakeKiyotakaServer(api_key="k") as server:
        code = main(["stream", "BLOCK_BOOK_SNAPSHOT", "--exchange", "X", "--symbol", "Y", "--param", "block_size=25",
                     "--param", "maxDepth=10", "--url", server.book_url, "--api-key", "k", "--seconds", "0.5"])
        channel = server.requests("public/subscribe")[0].message["params"]["channels"][0]
    assert code == 0 and channel["blockSize"] == "25" and channel["maxDepth"] == "10"


def test_stream_missing_and_rejected_key(capsys, monkeypatch):
    monkeypatch.delenv("KIYOTAKA_API_KEY", raising=False)
    assert main(["stream", "TRADE", "--exchange", "X", "--symbol", "Y"]) == 2
    assert "KIYOTAKA_API_KEY" in capsys.readouterr().err
    with FakeKiyotakaServer(api_key="right") as server:
        code = main(["stream", "TRADE", "--exchange", "X", "--symbol", "Y", "--url", server.nonbook_url,
                     "--api-key", "wrong-secret", "--seconds", "20"])
    err = capsys.readouterr().err
    assert code == 1 and "wrong-secret" not in err
    lines = err.splitlines()
    assert len(lines) == 2, err  # "connecting to URL", then the rejection, said once
    assert lines[0] == f"kiyotaka-ws: connecting to {server.nonbook_url.split('?')[0]} (TRADE X:Y)"
    assert lines[1].startswith("kiyotaka-ws: error: the API key was rejected")


def test_help_documents_the_exit_codes(capsys):
    for args in (["--help"], ["stream", "--help"], ["demo", "--help"], ["bench", "--help"]):
        assert main(args) == 0
    out = capsys.readouterr().out
    for code in ("0 ", "1 ", "2 ", "3 ", "130 "):
        assert f"\n  {code}" in out
    assert "--retries N" in out and "SPOT, PERPETUAL" in out


@pytest.mark.parametrize(("args", "named"), [
    (["stream", "NOPE", "--exchange", "X", "--symbol", "Y"], "'NOPE'"),
    (["stream", "TRADE", "--exchange", "X", "--symbol", "Y", "--param", "oops"], "--param"),
    (["stream", "BLOCK_BOOK_SNAPSHOT", "--exchange", "X", "--symbol", "Y", "--param", "block_size=abc"],
     "--param block_size"),
    (["stream", "BLOCK_BOOK_SNAPSHOT", "--exchange", "X", "--symbol", "Y", "--param", "blockSize=-1"],
     "blockSize"),
    (["stream", "BLOCK_BOOK_SNAPSHOT", "--exchange", "X", "--symbol", "Y"], "block_size"),
    (["stream", "TRADE_AGG", "--exchange", "X", "--symbol", "Y", "--param", "batch_interval=soon"],
     "batch_interval"),
    (["stream", "BLOCK_BOOK_SNAPSHOT", "--exchange", "X", "--symbol", "Y", "--param", "block_size=5",
      "--param", "group_by_coin=maybe"], "group_by_coin"),
    (["stream", "TRADE", "--exchange", "X", "--symbol", "Y", "--category", "FUTURES"], "SPOT, PERPETUAL"),
    (["stream", "TRADE", "--exchange", "X", "--symbol", "Y", "--region", "mars"], "--region"),
    (["stream", "TRADE", "--exchange", "X", "--symbol", "Y", "--seconds", "-1"], "--seconds"),
    (["stream", "TRADE", "--exchange", "X", "--symbol", "Y", "--retries", "many"], "--retries"),
    (["stream", "TRADE", "--exchange", "X", "--symbol", "Y", "--url", "http://nope"], "nonbook_url"),
    (["stream", "TRADE", "--symbol", "Y"], "--exchange"),
])
def test_usage_errors_exit_2_with_one_line_before_looking_for_the_key(capsys, monkeypatch, args, named):
    monkeypatch.delenv("KIYOTAKA_API_KEY", raising=False)  # a missing key must not hide the real mistake
    assert main(args) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kiyotaka-ws: error: "), captured.err
    assert named in lines[0] and "KIYOTAKA_API_KEY" not in lines[0] and "Traceback" not in captured.err
    assert captured.out == ""


def test_param_block_size_abc_is_a_usage_error_in_a_real_process():
    """The command as a user runs it: no traceback, exit 2, one line naming the parameter."""
    result = subprocess.run([sys.executable, "-m", "kiyotaka_ws", "stream", "BLOCK_BOOK_SNAPSHOT", "--exchange",
                             "BINANCE_FUTURES", "--symbol", "BTCUSDT", "--param", "block_size=abc"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
                            env={k: v for k, v in os.environ.items() if k != "KIYOTAKA_API_KEY"})
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "kiyotaka-ws: error: --param block_size: expected a positive number (e.g. 25 or \"0.5\"), got 'abc'"]


def test_raw_wire_params_are_validated_by_the_library():
    from kiyotaka_ws import ConfigurationError, KiyotakaClient

    client = KiyotakaClient("k")
    with pytest.raises(ConfigurationError, match="blockSize"):
        client.subscribe("BLOCK_BOOK_SNAPSHOT", print, exchange="X", symbol="Y", params={"blockSize": "abc"})
    with pytest.raises(ConfigurationError, match="groupByType"):
        client.subscribe("BLOCK_BOOK_SNAPSHOT", print, exchange="X", symbol="Y",
                         params={"blockSize": "5", "groupByType": "yes"})
    with pytest.raises(ConfigurationError, match=r"^params\['x'\]: not a parameter of TRADE_AGG"):
        client.subscribe("TRADE_AGG", print, exchange="X", symbol="Y", params={"batchInterval": "1s", "x": 2})
    sub = client.subscribe("TRADE_AGG", print, exchange="X", symbol="Y", params={"batchInterval": "1s"},
                           extra_params={"x": 2})
    assert sub.params["batchInterval"] == "1s" and sub.params["x"] == "2"


def test_stream_category_and_params_reach_the_wire(capsys):
    with FakeKiyotakaServer(api_key="k") as server:
        code = main(["stream", "BLOCK_BOOK_SNAPSHOT", "--exchange", "X", "--symbol", "BTC", "--category", "spot",
                     "--param", "block_size=25", "--param", "group_by_coin=1", "--param", "updateFrequency=1s",
                     "--url", server.book_url, "--api-key", "k", "--seconds", "0.5"])
        channel = server.requests("public/subscribe")[0].message["params"]["channels"][0]
    assert code == 0
    assert channel == {"type": "BLOCK_BOOK_SNAPSHOT", "exchange": "X", "symbol": "BTC", "category": "SPOT",
                       "blockSize": "25", "groupByType": "1", "updateFrequency": "1s"}


def test_stream_rejected_subscription_exits_2_with_one_line(capsys):
    with FakeKiyotakaServer(api_key="k") as server:
        server.reject_symbol("NOPEUSDT")
        code = main(["stream", "TRADE", "--exchange", "X", "--symbol", "NOPEUSDT", "--url", server.nonbook_url,
                     "--api-key", "k", "--seconds", "20"])
    lines = capsys.readouterr().err.splitlines()
    assert code == 2 and len(lines) == 2
    assert lines[1].startswith("kiyotaka-ws: error: the server rejected the subscription") and "INVALID_SYMBOL" in lines[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stream_cli(url: str, *extra: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kiyotaka_ws", "stream", "TRADE", "--exchange", "BINANCE_FUTURES",
                           "--symbol", "BTCUSDT", "--url", url, "--api-key", "secret-key-123", *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)


def _assert_one_error_line(result: subprocess.CompletedProcess, url: str, *, code: int, says: str) -> str:
    lines = result.stderr.splitlines()
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr and "secret-key-123" not in result.stderr + result.stdout
    assert lines[0] == f"kiyotaka-ws: connecting to {url} (TRADE BINANCE_FUTURES:BTCUSDT)", result.stderr
    errors = [line for line in lines if "error" in line]
    assert len(errors) == 1 and len(lines) == 2, result.stderr  # said once, nothing repeated
    assert says in errors[0] and url in errors[0], errors[0]
    return errors[0]


def test_stream_refused_port_exits_3_after_seconds():
    url = f"ws://127.0.0.1:{_free_port()}/nonbook/ws"
    started = time.monotonic()
    result = _stream_cli(url, "--seconds", "2")
    assert 1.5 < time.monotonic() - started < 30
    _assert_one_error_line(result, url, code=3, says="could not connect")


@pytest.mark.parametrize("silence", ["no HTTP answer", "no TCP answer"])
def test_stream_silent_port_exits_3_after_seconds(silence):
    """A silent firewall: the TCP connect hangs (full backlog), or the upgrade is never answered."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    if silence == "no TCP answer":
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
    try:
        url = f"ws://127.0.0.1:{port}/nonbook/ws"
        started = time.monotonic()
        result = _stream_cli(url, "--seconds", "2")
        assert 1.5 < time.monotonic() - started < 6
        _assert_one_error_line(result, url, code=3, says="could not connect")
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


class _Http404:
    """A tiny raw HTTP server on loopback that answers every request with 404 (a wrong URL)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.url = f"ws://127.0.0.1:{self.sock.getsockname()[1]}/nonbook/ws"
        self.requests = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve)

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            with conn:
                conn.settimeout(2)
                with contextlib.suppress(OSError):
                    conn.recv(65536)
                    self.requests += 1
                    conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n"
                                 b"X-Request-Id: abc\r\nConnection: close\r\n\r\nnot found\n")

    def __enter__(self) -> _Http404:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


def test_stream_http_404_exits_3_with_one_line():
    with _Http404() as server:
        result = _stream_cli(server.url, "--seconds", "2")
    line = _assert_one_error_line(result, server.url, code=3, says="could not connect")
    assert "404" in line and "X-Request-Id" not in result.stderr  # no header dump


def test_stream_http_404_gives_up_at_once():
    with _Http404() as server:
        started = time.monotonic()
        result = _stream_cli(server.url, "--seconds", "12")
        elapsed = time.monotonic() - started
        requests = server.requests
    assert elapsed < 8 and requests == 1, (elapsed, requests)
    _assert_one_error_line(result, server.url, code=3, says="404")


def test_stream_retries_gives_up_with_exit_3():
    url = f"ws://127.0.0.1:{_free_port()}/nonbook/ws"
    started = time.monotonic()
    result = _stream_cli(url, "--retries", "2", "--seconds", "30")
    assert time.monotonic() - started < 15  # backoff 0.5 s, 1 s: far less than --seconds
    _assert_one_error_line(result, url, code=3, says="could not connect")


def test_stream_http_401_is_a_rejected_key():
    with _HttpStatus(401) as server:
        started = time.monotonic()
        result = _stream_cli(server.url, "--seconds", "12")
        assert time.monotonic() - started < 8 and server.requests == 1
    _assert_one_error_line(result, server.url, code=1, says="rejected")


class _HttpStatus(_Http404):
    def __init__(self, status: int) -> None:
        super().__init__()
        self.status = status

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            with conn, contextlib.suppress(OSError):
                conn.settimeout(2)
                conn.recv(65536)
                self.requests += 1
                conn.sendall(f"HTTP/1.1 {self.status} Nope\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                             .encode())


def test_stream_ctrl_c_exits_130():
    with FakeKiyotakaServer(api_key="k") as server:
        proc = subprocess.Popen([sys.executable, "-m", "kiyotaka_ws", "stream", "TRADE", "--exchange", "X",
                                 "--symbol", "Y", "--url", server.nonbook_url, "--api-key", "k", "-v"],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert server.wait_subscribed(1, timeout=20)
            deadline = time.monotonic() + 20
            ready = False
            while not ready and time.monotonic() < deadline:  # -v prints "nonbook READY" once it is
                line = proc.stderr.readline()
                ready = "READY" in line
            assert ready
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 130, err
    assert "Traceback" not in err


def test_python_dash_m_and_console_script():
    result = subprocess.run([sys.executable, "-m", "kiyotaka_ws", "--version"], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0 and "kiyotaka-ws" in result.stdout


class _Publisher:
    """Publishes a trade every 50 ms while the CLI streams (joined on exit)."""

    def __init__(self, server):
        import threading
        self.server = server
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self):
        while not self.stop.wait(0.05):
            self.server.publish([trade_point("BINANCE_FUTURES", "BTCUSDT", price=42.0, amount=1)])

    def __enter__(self):
        self.thread.start()

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def test_bench_quick_smoke(capsys):
    """The benchmark runs end to end and reports every case, here with a CPU hog beside it (which it
    stops); timings are not judged here."""
    import multiprocessing

    assert main(["bench", "--quick", "--busy", "1"]) == 0
    out = capsys.readouterr().out
    for case in ("brotli x5", "brotli x1", "brotli x20", "brotli x50", "plain x5", "vs json", "vs orjson",
                 "brotli x5 s8", "brotli x50 s8", "plain x5 s8",
                 "latency client", "memory: RSS", "1 busy process(es) beside it"):
        assert case in out
    assert not multiprocessing.active_children()


def test_bench_json_output(capsys):
    """``--json``: one document with every case, both anchors and the latency, for tracking."""
    import json

    from kiyotaka_ws import protocol

    before = protocol.json_parser()
    assert main(["bench", "--quick", "--json", "--parser", "stdlib", "--series", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["client_parser"] == "stdlib"
    assert [c["case"] for c in report["cases"]] == ["brotli x1", "brotli x5", "brotli x20", "brotli x50", "plain x5"]
    assert {c["series"] for c in report["cases"]} == {1}
    for case in report["cases"]:
        assert set(case["points_per_s"]) == {"json", "orjson", "client"}
        assert set(case["ratio"]) == {"vs_json", "vs_orjson"}
    assert report["latency_us"]["client"]["p50"] > 0
    assert len(report["latency_us"]["client"]["p99_per_round"]) == report["rounds"] == 1
    assert protocol.json_parser() == before  # the bench put the parser back


@pytest.fixture
def blaster_url():
    """The bench's blaster (its own process, as in the bench) and its base URL."""
    import multiprocessing

    from kiyotaka_ws._cli import bench

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=bench.blaster_process, args=(child,), daemon=True)
    process.start()
    try:
        assert parent.poll(30)
        yield f"ws://127.0.0.1:{parent.recv()}/nonbook/ws?encoding=json"
    finally:
        process.terminate()
        process.join()


def test_bench_blaster_serves_past_connections_left_open_or_cut_mid_handshake(blaster_url):
    """A consumer that keeps its connection open (half a handshake sent) and one that hangs up
    mid-handshake hold up no later run: formerly the blaster served one connection at a time and
    spun on the second one's EOF, so every later run waited for its handshake forever."""
    from kiyotaka_ws._cli import bench

    port = int(blaster_url.split(":")[2].split("/")[0])
    with socket.create_connection(("127.0.0.1", port)) as held:
        held.sendall(b"GET /nonbook/ws?mode=plain&per=1&n=1 HTTP/1.1\r\n")
        with socket.create_connection(("127.0.0.1", port)) as cut:
            cut.sendall(b"GET /nonbook/ws?mode=plain&per=1&n=1 HTTP/1.1\r\n")
        url = f"{blaster_url}&mode=brotli&per=5&n=500&series=2"
        assert bench.run_bare(url, 500, "brotli", series=2, stall=5.0).points_per_s > 0
        assert bench.run_client(url, 500, "brotli", series=2, stall=5.0).points_per_s > 0


def test_bench_runs_report_a_stall_instead_of_hanging(blaster_url):
    """A blaster that stops sending (here: paced at one frame per 100 s) makes each run raise
    BenchStalled, saying how far it got, within about twice its stall limit."""
    from kiyotaka_ws._cli import bench

    url = f"{blaster_url}&mode=plain&per=1&n=5&rate=0.01"
    started = time.monotonic()
    with pytest.raises(bench.BenchStalled, match=r"bare json loop: 1 of 5 points, then none for 1s"):
        bench.run_bare(url, 5, None, stall=1.0)
    with pytest.raises(bench.BenchStalled, match=r"client: 1 of 5 points, then none for 1s \(READY"):
        bench.run_client(url, 5, None, stall=1.0)
    assert time.monotonic() - started < 10


def test_bench_stops_with_an_error_when_a_run_stalls(monkeypatch, capsys):
    """``run_bench`` prints the stall and returns 1, leaving no process behind."""
    import multiprocessing

    from kiyotaka_ws._cli import bench

    def stalled(*args, **kwargs):
        raise bench.BenchStalled("client: 0 of 5,000 points, then none for 30s (CONNECTING, 0 frames, 0 reconnects)")

    monkeypatch.setattr(bench, "run_client", stalled)
    assert main(["bench", "--quick", "--series", "1"]) == 1
    captured = capsys.readouterr()
    assert "kiyotaka-ws bench: error: client: 0 of 5,000 points" in captured.err
    assert not multiprocessing.active_children()


_DEMO_LINE = re.compile(r"^(\d\d:\d\d:\d\d\.\d{3}Z [A-Z_]+ |\[ *\d+\.\ds\] |kiyotaka-ws demo|  [a-z]+)")


def test_demo_plain_output_has_no_bare_log_lines():
    """The demo cuts the connection on purpose; the library's log lines about it must not leak."""
    result = subprocess.run([sys.executable, "-m", "kiyotaka_ws", "demo", "--plain", "--seconds", "4"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    stray = [line for line in result.stdout.splitlines() if not _DEMO_LINE.match(line)]
    assert not stray
    assert "DISCONNECTED" in result.stdout and "reconnects: 2" in result.stdout  # the drop is shown, the demo's way


def test_demo_ctrl_c_still_summarises():
    proc = subprocess.Popen([sys.executable, "-m", "kiyotaka_ws", "demo", "--plain", "--seconds", "60"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and " TRADE " not in proc.stdout.readline():
            pass
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "events per channel" in out and "Traceback" not in err


def test_readme_documents_the_commands_and_exit_codes():
    from kiyotaka_ws._cli import command as cli

    readme = (ROOT / "README.md").read_text()
    commands = readme[readme.index("## Command line"):readme.index("## Troubleshooting")]
    for command in ("kiyotaka-ws demo", "kiyotaka-ws stream", "kiyotaka-ws bench", "--retries N"):
        assert command in commands
    for code in (cli.EXIT_OK, cli.EXIT_REJECTED, cli.EXIT_USAGE, cli.EXIT_NO_CONNECTION, cli.EXIT_INTERRUPTED):
        assert f"\n| {code} | " in commands and f"\n  {code} " in cli.EXIT_CODES
    assert "## Design" in readme and "## Logging" in readme and "## Troubleshooting" in readme


def test_bench_recording_smoke(capsys):
    assert main(["bench", "--recording", "--points", "5000", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "with the recorder's tap" in out and "replay" in out and "pacing at speed 1.0" in out


def test_bench_subscriptions_quick_reports_every_count_and_never_crashes(capsys):
    """Against the limited fake server: one row per phase and count, and an honest verdict."""
    assert main(["bench", "--subscriptions", "10,30", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "enforcing 10 requests/s, 50 channels per request, 1,000 subscriptions per connection" in out
    rows = [line.split() for line in out.splitlines() if line.strip().split(" ")[0] in ("10", "30")]
    assert [(row[0], row[1]) for row in rows] in (
        [("10", "start"), ("10", "reconnect"), ("30", "start"), ("30", "reconnect")],
        [("10", "start"), ("30", "start")])  # a start not READY has no reconnect row
    assert "every phase READY with every channel held: " in out


def test_bench_subscriptions_bad_counts_are_usage_errors(capsys):
    assert main(["bench", "--subscriptions", "10,0"]) == 2
    assert "--subscriptions" in capsys.readouterr().err


def test_bench_subscriptions_reports_a_start_that_never_gets_ready(monkeypatch):
    import functools
    import io

    from kiyotaka_ws._cli import bench_subscriptions
    from kiyotaka_ws.testing import FakeKiyotakaServer

    monkeypatch.setattr(bench_subscriptions, "FakeKiyotakaServer",
                        functools.partial(FakeKiyotakaServer, subscribe_reply="silent"))
    out = io.StringIO()
    started = time.monotonic()
    assert bench_subscriptions.run_subscriptions_bench([5], bound=1.0, out=out) == 0
    assert time.monotonic() - started < 15
    text = out.getvalue()
    assert "not READY in 1 s" in text and "reconnect" not in text.split("phase", 1)[1].split("held:")[0]
    assert "every channel held: NO" in text


def test_bench_subscriptions_waits_for_each_shard_to_come_back_not_for_a_stale_ready():
    """A READY from before the drop, delivered late, does not count; each shard's own
    DISCONNECTED then READY does."""
    from kiyotaka_ws import ConnectionStatus, State
    from kiyotaka_ws._cli.bench_subscriptions import _Watch

    watch = _Watch()
    since = time.monotonic()
    watch.status(ConnectionStatus("nonbook", State.READY, shard=0))  # stale: from before the drop
    watch.status(ConnectionStatus("nonbook", State.DISCONNECTED, shard=1))
    watch.status(ConnectionStatus("nonbook", State.READY, shard=1))
    both = {("nonbook", 0), ("nonbook", 1)}
    assert watch.ready_again(since, both, time.monotonic() + 0.2) is None
    watch.status(ConnectionStatus("nonbook", State.DISCONNECTED, shard=0))
    assert watch.ready_again(since, both, time.monotonic() + 0.2) is None
    watch.status(ConnectionStatus("nonbook", State.READY, shard=0))
    assert watch.ready_again(since, both, time.monotonic() + 0.2) is not None
