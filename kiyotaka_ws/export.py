"""``kiyotaka-ws export``: a recording to one Parquet or CSV file per channel, streamed.

One pass over the capture (``analysis.record_batches``); each channel's rows go to its own file,
``<DIR>/<channel>.parquet`` (or ``.csv``), e.g. ``trade.parquet``, ``block_book_snapshot.parquet``,
a batch of at most ``rows`` rows at a time (a Parquet row group each), so memory stays bounded
whatever the capture's size (see ``analysis`` for the figures). Every selected channel gets a
file, empty ones too (a script reading ``liquidation.parquet`` never finds it missing). Files are
written as ``<name>.partial`` and renamed when complete: an export that fails leaves no file that
looks whole. In CSV, a book's or profile's levels are JSON text (``[[price, size], ...]``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from typing import Any, TextIO

from .analysis import ROWS_PER_BATCH, CaptureStats, _pyarrow, record_batches, schema
from .channels import Channel, parse_channel
from .errors import ConfigurationError
from .recording import recording_files

FORMATS = ("parquet", "csv")
_PROGRESS_EVERY = 0.2  # seconds between progress bar redraws


def add_parser(commands: Any) -> None:
    """Register ``export`` on the ``kiyotaka-ws`` subcommands."""
    export = commands.add_parser(
        "export", help="a recording to Parquet or CSV, one file per channel (extra: analysis)",
        description="Write a recording's points as tables, one file per channel (trade.parquet, ...), "
                    "a column per event field, decoded as a handler sees them. Streams: memory stays "
                    "bounded whatever the capture's size. Needs the analysis extra: "
                    'pip install "kiyotaka-ws[analysis]".')
    export.add_argument("capture", metavar="CAPTURE", help="the recording (its rotated segments are read too)")
    export.add_argument("--format", choices=FORMATS, default="parquet", help="file format (default parquet)")
    export.add_argument("--out", metavar="DIR", required=True, help="folder for the files (created if missing)")
    export.add_argument("--channel", action="append", metavar="CHANNEL",
                        help="a channel to export, e.g. TRADE (repeat for more; default: all seven)")
    export.add_argument("--exchange", help="only this exchange's points")
    export.add_argument("--symbol", help="only this symbol's (or coin's) points")


def cmd_export(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Run ``kiyotaka-ws export``; ``ConfigurationError`` (exit 2) for a bad argument or a missing extra."""
    channels = [parse_channel(name) for name in args.channel] if args.channel else list(Channel)
    progress = _Progress(err, _size(args.capture)) if _isatty(err) else None
    stats = export(args.capture, args.out, args.format, channels, exchange=args.exchange, symbol=args.symbol,
                   progress=progress)
    files = ", ".join(f"{_file_name(Channel(name), args.format)} ({rows:,})" for name, rows in stats.rows.items())
    out.write(f"exported {stats.points:,} points to {args.out}: {files}\n")
    out.write(f"skipped: {stats.damaged} damaged record(s) ({stats.skipped_bytes} bytes), {stats.dropped} frames "
              f"dropped by the recorder, {stats.decode_errors} undecodable, {stats.unknown} of unknown types\n")
    return 0


def export(path: str | os.PathLike[str], folder: str | os.PathLike[str], fmt: str = "parquet",
           channels: Sequence[Channel | str] | None = None, *, exchange: str | None = None,
           symbol: str | None = None, rows: int = ROWS_PER_BATCH, progress: _Progress | None = None) -> CaptureStats:
    """Write ``channels`` (default all) of the recording at ``path`` into ``folder``; the counts.

    At most ``rows`` rows per channel are held at a time (each batch a Parquet row group)."""
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
    writers = {channel: _Writer(pa, os.path.join(folder, _file_name(channel, fmt)), channel, fmt)
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


def _file_name(channel: Channel, fmt: str) -> str:
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


def _size(path: str) -> int:
    total = 0
    for name in recording_files(path):
        try:
            total += os.path.getsize(name)
        except OSError:
            pass
    return total


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class _Progress:
    """A one-line progress bar on a terminal (stderr): bytes of the capture read, points, rate."""

    WIDTH = 30

    def __init__(self, stream: TextIO, total_bytes: int) -> None:
        self.stream = stream
        self.total = max(1, total_bytes)
        self.started = time.monotonic()

    def show(self, stats: CaptureStats, final: bool = False) -> None:
        fraction = 1.0 if final else min(0.99, stats.read_bytes / self.total)  # read_bytes is an estimate
        filled = int(fraction * self.WIDTH)
        rate = stats.points / max(1e-9, time.monotonic() - self.started)
        self.stream.write(f"\r[{'#' * filled}{'.' * (self.WIDTH - filled)}] {fraction:4.0%}  "
                          f"{stats.points:,} points  {rate:,.0f}/s ")
        self.stream.flush()

    def done(self, stats: CaptureStats) -> None:
        self.show(stats, final=True)
        self.stream.write("\n")
        self.stream.flush()
