"""The ``kiyotaka-ws`` command: ``demo``, ``stream``, ``record``, ``replay``, ``inspect``, ``relay`` and ``bench``.

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
from typing import Any, Callable, NamedTuple, NoReturn, TextIO

import attrs

from .._arguments import REGIONS
from .._transport import one_line, redact_url
from ..channels import WIRE_NAMES, Channel, make_spec, param_option
from ..client import KiyotakaClient
from ..errors import (
    AuthenticationError,
    ConfigurationError,
    ConnectionFailedError,
    KiyotakaError,
    SubscriptionError,
)
from ..events import (
    Event,
)
from ..status import ConnectionStats, ConnectionStatus, State
from .console import format_event, run_for, sigterm_stops, terminated

EXIT_OK, EXIT_REJECTED, EXIT_USAGE, EXIT_NO_CONNECTION, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_FAILURE = EXIT_REJECTED  # the older name

EXIT_CODES = f"""exit codes:
  {EXIT_OK}    ran to --seconds, ended cleanly (e.g. the output pipe was closed), or was stopped by
       SIGTERM (systemd, docker stop): a clean stop, the recording flushed, the summary printed
  {EXIT_REJECTED}    the API key was rejected
  {EXIT_USAGE}    usage error: a bad channel, --param, --category, --region or --url (all checked
       before the key), no key, a missing extra (one line names it), or the server rejected the
       subscription (e.g. an unknown symbol)
  {EXIT_NO_CONNECTION}    could not connect: never READY within --seconds, or the client gave up
       (a wrong URL answered 400/404/410, or the --retries N retries failed too)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C); record and relay print their summary first
Every error is one line on stderr."""

RELAY_EXIT_CODES = f"""exit codes:
  {EXIT_OK}    ran to --seconds, or was stopped by SIGTERM (a clean stop: the buffer published while
       NATS is reachable, the summary printed)
  {EXIT_REJECTED}    the API key was rejected
  {EXIT_USAGE}    usage error: a bad --sub (channel, parameters), no key, the nats extra missing, or
       the server rejected a subscription
  {EXIT_NO_CONNECTION}    the upstream connection gave up (a wrong URL answered 400/404/410, or the
       --retries N retries failed too)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C), after the summary
Every error is one line on stderr."""

REPLAY_EXIT_CODES = f"""exit codes:
  {EXIT_OK}    the end of the recording was reached, or the output pipe was closed
  {EXIT_REJECTED}    the replay failed (an error reading the file once it had started)
  {EXIT_USAGE}    usage error: PATH is not a recording (or cannot be read), a bad --sub
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)
Every error is one line on stderr."""

INSPECT_EXIT_CODES = f"""exit codes:
  {EXIT_OK}    the summary was printed
  {EXIT_USAGE}    PATH is not a recording (or cannot be read)
