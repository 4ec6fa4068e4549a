"""``kiyotaka-ws bench``: the client against two bare websocket-client loops, side by side.

A blaster process speaks just enough of the protocol (handshake, auth and subscribe answers) and
then sends pre-encoded frames of TRADE points as fast as the socket takes them. In this process
three consumers take turns, round after round, on the same stream: the bare loop most users write
(``recv()`` -> brotli -> ``json.loads``, nothing else), the same loop with ``orjson.loads`` (the
stronger anchor), and the full client (typed events, routing, reader/dispatcher threads, every
check on, its default parser). Alternating within one run keeps the comparison fair on a busy
machine. CPU time is this process's only, so the blaster's own work is not counted.

Nothing here waits without a limit. The blaster serves every connection on a thread of its own
(a consumer that leaves a connection open, or hangs up mid-handshake, costs only its own thread,
which lingers at most ``LINGER_SECONDS`` after its last frame), and every run gives up after
``STALL_SECONDS`` without a new point, raising ``BenchStalled`` with how far it got; ``run_bench``
prints that and returns 1. Formerly the blaster served one connection at a time, waiting without a
limit for each consumer to hang up, and read a handshake until it saw its end (a peer gone
mid-handshake made it spin on ``recv() == b""``): any connection not closed held up every later
run, the bare loops without a timeout of their own. Which connection held up the lead's latency
phase was not reproduced here (45 ``--quick`` runs, 5 of them with ``--busy 1``, every case's
runs alternated 10 times at 5,000 points and 3 times at 200,000 points before the paced phase:
none hung); both ways are closed and tested.
"""

from __future__ import annotations

import base64
import hashlib
import json
import multiprocessing
import os
import socket
import statistics
import struct
import sys
import threading
import time
from typing import Any, Callable, TextIO
from urllib.parse import parse_qs, urlsplit

import brotli  # type: ignore[import-untyped]
import websocket

from .. import protocol
from ..client import KiyotakaClient
from ..events import Trade

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
EXCHANGE, SYMBOL = "BENCH", "BTCUSDT"
CASES = [("brotli", 1), ("brotli", 5), ("brotli", 20), ("brotli", 50), ("plain", 5)]
SERIES = 8  # the multi-symbol rows: points of this many series interleaved in every frame
STALL_SECONDS = 30.0  # a run with no new point for this long has stalled: BenchStalled, not a hang
LINGER_SECONDS = 30.0  # the blaster waits this long at most for a consumer to hang up after its last frame


class BenchStalled(RuntimeError):
    """A run saw no new point for its stall limit: the message says which run and how far it got."""


def symbols(series: int) -> list[str]:
    """The symbols of ``series`` interleaved series (one: the classic single-symbol stream)."""
    return [SYMBOL] if series == 1 else [f"S{k}USDT" for k in range(series)]


# -- the blaster (a separate process) ------------------------------------------------------------

