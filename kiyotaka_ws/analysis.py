"""Recordings as columnar tables: Arrow, pandas, and (through ``kiyotaka-ws export``) Parquet and CSV.

Needs the ``analysis`` extra (pyarrow); ``to_pandas`` also needs pandas, which it does not install.

One row per point, one table per channel, a column per event field (the attrs fields of the
channel's event class, ``channel`` and ``raw`` aside), named as the fields are: ``time_ns`` and
``received_ns`` (and a trade aggregation's ``first_time_ns``/``last_time_ns``) are
``timestamp[ns, tz=UTC]``; strings stay strings (``side`` is "BUY", "SELL" or null); numbers are
float64 (null where the event holds None); a book's ``bids``/``asks`` are
``list<struct<price, size>>`` and a volume profile's ``levels`` ``list<struct<price, buy_volume,
sell_volume>>``, nearest to mid first, as in the event.

A value is the one a handler gets: frames are read by the replay's reader (``RecordingReader``:
rotated segments in order, a damaged record skipped and counted as replay skips it), parsed by the
live ``FrameDecoder`` and decoded by the dispatcher's decoders, the fast path first and
``decode_point`` for anything else, exactly as ``Dispatcher._deliver`` does. What was skipped is
counted in a ``CaptureStats`` (``record_batches``) and, for ``to_arrow``, in the table's schema
metadata (``kiyotaka_ws.damaged``, ``kiyotaka_ws.dropped``, ...).

Memory. ``record_batches`` holds at most ``rows`` rows (and ``MAX_BATCH_LEVELS`` book or profile
levels) per channel before it hands a batch over: ``kiyotaka-ws export`` writes each as a Parquet
row group, so a capture larger than RAM exports. ``to_arrow`` and ``to_pandas`` build a whole
table in memory, by nature. Measured (``nice python -m kiyotaka_ws._cli.bench_export --points 1000000``:
TRADE points, 10 per brotli frame, a 35 MiB capture; one run on a shared, loaded 2-core machine):
export to Parquet 90,800 points/s at a peak RSS of 179 MB (69 MB after the imports alone; 178 MB
for a 200,000-point capture: the peak does not grow with the capture), where a replay of the same
capture into a counting handler runs at 177,000 points/s (peak RSS 37 MB). The Parquet file: 9.9 MiB.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import json
import math
import operator
import os
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Callable, Protocol

import attrs

from .channels import Channel, parse_channel
from .errors import ConfigurationError, DecodeError
from .events import (
    BookSnapshot,
    Event,
    FundingRate,
    Liquidation,
    OpenInterest,
    Trade,
    TradeAggregation,
    VolumeProfile,
    decode_point,
)
from .fastpath import FastPath
from .protocol import FrameDecoder, Kind, classify
from .recording import GAP, PathLike, RecordingReader

if TYPE_CHECKING:
    import pandas  # type: ignore[import-untyped, unused-ignore]
    import pyarrow  # type: ignore[import-untyped, unused-ignore]

__all__ = [
    "FORMATS",
    "INSTALL_HINT",
    "MAX_BATCH_LEVELS",
    "ROWS_PER_BATCH",
    "CaptureStats",
    "ExportProgress",
    "columns",
    "export_capture",
    "file_name",
    "gaps",
    "iter_events",
    "record_batches",
    "schema",
    "to_arrow",
    "to_pandas",
]

INSTALL_HINT = 'the analysis extra is not installed: pip install "kiyotaka-ws[analysis]" (pyarrow)'
ROWS_PER_BATCH = 65_536          # rows per batch (a Parquet row group) and channel
MAX_BATCH_LEVELS = 4_000_000     # book/profile levels per batch: a batch of deep books ends early
CHUNK_ROWS = 8_192               # rows held as Python tuples before they become Arrow arrays
MAX_FRAME_BYTES = 64 * 2**20     # as the client's default max_frame_bytes

EVENT_CLASSES: dict[Channel, type[Event]] = {
    Channel.TRADE: Trade,
    Channel.TRADE_AGG: TradeAggregation,
    Channel.BLOCK_BOOK_SNAPSHOT: BookSnapshot,
    Channel.LIQUIDATION: Liquidation,
    Channel.FUNDING_RATE: FundingRate,
    Channel.OPEN_INTEREST: OpenInterest,
    Channel.VOLUME_PROFILE_AGG: VolumeProfile,
}
_KNOWN_TYPES = frozenset(c.value for c in Channel)
_HEAD = ("time_ns", "received_ns", "exchange", "symbol", "coin", "normalized_symbol", "category")
_TIMES = frozenset({"time_ns", "received_ns", "first_time_ns", "last_time_ns"})
_STRINGS = frozenset({"exchange", "symbol", "coin", "normalized_symbol", "category", "id", "side"})
_LEVELS = {"bids": ("price", "size"), "asks": ("price", "size"), "levels": ("price", "buy_volume", "sell_volume")}
_FLOATS = frozenset({"price", "amount", "open", "high", "low", "close", "volume", "block_size", "rate",
                     "predicted_rate", "open_interest"})


def _pyarrow() -> Any:
    try:
        import pyarrow
    except ImportError:
        raise ConfigurationError(INSTALL_HINT) from None
    return pyarrow


def columns(channel: Channel | str) -> list[str]:
    """The column names of a channel's table: the common fields, then the event's own, in order."""
    cls = EVENT_CLASSES[parse_channel(channel)]
    own = [f.name for f in attrs.fields(cls)][len(_HEAD) + 2:]  # after channel, ..., time_ns, raw, received_ns
    return [*_HEAD, *own]


def _arrow_type(pa: Any, name: str) -> Any:
    if name in _TIMES:
        return pa.timestamp("ns", tz="UTC")
    if name in _STRINGS:
        return pa.string()
    if name in _LEVELS:
        return pa.list_(pa.struct([(part, pa.float64()) for part in _LEVELS[name]]))
    if name in _FLOATS:
        return pa.float64()
    raise AssertionError(f"no column type for event field {name!r}")  # a new event field: give it a type here


def schema(channel: Channel | str) -> pyarrow.Schema:
    """The Arrow schema of a channel's table (metadata ``kiyotaka_ws.channel``: the channel)."""
    pa = _pyarrow()
    channel = parse_channel(channel)
    return pa.schema([(name, _arrow_type(pa, name)) for name in columns(channel)],
                     metadata={"kiyotaka_ws.channel": channel.value})