Every error is one line on stderr."""

# The service's documented market classes (protocol notes 3.2 / 3.5); "*" means all.
CATEGORIES = ("*", "SPOT", "PERPETUAL")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
EXTRA_PREFIX = "extra."  # --param extra.NAME=VALUE: a field this version does not know (extra_params)
_PROG = "kiyotaka-ws"
# The optional modules a command may import, and the extra that brings each (setup.cfg).
_EXTRA_OF_MODULE = {"websockets": "testing", "nats": "nats", "prometheus_client": "metrics", "rich": "testing"}


class UsageError(Exception):
    """A bad command line: the message is the one line ``main`` prints before returning 2."""


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


def stream_params(channel: Channel, exchange: str, symbol: str, category: str,
                  items: Sequence[str]) -> tuple[dict[str, str], dict[str, str]]:
    """Validate ``--param NAME=VALUE`` items for ``channel``: (checked parameters, extra fields), wire-named.

    Names are the Python (``block_size``) or the wire names (``blockSize``) of the channel's own
    parameters, checked like the ``on_*`` keyword arguments; ``extra.NAME=VALUE`` sends a field this
    version does not know as given (``extra_params``). Raises ``UsageError`` naming the parameter.
    """
    options: dict[str, Any] = {}
    extra: dict[str, str] = {}
    typed: dict[str, str] = {}  # keyword-argument name -> the name as the user wrote it
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise UsageError(f"--param: expected NAME=VALUE, got {item!r}")
        if name.startswith(EXTRA_PREFIX):
            extra[name[len(EXTRA_PREFIX):]] = value
            typed[f"extra_params[{name[len(EXTRA_PREFIX):]!r}]"] = name
            continue
        try:
            option = param_option(channel, name, label=f"--param {name}", escape=f"--param {EXTRA_PREFIX}{name}=VALUE")
        except ConfigurationError as exc:
            raise UsageError(str(exc)) from None
        typed[option] = name
        if option == "group_by_coin":
            if value.strip().lower() not in _TRUE + _FALSE:
                raise UsageError(f"--param {name}: expected 1 or 0, got {value!r}")
            options[option] = value.strip().lower() in _TRUE
        else:
            options[option] = value
    try:
        spec = make_spec(channel, exchange=exchange, symbol=symbol, category=category, options=options,
                         extra_params=extra)
    except ConfigurationError as exc:
        message = str(exc)
        named, _, rest = message.partition(":")
        if named in typed:
            message = f"--param {typed[named]}:{rest}"
        raise UsageError(message) from None
    checked = {WIRE_NAMES[option] for option in options}
    return ({k: v for k, v in spec.extras if k in checked}, {k: v for k, v in spec.extras if k not in checked})


def _category(text: str) -> str:
    value = text.strip().upper()
    if value not in CATEGORIES:
        raise UsageError(f"--category: unknown category {text!r}; expected one of {', '.join(CATEGORIES)}")
    return value


def endpoint_url(channel: Channel, region: str, url: str | None) -> str:
    """The endpoint ``stream`` connects to, as shown to the user: no credentials, no query string."""
    if url is None:
        url = REGIONS[region] + ("/ws" if channel.family == "book" else "/nonbook/ws")
    return redact_url(url)


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

    def always(self, text: str) -> None:
        """Write one line even if it repeats the previous one (``--stats`` lines)."""
        with self.lock:
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
        # Reasons often start with the family ("nonbook: gave up ..."): the line names it already.
        reason = one_line(status.reason).removeprefix(f"{status.family}: ") if status.reason else None
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
        self.line(f"{_PROG}: {type(error).__name__}: {one_line(error)}")


def _endpoint_options(args: argparse.Namespace) -> dict[str, Any]:
    """The client arguments ``record`` and ``relay`` share: region, endpoint overrides, retries."""
    options: dict[str, Any] = {"region": args.region}
    if args.book_url:
        options["book_url"] = args.book_url
    if args.nonbook_url:
        options["nonbook_url"] = args.nonbook_url
    if args.retries is not None:
        options["max_retries"] = args.retries
    return options


def cmd_stream(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``kiyotaka-ws stream``: usage checks, then the key, then stream until --seconds or Ctrl-C."""
    channel = Channel(args.channel)
    category = _category(args.category)
    params, extra = stream_params(channel, args.exchange, args.symbol, category, args.param)
    options: dict[str, Any] = {"region": args.region}
    if args.url:
        options["book_url" if channel.family == "book" else "nonbook_url"] = args.url
    if args.retries is not None:
        options["max_retries"] = args.retries
    api_key = (args.api_key or os.environ.get("KIYOTAKA_API_KEY", "")).strip()
    try:  # checks the URL and the other arguments; the key is only needed at start()
        client = KiyotakaClient(api_key or None, **options)
    except ConfigurationError as exc:
        raise UsageError(one_line(exc)) from None
    if not api_key:
        raise UsageError("no API key: pass --api-key or set KIYOTAKA_API_KEY")

    url = endpoint_url(channel, args.region, args.url)
    report = _StreamReport(err, url, args.verbose, args.seconds)
    output = _Output(out, lambda: threading.Thread(target=client.stop, name="kiyotaka-ws-cli-stop").start())
    render = event_to_json if args.json else format_event
    client.subscribe(channel, lambda ev: output.write(render(ev)), exchange=args.exchange,
                     symbol=args.symbol, category=category, params=params, extra_params=extra)
    client.on_status(report.on_status)

    @client.on_error
    def _error(error: KiyotakaError) -> None:
        report.on_error(error)
        if isinstance(error, SubscriptionError):  # our only subscription: nothing will ever arrive
            threading.Thread(target=client.stop, name="kiyotaka-ws-cli-stop").start()

    report.line(f"{_PROG}: connecting to {url} ({channel.value} {args.exchange}:{args.symbol})")
    fatal: KiyotakaError | None = None
    stats_done = threading.Event()
    stats_thread = None
    if args.stats is not None:
        stats_thread = threading.Thread(target=_report_stats, args=(client, channel.family, args.stats, report,
                                                                    stats_done),
                                        name="kiyotaka-ws-cli-stats", daemon=True)
        stats_thread.start()
    try:
        timed_out = run_for(client, args.seconds)  # Ctrl-C: KeyboardInterrupt, 130 in main()
    except KiyotakaError as exc:
        fatal, timed_out = exc, False
    finally:
        stats_done.set()
        if stats_thread is not None:
            stats_thread.join()
    return _finish(report, fatal or report.fatal, url, args.seconds if timed_out else None, "the subscription")


