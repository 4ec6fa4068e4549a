"""kiyotaka_ws._transport.wire against crafted frames on real loopback sockets (no mocks)."""

from __future__ import annotations

import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
import tracemalloc
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiyotaka_ws._transport.wire import (
    BINARY,
    CLOSE,
    DEFAULT_MAX_FRAGMENTS,
    PING,
    PONG,
    TEXT,
    ConnectionClosed,
    ProtocolError,
    SendTimeout,
    WebSocket,
    WireError,
)

CONT = 0x0
MiB = 1 << 20


# -- helpers: the server side of the wire --------------------------------------------------------------


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0, mask: bytes | None = None,
          length_form: int | None = None) -> bytes:
    """A frame as a server would send it; ``length_form`` forces the 7/16/64-bit length encoding."""
    size = len(payload)
    form = length_form if length_form is not None else (7 if size < 126 else 16 if size < 65536 else 64)
    b1 = (0x80 if fin else 0) | (rsv << 4) | opcode
    mask_bit = 0x80 if mask is not None else 0
    if form == 7:
        head = bytes((b1, mask_bit | size))
    elif form == 16:
        head = struct.pack("!BBH", b1, mask_bit | 126, size)
    else:
        head = struct.pack("!BBQ", b1, mask_bit | 127, size)
    if mask is not None:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        head += mask
    return head + payload


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError(f"EOF after {len(data)} of {size} bytes")
        data += chunk
    return data


def read_client_frame(sock: socket.socket) -> tuple[bool, int, bytes]:
    """(fin, opcode, unmasked payload) of the next client frame; asserts it is masked."""
    b1, b2 = recv_exactly(sock, 2)
    assert b2 & 0x80, "client frames must be masked"
    assert not b1 & 0x70
    size = b2 & 0x7F
    if size == 126:
        size = struct.unpack("!H", recv_exactly(sock, 2))[0]
    elif size == 127:
        size = struct.unpack("!Q", recv_exactly(sock, 8))[0]
    key = recv_exactly(sock, 4)
    masked = recv_exactly(sock, size)
    return bool(b1 & 0x80), b1 & 0x0F, bytes(b ^ key[i % 4] for i, b in enumerate(masked))


def read_close_code(sock: socket.socket) -> int:
    """The code of the close frame the client sent (skipping pongs)."""
    while True:
        _, opcode, payload = read_client_frame(sock)
        if opcode == CLOSE:
            return struct.unpack("!H", payload[:2])[0]


@pytest.fixture
def link() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(client, server) ends of a TCP connection on loopback."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    server.settimeout(10)
    yield client, server
    client.close()
    server.close()


def make_ws(client: socket.socket, **options: object) -> WebSocket:
    options.setdefault("max_message_bytes", 1 * MiB)
    options.setdefault("send_timeout", 2.0)
    return WebSocket(client, **options)  # type: ignore[arg-type]


def expect_failure(link: tuple[socket.socket, socket.socket], data: bytes, code: int, **options: object) -> ProtocolError:
    """Feed ``data``; the client must fail with ProtocolError(code) and send a close frame with ``code``."""
    client, server = link
    ws = make_ws(client, **options)
    server.sendall(data)
    with pytest.raises(ProtocolError) as info:
        ws.read_message()
    assert info.value.code == code
    assert read_close_code(server) == code
    with pytest.raises(ProtocolError):  # the error sticks
        ws.read_message()
    return info.value


# -- data messages ---------------------------------------------------------------------------------------


def test_reads_text_and_binary_and_answers_pings(link):
    client, server = link
    ticks = iter(range(100, 200))
    ws = make_ws(client, clock=lambda: float(next(ticks)))
    server.sendall(frame(TEXT, b'{"a":1}') + frame(PING, b"hi") + frame(PONG, b"x") + frame(BINARY, b"\x00\xff"))
    assert ws.read_message() == (TEXT, b'{"a":1}')
    assert ws.read_message() == (BINARY, b"\x00\xff")
    assert ws.last_rx >= 101.0  # the bytes read refreshed it (once per recv, not per frame)
    assert 101.0 <= ws.data_rx <= ws.last_rx  # and the data messages' bytes the data clock
    assert read_client_frame(server) == (True, PONG, b"hi")


