"""The bus's names and payloads: subjects, their escaping, status messages (no NATS library here).

See ``kiyotaka_ws.nats`` for the subject and payload formats.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Mapping
from typing import Any, Callable

import attrs

from ..status import ConnectionStatus

__all__ = ["STATUS_TOKEN", "NatsSettings", "dumps", "escape_token", "loads", "series_subject", "status_message",
           "status_subject", "unescape_token"]

try:  # the relay re-serializes each point: orjson if installed (a runtime dependency on CPython)
    import orjson

    dumps: Callable[[Any], bytes] = orjson.dumps
    loads: Callable[[bytes], Any] = orjson.loads
except ImportError:  # pragma: no cover - depends on the environment
    _encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

    def dumps(value: Any) -> bytes:
        return _encode(value).encode()

    loads = json.loads

STATUS_TOKEN = "_status"


def escape_token(value: Any) -> str:
    """One subject token for ``value`` (see the module doc for the escaping)."""
    if value is None or value == "":
        return "%00"
    text = str(value)
    if text.isalnum() or all(c.isalnum() or c in "_-" for c in text):
        return text
    out = []
    for c in text:
        if c in "%.*>" or c.isspace() or not c.isprintable():
            out.append("".join(f"%{b:02X}" for b in c.encode()))
        else:
            out.append(c)
    return "".join(out)


def unescape_token(token: str) -> str:
    """The value behind ``escape_token`` (``%00`` -> ``""``)."""
    if "%" not in token:
        return token
    if token == "%00":
        return ""
    raw = bytearray()
    i = 0
    while i < len(token):
        if token[i] == "%" and i + 3 <= len(token):
            raw += bytes([int(token[i + 1:i + 3], 16)])
            i += 3
        else:
            raw += token[i].encode()
            i += 1
    return raw.decode()


def series_subject(prefix: str, series: Mapping[str, Any]) -> str:
    """The subject of a point, from its ``series`` object."""
    symbol = series.get("symbol")
    if symbol is None:
        symbol = series.get("coin")
    return (f"{prefix}.{escape_token(series.get('type'))}.{escape_token(series.get('exchange'))}."
            f"{escape_token(symbol)}")


def status_subject(prefix: str, family: str) -> str:
    """The subject of a family's statuses and drop notices: ``<prefix>._status.<family>``."""
    return f"{prefix}.{STATUS_TOKEN}.{family}"


@attrs.frozen
class NatsSettings:
    """Validated NATS arguments of a relay or a consumer."""

    servers: tuple[str, ...]
    prefix: str
    jetstream: bool
    start_time: datetime.datetime | None = None


def status_message(status: ConnectionStatus, heartbeat: bool = False) -> bytes:
    return dumps({"kind": "status", "family": status.family, "state": status.state.value,
                   "attempt": status.attempt, "reason": status.reason, "time_ns": time.time_ns(),
                   "heartbeat": heartbeat})