def trade_points(count: int, start_id: int, time_ns: int, series: int = 1) -> list[dict[str, Any]]:
    """``count`` TRADE points with ids from ``start_id``, spread over ``series`` symbols."""
    names = symbols(series)
    return [{"series": {"type": "TRADE", "symbol": names[(start_id + i) % series], "exchange": EXCHANGE,
                        "normalizedSymbol": "BTC-USDT",
                        "category": "PERPETUAL", "side": "BUY" if (start_id + i) % 2 else "SELL", "coin": "BTC",
                        "inverse": False},
             "trade": {"id": str(start_id + i), "price": 90003.5 + i, "amount": 0.002,
                       "timestamp": {"seconds": time_ns // 10**9, "nanoseconds": time_ns % 10**9}}}
            for i in range(count)]


def _frame(payload: bytes, binary: bool) -> bytes:
    head = 0x82 if binary else 0x81
    size = len(payload)
    if size < 126:
        return struct.pack("!BB", head, size) + payload
    if size < 65536:
        return struct.pack("!BBH", head, 126, size) + payload
    return struct.pack("!BBQ", head, 127, size) + payload


def _encode(doc: Any, binary: bool) -> bytes:
    text = json.dumps(doc, separators=(",", ":")).encode()
    return _frame(brotli.compress(text, quality=4) if binary else text, binary)


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def _read_client_frame(sock: socket.socket) -> tuple[int, bytes]:
    b1, b2 = _recv_exact(sock, 2)
    size = b2 & 0x7F
    if size == 126:
        size = struct.unpack("!H", _recv_exact(sock, 2))[0]
    elif size == 127:
        size = struct.unpack("!Q", _recv_exact(sock, 8))[0]
    mask = _recv_exact(sock, 4) if b2 & 0x80 else b"\0\0\0\0"
    data = bytes(b ^ mask[i % 4] for i, b in enumerate(_recv_exact(sock, size)))
    return b1 & 0x0F, data


def _handshake(sock: socket.socket) -> dict[str, list[str]]:
    request = b""
    while b"\r\n\r\n" not in request:
        chunk = sock.recv(4096)
        if not chunk:  # the peer left mid-handshake (formerly: a spin on b"" that blocked every later run)
            raise ConnectionError("closed during the handshake")
        request += chunk
    lines = request.decode().split("\r\n")
    key = next(line.split(":", 1)[1].strip() for line in lines if line.lower().startswith("sec-websocket-key"))
    accept = base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()
    sock.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Accept: {accept}\r\n\r\n").encode())
    return parse_qs(urlsplit(lines[0].split(" ")[1]).query)


def _serve_one(sock: socket.socket) -> None:
    query = _handshake(sock)
    binary = query["mode"][0] == "brotli"
    per_frame, total, rate = int(query["per"][0]), int(query["n"][0]), float(query.get("rate", ["0"])[0])
    series = int(query.get("series", ["1"])[0])
    awaited = 1 + series  # public/authenticate, then the channels of every series (packed or not): answer each
    while awaited > 0:
        _, data = _read_client_frame(sock)
        message = json.loads(data)
        awaited -= len(message.get("params", {}).get("channels", [])) or 1
        sock.sendall(_encode({"jsonrpc": "2.0", "id": message["id"], "result": True}, False))
    frames = total // per_frame
    if rate:  # paced, with the send time in every point, for latency
        interval, next_at = per_frame / rate, time.perf_counter()
        for i in range(frames):
            sock.sendall(_encode({"points": trade_points(per_frame, i * per_frame, time.time_ns(), series)}, binary))
            next_at += interval
            delay = next_at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
    else:  # flat out: one pre-encoded frame, sent in large batches
        frame = _encode({"points": trade_points(per_frame, 0, time.time_ns(), series)}, binary)
        batch = frame * max(1, 262144 // len(frame))
        per_batch = len(batch) // len(frame)
        sent = 0
        while sent + per_batch <= frames:
            sock.sendall(batch)
            sent += per_batch
        sock.sendall(frame * (frames - sent))
    sock.settimeout(LINGER_SECONDS)
    while sock.recv(65536):  # wait for the consumer to hang up (socket.timeout is an OSError)
        pass


def _serve(conn: socket.socket) -> None:
    try:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _serve_one(conn)
    except (OSError, ValueError, KeyError, IndexError, StopIteration):  # a peer gone or not speaking our part
        pass
    finally:
        conn.close()


def blaster_process(port_pipe: Any) -> None:
    """The blaster (a process of its own): a bare WebSocket server sending TRADE frames as fast as it
    can, each connection on a thread of its own (an earlier one never holds up the next)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port_pipe.send(listener.getsockname()[1])
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_serve, args=(conn,), name="kiyotaka-ws-bench-serve", daemon=True).start()


# -- the consumers -------------------------------------------------------------------------------

class Result:
    """One benchmark run: points per second, CPU per point and the latency percentiles."""

    def __init__(self, points: int, wall: float, cpu: float, latencies: list[float]) -> None:
        self.points_per_s = points / wall
        self.cpu_us = cpu / points * 1e6
        self.latencies = latencies


def _subscribe_message(compression: str | None, symbol: str = SYMBOL, request_id: int = 2) -> str:
    params: dict[str, Any] = {"channels": [{"type": "TRADE", "exchange": EXCHANGE, "symbol": symbol,
                                            "category": "*"}], "version": "v2"}
    if compression:
        params["compression"] = compression
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "public/subscribe", "params": params})


def _bare_parsers() -> dict[str, Callable[[Any], Any]]:
    parsers: dict[str, Callable[[Any], Any]] = {"json": json.loads}
    try:
        import orjson
    except ImportError:  # pragma: no cover - PyPy: that anchor is left out
        return parsers
    parsers["orjson"] = orjson.loads
    return parsers


def run_bare(url: str, total: int, compression: str | None, latency: bool = False,
             loads: Callable[[Any], Any] = json.loads, series: int = 1, stall: float = STALL_SECONDS) -> Result:
    """What a user writes instead: recv(), brotli-decompress, ``loads``, nothing else (no routing:
    with several series it does the same work as with one). ``BenchStalled`` after ``stall``
    seconds without a new point."""
    lat: list[float] = []
    seen = 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    try:
        ws = websocket.create_connection(url, timeout=stall)
    except (OSError, websocket.WebSocketException) as exc:
        raise BenchStalled(f"bare {loads.__module__} loop: no connection within {stall:g}s ({exc})") from exc
    # A watchdog, not a socket timeout: a timeout costs the timed loop a poll() per recv.
    ws.settimeout(None)
    sock = ws.sock
    stalled = threading.Event()
    finished = threading.Event()

    def watch() -> None:
        last = -1
        while not finished.wait(stall):
            if seen == last:
                stalled.set()
                try:
                    if sock is not None:
                        sock.shutdown(socket.SHUT_RDWR)  # wakes the recv below
                except OSError:  # the run ended meanwhile
                    pass
                return
            last = seen

    watchdog = threading.Thread(target=watch, name="kiyotaka-ws-bench-watchdog", daemon=True)
    watchdog.start()
    try:
        ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "public/authenticate", "params": {"token": "x"}}))
        for request_id, symbol in enumerate(symbols(series), start=2):
            ws.send(_subscribe_message(compression, symbol, request_id))
        while seen < total:
            data = ws.recv()
            if isinstance(data, bytes):
                data = brotli.decompress(data)
            message = loads(data)
            points = message.get("points")
            if points:
                seen += len(points)
                if latency:
                    now = time.time_ns()
                    lat.extend((now - _ns(p)) / 1e3 for p in points)
    except (OSError, websocket.WebSocketException) as exc:
        if stalled.is_set():
            raise BenchStalled(f"bare {loads.__module__} loop: {seen:,} of {total:,} points, then none "
                               f"for {stall:g}s") from exc
        raise
    finally:
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        finished.set()
        watchdog.join()
        ws.shutdown()  # type: ignore[no-untyped-call]  # no close handshake: the blaster never answers one
    return Result(total, wall, cpu, lat)


def _ns(point: dict[str, Any]) -> int:
    ts = point["trade"]["timestamp"]
    return int(ts["seconds"]) * 10**9 + int(ts.get("nanoseconds", 0))


def run_client(url: str, total: int, compression: str | None, latency: bool = False, series: int = 1,
               stall: float = STALL_SECONDS) -> Result:
    """The full client: typed events, routing, threads, every safety check on; one registration
    (the same handler) per series. ``BenchStalled`` after ``stall`` seconds without a new point."""
    done = threading.Event()
    lat: list[float] = []
    count = 0

    def handler(trade: Trade) -> None:
        nonlocal count
        count += 1
        if latency:
            lat.append((time.time_ns() - trade.time_ns) / 1e3)  # type: ignore[operator]
        if count >= total:
            done.set()

    client = KiyotakaClient("x", nonbook_url=url, compression=compression)
    for symbol in symbols(series):
        client.on_trade(handler, exchange=EXCHANGE, symbol=symbol)
    cpu0, t0 = time.process_time(), time.perf_counter()
    try:
        client.start()
        last = -1
        while not done.wait(stall):
            if count == last:
                stats = client.stats().get("nonbook")
                state = f"{stats.state.name}, {stats.frames:,} frames, {stats.reconnects} reconnects" if stats else "?"
                raise BenchStalled(f"client: {count:,} of {total:,} points, then none for {stall:g}s ({state})")
            last = count
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        client.stop()
    return Result(total, wall, cpu, lat)


def _rss_mib() -> float:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):  # not Linux
        return float("nan")


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank), NaN for none."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _latency_summary(runs: list[list[float]]) -> dict[str, Any]:
    every = [value for run in runs for value in run]
    return {"p50": round(percentile(every, 0.5)), "p99": round(percentile(every, 0.99)), "max": round(max(every)),
            "p99_per_round": [round(percentile(run, 0.99)) for run in runs]}


def _burn() -> None:
    """A process that only computes: the load beside the benchmark with ``busy``."""
    while True:
        pass


def run_bench(points: int = 200_000, rounds: int = 5, quick: bool = False, out: TextIO | None = None,
              as_json: bool = False, parser: str | None = None, busy: int = 0, series: int = SERIES) -> int:
    """Run every case; print a table (or, with ``as_json``, one JSON document) to ``out``.

    ``parser`` selects the client's frame parser ("orjson" or "stdlib"; default: the library's);
    ``busy`` processes burn CPU beside the whole run. Every case runs with one series and, when
    ``series`` > 1, again with that many series interleaved in each frame (a multi-symbol bot:
    one registration per series); the bare loops do the same work either way.
    """
    out = out or sys.stdout
    if quick:
        points, rounds = 5_000, 1
    previous = protocol.json_parser()
    client_parser = protocol.use_json_parser(parser) if parser else previous
    bares = _bare_parsers()
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    blaster = ctx.Process(target=blaster_process, args=(child,), name="kiyotaka-ws-bench-blaster")
    blaster.start()
    burners = [ctx.Process(target=_burn, name="kiyotaka-ws-bench-busy", daemon=True) for _ in range(max(0, busy))]
    for burner in burners:
        burner.start()
    report: dict[str, Any] = {"points": points, "rounds": rounds, "client_parser": client_parser,
                              "python": sys.version.split()[0], "busy": len(burners), "cases": []}
    try:
        return _run_cases(parent.recv(), points, rounds, quick, out, as_json, client_parser, bares, series, report,
                          len(burners))
    except BenchStalled as exc:
        out.flush()
        sys.stderr.write(f"kiyotaka-ws bench: error: {exc}\n")
        return 1
    finally:
        for process in (blaster, *burners):
            process.terminate()
            process.join()
        protocol.use_json_parser(previous)


def _run_cases(port: int, points: int, rounds: int, quick: bool, out: TextIO, as_json: bool, client_parser: str,
               bares: dict[str, Callable[[Any], Any]], series: int, report: dict[str, Any], busy: int) -> int:
    base = f"ws://127.0.0.1:{port}/nonbook/ws?encoding=json"
    if not as_json:
        load = f", {busy} busy process(es) beside it" if busy else ""
        out.write(f"kiyotaka-ws bench: {points} TRADE points per run, {rounds} alternating rounds per case, "
                  f"client parser {client_parser}, Python {report['python']}{load}\n")
        head = "".join(f"{name + ' pts/s':>14}" for name in bares)
        ratios = "".join(f"{'vs ' + name:>10}" for name in bares)
        out.write(f"{'case':<16}{head}{'client pts/s':>14}{ratios}{'client us/pt':>14}\n")
    rss: list[float] = []
    for (mode, per), count in [(case, n) for n in sorted({1, max(1, series)}) for case in CASES]:
        url = f"{base}&mode={mode}&per={per}&n={points}&series={count}"
        compression = "brotli" if mode == "brotli" else None
        runs: dict[str, list[Result]] = {name: [] for name in (*bares, "client")}
        for _ in range(rounds):
            for name, loads in bares.items():
                runs[name].append(run_bare(url, points, compression, loads=loads, series=count))
            runs["client"].append(run_client(url, points, compression, series=count))
            rss.append(_rss_mib())
        rate = {name: statistics.median(r.points_per_s for r in results) for name, results in runs.items()}
        cpu = {name: statistics.median(r.cpu_us for r in results) for name, results in runs.items()}
        label = f"{mode} x{per}" + (f" s{count}" if count > 1 else "")
        case = {"case": label, "mode": mode, "points_per_frame": per, "series": count,
                "points_per_s": {k: round(v) for k, v in rate.items()},
                "cpu_us_per_point": {k: round(v, 3) for k, v in cpu.items()},
                "runs_points_per_s": {k: [round(r.points_per_s) for r in v] for k, v in runs.items()},
                "ratio": {f"vs_{name}": round(rate["client"] / rate[name], 3) for name in bares}}
        report["cases"].append(case)
        if not as_json:
            cells = "".join(f"{rate[name]:>14,.0f}" for name in bares)
            ratios = "".join(f"{rate['client'] / rate[name]:>10.2f}" for name in bares)
            out.write(f"{case['case']:<16}{cells}{rate['client']:>14,.0f}{ratios}{cpu['client']:>14.2f}\n")
            out.flush()
    # Latency: paced, alternating like the throughput runs; the p99 is reported for every round.
    paced, seconds = 10_000, (1 if quick else 3)
    url = f"{base}&mode=brotli&per=5&n={paced * seconds}&rate={paced}"
    latencies: dict[str, list[list[float]]] = {"bare": [], "client": []}
    for _ in range(rounds):
        latencies["bare"].append(run_bare(url, paced * seconds, "brotli", latency=True).latencies)
        latencies["client"].append(run_client(url, paced * seconds, "brotli", latency=True).latencies)
    report["latency_us"] = {"rate": paced, "seconds_per_round": seconds,
                            **{name: _latency_summary(runs) for name, runs in latencies.items()}}
    report["rss_mib"] = {"first": round(rss[0], 1), "last": round(rss[-1], 1), "runs": len(rss)}
    if as_json:
        out.write(json.dumps(report, indent=2) + "\n")
        return 0
    for name, summary in report["latency_us"].items():
        if isinstance(summary, dict):
            rounds_p99 = ", ".join(f"{v:,}" for v in summary["p99_per_round"])
            out.write(f"latency {name:<7} at {paced:,} pts/s (send -> handler): p50 {summary['p50']:,} us, "
                      f"p99 {summary['p99']:,} us (per round: {rounds_p99}), max {summary['max']:,} us\n")
    out.write(f"memory: RSS {rss[0]:.1f} MiB after the first run, {rss[-1]:.1f} MiB after run {len(rss)}\n")
    return 0
