"""The ``kiyotaka-ws`` command: ``demo``, ``stream`` and ``bench``.

``main(argv) -> int`` never raises for a usage error or a connection problem: it writes one line
to stderr and returns the exit code (see ``EXIT_CODES``), so it can be called in-process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, Callable, NoReturn, TextIO

import attrs

from .channels import WIRE_NAMES, Channel, make_spec
from .client import REGIONS, KiyotakaClient
from .errors import (
    AuthenticationError,
    ConfigurationError,
    ConnectionFailedError,
    KiyotakaError,
    SubscriptionError,
    _safe_url,
)
from .events import (
    BookSnapshot,
    Event,
    FundingRate,
    Liquidation,
    OpenInterest,
    Trade,
    TradeAggregation,
    VolumeProfile,
)
from .status import ConnectionStatus, State

EXIT_OK, EXIT_REJECTED, EXIT_USAGE, EXIT_NO_CONNECTION, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_FAILURE = EXIT_REJECTED  # the older name

EXIT_CODES = f"""exit codes:
  {EXIT_OK}    ran to --seconds, or ended cleanly (e.g. the output pipe was closed)
  {EXIT_REJECTED}    the API key was rejected
  {EXIT_USAGE}    usage error: a bad channel, --param, --category, --region or --url (all checked
       before the key), no key, or the server rejected the subscription (e.g. an unknown symbol)
  {EXIT_NO_CONNECTION}    could not connect: never READY within --seconds, or the client gave up
       (a wrong URL answered 400/404/410, or --retries attempts failed)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)
Every error is one line on stderr."""

# The service's documented market classes (protocol notes 3.2 / 3.5); "*" means all.
CATEGORIES = ("*", "SPOT", "PERPETUAL")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_OPTION_NAMES = {wire: option for option, wire in WIRE_NAMES.items()}
_PROG = "kiyotaka-ws"


class UsageError(Exception):
    """A bad command line: the message is the one line ``main`` prints before returning 2."""


def format_event(event: Event) -> str:
    """One human-readable line for an event."""
    when = event.datetime.strftime("%H:%M:%S.%f")[:-3] if event.datetime else "--:--:--.---"
    where = f"{event.exchange or '*'}:{event.symbol or event.coin or '?'}"
    if isinstance(event, (Trade, Liquidation)):
        side = event.side.value if event.side else "?"
        kind = "TRADE" if isinstance(event, Trade) else "LIQUIDATION"
        return f"{when} {kind:<11} {where:<24} {side:<4} {event.amount:>12.6g} @ {event.price:,.2f}"
    if isinstance(event, TradeAggregation):
        side = event.side.value if event.side else "?"
        return (f"{when} TRADE_AGG   {where:<24} {side:<4} o={event.open:,.2f} h={event.high:,.2f} "
                f"l={event.low:,.2f} c={event.close:,.2f} v={event.volume:.6g}")
    if isinstance(event, BookSnapshot):
        bid, ask = event.best_bid, event.best_ask
        bid_text = f"{bid.size:.4g} @ {bid.price:,.2f}" if bid else "-"
        ask_text = f"{ask.size:.4g} @ {ask.price:,.2f}" if ask else "-"
        spread = f"{event.spread:,.2f}" if event.spread is not None else "-"
        return (f"{when} BOOK        {where:<24} bid {bid_text}  ask {ask_text}  spread {spread}  "
                f"levels {len(event.bids)}/{len(event.asks)}")
    if isinstance(event, FundingRate):
        rate = f"{event.rate:.6%}" if event.rate is not None else "n/a"
        predicted = f"{event.predicted_rate:.6%}" if event.predicted_rate is not None else "n/a"
        return f"{when} FUNDING     {where:<24} rate {rate}  predicted {predicted}"
    if isinstance(event, OpenInterest):
        return f"{when} OPEN_INT    {where:<24} {event.open_interest:,.2f}"
    if isinstance(event, VolumeProfile):
        poc = max(event.levels, key=lambda lv: lv.buy_volume + lv.sell_volume, default=None)
        poc_text = f"POC {poc.price:,.2f}" if poc else "empty"
        return f"{when} VOL_PROFILE {where:<24} {len(event.levels)} levels  {poc_text}"
    return f"{when} {event.channel.value} {where}"  # pragma: no cover - every channel is handled above


def event_to_json(event: Event) -> str:
    """One JSON object for an event (``raw`` left out, levels as [price, size...] lists)."""
    data = {field.name: getattr(event, field.name) for field in attrs.fields(type(event)) if field.name != "raw"}
    return json.dumps(data, separators=(",", ":"))  # str enums become strings, levels become lists


class _Output:
    """Writes lines from the dispatcher thread; a closed pipe (``| head``) stops the client."""

    def __init__(self, stream: TextIO, on_closed: Callable[[], None]) -> None:
        self.stream = stream
        self.on_closed = on_closed
        self.closed = False

    def write(self, line: str) -> None:
        if self.closed:
            return
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except (BrokenPipeError, ValueError):
            self.closed = True
            self.on_closed()


def _one_line(text: object, limit: int = 240) -> str:
    """The first line of a message, without websocket-client's header dumps, at most ``limit`` chars."""
    line = str(text).strip().splitlines()[0] if str(text).strip() else ""
    line = line.split(" -+-+- ", 1)[0].strip()
    return line if len(line) <= limit else line[: limit - 3] + "..."