@attrs.define
class CaptureStats:
    """What a read of a capture found: rows per channel, and everything it skipped, counted."""

    rows: dict[str, int] = attrs.Factory(dict)  # per channel (its value, e.g. "TRADE")
    frames: int = 0          # frames of the families read
    dropped: int = 0         # frames the recorder dropped (its GAP records; see ``gaps``)
    damaged: int = 0         # damaged or torn records skipped (as replay skips them)
    skipped_bytes: int = 0   # bytes of those records
    decode_errors: int = 0   # frames or points that do not decode (a handler's on_error would get them)
    unknown: int = 0         # points of a type this library does not know
    read_bytes: int = 0      # stored bytes of the records read (about: a text frame counts a third)

    @property
    def points(self) -> int:
        """Rows in all."""
        return sum(self.rows.values())

    def metadata(self) -> dict[str, str]:
        """The counters as schema metadata (``kiyotaka_ws.<name>``)."""
        fields = ("frames", "dropped", "damaged", "skipped_bytes", "decode_errors", "unknown")
        return {f"kiyotaka_ws.{name}": str(getattr(self, name)) for name in fields}


class _Filter:
    """The route table ``FastPath`` asks: a point is taken when its series passes the filters."""

    _TAKE = (print,)  # any non-empty tuple: FastPath and the dispatcher's general path only test it for truth

    def __init__(self, channels: Iterable[Channel], exchange: str | None, symbol: str | None) -> None:
        self.types = frozenset(c.value for c in channels)
        self.exchange = exchange
        self.symbol = symbol

    def handlers_for(self, series: dict[str, Any]) -> tuple[Callable[[Any], Any], ...]:
        if series.get("type") not in self.types:
            return ()
        if self.exchange is not None and series.get("exchange") != self.exchange:
            return ()
        if self.symbol is not None and self.symbol != series.get("symbol") and self.symbol != series.get("coin"):
            return ()
        return self._TAKE