def test_non_minimal_length_encodings_are_accepted(link):
    client, server = link
    ws = make_ws(client)
    server.sendall(frame(TEXT, b"abc", length_form=16) + frame(BINARY, b"xyz", length_form=64))
    assert ws.read_message() == (TEXT, b"abc")
    assert ws.read_message() == (BINARY, b"xyz")


def test_leftover_from_the_handshake_is_parsed_first(link):
    client, server = link
    data = frame(TEXT, b"first") + frame(TEXT, b"second")
    ws = make_ws(client, leftover=data[:4])
    server.sendall(data[4:])
    assert ws.read_message() == (TEXT, b"first")
    assert ws.read_message() == (TEXT, b"second")


def _stream() -> tuple[bytes, list[tuple[int, bytes]], range]:
    """Frames of every shape, the messages they make, and where the 64-bit-length payload lies."""
    euro = "€".encode()  # 3 bytes, split across two fragments below
    big = bytes(range(256)) * 257  # 65792 bytes: 64-bit length
    parts = [
        frame(TEXT, b"small"),
        frame(BINARY, b"m" * 300),  # 16-bit length
        frame(BINARY, big),
        frame(TEXT, b"price " + euro[:2], fin=False),
        frame(PING, b"mid"),
        frame(CONT, euro[2:] + b" 12", fin=False),
        frame(PONG, b""),
        frame(CONT, b"", fin=False),
        frame(CONT, b"!"),
        frame(BINARY, b"", fin=True),
        frame(TEXT, "ünïcode".encode()),
    ]
    messages = [(TEXT, b"small"), (BINARY, b"m" * 300), (BINARY, big), (TEXT, "price € 12!".encode()),
                (BINARY, b""), (TEXT, "ünïcode".encode())]
    start = len(parts[0]) + len(parts[1]) + 10
    return b"".join(parts), messages, range(start, start + len(big))


def _read_all(ws: WebSocket, count: int) -> list[tuple[int, bytes]]:
    return [ws.read_message() for _ in range(count)]


def test_split_at_every_index_yields_the_same_messages():
    """One split per run: the first part as handshake leftover, the rest from the socket."""
    data, messages, big_payload = _stream()
    for index in range(len(data) + 1):
        if index in big_payload and (index - big_payload.start) % 997:
            continue  # inside one payload every boundary is alike: sample it
        a, b = socket.socketpair()
        try:
            ws = WebSocket(a, max_message_bytes=MiB, leftover=data[:index])
            b.sendall(data[index:])
            assert _read_all(ws, len(messages)) == messages, index
            assert read_client_frame(b) == (True, PONG, b"mid")
        finally:
            a.close()
            b.close()


def test_one_byte_per_send_yields_the_same_messages(link):
    data, messages, _ = _stream()
    client, server = link

    def trickle() -> None:
        for i in range(len(data)):
            server.send(data[i:i + 1])

    feeder = threading.Thread(target=trickle)
    feeder.start()
    try:
        assert _read_all(make_ws(client), len(messages)) == messages
    finally:
        feeder.join()
    assert read_client_frame(server) == (True, PONG, b"mid")