def stream_params(channel: Channel, exchange: str, symbol: str, category: str,
                  items: Sequence[str]) -> dict[str, str]:
    """Validate ``--param NAME=VALUE`` items for ``channel`` and return them as wire fields.

    Names are the Python (``block_size``) or the wire names (``blockSize``); known parameters are
    checked like the ``on_*`` keyword arguments. Raises ``UsageError`` naming the parameter.
    """
    options: dict[str, Any] = {}
    params: dict[str, str] = {}
    typed: dict[str, str] = {}  # keyword-argument name -> the name as the user wrote it
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise UsageError(f"--param: expected NAME=VALUE, got {item!r}")
        option = name if name in WIRE_NAMES else _OPTION_NAMES.get(name)
        if option is not None:
            typed[option] = name
        if option == "group_by_coin":
            if value.strip().lower() not in _TRUE + _FALSE:
                raise UsageError(f"--param {name}: expected 1 or 0, got {value!r}")
            options[option] = value.strip().lower() in _TRUE
        elif option is not None:
            options[option] = value
        else:
            params[name] = value
    try:
        spec = make_spec(channel, exchange=exchange, symbol=symbol, category=category, options=options,
                         params=params)
    except ConfigurationError as exc:
        message = str(exc)
        named, _, rest = message.partition(":")
        if named in WIRE_NAMES or named.startswith("params["):
            message = f"--param {typed.get(named, named)}:{rest}"
        raise UsageError(message) from None
    return dict(spec.extras)


def _category(text: str) -> str:
    value = text.strip().upper()
    if value not in CATEGORIES:
        raise UsageError(f"--category: unknown category {text!r}; expected one of {', '.join(CATEGORIES)}")
    return value


def endpoint_url(channel: Channel, region: str, url: str | None) -> str:
    """The endpoint ``stream`` connects to, as shown to the user: no credentials, no query string."""
    if url is None:
        url = REGIONS[region] + ("/ws" if channel.family == "book" else "/nonbook/ws")
    return _safe_url(url) or url