def _nanoseconds(name: str, value: Any) -> int | None:
    """``start``/``end`` as nanoseconds since the epoch: a timezone-aware datetime, or seconds."""
    if value is None:
        return None
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            raise ConfigurationError(f"{name}: a naive datetime is ambiguous; give it a timezone (UTC)")
        delta = value - _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
        return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return int(value * 1_000_000_000) if isinstance(value, float) else value * 1_000_000_000
    raise ConfigurationError(f"{name}: expected a timezone-aware datetime or seconds since the epoch, got {value!r}")


def _optional_str(name: str, value: Any) -> str | None:
    if value is not None and (type(value) is not str or not value):
        raise ConfigurationError(f"{name}: expected a non-empty string or None, got {value!r}")
    return value


def iter_events(path: PathLike, channels: Iterable[Channel], stats: CaptureStats, *, exchange: str | None = None,
           symbol: str | None = None, start_ns: int | None = None, end_ns: int | None = None) -> Iterator[Event]:
    """The events of ``channels`` in a recording, in recorded order, decoded as live (see the module doc).

    ``stats`` is updated as the read goes (``damaged``/``skipped_bytes`` once it ends)."""
    wanted = list(channels)
    reader = RecordingReader(path)
    decoder = FrameDecoder(MAX_FRAME_BYTES)
    routes = _Filter(wanted, exchange, symbol)
    fast = FastPath(routes)
    families = {c.family for c in wanted}
    bounded = start_ns is not None or end_ns is not None
    low = -(2**63) if start_ns is None else start_ns
    high = 2**63 if end_ns is None else end_ns
    for kind, received_ns, family, _connection, binary, payload, dropped in reader.raw():
        stats.read_bytes += 28 + (len(payload) if binary else len(payload) // 3)
        if kind == GAP:
            stats.dropped += dropped
            continue
        if family not in families:
            continue
        stats.frames += 1
        try:
            message = decoder.decode(payload, binary)
        except DecodeError:
            stats.decode_errors += 1
            continue
        points = message.get("points") if type(message) is dict else None
        if type(points) is not list:
            if classify(message) is Kind.UNKNOWN:  # answers and server errors are no data: a replay ignores them
                stats.decode_errors += 1
            continue
        taken, count = 0, len(points)
        while taken < count:
            for hit in fast.run(points, taken, received_ns):
                point = points[taken]
                taken += 1
                if hit:
                    event: Event | None = hit[1]
                elif hit is not None:  # filtered out
                    continue
                else:  # not a documented shape: the general path, as the dispatcher takes it
                    try:
                        if not routes.handlers_for(point["series"]):
                            kind = point["series"].get("type")
                            if type(kind) is not str:
                                stats.decode_errors += 1
                            elif kind not in _KNOWN_TYPES:
                                stats.unknown += 1
                            continue
                    except (TypeError, KeyError, AttributeError):
                        stats.decode_errors += 1
                        continue
                    try:
                        event = decode_point(point, received_ns)
                    except DecodeError:
                        stats.decode_errors += 1
                        continue
                    if event is None:
                        stats.unknown += 1
                        continue
                assert event is not None
                if bounded and (event.time_ns is None or not low <= event.time_ns < high):
                    continue
                yield event
    stats.damaged, stats.skipped_bytes = reader.torn, reader.skipped_bytes


class _Batch:
    """The rows of one channel not yet handed over: the last ``CHUNK_ROWS`` as tuples of the event's
    column values (~1 KB a row in Python objects), the earlier ones already as Arrow (~0.1 KB)."""

    def __init__(self, channel: Channel) -> None:
        pa = self.pa = _pyarrow()
        self.channel = channel
        self.names = columns(channel)
        self.schema = schema(channel)
        self.types = [_arrow_type(pa, name) for name in self.names]
        self.row_of = operator.attrgetter(*self.names)
        self.level_columns = [i for i, name in enumerate(self.names) if name in _LEVELS]
        self.rows: list[tuple[Any, ...]] = []
        self.chunks: list[Any] = []
        self.held = 0    # rows in all (tuples and chunks)
        self.levels = 0

    def add(self, event: Event) -> int:
        """Keep the event's row (not the event: its ``raw`` dict is far larger); the rows held."""
        row = self.row_of(event)
        self.rows.append(row)
        for i in self.level_columns:
            self.levels += len(row[i])
        self.held += 1
        if len(self.rows) >= CHUNK_ROWS:
            self.chunks.append(self._convert())
        return self.held

    def take(self) -> pyarrow.RecordBatch:
        """The rows held, as one record batch; the batch is empty after."""
        if self.rows or not self.chunks:
            self.chunks.append(self._convert())
        chunks, self.chunks, self.held, self.levels = self.chunks, [], 0, 0
        if len(chunks) == 1:
            return chunks[0]
        return self.pa.Table.from_batches(chunks, schema=self.schema).combine_chunks().to_batches()[0]

    def _convert(self) -> pyarrow.RecordBatch:
        pa = self.pa
        rows, self.rows = self.rows, []
        values: list[Any] = list(zip(*rows)) if rows else [() for _ in self.names]
        del rows
        arrays = []
        for name, kind, column in zip(self.names, self.types, values):
            if name in _LEVELS:
                arrays.append(_level_array(pa, kind, column, len(_LEVELS[name])))
            else:
                arrays.append(pa.array(column, type=kind))
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)


