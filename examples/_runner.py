"""Shared by the examples: parse --fake / --seconds, build the client, run it until stopped.

With ``--fake`` an example talks to a local FakeKiyotakaServer with a synthetic market (no key, no
network); without it, to the real service with the key from KIYOTAKA_API_KEY.
"""

from __future__ import annotations

import argparse
import contextlib
import threading
from collections.abc import Sequence
from typing import Callable

from kiyotaka_ws import KiyotakaClient


def run(description: str, setup: Callable[[KiyotakaClient], None], argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--fake", action="store_true", help="use a local fake server with a synthetic market")
    parser.add_argument("--seconds", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    args = parser.parse_args(argv)
    if args.fake:
        from kiyotaka_ws.demo import fake_market
        endpoint = fake_market()
    else:
        endpoint = contextlib.nullcontext({})
    with endpoint as kwargs:
        client = KiyotakaClient(**kwargs)
        setup(client)
        timer = threading.Timer(args.seconds, client.stop) if args.seconds else None
        if timer:
            timer.start()
        try:
            client.run_forever()  # Ctrl-C stops cleanly; a rejected key raises AuthenticationError
        finally:
            if timer:
                timer.cancel()
                timer.join()