def run_for(client: KiyotakaClient, seconds: float | None) -> bool:
    """Run the client until ``seconds`` pass (when given), it stops, or it fails; returns True on timeout.

    ``run_forever()`` runs on a helper thread while this (main) thread waits in short slices, so
    Ctrl-C is noticed at once whatever the client's threads are doing: it stops the client and
    raises ``KeyboardInterrupt``. A fatal error of the client (``run_forever()`` raised) is raised here.
    """
    failure: list[BaseException] = []

    def _run() -> None:
        try:
            client.run_forever()
        except BaseException as exc:  # noqa: BLE001 - handed over to the main thread
            failure.append(exc)

    runner = threading.Thread(target=_run, name="kiyotaka-ws-cli-run", daemon=True)
    deadline = None if seconds is None else time.monotonic() + seconds
    timed_out = False
    runner.start()
    try:
        while runner.is_alive():
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                timed_out = True
                client.stop()
                break
            runner.join(0.2 if remaining is None else min(remaining, 0.2))
    except KeyboardInterrupt:
        client.stop()
        raise
    finally:
        runner.join(10)
    if failure:
        raise failure[0]
    return timed_out


class _StreamReport:
    """What the stream command tells the user on stderr: each thing once, one line each."""

    def __init__(self, err: TextIO, url: str, verbose: bool, seconds: float | None) -> None:
        self.err = err
        self.url = url
        self.verbose = verbose
        self.seconds = seconds
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.last_reason: str | None = None
        self.fatal: KiyotakaError | None = None
        self.rejected: SubscriptionError | None = None
        self._last_line: str | None = None
        self._repeats = 0
        self._said_retrying = False

    def line(self, text: str) -> None:
        """Write one line, unless it repeats the previous one (then it is only counted)."""
        with self.lock:
            if text == self._last_line:
                self._repeats += 1
                return
            self._flush_repeats()
            self._last_line = text
            self._write(text)

    def _flush_repeats(self) -> None:
        if self._repeats:
            self._write(f"{_PROG}: (the previous line repeated {self._repeats} more times)")
            self._repeats = 0

    def _write(self, text: str) -> None:
        with contextlib.suppress(ValueError, OSError):
            self.err.write(text + "\n")
            self.err.flush()

    def finish(self, text: str | None = None) -> None:
        with self.lock:
            self._flush_repeats()
            if text:
                self._write(text)

    def on_status(self, status: ConnectionStatus) -> None:
        reason = _one_line(status.reason) if status.reason else None
        if reason and status.state in (State.DISCONNECTED, State.FAILED, State.CONNECTING):
            self.last_reason = reason
        if self.verbose:
            self.line(f"{_PROG}: {status.family} {status.state.value}" + (f" ({reason})" if reason else ""))
            if status.state is State.READY:
                self.ready.set()
            return
        if status.state is State.READY:
            if not self.ready.is_set():
                self.ready.set()
            elif self._last_line and "lost" in self._last_line:
                self.line(f"{_PROG}: connected again (events sent meanwhile were missed)")
        elif status.state is State.DISCONNECTED:
            if self.ready.is_set():
                self.line(f"{_PROG}: connection lost" + (f" ({reason})" if reason else "") + "; reconnecting")
            elif self.seconds is None and not self._said_retrying:
                # Without --seconds nothing else would ever be said: tell once that it keeps trying.
                self._said_retrying = True
                self.line(f"{_PROG}: cannot connect to {self.url} yet" + (f" ({reason})" if reason else "")
                          + "; retrying (Ctrl-C to stop)")

    def on_error(self, error: KiyotakaError) -> None:
        if isinstance(error, (AuthenticationError, ConnectionFailedError)):
            if self.fatal is None:
                self.fatal = error  # said once, at the end
            return
        if isinstance(error, SubscriptionError):
            if self.rejected is None:
                self.rejected = error
            return
        self.line(f"{_PROG}: {type(error).__name__}: {_one_line(error)}")


