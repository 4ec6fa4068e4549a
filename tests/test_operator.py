"""What an operator meets: SIGTERM from a service manager, Ctrl-C on ``record``, a missing extra.

Each test runs the real command in a real process (``python -m kiyotaka_ws``) against a
``FakeKiyotakaServer`` on loopback and sends it real signals.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from kiyotaka_ws.recording import inspect_recording
from kiyotaka_ws.testing import FakeKiyotakaServer, trade_point

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _spawn(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    # PYTHONPATH: this checkout, even when another copy of the package is installed.
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "kiyotaka_ws", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=full_env)


def _wait_ready(proc: subprocess.Popen[str]) -> None:
    """Read stderr until the command's -v line says the family is READY."""
    assert proc.stderr is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if "READY" in line:
            return
        if not line and proc.poll() is not None:
            break
    raise AssertionError("the command never became READY")


def _stop_with(proc: subprocess.Popen[str], signum: int) -> tuple[str, str, float]:
    started = time.monotonic()
    proc.send_signal(signum)
    try:
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return out, err, time.monotonic() - started


def _record_then_signal(tmp_path: pathlib.Path, signum: int) -> tuple[subprocess.Popen[str], str, float, int]:
    path = tmp_path / "capture.kwsrec"
    with FakeKiyotakaServer(api_key="k") as server:
        proc = _spawn(["record", "TRADE", "--exchange", "X", "--symbol", "Y", "--nonbook-url", server.nonbook_url,
                       "--api-key", "k", "--out", str(path), "-v"])
        try:
            _wait_ready(proc)
            assert server.wait_subscribed(1, timeout=20)
            frames = 200
            for n in range(frames):
                server.publish([trade_point("X", "Y", price=100.0 + n, amount=1.0)])
            time.sleep(0.3)  # let the frames reach the client's socket; the stop must flush them all
            _, err, took = _stop_with(proc, signum)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return proc, err, took, frames


def test_sigterm_stops_record_cleanly_with_summary_and_whole_recording(tmp_path: pathlib.Path):
    proc, err, took, frames = _record_then_signal(tmp_path, signal.SIGTERM)
    assert proc.returncode == 0, err
    assert took < 5, took
    assert "Traceback" not in err
    assert f"{frames} events" in err and "kiyotaka-ws: recorded " in err, err
    info = inspect_recording(str(tmp_path / "capture.kwsrec"))
    assert info.points == frames and info.torn == 0 and info.dropped == 0


def test_ctrl_c_on_record_prints_the_summary_and_exits_130(tmp_path: pathlib.Path):
    proc, err, _, frames = _record_then_signal(tmp_path, signal.SIGINT)
    assert proc.returncode == 130, err
    assert f"{frames} events" in err and "Traceback" not in err, err
    assert inspect_recording(str(tmp_path / "capture.kwsrec")).points == frames


def test_sigterm_stops_stream_with_exit_0():
    with FakeKiyotakaServer(api_key="k") as server:
        proc = _spawn(["stream", "TRADE", "--exchange", "X", "--symbol", "Y", "--url", server.nonbook_url,
                       "--api-key", "k", "-v"])
        _wait_ready(proc)
        server.publish([trade_point("X", "Y", price=101.5, amount=2.0)])
        time.sleep(0.3)
        out, err, took = _stop_with(proc, signal.SIGTERM)
    assert proc.returncode == 0, err
    assert took < 5 and "Traceback" not in err
    assert "101.50" in out


# Makes the named top-level modules unimportable, as on a plain ``pip install kiyotaka-ws``.
_HIDE = """
import sys
class _Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {hidden!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, _Hide())
sys.argv = ["kiyotaka-ws", *{argv!r}]
from kiyotaka_ws._cli.command import main
sys.exit(main())
"""