@st.composite
def framed_messages(draw: st.DrawFn) -> tuple[bytes, list[tuple[int, bytes]], int]:
    messages: list[tuple[int, bytes]] = []
    wire: list[bytes] = []
    pings = 0
    for _ in range(draw(st.integers(1, 6))):
        if draw(st.booleans()):
            opcode, payload = TEXT, draw(st.text(max_size=300)).encode("utf-8")
        else:
            opcode, payload = BINARY, draw(st.binary(max_size=70000 if draw(st.integers(0, 9)) == 0 else 300))
        cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=6)))
        pieces = [payload[i:j] for i, j in zip([0, *cuts], [*cuts, len(payload)])]
        for n, piece in enumerate(pieces):
            forms = [None, None, 64] + ([16] if len(piece) < 65536 else [])  # non-minimal lengths too
            wire.append(frame(opcode if n == 0 else CONT, piece, fin=n == len(pieces) - 1,
                              length_form=draw(st.sampled_from(forms))))
            if draw(st.integers(0, 4)) == 0:
                wire.append(frame(PING, draw(st.binary(max_size=125))))
                pings += 1
        messages.append((opcode, payload))
    wire.append(frame(TEXT, b"end"))  # so every ping is read (and answered) before the test checks
    messages.append((TEXT, b"end"))
    return b"".join(wire), messages, pings


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=framed_messages())
def test_random_fragmentation_round_trips(case):
    data, messages, pings = case
    a, b = socket.socketpair()
    b.settimeout(10)
    try:
        ws = WebSocket(a, max_message_bytes=MiB)
        feeder = threading.Thread(target=b.sendall, args=(data,))
        feeder.start()
        assert _read_all(ws, len(messages)) == messages
        feeder.join()
        assert all(read_client_frame(b)[1] == PONG for _ in range(pings))
    finally:
        a.close()
        b.close()


# -- bug 1: a peer that floods pings and never reads ---------------------------------------------------


def test_ping_flood_from_a_peer_that_never_reads_gives_send_timeout(link):
    client, server = link
    for sock in (client, server):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    ws = make_ws(client, send_timeout=0.5)
    stop = threading.Event()
    server.settimeout(0.2)

    def flood() -> None:
        ping = frame(PING, b"p" * 125) * 32
        while not stop.is_set():
            try:
                server.sendall(ping)
            except OSError:  # timeout: our reader is stuck in a pong send, as intended
                continue

    flooder = threading.Thread(target=flood)
    flooder.start()
    try:
        started = time.monotonic()
        with pytest.raises(SendTimeout):
            ws.read_message()
        assert time.monotonic() - started < 5.0
    finally:
        stop.set()
        flooder.join()
    with pytest.raises(SendTimeout):  # the link is dead for every sender
        ws.send_text("late")