def stats_line(family: str, before: ConnectionStats, now: ConnectionStats, seconds: float) -> str:
    """One ``--stats`` line: rates since ``before``, the latency percentiles of the last minute,
    and the running totals of drops, reconnects and conflated snapshots."""
    def ms(value: float) -> str:
        return f"{value * 1000:.1f}"

    rates = (f"{_PROG}: stats {family}: {(now.events - before.events) / seconds:,.0f} events/s, "
             f"{(now.frames - before.frames) / seconds:,.0f} frames/s")
    parts = [rates]
    for name, got in (("feed latency", now.feed_latency), ("queue delay", now.queue_delay)):
        if got is not None:
            parts.append(f"{name} p50 {ms(got.p50)} ms p99 {ms(got.p99)} ms")
    parts.append(f"dropped {now.dropped}, reconnects {now.reconnects}, conflated {now.conflated}, "
                 f"queue {now.queue_depth}")
    return "; ".join(parts)


def _report_stats(client: KiyotakaClient, family: str, interval: float, report: _StreamReport,
                  done: threading.Event) -> None:
    before, since = client.stats()[family], time.monotonic()
    while not done.wait(interval):
        now, at = client.stats()[family], time.monotonic()
        report.always(stats_line(family, before, now, max(at - since, 1e-9)))
        before, since = now, at


class Sub(NamedTuple):
    """One ``--sub`` (or ``CHANNEL --exchange --symbol --param``) subscription, ready for ``subscribe``."""

    channel: Channel
    exchange: str
    symbol: str
    category: str
    params: dict[str, str]
    extra_params: dict[str, str]

    def subscribe(self, client: Any, handler: Callable[[Any], Any] | None = None) -> Any:
        """``client.subscribe(...)`` (or a ``Relay``'s, without a handler) with this subscription."""
        args = {"exchange": self.exchange, "symbol": self.symbol, "category": self.category,
                "params": self.params, "extra_params": self.extra_params}
        return client.subscribe(self.channel, **args) if handler is None else client.subscribe(
            self.channel, handler, **args)


def parse_sub(text: str) -> Sub:
    """``CHANNEL:EXCHANGE:SYMBOL[:NAME=VALUE...]`` -> the subscription.

    ``category=SPOT`` among the parameters is the category; the others are checked as ``--param``.
    """
    parts = text.split(":")
    if len(parts) < 3 or not all(parts[:3]):
        raise UsageError(f"--sub: expected CHANNEL:EXCHANGE:SYMBOL[:NAME=VALUE...], got {text!r}")
    try:
        channel = Channel(parts[0].strip().upper())
    except ValueError:
        raise UsageError(f"--sub: unknown channel {parts[0]!r}; expected one of "
                         f"{', '.join(c.value for c in Channel)}") from None
    category = "*"
    items = []
    for item in parts[3:]:
        name, _, value = item.partition("=")
        if name.strip() == "category":
            category = _category(value)
        else:
            items.append(item)
    return Sub(channel, parts[1], parts[2], category, *stream_params(channel, parts[1], parts[2], category, items))


def _recording_path(text: str) -> str:
    """``--out``: a file in an existing directory, new or already a recording (appended to)."""
    from ..recording import Recorder, RecordingError

    try:
        Recorder.check(text)
    except (OSError, RecordingError) as exc:
        raise UsageError(f"--out: cannot record to {text!r}: {exc}") from None
    return text