def _level_array(pa: Any, kind: Any, column: tuple[Any, ...], width: int) -> Any:
    offsets = pa.array([0, *itertools.accumulate(map(len, column))], type=pa.int32())
    parts = [pa.array([level[i] for levels in column for level in levels], type=pa.float64()) for i in range(width)]
    struct = pa.StructArray.from_arrays(parts, fields=list(kind.value_type))
    return pa.ListArray.from_arrays(offsets, struct, type=kind)


def record_batches(path: PathLike, channels: Iterable[Channel | str] | None = None, *, exchange: str | None = None,
                   symbol: str | None = None, start: Any = None, end: Any = None, rows: int = ROWS_PER_BATCH,
                   stats: CaptureStats | None = None) -> Iterator[tuple[Channel, pyarrow.RecordBatch]]:
    """Stream a recording as ``(channel, record batch)`` pairs, in one pass over it, in bounded memory.

    A channel's batch is handed over when it holds ``rows`` rows or ``MAX_BATCH_LEVELS`` levels,
    and at the end (a channel without rows gives no batch). ``channels``: None for all seven.
    Filters as ``to_arrow``. ``stats``, if given, counts what was read and skipped.
    Raises ``ConfigurationError`` for a bad argument, a missing extra or a path that is no
    recording, before reading anything.
    """
    wanted, low, high = _arguments(path, channels, exchange, symbol, start, end)
    if type(rows) is not int or rows < 1:
        raise ConfigurationError(f"rows: expected a positive int, got {rows!r}")
    return _batches(path, wanted, exchange, symbol, low, high, rows, stats if stats is not None else CaptureStats())


def _batches(path: PathLike, wanted: list[Channel], exchange: str | None, symbol: str | None, low: int | None,
             high: int | None, rows: int, stats: CaptureStats) -> Iterator[tuple[Channel, pyarrow.RecordBatch]]:
    batches = {channel: _Batch(channel) for channel in wanted}
    stats.rows.update({channel.value: 0 for channel in wanted})
    for event in iter_events(path, wanted, stats, exchange=exchange, symbol=symbol, start_ns=low, end_ns=high):
        batch = batches[event.channel]
        held = batch.add(event)
        stats.rows[event.channel.value] += 1
        if held >= rows or batch.levels >= MAX_BATCH_LEVELS:
            yield event.channel, batch.take()
    for channel, batch in batches.items():
        if batch.rows:
            yield channel, batch.take()