def test_send_to_a_peer_that_never_reads_times_out(link):
    client, _server = link
    client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    ws = make_ws(client, send_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(SendTimeout):
        ws.send_text(b"x" * (8 * MiB))
    assert 0.25 < time.monotonic() - started < 2.0
    ws.close()  # no close frame can follow half a frame: does nothing, quickly, without raising


def test_send_lock_wait_is_bounded(link):
    client, _server = link
    ws = make_ws(client, send_timeout=0.2)
    ws._send_lock.acquire()  # another sender stuck in a send
    try:
        with pytest.raises(SendTimeout):
            ws.ping()
    finally:
        ws._send_lock.release()


# -- bug 2: fragment floods ------------------------------------------------------------------------------


def test_zero_length_continuation_flood_fails_with_1009(link):
    count = DEFAULT_MAX_FRAGMENTS + 10
    data = frame(BINARY, b"", fin=False) + frame(CONT, b"", fin=False) * count
    error = expect_failure(link, data, 1009)
    assert "max_fragments" in str(error)


def _send_until_closed(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:
        pass  # the client gave up on the flood, as it should


def test_fragment_flood_memory_stays_bounded(link):
    """Two-byte fragments up to the byte cap (~200k): a list of bytes objects held ~11 MiB for them."""
    client, server = link
    ws = make_ws(client, max_message_bytes=400_000, max_fragments=1 << 21)
    count = 210_000
    data = frame(BINARY, b"ab", fin=False) + frame(CONT, b"ab", fin=False) * count
    feeder = threading.Thread(target=_send_until_closed, args=(server, data))
    feeder.start()
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError) as info:
            ws.read_message()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        client.close()  # unblocks the rest of the flood
        feeder.join()
    assert info.value.code == 1009
    assert "max_message_bytes" in str(info.value)
    # 400 kB of message, one 64 KiB read buffer, slack: well below the per-fragment cost of a list.
    assert peak < 2 * MiB, peak


def test_frame_over_the_cap_fails_before_its_payload_arrives(link):
    # Only the header is sent: the verdict must not wait for (or buffer) the payload.
    expect_failure(link, struct.pack("!BBQ", 0x82, 127, 1 << 40), 1009)


def test_fragments_summing_over_the_cap_fail_with_1009(link):
    data = frame(TEXT, b"a" * 600, fin=False) + frame(CONT, b"a" * 600, fin=False)
    expect_failure(link, data, 1009, max_message_bytes=1000)


# -- bug 3: control frames --------------------------------------------------------------------------------


def test_126_byte_ping_is_not_answered_and_fails_with_1002(link):
    client, server = link
    ws = make_ws(client)
    server.sendall(frame(PING, b"p" * 126))
    with pytest.raises(ProtocolError) as info:
        ws.read_message()
    assert info.value.code == 1002
    assert read_client_frame(server)[1] == CLOSE  # no pong before it


def test_125_byte_ping_is_answered(link):
    client, server = link
    ws = make_ws(client)
    server.sendall(frame(PING, b"p" * 125) + frame(TEXT, b"ok"))
    assert ws.read_message() == (TEXT, b"ok")
    assert read_client_frame(server) == (True, PONG, b"p" * 125)


@pytest.mark.parametrize("opcode", [PING, PONG, CLOSE])
def test_fragmented_control_frame_fails_with_1002(link, opcode):
    expect_failure(link, frame(opcode, b"x", fin=False), 1002)


# -- bug 4: UTF-8 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [b"\xed\xa0\x80", b"ok \xed\xbf\xbf", b"\xc0\xaf", b"\xf4\x90\x80\x80", b"\xff",
                                     b"trunc\xe2\x82"])
def test_invalid_utf8_text_fails_with_1007(link, payload):
    expect_failure(link, frame(TEXT, payload), 1007)


def test_invalid_utf8_fails_on_the_bad_fragment_before_the_message_ends(link):
    # The message never finishes: only validating fragment by fragment can catch it.
    expect_failure(link, frame(TEXT, b"fine ", fin=False) + frame(CONT, b"\xed\xa0\x80", fin=False), 1007)


def test_truncated_utf8_at_the_end_of_a_fragmented_message_fails_with_1007(link):
    expect_failure(link, frame(TEXT, b"abc", fin=False) + frame(CONT, b"\xe2\x82"), 1007)


def test_binary_is_not_validated(link):
    client, server = link
    ws = make_ws(client)
    server.sendall(frame(BINARY, b"\xed\xa0\x80"))
    assert ws.read_message() == (BINARY, b"\xed\xa0\x80")


# -- bug 5: close frames ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("payload", "code"), [
    (b"\x03", 1002),
    *[(struct.pack("!H", bad), 1002) for bad in (0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535)],
    (struct.pack("!H", 1000) + b"\xed\xa0\x80", 1007),
    (struct.pack("!H", 1000) + b"\xff", 1007),
])
def test_invalid_close_frames(link, payload, code):
    expect_failure(link, frame(CLOSE, payload), code)


def test_close_frame_over_125_bytes_fails_with_1002(link):
    expect_failure(link, frame(CLOSE, struct.pack("!H", 1000) + b"r" * 124), 1002)


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999])
def test_valid_close_is_echoed(link, code):
    client, server = link
    ws = make_ws(client)
    server.sendall(frame(CLOSE, struct.pack("!H", code) + "bye ✓".encode()))
    with pytest.raises(ConnectionClosed) as info:
        ws.read_message()
    assert (info.value.code, info.value.reason) == (code, "bye ✓")
    assert read_client_frame(server) == (True, CLOSE, struct.pack("!H", code))
    ws.close()  # the echo was the one close frame
    ws.close_socket()
    assert server.recv(10) == b""