def cmd_stream(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``kiyotaka-ws stream``: usage checks, then the key, then stream until --seconds or Ctrl-C."""
    channel = Channel(args.channel)
    category = _category(args.category)
    params = stream_params(channel, args.exchange, args.symbol, category, args.param)
    options: dict[str, Any] = {"region": args.region}
    if args.url:
        options["book_url" if channel.family == "book" else "nonbook_url"] = args.url
    if args.retries is not None:
        options["max_retries"] = args.retries
    api_key = (args.api_key or os.environ.get("KIYOTAKA_API_KEY", "")).strip()
    try:  # checks the URL and the other arguments; the key is only needed at start()
        client = KiyotakaClient(api_key or None, **options)
    except ConfigurationError as exc:
        raise UsageError(_one_line(exc)) from None
    if not api_key:
        raise UsageError("no API key: pass --api-key or set KIYOTAKA_API_KEY")

    url = endpoint_url(channel, args.region, args.url)
    report = _StreamReport(err, url, args.verbose, args.seconds)
    output = _Output(out, lambda: threading.Thread(target=client.stop, name="kiyotaka-ws-cli-stop").start())
    render = event_to_json if args.json else format_event
    client.subscribe(channel, lambda ev: output.write(render(ev)), exchange=args.exchange,
                           symbol=args.symbol, category=category, params=params)
    client.on_status(report.on_status)

    @client.on_error
    def _error(error: KiyotakaError) -> None:
        report.on_error(error)
        if isinstance(error, SubscriptionError):  # our only subscription: nothing will ever arrive
            threading.Thread(target=client.stop, name="kiyotaka-ws-cli-stop").start()

    report.line(f"{_PROG}: connecting to {url} ({channel.value} {args.exchange}:{args.symbol})")
    fatal: KiyotakaError | None = None
    try:
        timed_out = run_for(client, args.seconds)  # Ctrl-C: KeyboardInterrupt, 130 in main()
    except KiyotakaError as exc:
        fatal, timed_out = exc, False
    fatal = fatal or report.fatal
    if isinstance(fatal, AuthenticationError):
        report.finish(f"{_PROG}: error: the API key was rejected ({_one_line(fatal)})")
        return EXIT_REJECTED
    if isinstance(fatal, ConnectionFailedError):
        report.finish(f"{_PROG}: error: could not connect to {url}: {_one_line(fatal)}")
        return EXIT_NO_CONNECTION
    if fatal is not None:
        report.finish(f"{_PROG}: error: {type(fatal).__name__}: {_one_line(fatal)}")
        return EXIT_REJECTED
    if report.rejected is not None:
        report.finish(f"{_PROG}: error: the server rejected the subscription: {_one_line(report.rejected)}")
        return EXIT_USAGE
    if timed_out and not report.ready.is_set():
        reason = f" (last error: {report.last_reason})" if report.last_reason else ""
        report.finish(f"{_PROG}: error: could not connect to {url} within {args.seconds:g}s{reason}")
        return EXIT_NO_CONNECTION
    report.finish()
    return EXIT_OK  # ran to --seconds, the output was closed, or the client ended cleanly


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``UsageError``) instead of usage + exit."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    """The ``kiyotaka-ws`` argument parser."""
    parser = _Parser(prog=_PROG, description="Stream Kiyotaka real-time market data from the terminal.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    demo = commands.add_parser("demo", help="offline demo: a fake exchange on loopback and a real client",
                               description="Start a local fake Kiyotaka server with a synthetic market, "
                                           "connect a real client over loopback and show live events. "
                                           "Needs no key and no network.")
    demo.add_argument("--seconds", type=_positive_float, default=20.0, help="how long to run (default 20)")
    demo.add_argument("--plain", action="store_true", help="print lines instead of redrawing the screen")

    stream = commands.add_parser("stream", help="stream one channel from the real service",
                                 description="Stream one channel; the key comes from --api-key or "
                                             "KIYOTAKA_API_KEY.",
                                 epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    stream.add_argument("channel", type=str.upper, choices=[c.value for c in Channel], metavar="CHANNEL",
                        help="one of: " + ", ".join(c.value for c in Channel))
    stream.add_argument("--exchange", required=True, help='exchange id, e.g. BINANCE_FUTURES ("*": all)')
    stream.add_argument("--symbol", required=True, help="raw symbol (or coin with --param group_by_coin=1)")
    stream.add_argument("--category", default="*", metavar="C",
                        help=f"market class: {', '.join(CATEGORIES)} (default *: all)")
    stream.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="channel parameter, e.g. block_size=25 or batchInterval=1s (repeatable)")
    stream.add_argument("--region", default="singapore", choices=sorted(REGIONS))
    stream.add_argument("--url", help="endpoint URL override (e.g. a FakeKiyotakaServer)")
    stream.add_argument("--api-key", help="API key (default: $KIYOTAKA_API_KEY)")
    stream.add_argument("--json", action="store_true", help="one JSON object per event, for piping")
    stream.add_argument("--seconds", type=_positive_float, help="stop after this many seconds")
    stream.add_argument("--retries", type=_whole_number, metavar="N",
                        help="give up (exit 3) after N consecutive failed connection attempts "
                             "(default: keep trying)")
    stream.add_argument("-v", "--verbose", action="store_true",
                        help="show every connection state change and the library's log lines")

    bench = commands.add_parser("bench", help="throughput benchmark: client vs bare websocket-client loops",
                                description="Blast frames from a separate process and compare the client "
                                            "with bare recv/decompress/json.loads and orjson.loads loops, "
                                            "alternating within one run.")
    bench.add_argument("--points", type=int, default=200_000, help="points per run (default 200000)")
    bench.add_argument("--rounds", type=int, default=5, help="alternating rounds per case (default 5)")
    bench.add_argument("--quick", action="store_true", help="a few seconds only (smoke test)")
    bench.add_argument("--json", action="store_true", help="one JSON document instead of the table (for tracking)")
    bench.add_argument("--parser", choices=("orjson", "stdlib"),
                       help="the client's JSON parser (default: orjson when installed)")
    return parser


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _whole_number(text: str) -> int:
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return int(text)


def _version() -> str:
    from ._version import __version__
    return __version__


@contextlib.contextmanager
def _library_logging(err: TextIO, verbose: bool) -> Iterator[None]:
    """Route the library's log lines for the command's duration, then restore the logger.

    The commands report errors and state changes themselves, one line each, so by default the
    ``kiyotaka_ws`` logger is kept quiet (no bare lines in the output, no repeats); ``-v`` shows
    its INFO lines on stderr, prefixed like every other line.
    """
    logger = logging.getLogger("kiyotaka_ws")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    handler: logging.Handler
    if verbose:
        handler = logging.StreamHandler(err)
        handler.setFormatter(logging.Formatter(f"{_PROG}: %(message)s"))
        logger.setLevel(logging.INFO)
    else:
        handler = logging.NullHandler()
    logger.handlers = [handler]
    logger.propagate = False
    try:
        yield
    finally:
        logger.handlers, logger.level, logger.propagate = saved[0], saved[1], saved[2]


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run the ``kiyotaka-ws`` command with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        args = build_parser().parse_args(None if argv is None else list(argv))
    except UsageError as exc:
        err.write(f"{_PROG}: error: {exc}\n")
        return EXIT_USAGE
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    try:
        with _library_logging(err, verbose=getattr(args, "verbose", False)):
            if args.command == "demo":
                from .demo import run_demo
                return run_demo(args.seconds, out, plain=args.plain)
            if args.command == "bench":
                from .bench import run_bench
                return run_bench(points=args.points, rounds=args.rounds, quick=args.quick, out=out,
                                 as_json=args.json, parser=args.parser)
            return cmd_stream(args, out, err)
    except UsageError as exc:
        err.write(f"{_PROG}: error: {exc}\n")
        return EXIT_USAGE
    except ConfigurationError as exc:
        err.write(f"{_PROG}: error: {_one_line(exc)}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
