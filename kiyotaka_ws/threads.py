"""Joining the threads the client starts, by a deadline (``time.monotonic()``)."""

from __future__ import annotations

import threading
import time


def join_by(thread: threading.Thread | None, deadline: float) -> bool:
    """Wait for ``thread`` until ``deadline``; True when it has ended (or never started, or is the
    calling thread itself: a thread cannot join itself, as when ``stop()`` is called from a handler)."""
    if thread is None or thread is threading.current_thread() or thread.ident is None:
        return True
    thread.join(max(0.0, deadline - time.monotonic()))
    return not thread.is_alive()
