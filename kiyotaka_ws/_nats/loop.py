"""The private asyncio thread: every NATS connection (a consumer's, a relay's) runs nats-py on one
thread, ``kiyotaka-ws-nats``, with its own event loop; nothing else in the library uses asyncio.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Coroutine
from typing import Any, Callable

from .._transport import redact_url
from ..errors import ConfigurationError
from ..threads import join_by
from .subjects import NatsSettings

__all__ = ["INSTALL_HINT", "THREAD_NAME", "Loop", "check_available", "connect", "first", "sleep_or"]

log = logging.getLogger(__name__)

THREAD_NAME = "kiyotaka-ws-nats"
INSTALL_HINT = 'NATS support needs nats-py: pip install "kiyotaka-ws[nats]"'


def check_available() -> None:
    """``ConfigurationError`` with the install hint if nats-py is missing."""
    try:
        import nats  # noqa: F401
    except ImportError:
        raise ConfigurationError(INSTALL_HINT) from None


class Loop:
    """One thread, ``kiyotaka-ws-nats``, running ``main()`` on its own event loop."""

    def __init__(self, main: Callable[[], Coroutine[Any, Any, None]], on_crash: Callable[[BaseException], None]) -> None:
        self.loop = asyncio.new_event_loop()
        self._main = main
        self._on_crash = on_crash
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop's thread (no-op once the loop is closed)."""
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # closed
            pass

    def join(self, deadline: float) -> bool:
        return join_by(self._thread, deadline)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as exc:
            log.debug("the NATS thread failed", exc_info=True)
            self._on_crash(exc)
        finally:
            try:
                pending = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
                for task in pending:
                    task.cancel()
                if pending:
                    self.loop.run_until_complete(asyncio.wait(pending, timeout=1.0))
            finally:
                self.loop.close()


async def sleep_or(event: asyncio.Event, seconds: float) -> bool:
    """Wait until ``event`` is set or ``seconds`` pass; True if it was set."""
    try:
        await asyncio.wait_for(event.wait(), max(0.0, seconds))
    except asyncio.TimeoutError:
        return event.is_set()
    return True


async def connect(settings: NatsSettings, name: str, stop: asyncio.Event, reconnect_wait: float,
                   connect_timeout: float, max_retries: int | None, on_failure: Callable[[int, str], None],
                   error_cb: Callable[[Exception], Coroutine[Any, Any, None]], **callbacks: Any) -> Any:
    """Connect (nats-py retries every ``reconnect_wait`` seconds, for ever, then reconnects by
    itself); each failed attempt is reported to ``on_failure``. Returns the client, or None when
    stopped or after ``max_retries`` failed attempts."""
    from nats.aio.client import Client

    nc = Client()
    attempts = [0]
    give_up = asyncio.Event()

    async def on_error(exc: Exception) -> None:
        if nc.is_connected or attempts[0] < 0:
            await error_cb(exc)
            return
        attempts[0] += 1
        reason = f"cannot reach NATS at {', '.join(redact_url(u) for u in settings.servers)}: {type(exc).__name__}: {exc}"
        on_failure(attempts[0], reason)
        if max_retries is not None and attempts[0] > max_retries:
            give_up.set()

    connecting = asyncio.ensure_future(nc.connect(
        list(settings.servers), name=name, allow_reconnect=True, max_reconnect_attempts=-1,
        reconnect_time_wait=reconnect_wait,  # type: ignore[arg-type]  # a float works (asyncio.sleep)
        connect_timeout=max(1, round(connect_timeout)),
        error_cb=on_error, **callbacks))
    ending = asyncio.ensure_future(first(stop, give_up))
    await asyncio.wait({connecting, ending}, return_when=asyncio.FIRST_COMPLETED)
    ending.cancel()
    if connecting.done() and not connecting.cancelled() and connecting.exception() is None:
        attempts[0] = -1  # connected: errors from now on are the caller's
        return nc
    connecting.cancel()
    with contextlib.suppress(BaseException):  # cancelled or failed: we give up either way
        await connecting
    try:
        await asyncio.wait_for(nc.close(), 1.0)
    except Exception:
        log.debug("closing a half-open NATS client", exc_info=True)
    return None


async def first(*events: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
