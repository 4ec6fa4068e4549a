"""Every example and the command line, run for real as subprocesses against the fake server."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from kiyotaka_ws.cli import main
from kiyotaka_ws.testing import FakeKiyotakaServer, trade_point

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = {
    "trade_tape.py": " @ ",
    "liquidation_alerts.py": None,  # alerts depend on random sizes; a clean run is the check
    "spread_monitor.py": "spread",
    "funding_oi_watcher.py": "open interest",
    "volume_profile_poc.py": "POC",
    "multi_channel_bot.py": "vs mid",
}


def _spawn(args, **kwargs):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, **kwargs)


def test_every_example_runs_against_the_fake_server():
    procs = {name: _spawn([f"examples/{name}", "--fake", "--seconds", "3"]) for name in EXAMPLES}
    procs["bot_test_with_fake_server.py"] = _spawn(["examples/bot_test_with_fake_server.py"])
    results = {name: proc.communicate(timeout=60) for name, proc in procs.items()}
    for name, proc in procs.items():
        out, err = results[name]
        assert proc.returncode == 0, f"{name} failed:\n{out}\n{err}"
        expected = EXAMPLES.get(name, "ok")
        if expected:
            assert expected in out, f"{name} printed:\n{out}"
    assert sorted(p.name for p in (ROOT / "examples").glob("*.py") if not p.name.startswith("_")) == sorted(procs)


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
                     "--api-key", "wrong-secret"])
    err = capsys.readouterr().err
    assert code == 1 and "rejected" in err and "wrong-secret" not in err


def test_help_and_bad_usage():
    for args in (["--help"], ["stream", "--help"], ["demo", "--help"]):
        with pytest.raises(SystemExit) as info:
            main(args)
        assert info.value.code == 0
    with pytest.raises(SystemExit) as info:
        main(["stream", "NOPE", "--exchange", "X", "--symbol", "Y"])
    assert info.value.code == 2
    assert main(["stream", "TRADE", "--exchange", "X", "--symbol", "Y", "--api-key", "k", "--param", "oops"]) == 2


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
    """The benchmark runs end to end and reports every case; timings are not judged here."""
    assert main(["bench", "--quick"]) == 0
    out = capsys.readouterr().out
    for case in ("brotli x5", "brotli x1", "brotli x50", "plain x5", "latency client", "memory: RSS"):
        assert case in out