def _arguments(path: PathLike, channels: Iterable[Channel | str] | None, exchange: Any, symbol: Any, start: Any,
               end: Any) -> tuple[list[Channel], int | None, int | None]:
    _pyarrow()
    if isinstance(channels, (str, Channel)):
        channels = [channels]
    wanted = list(Channel) if channels is None else list(dict.fromkeys(map(parse_channel, channels)))
    _optional_str("exchange", exchange)
    _optional_str("symbol", symbol)
    low, high = _nanoseconds("start", start), _nanoseconds("end", end)
    try:
        RecordingReader(path)
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"path: cannot read {os.fspath(path)!r}: {exc}") from None
    return wanted, low, high


def to_arrow(path: PathLike, channel: Channel | str, *, exchange: str | None = None, symbol: str | None = None,
             start: Any = None, end: Any = None) -> pyarrow.Table:
    """One channel of a recording as an Arrow table: one row per point, a column per event field.

    ``exchange``/``symbol``: only the points of that exchange / symbol (or coin, for grouped
    points). ``start``/``end``: only points with ``start <= time_ns < end`` (a timezone-aware
    datetime, or seconds since the epoch; a point without a timestamp is then left out). Rotated
    segments are read in order. The schema's metadata counts what was skipped: ``kiyotaka_ws.damaged``
    records (as replay), ``kiyotaka_ws.dropped`` frames the recorder dropped (see ``gaps``),
    ``kiyotaka_ws.decode_errors``, ``kiyotaka_ws.unknown`` points. Raises ``ConfigurationError``
    for a bad argument, a path that is no recording, or without pyarrow (the ``analysis`` extra).
    """
    pa = _pyarrow()
    wanted = parse_channel(channel)
    stats = CaptureStats()
    parts = [batch for _, batch in record_batches(path, [wanted], exchange=exchange, symbol=symbol, start=start,
                                                  end=end, stats=stats)]
    table = pa.Table.from_batches(parts, schema=schema(wanted))
    return table.replace_schema_metadata({**table.schema.metadata, **{k.encode(): v.encode()
                                                                        for k, v in stats.metadata().items()}})


def to_pandas(path: PathLike, channel: Channel | str, **filters: Any) -> pandas.DataFrame:
    """``to_arrow(path, channel, **filters).to_pandas()``: timestamps become tz-aware (UTC)
    datetime64[ns] columns, levels lists of dicts. Needs pandas (not installed by the extra)."""
    try:
        import pandas  # noqa: F401
    except ImportError:
        raise ConfigurationError("to_pandas needs pandas: pip install pandas") from None
    return to_arrow(path, channel, **filters).to_pandas()


def gaps(path: PathLike) -> pyarrow.Table:
    """The places where the recorder dropped frames (its disk could not keep up): one row per gap,
    ``time_ns`` (the receive time of the next frame kept), ``family``, ``connection``, ``dropped``."""
    pa = _pyarrow()
    try:
        reader = RecordingReader(path)
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"path: cannot read {os.fspath(path)!r}: {exc}") from None
    rows = [(time_ns, family, connection, count)
            for kind, time_ns, family, connection, _, _, count in reader.raw() if kind == GAP]
    values: list[Any] = list(zip(*rows)) if rows else [(), (), (), ()]
    gap_schema = pa.schema([("time_ns", pa.timestamp("ns", tz="UTC")), ("family", pa.string()),
                            ("connection", pa.int64()), ("dropped", pa.int64())])
    return pa.Table.from_arrays([pa.array(v, type=f.type) for v, f in zip(values, gap_schema)], schema=gap_schema)


# -- Parquet and CSV files -------------------------------------------------------------------------

FORMATS = ("parquet", "csv")
_PROGRESS_EVERY = 0.2  # seconds between progress reports