@pytest.mark.parametrize(("argv", "hidden", "extra"), [
    (["demo", "--seconds", "1", "--plain"], {"websockets"}, "testing"),
    (["relay", "--nats", "nats://127.0.0.1:1", "--sub", "TRADE:X:Y", "--api-key", "k"], {"nats"}, "nats"),
    (["nats-bench", "--points", "10"], {"nats"}, "nats"),
])
def test_a_command_without_its_extra_says_which_in_one_line(argv: list[str], hidden: set[str], extra: str):
    result = subprocess.run([sys.executable, "-c", _HIDE.format(hidden=sorted(hidden), argv=argv)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60, check=False,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"kiyotaka-ws[{extra}]" in lines[0]


def test_a_family_never_used_is_unused_not_down_in_stats_and_metrics(server: FakeKiyotakaServer, make_client):
    pytest.importorskip("prometheus_client")
    import urllib.request

    from kiyotaka_ws import State
    from kiyotaka_ws.metrics import serve

    client = make_client()
    assert client.stats()["book"].state is State.STOPPED  # not running yet
    client.on_trade(lambda trade: None, exchange="X", symbol="Y")
    client.start()
    assert client.wait_ready(10) is True
    assert client.stats()["book"].state is State.UNUSED and client.stats()["nonbook"].state is State.READY
    with serve(client, 0) as metrics:
        text = urllib.request.urlopen(metrics.url, timeout=10).read().decode()
    assert 'kiyotaka_ws_state{family="book",state="UNUSED"} 1.0' in text
    assert 'kiyotaka_ws_state{family="book",state="STOPPED"} 0.0' in text
    client.stop()
    assert client.stats()["book"].state is State.UNUSED  # the final figures say the same


def test_wait_ready_returns_false_on_timeout_while_subscription_wait_raises(server: FakeKiyotakaServer,
                                                                          make_client):
    server.set_silent()  # accepts the connection, never answers: never READY before subscribe_timeout
    client = make_client(subscribe_timeout=30.0, auth_timeout=30.0)
    sub = client.on_trade(lambda trade: None, exchange="X", symbol="Y")
    with client:
        assert client.wait_ready(0.3) is False
        with pytest.raises(TimeoutError):
            sub.wait(0.3)


def _help(capsys: pytest.CaptureFixture[str], command: str) -> str:
    from kiyotaka_ws._cli.command import main

    assert main([command, "--help"]) == 0
    return capsys.readouterr().out


def test_help_texts_speak_of_each_command_s_own_options_and_exit_codes(capsys: pytest.CaptureFixture[str]):
    relay = _help(capsys, "relay")
    assert "exit codes:" in relay and "SIGTERM" in relay
    for foreign in ("--param", "--category", "--url"):  # options relay does not have
        assert foreign not in relay.split("exit codes:")[1]
    for command in ("stream", "record", "relay"):
        text = " ".join(_help(capsys, command).split())
        assert "--region {europe,singapore} service region" in text, command
        assert "SIGTERM" in text
    for command in ("replay", "inspect"):
        text = _help(capsys, command)
        assert "exit codes:" in text and "\n  2 " in text, command


def test_loggers_are_named_by_module_under_the_kiyotaka_ws_parent():
    import re

    for path in (ROOT / "kiyotaka_ws").rglob("*.py"):
        for name in re.findall(r"logging\.getLogger\(([^)]*)\)", path.read_text()):
            assert name in ("__name__", '"kiyotaka_ws"') and (name == "__name__" or path.name == "command.py"), (
                path.name, name)


def test_event_times_print_in_utc_with_z(capsys: pytest.CaptureFixture[str]):
    from kiyotaka_ws._cli.command import main

    with FakeKiyotakaServer(api_key="k") as server:
        def publish() -> None:
            assert server.wait_subscribed(1, timeout=10)
            server.publish([trade_point("X", "Y", price=1.0, amount=1.0, time_ns=1_700_000_000_123_000_000)])

        import threading
        publisher = threading.Thread(target=publish)
        publisher.start()
        assert main(["stream", "TRADE", "--exchange", "X", "--symbol", "Y", "--url", server.nonbook_url,
                     "--api-key", "k", "--seconds", "1.5"]) == 0
        publisher.join()
    out = capsys.readouterr().out
    assert out.startswith("22:13:20.123Z TRADE"), out


def test_verbose_lines_name_the_family_once(capsys: pytest.CaptureFixture[str]):
    import socket

    from kiyotaka_ws._cli.command import main

    with socket.socket() as probe:  # a port nobody listens on: refused at once
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = main(["stream", "TRADE", "--exchange", "X", "--symbol", "Y", "--url", f"ws://127.0.0.1:{port}/nonbook/ws",
                 "--api-key", "k", "--retries", "0", "-v"])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "gave up" in err and "nonbook: giving up: nonbook:" not in err and "(nonbook: " not in err, err