def cmd_record(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``kiyotaka-ws record``: subscribe, append every frame to --out until --seconds or Ctrl-C."""
    subs: list[Sub] = []
    if args.channel is not None:
        if not args.exchange or not args.symbol:
            raise UsageError("CHANNEL needs --exchange and --symbol (or use --sub CHANNEL:EXCHANGE:SYMBOL)")
        channel = Channel(args.channel)
        category = _category(args.category)
        subs.append(Sub(channel, args.exchange, args.symbol, category,
                        *stream_params(channel, args.exchange, args.symbol, category, args.param)))
    elif args.exchange or args.symbol or args.param:
        raise UsageError("--exchange, --symbol and --param go with a CHANNEL; or use --sub")
    subs.extend(parse_sub(text) for text in args.sub)
    if not subs:
        raise UsageError("nothing to record: give CHANNEL --exchange E --symbol S, or --sub CHANNEL:EXCHANGE:SYMBOL")
    path = _recording_path(args.out)
    options = {**_endpoint_options(args), "record": path}
    if args.rotate_mb is not None:
        options["record_rotate_bytes"] = int(args.rotate_mb * 2**20)
    if args.rotate_seconds is not None:
        options["record_rotate_seconds"] = args.rotate_seconds
    api_key = (args.api_key or os.environ.get("KIYOTAKA_API_KEY", "")).strip()
    try:
        client = KiyotakaClient(api_key or None, **options)
    except ConfigurationError as exc:
        raise UsageError(one_line(exc)) from None
    if not api_key:
        raise UsageError("no API key: pass --api-key or set KIYOTAKA_API_KEY")

    first = subs[0].channel
    url = endpoint_url(first, args.region, args.book_url if first.family == "book" else args.nonbook_url)
    report = _StreamReport(err, url, args.verbose, args.seconds)
    events = [0]

    def count(_: Any) -> None:
        events[0] += 1

    for sub in subs:
        sub.subscribe(client, count)
    client.on_status(report.on_status)

    @client.on_error
    def _error(error: KiyotakaError) -> None:
        report.on_error(error)
        if isinstance(error, SubscriptionError):  # a bad symbol: say so now rather than record half
            threading.Thread(target=client.stop, name="kiyotaka-ws-cli-stop").start()

    report.line(f"{_PROG}: recording {len(subs)} subscription(s) to {path} (connecting to {url} ...)")
    fatal: KiyotakaError | None = None
    interrupted = False
    try:
        timed_out = run_for(client, args.seconds)
    except KiyotakaError as exc:
        fatal, timed_out = exc, False
    except KeyboardInterrupt:  # Ctrl-C is record's normal end: the client is stopped, the file flushed
        interrupted, timed_out = True, False
    fatal = fatal or report.fatal
    stats = client.recording_stats()
    summary = (f"{_PROG}: recorded {stats.frames} frames ({stats.bytes:,} bytes, {events[0]} events, "
               f"{stats.dropped} dropped) to {path}") if stats is not None else None
    code = _finish(report, fatal, url, args.seconds if timed_out else None, "a subscription", summary)
    return EXIT_INTERRUPTED if interrupted and code == EXIT_OK else code


def cmd_relay(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``kiyotaka-ws relay``: hold the upstream connections, publish every point to NATS."""
    from ..nats import Relay

    subs = [parse_sub(text) for text in args.sub]
    if not subs:
        raise UsageError("nothing to relay: give --sub CHANNEL:EXCHANGE:SYMBOL (repeatable)")
    options = _endpoint_options(args)
    api_key = (args.api_key or os.environ.get("KIYOTAKA_API_KEY", "")).strip()
    if not api_key:
        raise UsageError("no API key: pass --api-key or set KIYOTAKA_API_KEY")
    relay = Relay(args.nats, subject_prefix=args.prefix, jetstream=args.jetstream, stream=args.stream,
                  max_age=args.max_age, buffer_size=args.buffer, api_key=api_key, **options)
    for sub in subs:
        sub.subscribe(relay)
    first = subs[0].channel
    url = endpoint_url(first, args.region, args.book_url if first.family == "book" else args.nonbook_url)
    report = _StreamReport(err, url, args.verbose, args.seconds)
    relay.on_status(report.on_status)
    relay.on_error(report.on_error)
    servers = ", ".join(redact_url(u) for u in args.nats)
    report.line(f"{_PROG}: relaying {len(subs)} subscription(s) from {url} to NATS {servers} "
                f"(subjects {args.prefix}.<TYPE>.<EXCHANGE>.<SYMBOL>{', JetStream ' + args.stream if args.jetstream else ''})")
    deadline = None if args.seconds is None else time.monotonic() + args.seconds
    next_stats = None if args.stats is None else time.monotonic() + args.stats
    relay.start()
    interrupted = False
    try:
        while deadline is None or time.monotonic() < deadline:
            if relay.client.done or report.fatal is not None or terminated.is_set():
                break
            time.sleep(0.1)
            if next_stats is not None and time.monotonic() >= next_stats:
                next_stats += args.stats
                st = relay.stats()
                report.line(f"{_PROG}: NATS {st.state.value}: {st.published} published, {st.buffered} buffered, "
                            f"{st.dropped} dropped, {st.reconnects} reconnects")
    except KeyboardInterrupt:
        interrupted = True
    finally:
        relay.stop()
    st = relay.stats()
    summary = (f"{_PROG}: relayed {st.published} messages ({st.dropped} dropped while NATS was unreachable, "
               f"{st.buffered} left unpublished at the stop, {st.reconnects} NATS reconnects)")
    code = _finish(report, report.fatal or relay.client.fatal, url, None, "a subscription", summary)
    return EXIT_INTERRUPTED if interrupted and code == EXIT_OK else code


def _finish(report: _StreamReport, fatal: KiyotakaError | None, url: str, timed_out_after: float | None,
            subscription: str, summary: str | None = None) -> int:
    """The exit code of a streaming command (stream, record, relay) and its one closing line."""
    if isinstance(fatal, AuthenticationError):
        report.finish(f"{_PROG}: error: the API key was rejected ({one_line(fatal)})")
        return EXIT_REJECTED
    if isinstance(fatal, ConnectionFailedError):
        report.finish(f"{_PROG}: error: could not connect to {url}: {one_line(fatal)}")
        return EXIT_NO_CONNECTION
    if fatal is not None:
        report.finish(f"{_PROG}: error: {type(fatal).__name__}: {one_line(fatal)}")
        return EXIT_REJECTED
    if report.rejected is not None:
        report.finish(f"{_PROG}: error: the server rejected {subscription}: {one_line(report.rejected)}")
        return EXIT_USAGE
    if timed_out_after is not None and not report.ready.is_set():
        reason = f" (last error: {report.last_reason})" if report.last_reason else ""
        report.finish(f"{_PROG}: error: could not connect to {url} within {timed_out_after:g}s{reason}")
        return EXIT_NO_CONNECTION
    report.finish(summary)
    return EXIT_OK  # ran to --seconds, the output was closed, or the client ended cleanly


def _open_recording(path: str) -> Any:
    from ..recording import RecordingError, inspect_recording

    try:
        return inspect_recording(path)
    except (OSError, RecordingError) as exc:
        raise UsageError(f"cannot read the recording {path!r}: {exc}") from None


def cmd_replay(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``kiyotaka-ws replay``: every event of a recording (or those of --sub), as from ``stream``."""
    subs = [parse_sub(text) for text in args.sub]
    try:
        client = KiyotakaClient.replay(args.path, speed=args.speed)
    except ConfigurationError as exc:
        raise UsageError(f"cannot read the recording {args.path!r}: {one_line(exc).split(': ', 2)[-1]}") from None
    output = _Output(out, lambda: threading.Thread(target=client.stop, name="kiyotaka-ws-cli-stop").start())
    render = event_to_json if args.json else format_event

    def show(event: Event) -> None:
        output.write(render(event))

    if subs:
        for sub in subs:
            sub.subscribe(client, show)
    else:  # everything in the file: one registration per series found (a first pass over the file)
        for wire in _open_recording(args.path).channels:
            extra = {k: v for k, v in wire.items() if k not in ("type", "exchange", "symbol")}
            try:
                client.subscribe(wire["type"], show, exchange=wire["exchange"], symbol=wire["symbol"], params=extra)
            except ConfigurationError:
                continue  # a channel type this version does not know

    @client.on_error
    def _error(error: KiyotakaError) -> None:
        with contextlib.suppress(ValueError, OSError):
            err.write(f"{_PROG}: {type(error).__name__}: {one_line(error)}\n")

    try:
        run_for(client, None)
    except KiyotakaError as exc:
        err.write(f"{_PROG}: error: {type(exc).__name__}: {one_line(exc)}\n")
        return EXIT_REJECTED
    return EXIT_OK


def _utc(time_ns: int | None) -> str:
    if time_ns is None:
        return "-"
    import datetime

    when = datetime.datetime.fromtimestamp(time_ns / 1e9, tz=datetime.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def cmd_inspect(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``kiyotaka-ws inspect``: what a recording holds."""
    info = _open_recording(args.path)
    if args.json:
        doc = {"files": info.files, "version": info.version, "first": _utc(info.first_ns), "last": _utc(info.last_ns),
               "seconds": round(info.duration, 6), "frames": info.frames, "bytes": info.bytes,
               "data_frames": info.data_frames, "other_frames": info.other_frames, "points": info.points,
               "connections": info.connections, "dropped": info.dropped, "damaged": info.torn,
               "skipped_bytes": info.skipped_bytes,
               "series": [{"channel": c, "exchange": e, "symbol": s, "points": n}
                          for (c, e, s), n in sorted(info.series.items())]}
        out.write(json.dumps(doc) + "\n")
        return EXIT_OK
    lines = [
        f"recording: {args.path} ({len(info.files)} file(s), format v{info.version})",
        f"time:      {_utc(info.first_ns)} .. {_utc(info.last_ns)} ({info.duration:.3f} s)",
        "frames:    " + (", ".join(f"{fam} {n} ({info.bytes.get(fam, 0):,} bytes)"
                                   for fam, n in sorted(info.frames.items())) or "none")
        + f"; data {info.data_frames}, other {info.other_frames} (answers, errors)",
        f"points:    {info.points} in {len(info.series)} series; connections {info.connections}",
        (f"gaps:      {info.dropped} frames dropped by the recorder; {info.torn} damaged record(s) skipped "
        f"({info.skipped_bytes} bytes)"),
    ]
    lines += [f"  {channel:<20} {exchange:<20} {symbol:<16} {count:>10}"
              for (channel, exchange, symbol), count in sorted(info.series.items())]
    out.write("\n".join(lines) + "\n")
    return EXIT_OK


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
                        help="channel parameter, e.g. block_size=25 or batchInterval=1s (repeatable); "
                             f"{EXTRA_PREFIX}NAME=VALUE sends a field this version does not know, as given")
    stream.add_argument("--region", default="singapore", choices=sorted(REGIONS),
                        help=f"service region: {', '.join(sorted(REGIONS))} (default singapore)")
    stream.add_argument("--url", help="endpoint URL override (e.g. a FakeKiyotakaServer)")
    stream.add_argument("--api-key", help="API key (default: $KIYOTAKA_API_KEY)")
    stream.add_argument("--json", action="store_true", help="one JSON object per event, for piping")
    stream.add_argument("--seconds", type=_positive_float, help="stop after this many seconds")
    stream.add_argument("--stats", type=_positive_float, metavar="SECONDS",
                        help="every SECONDS, one line to stderr: event and frame rates, feed latency and "
                             "queue delay p50/p99, drops, reconnects")
    stream.add_argument("--retries", type=_whole_number, metavar="N", help=_retries_help("connection"))
    stream.add_argument("-v", "--verbose", action="store_true",
                        help="show every connection state change and the library's log lines")

    record = commands.add_parser("record", help="record the live feed to a file, to replay later",
                                 description="Subscribe and append every frame received, as received, to "
                                             "--out (created, or appended to). The key comes from --api-key "
                                             "or KIYOTAKA_API_KEY.",
                                 epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    record.add_argument("channel", nargs="?", type=str.upper, choices=[c.value for c in Channel], metavar="CHANNEL",
                        help="one of: " + ", ".join(c.value for c in Channel) + " (or use --sub)")
    record.add_argument("--exchange", help="exchange of CHANNEL")
    record.add_argument("--symbol", help="symbol of CHANNEL")
    record.add_argument("--category", default="*", metavar="C", help="market class of CHANNEL (default *)")
    record.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help=f"parameter of CHANNEL (repeatable; {EXTRA_PREFIX}NAME=VALUE: a field this "
                             "version does not know, as given)")
    record.add_argument("--sub", action="append", default=[], metavar="CHANNEL:EXCHANGE:SYMBOL[:NAME=VALUE...]",
                        help="one more subscription, e.g. BLOCK_BOOK_SNAPSHOT:BINANCE_FUTURES:BTCUSDT:block_size=25 "
                             "(repeatable)")
    record.add_argument("--out", required=True, metavar="PATH", help="the recording file")
    record.add_argument("--seconds", type=_positive_float, help="stop after this many seconds")
    record.add_argument("--rotate-mb", type=_positive_float, metavar="MB",
                        help="start a new file after this many MiB (older ones: PATH.1, PATH.2, ...)")
    record.add_argument("--rotate-seconds", type=_positive_float, metavar="S",
                        help="start a new file after this many seconds")
    _add_upstream_arguments(record, "connection")

    replay = commands.add_parser("replay", help="print the events of a recording",
                                 description="Replay a recording through the client's decoding: every "
                                             "event in it (or those of --sub), as `stream` prints them.",
                                 epilog=REPLAY_EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    replay.add_argument("path", metavar="PATH")
    replay.add_argument("--speed", type=_positive_float, metavar="X",
                        help="pace: 1 = as recorded, 10 = ten times faster (default: as fast as possible)")
    replay.add_argument("--sub", action="append", default=[], metavar="CHANNEL:EXCHANGE:SYMBOL[:NAME=VALUE...]",
                        help="only this subscription (repeatable; default: everything)")
    replay.add_argument("--json", action="store_true", help="one JSON object per event")

    inspect = commands.add_parser("inspect", help="what a recording holds",
                                  description="Time range, families, channels, symbols and counts of a recording.",
                                  epilog=INSPECT_EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    inspect.add_argument("path", metavar="PATH")
    inspect.add_argument("--json", action="store_true", help="one JSON object")

    from .export import add_parser as add_export_parser

    add_export_parser(commands)
    relay = commands.add_parser("relay", help="publish the live feed to NATS for bots elsewhere",
                                description="Hold the upstream connections and publish every point to a NATS "
                                            "subject per series (<prefix>.<TYPE>.<EXCHANGE>.<SYMBOL>; statuses "
                                            "on <prefix>._status.<family>). Consume with "
                                            "KiyotakaClient.from_nats(URL). Needs the nats extra.",
                                epilog=RELAY_EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    relay.add_argument("--nats", action="append", required=True, metavar="URL",
                       help="NATS server, e.g. nats://127.0.0.1:4222 (repeatable: a cluster)")
    relay.add_argument("--sub", action="append", default=[], metavar="CHANNEL:EXCHANGE:SYMBOL[:NAME=VALUE...]",
                       help="a series to relay (repeatable)")
    relay.add_argument("--prefix", default="kiyotaka", help="first subject token(s) (default kiyotaka)")
    relay.add_argument("--jetstream", action="store_true",
                       help="also keep the points in a JetStream stream, so consumers can catch up")
    relay.add_argument("--stream", default="KIYOTAKA", help="JetStream stream name (default KIYOTAKA)")
    relay.add_argument("--max-age", type=_positive_float, default=24 * 3600.0, metavar="S",
                       help="JetStream retention in seconds (default 86400)")
    relay.add_argument("--buffer", type=_whole_number, default=100_000, metavar="N",
                       help="points held while NATS is unreachable; beyond, the oldest are dropped and "
                            "announced (default 100000)")
    relay.add_argument("--seconds", type=_positive_float, help="stop after this many seconds")
    relay.add_argument("--stats", type=_positive_float, metavar="S", help="print counters every S seconds")
    _add_upstream_arguments(relay, "upstream connection")

    bench = commands.add_parser("bench", help="throughput benchmark: client vs bare websocket-client loops",
                                description="Blast frames from a separate process and compare the client "
                                            "with bare recv/decompress/json.loads and orjson.loads loops, "
                                            "alternating within one run.")
    bench.add_argument("--points", type=int, help="points per run (default 200000; 1000000 with --recording)")
    bench.add_argument("--rounds", type=int, default=5, help="alternating rounds per case (default 5)")
    bench.add_argument("--quick", action="store_true", help="a few seconds only (smoke test)")
    bench.add_argument("--json", action="store_true", help="one JSON document instead of the table (for tracking)")
    bench.add_argument("--recording", action="store_true",
                       help="instead: what recording costs, replay against live decoding (1M points by default), "
                            "and the pacing error of a replay at speed 1.0")
    bench.add_argument("--per-frame", type=_whole_number, default=5, help="points per frame with --recording")
    bench.add_argument("--parser", choices=("orjson", "stdlib"),
                       help="the client's JSON parser (default: orjson when installed)")
    bench.add_argument("--busy", type=int, default=0, metavar="N",
                       help="run N processes that only burn CPU beside the whole benchmark (not a quiet machine)")
    bench.add_argument("--subscriptions", type=_counts, nargs="?", const="100,1000,5000", metavar="N[,N...]",
                       help="instead: N TRADE subscriptions against a fake server enforcing 10 requests/s, "
                            "50 channels per request and 1,000 subscriptions per connection; time to READY "
                            "at start and after the server drops every connection (default 100,1000,5000)")
    bench.add_argument("--series", type=_count, default=8, metavar="N",
                       help="every case again with N series interleaved in each frame, one registration per "
                            "series (default 8; 1: single-series rows only)")
    nats_bench = commands.add_parser("nats-bench", help="relay throughput and latency through a local nats-server",
                                     description="Start nats-server, a blaster upstream, a relay and a consumer; "
                                                 "report relay throughput and end-to-end latency through the bus.")
    nats_bench.add_argument("--points", type=_whole_number, default=200_000, help="points, flat out (default 200000)")
    nats_bench.add_argument("--rate", type=_positive_float, default=20_000.0,
                            help="points/s for the latency run (default 20000)")
    nats_bench.add_argument("--seconds", type=_positive_float, default=5.0, help="latency run length (default 5)")
    return parser


def _add_upstream_arguments(parser: argparse.ArgumentParser, attempts: str) -> None:
    """The live-feed options ``record`` and ``relay`` share."""
    parser.add_argument("--region", default="singapore", choices=sorted(REGIONS),
                        help=f"service region: {', '.join(sorted(REGIONS))} (default singapore)")
    parser.add_argument("--book-url", help="book endpoint URL override")
    parser.add_argument("--nonbook-url", help="nonbook endpoint URL override")
    parser.add_argument("--api-key", help="API key (default: $KIYOTAKA_API_KEY)")
    parser.add_argument("--retries", type=_whole_number, metavar="N", help=_retries_help(attempts))
    parser.add_argument("-v", "--verbose", action="store_true", help="show every state change and log line")


def _retries_help(attempts: str) -> str:
    """``--retries``, said the same way by every command (it is ``max_retries``)."""
    return (f"after a failed {attempts} attempt, retry at most N times in a row, then give up (exit 3): "
            f"N+1 failed attempts, 0 = no retry (max_retries; default: keep trying)")


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


def _count(text: str) -> int:
    value = _whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _counts(text: str) -> list[int]:
    """``N[,N...]``: whole numbers >= 1."""
    return [_count(part) for part in text.split(",")]


def _version() -> str:
    from .._version import __version__
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


def _missing_extra(error: BaseException | None) -> tuple[str, str | None]:
    """The optional module missing behind an ImportError (or its cause), and its extra (None: not one)."""
    while error is not None:
        if isinstance(error, ModuleNotFoundError):
            module = (error.name or "").split(".")[0]
            if module in _EXTRA_OF_MODULE:
                return module, _EXTRA_OF_MODULE[module]
        error = error.__cause__
    return "", None


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
        with _library_logging(err, verbose=getattr(args, "verbose", False)), sigterm_stops():
            if args.command == "demo":
                from .demo import run_demo
                return run_demo(args.seconds, out, plain=args.plain)
            if args.command == "bench" and args.subscriptions:
                from .bench_subscriptions import run_subscriptions_bench
                counts = _counts(args.subscriptions) if isinstance(args.subscriptions, str) else args.subscriptions
                return run_subscriptions_bench(counts, quick=args.quick, out=out)
            if args.command == "bench" and args.recording:
                from .bench_recording import run_recording_bench
                return run_recording_bench(points=args.points or 1_000_000, per_frame=args.per_frame,
                                           rounds=min(args.rounds, 3))
            if args.command == "bench":
                from .bench import run_bench
                return run_bench(points=args.points or 200_000, rounds=args.rounds, quick=args.quick, out=out,
                                 as_json=args.json, parser=args.parser, busy=args.busy, series=args.series)
            if args.command == "record":
                return cmd_record(args, out, err)
            if args.command == "replay":
                return cmd_replay(args, out, err)
            if args.command == "inspect":
                return cmd_inspect(args, out, err)
            if args.command == "nats-bench":
                from ..nats import check_available
                from .nats_bench import run_nats_bench
                check_available()  # before any process is started
                return run_nats_bench(points=args.points, rate=args.rate, seconds=args.seconds, out=out)
            if args.command == "relay":
                return cmd_relay(args, out, err)
            if args.command == "export":
                from .export import cmd_export
                return cmd_export(args, out, err)
            return cmd_stream(args, out, err)
    except UsageError as exc:
        err.write(f"{_PROG}: error: {exc}\n")
        return EXIT_USAGE
    except ConfigurationError as exc:
        err.write(f"{_PROG}: error: {one_line(exc)}\n")
        return EXIT_USAGE
    except ImportError as exc:  # a plain install running a command that needs an extra
        module, extra = _missing_extra(exc)
        if extra is None:
            raise
        err.write(f"{_PROG}: error: {args.command} needs the {extra!r} extra ({module} is not installed): "
                  f"pip install 'kiyotaka-ws[{extra}]'\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