class ExportProgress(Protocol):
    """What ``export_capture`` reports its progress to (the command's progress bar)."""

    def show(self, stats: CaptureStats) -> None: ...
    def done(self, stats: CaptureStats) -> None: ...


def export_capture(path: PathLike, folder: PathLike, fmt: str = "parquet",
                   channels: Iterable[Channel | str] | None = None, *, exchange: str | None = None,
                   symbol: str | None = None, rows: int = ROWS_PER_BATCH,
                   progress: ExportProgress | None = None) -> CaptureStats:
    """What ``kiyotaka-ws export`` does: ``channels`` (default all seven) of a recording to one file
    per channel in ``folder`` (``trade.parquet``, ...; ``fmt``: "parquet" or "csv"), streamed in
    bounded memory: at most ``rows`` rows per channel are held at a time (each batch a Parquet row
    group). ``progress`` is shown now and then. Returns what was read and skipped."""
    pa = _pyarrow()
    if fmt not in FORMATS:
        raise ConfigurationError(f"format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    wanted = list(Channel) if channels is None else [parse_channel(c) for c in channels]
    stats = CaptureStats()
    batches = record_batches(path, wanted, exchange=exchange, symbol=symbol, rows=rows, stats=stats)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(f"out: cannot create {os.fspath(folder)!r}: {exc}") from None
    writers = {channel: _Writer(pa, os.path.join(folder, file_name(channel, fmt)), channel, fmt)
               for channel in wanted}
    try:
        last = time.monotonic()
        for channel, batch in batches:
            writers[channel].write(batch)
            if progress is not None and time.monotonic() - last >= _PROGRESS_EVERY:
                progress.show(stats)
                last = time.monotonic()
        for writer in writers.values():
            writer.finish()
    finally:
        for writer in writers.values():
            writer.abandon()
        if progress is not None:
            progress.done(stats)
    return stats


def file_name(channel: Channel, fmt: str) -> str:
    """The file a channel's rows go to: ``trade.parquet``, ``block_book_snapshot.csv``..."""
    return f"{channel.value.lower()}.{fmt}"


class _Writer:
    """One channel's file, written as ``<name>.partial`` and renamed by ``finish()``."""

    def __init__(self, pa: Any, path: str, channel: Channel, fmt: str) -> None:
        self.pa, self.path, self.partial = pa, path, path + ".partial"
        self.schema = schema(channel)
        self.fmt = fmt
        self.lists = [i for i, field in enumerate(self.schema) if pa.types.is_list(field.type)]
        if fmt == "parquet":
            import pyarrow.parquet as pq  # type: ignore[import-untyped, unused-ignore]

            self.file: Any = pq.ParquetWriter(self.partial, self.schema, compression="zstd")
        else:
            import pyarrow.csv as pcsv  # type: ignore[import-untyped, unused-ignore]

            text = self.schema
            for i in self.lists:
                text = text.set(i, pa.field(text.field(i).name, pa.string()))
            self.schema = text
            self.file = pcsv.CSVWriter(self.partial, text)

    def write(self, batch: Any) -> None:
        if self.fmt == "parquet":
            self.file.write_batch(batch, row_group_size=batch.num_rows)
            return
        arrays = list(batch.columns)
        for i in self.lists:  # CSV has no lists: the levels as JSON text
            arrays[i] = self.pa.array([json.dumps([list(level.values()) for level in levels])
                                       for levels in arrays[i].to_pylist()], type=self.pa.string())
        self.file.write_batch(self.pa.RecordBatch.from_arrays(arrays, schema=self.schema))

    def finish(self) -> None:
        self.file.close()
        self.file = None
        os.replace(self.partial, self.path)

    def abandon(self) -> None:
        """After an error: close and remove the partial file (a no-op once finished)."""
        if self.file is None:
            return
        try:
            self.file.close()
        except Exception:  # noqa: BLE001,S110 - the export already failed; its error is the one to report
            pass
        self.file = None
        try:
            os.remove(self.partial)
        except OSError:
            pass
