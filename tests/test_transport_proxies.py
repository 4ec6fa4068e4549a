"""Real proxy servers on loopback, through the real client to ``FakeKiyotakaServer``.

pproxy (HTTP CONNECT with a proper 407, SOCKS5 with RFC 1929 credentials, SOCKS5h) and tiny-proxy
(SOCKS4a, which pproxy's SOCKS4 server lacks; a SOCKS5 wrong password, which pproxy answers by
hanging up rather than with an RFC 1929 failure) each run on their own asyncio loop in a
thread, on 127.0.0.1 and an ephemeral port. Remote name resolution is proved with a name that only
the proxy can resolve: the proxy's loop maps ``REMOTE_ONLY`` to 127.0.0.1, this process cannot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any, Callable

import pytest

from kiyotaka_ws import ConnectionFailedError, KiyotakaClient
from kiyotaka_ws._transport import Cancel, Proxy, ProxyError, dial
from kiyotaka_ws.testing import FakeKiyotakaServer, trade_point

pproxy = pytest.importorskip("pproxy")

REMOTE_ONLY = "kiyotaka-proxy-side.invalid"  # RFC 6761: never resolves here


def _resolve_remote_only_name(loop: asyncio.AbstractEventLoop) -> None:
    """Let this proxy loop (and only it) resolve ``REMOTE_ONLY``."""
    real = loop.getaddrinfo

    async def getaddrinfo(host: Any, port: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host  # anyio passes it IDNA-encoded
        return await real("127.0.0.1" if name == REMOTE_ONLY else host, port, **kwargs)

    loop.getaddrinfo = getaddrinfo  # type: ignore[method-assign]


class LoopThread:
    """An asyncio loop on a thread, for a proxy server; ``close()`` stops and joins it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        _resolve_remote_only_name(self.loop)
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-proxy-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def close(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(cancel_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@contextlib.contextmanager
def pproxy_server(scheme: str, credentials: str | None = None) -> Iterator[tuple[int, list[str]]]:
    """A pproxy server; yields ``(port, log)``, ``log`` holding its lines ("socks5 ... -> host:port")."""
    log: list[str] = []
    runner = LoopThread()
    uri = f"{scheme}://127.0.0.1:0" + (f"#{credentials}" if credentials else "")

    async def start() -> Any:
        # authtime=0: pproxy otherwise trusts an address for 30 days after one good password.
        return await pproxy.Server(uri).start_server({"rserver": [], "authtime": 0, "verbose": log.append})

    server = runner.run(start())
    try:
        yield server.sockets[0].getsockname()[1], log
    finally:
        async def close() -> None:  # on the server's own loop: close() from another thread races it
            server.close()

        runner.run(close())
        runner.close()


@contextlib.contextmanager
def tiny_proxy_server(kind: str, **credentials: str) -> Iterator[tuple[int, list[str]]]:
    """A tiny-proxy server (``kind`` "Socks4" or "Socks5"); yields ``(port, log)`` with its
    "CONNECT ... -> (host, port)" lines."""
    tiny_proxy = pytest.importorskip("tiny_proxy")
    anyio = pytest.importorskip("anyio")
    log: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            log.append(record.getMessage())

    collect = Collect(logging.INFO)
    logger = logging.getLogger("tiny_proxy")
    logger.addHandler(collect)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    runner = LoopThread()
    handler = getattr(tiny_proxy, f"{kind}ProxyHandler")(**credentials)

    async def start() -> Any:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        task = asyncio.get_running_loop().create_task(listener.serve(handler.handle))
        return listener, task

    listener, _ = runner.run(start())
    try:
        yield listener.extra(anyio.abc.SocketAttribute.local_port), log
    finally:
        runner.close()
        logger.removeHandler(collect)
        logger.setLevel(old_level)


def stream_one_trade(fake: FakeKiyotakaServer, proxy: str, *, host: str = "127.0.0.1") -> None:
    """Through ``proxy``, a client reaches READY and gets a published trade."""
    kwargs = fake.client_kwargs()
    for name in ("book_url", "nonbook_url"):
        kwargs[name] = kwargs[name].replace("127.0.0.1", host)
    got: list[Any] = []
    client = KiyotakaClient(**kwargs, proxy=proxy)
    client.on_trade(got.append, exchange="X", symbol="Y")
    with client:
        assert client.wait_ready(10)
        fake.publish([trade_point("X", "Y", price=7, amount=1)])
        wait_for(lambda: bool(got))
    assert got[0].price == 7


def wait_for(condition: Callable[[], bool], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def refused_by(fake: FakeKiyotakaServer, proxy: str) -> ConnectionFailedError:
    client = KiyotakaClient(**fake.client_kwargs(), proxy=proxy, max_retries=0)
    client.on_trade(lambda trade: None, exchange="X", symbol="Y")
    with pytest.raises(ConnectionFailedError) as info:
        client.run_forever()
    assert "hunter2" not in repr(client)
    return info.value


def test_remote_only_name_does_not_resolve_here() -> None:
    with pytest.raises(OSError):
        __import__("socket").getaddrinfo(REMOTE_ONLY, 80)


def test_http_connect_without_credentials() -> None:
    with FakeKiyotakaServer() as fake, pproxy_server("http") as (port, log):
        stream_one_trade(fake, f"http://127.0.0.1:{port}")
    assert any(line.startswith("http ") and f":{fake.port}" in line for line in log), log


def test_http_connect_with_credentials_and_a_wrong_password(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="kiyotaka_ws")
    with FakeKiyotakaServer() as fake, pproxy_server("http", "trader:s3cret") as (port, log):
        stream_one_trade(fake, f"http://trader:s3cret@127.0.0.1:{port}")
        assert any(line.startswith("http ") for line in log), log
        wrong = refused_by(fake, f"http://trader:hunter2@127.0.0.1:{port}")
        missing = refused_by(fake, f"http://127.0.0.1:{port}")
    # 407 is permanent: the client gives up at once with the proxy's answer, never the password.
    assert wrong.status == 407 and "rejected the credentials" in str(wrong), wrong
    assert missing.status == 407 and "requires credentials" in str(missing), missing
    for text in (str(wrong), repr(wrong), str(missing), caplog.text):
        assert "hunter2" not in text and "s3cret" not in text


def test_socks5_with_credentials_resolves_locally() -> None:
    with FakeKiyotakaServer() as fake, pproxy_server("socks5", "alice:pa ss") as (port, log):
        stream_one_trade(fake, f"socks5://alice:pa%20ss@127.0.0.1:{port}", host="localhost")
    # socks5: the client resolved "localhost" and sent the proxy an address.
    assert any(line.startswith("socks5 ") and f"127.0.0.1:{fake.port}" in line for line in log), log
    assert not any("localhost" in line for line in log), log


def test_socks5_wrong_password_is_a_typed_proxy_error() -> None:
    # tiny-proxy answers a wrong password with an RFC 1929 failure (pproxy just hangs up).
    with FakeKiyotakaServer() as fake, tiny_proxy_server("Socks5", username="alice", password="right") as (port, _):
        proxy = Proxy.parse(f"socks5://alice:hunter2@127.0.0.1:{port}")
        with pytest.raises(ProxyError, match="rejected the credentials") as info:
            dial(fake.nonbook_url, timeout=5, cancel=Cancel(), proxy=proxy)
    assert info.value.phase == "proxy"
    assert "hunter2" not in str(info.value) and "hunter2" not in repr(info.value)


def test_socks5h_lets_the_proxy_resolve() -> None:
    with FakeKiyotakaServer() as fake, pproxy_server("socks5", "alice:pw") as (port, log):
        stream_one_trade(fake, f"socks5h://alice:pw@127.0.0.1:{port}", host=REMOTE_ONLY)
    assert any(f"{REMOTE_ONLY}:{fake.port}" in line for line in log), log


def test_socks4a_lets_the_proxy_resolve() -> None:
    with FakeKiyotakaServer() as fake, tiny_proxy_server("Socks4", username="me") as (port, log):
        stream_one_trade(fake, f"socks4a://me@127.0.0.1:{port}", host=REMOTE_ONLY)
        assert any(REMOTE_ONLY in line for line in log), log
        with pytest.raises(ProxyError, match="user id not confirmed"):  # tiny-proxy answers 0x5D to a wrong id
            dial(fake.nonbook_url, timeout=5, cancel=Cancel(), proxy=Proxy.parse(f"socks4a://you@127.0.0.1:{port}"))
