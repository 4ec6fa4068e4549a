"""Wire protocol: JSON-RPC request builders, message classification and frame decoding."""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Iterable
from typing import Any, Callable

import brotli  # type: ignore[import-untyped]

from .errors import DecodeError
from .events import excerpt

# Frames are parsed by orjson when it is installed (a runtime dependency on CPython) and by the
# stdlib otherwise. KIYOTAKA_WS_JSON=stdlib (read at import) or ``use_json_parser("stdlib")`` forces
# the fallback, so the test suite runs the parser-sensitive tests under both. Both read UTF-8 only
# and refuse NaN/Infinity; they still differ outside the protocol's domain: orjson refuses escaped
# lone surrogates and numbers beyond a double, and reads integers beyond 64 bits as floats.
JSON_PARSER_ENV = "KIYOTAKA_WS_JSON"
JSON_PARSERS = ("orjson", "stdlib")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_stdlib_decode = json.JSONDecoder(parse_constant=_refuse_constant).decode


def _stdlib_loads(payload: bytes | str) -> Any:
    if not isinstance(payload, str):  # strict UTF-8, like orjson (json.loads would also guess UTF-16/32)
        payload = bytes(payload).decode("utf-8")
    return _stdlib_decode(payload)


try:
    import orjson as _orjson
except ImportError:  # pragma: no cover - PyPy, or an install without it
    _orjson = None  # type: ignore[assignment]

_loads: Callable[[bytes | str], Any] = _stdlib_loads


def use_json_parser(name: str | None = None) -> str:
    """Select the frame parser: "orjson", "stdlib", or None for the default (the environment
    variable ``KIYOTAKA_WS_JSON`` if set, else orjson when installed). Returns the name in use.

    Raises ``ValueError`` for an unknown name or "orjson" when it is not installed.
    """
    global _loads
    if name is None:
        name = os.environ.get(JSON_PARSER_ENV) or ("orjson" if _orjson is not None else "stdlib")
    if name not in JSON_PARSERS:
        raise ValueError(f"{JSON_PARSER_ENV}: expected one of {', '.join(JSON_PARSERS)}, got {name!r}")
    if name == "orjson" and _orjson is None:
        raise ValueError("the orjson parser was asked for but orjson is not installed")
    _loads = _orjson.loads if name == "orjson" else _stdlib_loads
    return name


def json_parser() -> str:
    """The name of the frame parser in use."""
    return "stdlib" if _loads is _stdlib_loads else "orjson"


def _is_utf8(payload: bytes | str) -> bool:
    try:
        payload.encode("utf-8") if isinstance(payload, str) else bytes(payload).decode("utf-8")
    except UnicodeError:
        return False
    return True


use_json_parser()

VERSION = "v2"
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def request(req_id: int, method: str, params: dict[str, Any]) -> str:
    """One JSON-RPC 2.0 request as text."""
    return _dumps({"jsonrpc": "2.0", "id": req_id, "method": method, "params": params})


def authenticate(req_id: int, token: str) -> str:
    """``public/authenticate``. The result holds the key: never log it."""
    return request(req_id, "public/authenticate", {"token": token})


def subscribe(req_id: int, channels: Iterable[dict[str, str]], compression: str | None) -> str:
    """The ``public/subscribe`` request for ``channels`` (wire form), asking for ``compression``."""
    params: dict[str, Any] = {"channels": list(channels), "version": VERSION}
    if compression:
        params["compression"] = compression
    return request(req_id, "public/subscribe", params)


def unsubscribe(req_id: int, channels: Iterable[dict[str, str]]) -> str:
    """The ``public/unsubscribe`` request for ``channels`` (wire form)."""
    return request(req_id, "public/unsubscribe", {"channels": list(channels)})


class Kind(enum.Enum):
    """What a parsed server message is: data points, an answer, an error answering no request, or unknown."""

    DATA = "data"          # {"points": [...]}
    RESPONSE = "response"  # {"id": N, "result": ...} or {"id": N, "error": ...}
    ERROR = "error"        # {"error": ...} answering no request
    UNKNOWN = "unknown"


def classify(message: Any) -> Kind:
    """The ``Kind`` of a parsed message (anything unexpected is ``Kind.UNKNOWN``, never an error)."""
    if type(message) is not dict:
        return Kind.UNKNOWN
    if "points" in message:
        return Kind.DATA
    if "error" in message:
        return Kind.RESPONSE if message.get("id") is not None else Kind.ERROR
    if "result" in message and message.get("id") is not None:
        return Kind.RESPONSE
    return Kind.UNKNOWN


def error_details(message: dict[str, Any]) -> tuple[Any, str, Any]:
    """(code, message, data) of an error answer, JSON-RPC style or REST style.

    JSON-RPC: ``{"error": {"code": -32602, "message": "...", "data": ...}}``;
    REST style: ``{"error": "INVALID_SYMBOL", "message": "...", "retry_after": 5}``.
    """
    err = message.get("error")
    if isinstance(err, dict):
        return err.get("code"), str(err.get("message", "")), err.get("data")
    text = message.get("message")
    data = {k: v for k, v in message.items() if k not in ("error", "message", "id", "jsonrpc")}
    return err, str(text if text is not None else err), data or None


def _looks_like_json(data: bytes) -> bool:
    head = data[:64].lstrip()
    return head[:1] in (b"{", b"[")


class FrameDecoder:
    """Turns one WebSocket message into a JSON value, never holding more than ``max_bytes``.

    Binary frames are brotli (decompressed with a bounded output buffer, so a decompression bomb
    costs bounded memory) and fall back to plain UTF-8 JSON; text frames are JSON.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes

    def decode(self, payload: bytes | str, binary: bool) -> Any:
        if binary:
            payload = self.inflate(payload)  # type: ignore[arg-type]
        elif len(payload) > self.max_bytes:
            raise DecodeError(f"frame of {len(payload)} bytes exceeds max_frame_bytes={self.max_bytes}",
                              excerpt=excerpt(payload))
        try:
            return _loads(payload)
        except (ValueError, RecursionError):
            # Labelled by the payload, not by the exception: orjson reports bad UTF-8 as a JSON error.
            reason = "not JSON" if _is_utf8(payload) else "invalid UTF-8"
            raise DecodeError(f"frame is {reason}", excerpt=excerpt(payload)) from None

    def inflate(self, data: bytes) -> bytes:
        """A binary frame's JSON text: brotli-decompressed (or as is, when it is plain JSON)."""
        if len(data) > self.max_bytes:
            raise DecodeError(f"frame of {len(data)} bytes exceeds max_frame_bytes={self.max_bytes}",
                              excerpt=excerpt(data))
        return self._decompress(data)

    def _decompress(self, data: bytes) -> bytes:
        decompressor = brotli.Decompressor()
        try:
            out: bytes = decompressor.process(data, output_buffer_limit=self.max_bytes + 1)
        except brotli.error:
            if _looks_like_json(data):  # the server may send plain JSON in binary frames
                return data
            raise DecodeError("frame is neither brotli nor JSON", excerpt=excerpt(data)) from None
        if len(out) > self.max_bytes:
            raise DecodeError(f"frame decompresses to more than max_frame_bytes={self.max_bytes}",
                              excerpt=excerpt(data))
        if not decompressor.is_finished():
            raise DecodeError("truncated brotli frame", excerpt=excerpt(data))
        return out
