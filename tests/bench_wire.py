"""Benchmarks of kiyotaka_ws.wire against the parser in connection._WebSocket (not a pytest module).

    python tests/bench_wire.py            # receive path old vs new, masking, UTF-8 validation cost
    python tests/bench_wire.py flood old  # peak RSS of 8M two-byte fragments (run old and new separately)
    python tests/bench_wire.py flood new
"""

from __future__ import annotations

import os
import resource
import socket
import struct
import sys
import threading
import time
import timeit
from typing import Callable

from kiyotaka_ws.connection import _WebSocket
from kiyotaka_ws.wire import BINARY, TEXT, WebSocket, WireError, _mask


def frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    size = len(payload)
    b1 = (0x80 if fin else 0) | opcode
    if size < 126:
        return bytes((b1, size)) + payload
    if size < 65536:
        return struct.pack("!BBH", b1, 126, size) + payload
    return struct.pack("!BBQ", b1, 127, size) + payload


def old_reader(sock: socket.socket, cap: int) -> Callable[[], tuple[int, bytes]]:
    ws = _WebSocket(cap)
    ws.sock = sock
    ws.connected = True
    return ws.read_message


def new_reader(sock: socket.socket, cap: int) -> Callable[[], tuple[int, bytes]]:
    return WebSocket(sock, max_message_bytes=cap).read_message


def time_reads(make: Callable[[socket.socket, int], Callable[[], tuple[int, bytes]]], data: bytes, count: int) -> float:
    a, b = socket.socketpair()
    try:
        read = make(a, 64 << 20)
        feeder = threading.Thread(target=b.sendall, args=(data,))
        feeder.start()
        started = time.perf_counter()
        for _ in range(count):
            read()
        elapsed = time.perf_counter() - started
        feeder.join()
        return elapsed
    finally:
        a.close()
        b.close()


def bench_receive() -> None:
    small = b'{"type":"trade","exchange":"BINANCE","symbol":"BTCUSDT","price":"97123.45","size":"0.0123"}'
    small = (small * 3)[:200]
    large = bytes(range(256)) * 80  # 20 KB
    cases = {"200k x 200 B text": (frame(TEXT, small) * 200_000, 200_000),
             "20k x 20 KB binary": (frame(BINARY, large) * 20_000, 20_000)}
    for name, (data, count) in cases.items():
        for label, make in (("old", old_reader), ("new", new_reader)):
            best = min(time_reads(make, data, count) for _ in range(5))
            print(f"{name:20} {label}: {best * 1000:7.1f} ms  {best / count * 1e6:6.2f} us/frame")


def bench_utf8() -> None:
    ascii_json = (b'{"price":"97123.45","size":"0.01","side":"buy","ts":1732400000123},' * 40)[:2048]
    non_ascii = ascii_json[:2045] + "€".encode()
    print(f"2 KB ASCII isascii():      {timeit.timeit(ascii_json.isascii, number=200_000) / 200_000 * 1e9:6.0f} ns")
    print(f"2 KB non-ASCII decode():   {timeit.timeit(non_ascii.decode, number=200_000) / 200_000 * 1e9:6.0f} ns")
    text, binary = frame(TEXT, ascii_json) * 100_000, frame(BINARY, ascii_json) * 100_000
    t = min(time_reads(new_reader, text, 100_000) for _ in range(5))
    b = min(time_reads(new_reader, binary, 100_000) for _ in range(5))
    print(f"2 KB frame read, TEXT {t / 1e5 * 1e6:.3f} us vs BINARY {b / 1e5 * 1e6:.3f} us "
          f"(validation ~{(t - b) / 1e5 * 1e9:.0f} ns/frame)")


def bench_mask() -> None:
    from websocket._abnf import ABNF  # websocket-client is a dependency of the package
    key = os.urandom(4)
    for size in (200, 20_000, 1 << 20, 16 << 20):
        payload = os.urandom(size)
        number = max(3, 2_000_000 // size)
        ours = timeit.timeit(lambda p=payload: _mask(key, p), number=number) / number
        theirs = timeit.timeit(lambda p=payload: ABNF.mask(key, p), number=number) / number
        print(f"mask {size:>9} B: ours {ours * 1e6:9.1f} us   websocket-client ABNF.mask {theirs * 1e6:9.1f} us")


def flood(which: str) -> None:
    """8M two-byte continuation fragments (a never-ending message); report peak RSS growth."""
    count = 8_000_000
    chunk = frame(0, b"ab", fin=False) * 250_000  # 1 MB: the flood is sent in pieces, never held whole
    a, b = socket.socketpair()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if which == "old":
        read = old_reader(a, 1 << 30)
    else:
        read = WebSocket(a, max_message_bytes=1 << 30, max_fragments=1 << 30).read_message
    def send() -> None:
        b.sendall(frame(BINARY, b"ab", fin=False))
        for _ in range(count // 250_000):
            b.sendall(chunk)
        b.close()

    feeder = threading.Thread(target=send)
    feeder.start()
    started = time.perf_counter()
    try:
        read()
    except (WireError, Exception) as exc:  # noqa: BLE001 - EOF at the end of the flood, either parser
        print(f"{which}: ended with {type(exc).__name__}")
    elapsed = time.perf_counter() - started
    feeder.join()
    growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(f"{which}: {count} fragments ({count * 2 >> 20} MiB of payload) in {elapsed:.1f}s, "
          f"peak RSS +{growth:.0f} MiB")


if __name__ == "__main__":
    if sys.argv[1:2] == ["flood"]:
        flood(sys.argv[2])
    else:
        bench_receive()
        bench_utf8()
        bench_mask()
