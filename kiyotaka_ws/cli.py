"""The ``kiyotaka-ws`` command: ``demo``, ``stream`` and ``bench``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from collections.abc import Sequence
from typing import Callable, TextIO

import attrs

from .channels import WIRE_NAMES, Channel
from .client import REGIONS, KiyotakaClient
from .errors import AuthenticationError, ConfigurationError, KiyotakaError
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
from .status import ConnectionStatus

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


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


def _parse_params(items: Sequence[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigurationError(f"--param: expected name=value, got {item!r}")
        params[WIRE_NAMES.get(name, name)] = value
    return params


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


def run_for(client: KiyotakaClient, seconds: float | None) -> None:
    """run_forever(), ended by a timer after ``seconds`` when given. The timer is joined."""
    timer = threading.Timer(seconds, client.stop) if seconds else None
    if timer is not None:
        timer.name = "kiyotaka-ws-cli-timer"
        timer.start()
    try:
        client.run_forever()
    finally:
        if timer is not None:
            timer.cancel()
            timer.join()


def cmd_stream(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    api_key = args.api_key or os.environ.get("KIYOTAKA_API_KEY", "").strip()
    if not api_key:
        err.write("kiyotaka-ws: error: no API key: pass --api-key or set KIYOTAKA_API_KEY\n")
        return EXIT_USAGE
    channel = Channel(args.channel.upper())
    url_option = "book_url" if channel.family == "book" else "nonbook_url"
    client = KiyotakaClient(api_key, region=args.region, **({url_option: args.url} if args.url else {}))
    output = _Output(out, lambda: threading.Thread(target=client.stop, name="kiyotaka-ws-cli-stop").start())
    render = event_to_json if args.json else format_event
    client.subscribe(channel, lambda ev: output.write(render(ev)), exchange=args.exchange, symbol=args.symbol,
                     category=args.category, params=_parse_params(args.param))

    @client.on_error
    def _error(error: KiyotakaError) -> None:
        err.write(f"kiyotaka-ws: {type(error).__name__}: {error}\n")

    @client.on_status
    def _status(status: ConnectionStatus) -> None:
        if args.verbose or status.state.value in ("DISCONNECTED", "FAILED"):
            reason = f" ({status.reason})" if status.reason else ""
            err.write(f"kiyotaka-ws: {status.family} {status.state.value}{reason}\n")

    try:
        run_for(client, args.seconds)
    except AuthenticationError as exc:
        err.write(f"kiyotaka-ws: error: the API key was rejected: {exc}\n")
        return EXIT_FAILURE
    except KiyotakaError as exc:
        err.write(f"kiyotaka-ws: error: {exc}\n")
        return EXIT_FAILURE
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kiyotaka-ws",
                                     description="Stream Kiyotaka real-time market data from the terminal.")
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
                                             "KIYOTAKA_API_KEY.")
    stream.add_argument("channel", type=str.upper, choices=[c.value for c in Channel], metavar="CHANNEL",
                        help="one of: " + ", ".join(c.value for c in Channel))
    stream.add_argument("--exchange", required=True, help='exchange id, e.g. BINANCE_FUTURES ("*": all)')
    stream.add_argument("--symbol", required=True, help="raw symbol (or coin with --param group_by_coin=1)")
    stream.add_argument("--category", default="*", help="SPOT, PERPETUAL or * (default)")
    stream.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="channel parameter, e.g. block_size=25 or batchInterval=1s (repeatable)")
    stream.add_argument("--region", default="singapore", choices=sorted(REGIONS))
    stream.add_argument("--url", help="endpoint URL override (e.g. a FakeKiyotakaServer)")
    stream.add_argument("--api-key", help="API key (default: $KIYOTAKA_API_KEY)")
    stream.add_argument("--json", action="store_true", help="one JSON object per event, for piping")
    stream.add_argument("--seconds", type=_positive_float, help="stop after this many seconds")
    stream.add_argument("-v", "--verbose", action="store_true", help="show every connection state change")

    bench = commands.add_parser("bench", help="throughput benchmark: client vs a bare websocket-client loop",
                                description="Blast frames from a separate process and compare the client "
                                            "with a bare recv/decompress/json loop, side by side.")
    bench.add_argument("--points", type=int, default=200_000, help="points per run (default 200000)")
    bench.add_argument("--rounds", type=int, default=3, help="alternating rounds per case (default 3)")
    bench.add_argument("--quick", action="store_true", help="a few seconds only (smoke test)")
    return parser


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _version() -> str:
    from ._version import __version__
    return __version__


def main(argv: list[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            from .demo import run_demo
            return run_demo(args.seconds, out, plain=args.plain)
        if args.command == "bench":
            from .bench import run_bench
            return run_bench(points=args.points, rounds=args.rounds, quick=args.quick, out=out)
        return cmd_stream(args, out, err)
    except ConfigurationError as exc:
        err.write(f"kiyotaka-ws: error: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
