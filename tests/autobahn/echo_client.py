"""Autobahn|Testsuite echo client on kiyotaka_ws._transport.wire.WebSocket (run by run.sh, not by pytest).

The client's own transport (``kiyotaka_ws._transport.dial``: the cancellable connect, then
websocket-client's upgrade over that socket, reading the answer byte by byte so nothing past it is
buffered) opens the connection; the upgraded socket is then handed to wire.WebSocket, which echoes
text as text and binary as binary, one message for one message.
"""

from __future__ import annotations

import sys

from kiyotaka_ws._transport import Cancel, dial
from kiyotaka_ws._transport.wire import TEXT, WebSocket, WireError

AGENT = "kiyotaka-ws-wire"


def connect(url: str) -> WebSocket:
    sock, leftover = dial(url, timeout=30, cancel=Cancel())
    # 9.* sends 16 MiB messages, 9.3.1 a 4 MiB one in 64-byte fragments.
    return WebSocket(sock, max_message_bytes=32 << 20, max_fragments=1 << 17, send_timeout=30.0, leftover=leftover)


def run_case(base: str, case: int) -> None:
    ws = connect(f"{base}/runCase?case={case}&agent={AGENT}")
    try:
        while True:
            opcode, payload = ws.read_message()
            if opcode == TEXT:
                ws.send_text(payload)
            else:
                ws.send_binary(payload)
    except WireError:
        pass
    finally:
        ws.close_socket()


def main() -> None:
    base = sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:9001"
    ws = connect(f"{base}/getCaseCount")
    count = int(ws.read_message()[1])
    ws.close()
    ws.close_socket()
    print(f"{count} cases", flush=True)
    for case in range(1, count + 1):
        run_case(base, case)
        if case % 50 == 0:
            print(f"  {case}/{count}", flush=True)
    ws = connect(f"{base}/updateReports?agent={AGENT}")
    try:
        ws.read_message()
    except WireError:
        pass
    ws.close_socket()


if __name__ == "__main__":
    main()
