"""``kiyotaka-ws export``: the command over ``analysis.export_capture`` (its arguments, its summary
and a progress bar on a terminal).

The capture is read in one pass; each channel's rows go to its own file, ``<DIR>/<channel>.parquet``
(or ``.csv``), e.g. ``trade.parquet``, in batches of bounded size (see ``analysis``). Every
selected channel gets a file, empty ones too; files are written as ``<name>.partial`` and renamed
when complete. In CSV, a book's or profile's levels are JSON text (``[[price, size], ...]``).
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Any, TextIO

from ..analysis import FORMATS, CaptureStats, export_capture, file_name
from ..channels import Channel, parse_channel
from ..recording import recording_files


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
    stats = export_capture(args.capture, args.out, args.format, channels, exchange=args.exchange, symbol=args.symbol,
                   progress=progress)
    files = ", ".join(f"{file_name(Channel(name), args.format)} ({rows:,})" for name, rows in stats.rows.items())
    out.write(f"exported {stats.points:,} points to {args.out}: {files}\n")
    out.write(f"skipped: {stats.damaged} damaged record(s) ({stats.skipped_bytes} bytes), {stats.dropped} frames "
              f"dropped by the recorder, {stats.decode_errors} undecodable, {stats.unknown} of unknown types\n")
    return 0


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