def test_empty_close_is_echoed_with_1000(link):
    client, server = link
    ws = make_ws(client)
    server.sendall(frame(CLOSE))
    with pytest.raises(ConnectionClosed) as info:
        ws.read_message()
    assert info.value.code == 1005
    assert read_close_code(server) == 1000


def test_our_close_is_not_echoed_again(link):
    client, server = link
    ws = make_ws(client)
    ws.close(4000, "going away")
    ws.close()
    assert read_client_frame(server) == (True, CLOSE, struct.pack("!H", 4000) + b"going away")
    with pytest.raises(WireError):
        ws.send_text("after close")
    server.sendall(frame(PING, b"no pong now") + frame(CLOSE, struct.pack("!H", 4000)))
    with pytest.raises(ConnectionClosed) as info:
        ws.read_message()
    assert info.value.code == 4000
    ws.close_socket()
    assert server.recv(10) == b""  # nothing after our close frame


# -- bug 6: protocol errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "data"), [
    ("masked", frame(TEXT, b"hello", mask=b"\x01\x02\x03\x04")),
    ("rsv1", frame(TEXT, b"x", rsv=4)),
    ("rsv2", frame(TEXT, b"x", rsv=2)),
    ("rsv3", frame(BINARY, b"x", rsv=1)),
    *[(f"opcode {op:#x}", frame(op, b"x")) for op in (3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF)],
    ("orphan continuation", frame(CONT, b"x")),
    ("data frame inside a fragmented message", frame(TEXT, b"a", fin=False) + frame(TEXT, b"b")),
    ("64-bit length with its top bit set", struct.pack("!BBQ", 0x82, 127, 1 << 63)),
])
def test_protocol_errors_fail_with_1002(link, name, data):
    expect_failure(link, data, 1002)


# -- ends of the connection ---------------------------------------------------------------------------------


def test_eof_is_connection_closed_without_code(link):
    client, server = link
    ws = make_ws(client)
    server.sendall(frame(TEXT, b"last"))
    server.close()
    assert ws.read_message() == (TEXT, b"last")
    with pytest.raises(ConnectionClosed) as info:
        ws.read_message()
    assert info.value.code is None


def test_abort_wakes_a_blocked_reader(link):
    client, _server = link
    ws = make_ws(client, send_timeout=30.0)
    errors: list[BaseException] = []

    def read() -> None:
        try:
            ws.read_message()
        except WireError as exc:
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.1)
    started = time.monotonic()
    ws.abort()
    ws.abort()
    reader.join(5)
    assert not reader.is_alive() and time.monotonic() - started < 1.0
    assert isinstance(errors[0], ConnectionClosed) and errors[0].code is None
    ws.close_socket()
    ws.close_socket()


def test_reader_waits_quietly_across_socket_timeouts(link):
    client, server = link
    ws = make_ws(client, send_timeout=0.05)  # the socket timeout too: the reader must just loop
    threading.Timer(0.3, server.sendall, args=(frame(TEXT, b"late"),)).start()
    assert ws.read_message() == (TEXT, b"late")


