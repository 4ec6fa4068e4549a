"""The reader's own frame parser, over a real socket pair with hand-built frames."""

from __future__ import annotations

import socket
import struct

import pytest
import websocket

from kiyotaka_ws.connection import BINARY, CLOSE, PING, PONG, TEXT, _Ended, _WebSocket


def frame(opcode: int, payload: bytes, fin: bool = True, masked: bool = False) -> bytes:
    head = (0x80 if fin else 0) | opcode
    size = len(payload)
    mask_bit = 0x80 if masked else 0
    if size < 126:
        out = struct.pack("!BB", head, mask_bit | size)
    elif size < 65536:
        out = struct.pack("!BBH", head, mask_bit | 126, size)
    else:
        out = struct.pack("!BBQ", head, mask_bit | 127, size)
    return out + (b"\0\0\0\0" if masked else b"") + payload


@pytest.fixture
def pair():
    ours, theirs = socket.socketpair()
    ws = _WebSocket(1 << 20)
    ws.sock, ws.connected = ours, True
    yield ws, theirs
    ours.close()
    theirs.close()


def test_lengths_fragments_and_control_frames(pair):
    ws, peer = pair
    big, huge = b"b" * 300, b"h" * 70_000
    peer.sendall(frame(TEXT, b"small") + frame(BINARY, big) + frame(BINARY, huge)
                 + frame(TEXT, b"he", fin=False) + frame(PONG, b"") + frame(0, b"ll", fin=False) + frame(0, b"o")
                 + frame(PING, b"hi") + frame(CLOSE, b"\x03\xe8bye"))
    assert ws.read_message() == (TEXT, b"small")
    assert ws.read_message() == (BINARY, big)
    assert ws.read_message() == (BINARY, huge)
    assert ws.read_message() == (PONG, b"")  # a control frame may arrive between fragments
    assert ws.read_message() == (TEXT, b"hello")
    assert ws.read_message() == (PING, b"hi")
    answer = peer.recv(100)
    assert answer[0] == 0x80 | PONG and answer[1] & 0x80  # a masked pong came back at once
    assert ws.read_message() == (CLOSE, b"\x03\xe8bye")


@pytest.mark.parametrize("raw, words", [
    (frame(0, b"orphan"), "unexpected opcode 0"),
    (frame(TEXT, b"a", fin=False) + frame(TEXT, b"b"), "unexpected opcode 1"),
    (frame(3, b"x"), "unexpected opcode 3"),
    (frame(0xB, b""), "reserved opcode"),
    (frame(TEXT, b"x", masked=True), "masked"),
    (bytes([0x80 | 0x40 | TEXT, 1]) + b"x", "extension"),
])
def test_protocol_violations_end_the_connection(pair, raw, words):
    ws, peer = pair
    peer.sendall(raw)
    with pytest.raises(_Ended, match=words):
        ws.read_message()


def test_oversized_frame_is_refused_before_its_payload_arrives(pair):
    ws, peer = pair
    peer.sendall(struct.pack("!BBQ", 0x80 | BINARY, 127, 2**40))  # announces 1 TiB, sends nothing more
    with pytest.raises(_Ended, match="exceeds max_frame_bytes"):
        ws.read_message()


def test_timeout_mid_frame_loses_nothing(pair):
    ws, peer = pair
    whole = frame(TEXT, b"x" * 1000)
    peer.sendall(whole[:300])
    ws.settimeout(0.05)
    with pytest.raises(websocket.WebSocketTimeoutException):
        ws.read_message()
    peer.sendall(whole[300:])
    assert ws.read_message() == (TEXT, b"x" * 1000)


def test_peer_closing_raises_closed(pair):
    ws, peer = pair
    peer.sendall(frame(TEXT, b"last")[:3])
    peer.shutdown(socket.SHUT_WR)
    with pytest.raises(websocket.WebSocketConnectionClosedException):
        ws.read_message()
