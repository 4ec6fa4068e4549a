"""TEMPORARY stand-in for wire.py (replaced by the real module on merge)."""
from __future__ import annotations

import contextlib
import socket
import time
from typing import Callable

TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA

class WireError(Exception):
    pass

class ProtocolError(WireError):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"protocol error {code}: {reason}")
        self.code, self.reason = code, reason

class ConnectionClosed(WireError):
    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"closed by the server ({code} {reason})" if code else reason)
        self.code, self.reason = code, reason

class SendTimeout(WireError):
    pass

class WebSocket:
    def __init__(self, sock: socket.socket, *, max_message_bytes: int, max_fragments: int = 4096,
                 send_timeout: float = 10.0, leftover: bytes = b"", clock: Callable[[], float] = time.monotonic) -> None:
        from .connection import _WebSocket
        self._ws = _WebSocket(max_message_bytes)
        self._ws.sock, self._ws.connected = sock, True
        self._ws._buf = leftover
        self.sock = sock
        self.clock = clock
        self.last_rx = clock()
        self._closed = False

    def read_message(self) -> tuple[int, bytes]:
        from .connection import _Ended
        while True:
            try:
                opcode, payload = self._ws.read_message()
            except _Ended as exc:
                raise ProtocolError(1002, str(exc)) from None
            except Exception:
                raise ConnectionClosed(None, "connection closed without a close frame") from None
            self.last_rx = self.clock()
            if opcode == CLOSE:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                self.close(code or 1000)
                raise ConnectionClosed(code, payload[2:].decode("utf-8", "replace"))
            if opcode in (TEXT, BINARY):
                return opcode, payload

    def send_text(self, text: str | bytes) -> None:
        try:
            self._ws.send(text)
        except Exception as exc:
            raise WireError(str(exc)) from None

    def ping(self, payload: bytes = b"") -> None:
        try:
            self._ws.ping(payload)
        except Exception as exc:
            raise WireError(str(exc)) from None

    def close(self, code: int = 1000, reason: str = "") -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._ws.send_close(code, reason.encode())

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def close_socket(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