# -- what we send -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 200_003])
def test_sent_frames_are_masked(link, size):
    client, server = link
    ws = make_ws(client)
    text = ("ü" * size)[: size // 2] + "x" * (size - 2 * (size // 2))
    payload = bytes(i * 7 % 256 for i in range(size))
    results: list[tuple[bool, int, bytes]] = []
    reader = threading.Thread(target=lambda: results.extend(read_client_frame(server) for _ in range(2)))
    reader.start()
    ws.send_text(text)
    ws.send_binary(payload)
    reader.join()
    assert results == [(True, TEXT, text.encode()), (True, BINARY, payload)]


def test_ping_and_close_are_masked_with_fresh_keys(link):
    client, server = link
    ws = make_ws(client)
    ws.ping(b"hello")
    ws.ping()
    ws.close(1001, "é" * 100)  # reason cut to 123 bytes on a character boundary
    raw = b""
    server.settimeout(2)
    while len(raw) < 2 + 4 + 5 + 2 + 4 + 2 + 4 + 123:
        raw += server.recv(4096)
    assert raw[2:6] != raw[13:17]  # a new key per frame
    a, b = socket.socketpair()
    try:
        b.sendall(raw)
        assert read_client_frame(a) == (True, PING, b"hello")
        assert read_client_frame(a) == (True, PING, b"")
        assert read_client_frame(a) == (True, CLOSE, struct.pack("!H", 1001) + ("é" * 61).encode())
    finally:
        a.close()
        b.close()
    with pytest.raises(ValueError):
        ws.ping(b"x" * 126)


# -- TLS: the same socket code under ssl.SSLSocket ----------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    return cert, key


@pytest.fixture
def tls_link(link: tuple[socket.socket, socket.socket],
             certificate: tuple[str, str]) -> Iterator[tuple[ssl.SSLSocket, ssl.SSLSocket]]:
    """(client, server) ends of a TLS connection on loopback."""
    client, server = link
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(*certificate)
    client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_context.load_verify_locations(certificate[0])
    wrapped: list[ssl.SSLSocket] = []
    accepting = threading.Thread(target=lambda: wrapped.append(server_context.wrap_socket(server, server_side=True)))
    accepting.start()
    tls_client = client_context.wrap_socket(client, server_hostname="localhost")
    accepting.join()
    yield tls_client, wrapped[0]
    tls_client.close()
    wrapped[0].close()


def test_tls_round_trip_with_records_split_by_timeouts(tls_link):
    client, server = tls_link
    ws = make_ws(client, send_timeout=0.05)  # the reader times out between (and inside) records
    big = bytes(range(256)) * 800
    data = frame(TEXT, b"hello") + frame(BINARY, big) + frame(PING, b"tls")

    def feed() -> None:
        for i in range(0, len(data), 7000):
            server.sendall(data[i:i + 7000])
            time.sleep(0.02)
        time.sleep(0.1)
        server.sendall(frame(TEXT, b"later"))

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        assert _read_all(ws, 3) == [(TEXT, b"hello"), (BINARY, big), (TEXT, b"later")]
    finally:
        feeder.join()
    assert read_client_frame(server) == (True, PONG, b"tls")
    ws.send_text("x" * 100_000)
    assert read_client_frame(server) == (True, TEXT, b"x" * 100_000)


def test_tls_ping_flood_from_a_peer_that_never_reads_gives_send_timeout(tls_link):
    client, server = tls_link
    for sock in (client, server):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    ws = make_ws(client, send_timeout=0.5)
    stop = threading.Event()
    server.settimeout(0.2)

    def flood() -> None:
        ping = frame(PING, b"p" * 125) * 32
        while not stop.is_set():
            try:
                server.sendall(ping)
            except OSError:
                continue

    flooder = threading.Thread(target=flood)
    flooder.start()
    try:
        started = time.monotonic()
        with pytest.raises(SendTimeout):
            ws.read_message()
        assert time.monotonic() - started < 5.0
    finally:
        stop.set()
        flooder.join()


def test_tls_abort_wakes_a_blocked_reader(tls_link):
    client, _server = tls_link
    ws = make_ws(client, send_timeout=30.0)
    errors: list[BaseException] = []
    reader = threading.Thread(target=lambda: errors.append(pytest.raises(WireError, ws.read_message).value))
    reader.start()
    time.sleep(0.1)
    ws.abort()
    reader.join(5)
    assert not reader.is_alive()
    assert isinstance(errors[0], ConnectionClosed) and errors[0].code is None
