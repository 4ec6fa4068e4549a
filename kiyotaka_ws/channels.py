"""Channels, their endpoint families, and the validated subscription spec with its wire form."""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from typing import Any, Union

import attrs

from .errors import ConfigurationError

BOOK = "book"
NONBOOK = "nonbook"
FAMILIES = (BOOK, NONBOOK)


class Channel(str, enum.Enum):
    """A channel (``series.type`` on the wire). ``Channel.TRADE == "TRADE"``."""

    TRADE = "TRADE"
    TRADE_AGG = "TRADE_AGG"
    BLOCK_BOOK_SNAPSHOT = "BLOCK_BOOK_SNAPSHOT"
    LIQUIDATION = "LIQUIDATION"
    FUNDING_RATE = "FUNDING_RATE"
    OPEN_INTEREST = "OPEN_INTEREST"
    VOLUME_PROFILE_AGG = "VOLUME_PROFILE_AGG"

    @property
    def family(self) -> str:
        """The endpoint family serving this channel: ``"book"`` or ``"nonbook"``."""
        return BOOK if self is Channel.BLOCK_BOOK_SNAPSHOT else NONBOOK

    def __str__(self) -> str:
        return self.value


class Side(str, enum.Enum):
    """Aggressor side of a trade or batch, or the side reported for a liquidation."""

    BUY = "BUY"
    SELL = "SELL"

    def __str__(self) -> str:
        return self.value


ParamValue = Union[str, int, float, bool]

# Keyword argument of the on_* methods -> wire field name.
WIRE_NAMES: dict[str, str] = {
    "batch_interval": "batchInterval",
    "block_size": "blockSize",
    "max_depth": "maxDepth",
    "update_frequency": "updateFrequency",
    "quote": "quote",
    "group_by_coin": "groupByType",
}
_OPTION_NAMES = {wire: option for option, wire in WIRE_NAMES.items()}  # wire field -> keyword argument
_RESERVED = frozenset({"type", "exchange", "symbol", "category"})
_DURATION = re.compile(r"^\d+(\.\d+)?(ms|s|m|h)$")


def parse_channel(value: str | Channel) -> Channel:
    """``Channel`` from an enum member or its name; ``ConfigurationError`` otherwise."""
    try:
        return Channel(value.upper() if isinstance(value, str) else value)
    except ValueError:
        names = ", ".join(c.value for c in Channel)
        raise ConfigurationError(f"channel: unknown channel {value!r}; expected one of {names}") from None


def wire_value(name: str, value: ParamValue) -> str:
    """A parameter as the wire wants it: a string (``25`` -> ``"25"``, ``True`` -> ``"1"``)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigurationError(f"{name}: must be a finite number, got {value!r}")
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str):
        if not value.strip():
            raise ConfigurationError(f"{name}: must not be empty")
        return value.strip()
    raise ConfigurationError(f"{name}: expected a string or a number, got {type(value).__name__}")


def _nonempty(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"{name}: expected a non-empty string, got {value!r}")
    return value.strip()


def _positive_number(name: str, value: Any) -> str:
    text = wire_value(name, value)
    try:
        ok = float(text) > 0
    except ValueError:
        ok = False
    if not ok:
        raise ConfigurationError(f"{name}: expected a positive number (e.g. 25 or \"0.5\"), got {value!r}")
    return text


def _positive_int(name: str, value: Any) -> str:
    text = wire_value(name, value)
    if not text.isdigit() or int(text) <= 0:
        raise ConfigurationError(f"{name}: expected a positive whole number, got {value!r}")
    return text


def _duration(name: str, value: Any) -> str:
    if not isinstance(value, str) or not _DURATION.match(value.strip()):
        raise ConfigurationError(f"{name}: expected a duration string such as \"200ms\" or \"1s\", got {value!r}")
    return value.strip()


_CHECKS = {
    "batch_interval": _duration,
    "update_frequency": _duration,
    "block_size": _positive_number,
    "max_depth": _positive_int,
    "quote": _nonempty,
}


@attrs.frozen
class ChannelSpec:
    """One wire subscription: what ``public/subscribe`` carries in ``params.channels``.

    Hashable, so identical specs share one wire subscription.
    """

    channel: Channel
    exchange: str
    symbol: str
    category: str
    extras: tuple[tuple[str, str], ...] = ()  # wire-named type-specific fields, sorted

    @property
    def family(self) -> str:
        return self.channel.family

    @property
    def grouped(self) -> bool:
        """True for coin-aggregated streams: ``symbol`` holds the coin."""
        return ("groupByType", "1") in self.extras

    def param(self, wire_name: str) -> str | None:
        for key, value in self.extras:
            if key == wire_name:
                return value
        return None

    def wire(self) -> dict[str, str]:
        """The channel object as sent on the wire."""
        obj = {"type": self.channel.value, "exchange": self.exchange,
               "symbol": self.symbol, "category": self.category}
        obj.update(self.extras)
        return obj

    def __str__(self) -> str:
        extra = "".join(f" {k}={v}" for k, v in self.extras)
        return f"{self.channel.value} {self.exchange}:{self.symbol} category={self.category}{extra}"


def make_spec(channel: str | Channel, *, exchange: Any, symbol: Any, category: Any = "*",
              options: Mapping[str, Any] | None = None,
              params: Mapping[str, Any] | None = None) -> ChannelSpec:
    """Validate the arguments of an ``on_*``/``subscribe`` call and build its spec.

    ``options`` holds the typed keyword arguments (``block_size=...``), ``params`` raw extra wire
    fields. ``None`` values are left out; ``ConfigurationError`` names any bad argument.
    """
    chan = parse_channel(channel)
    extras: dict[str, str] = {}
    for name, value in (options or {}).items():
        if value is None:
            continue
        if name == "group_by_coin":
            if not isinstance(value, bool):
                raise ConfigurationError(f"group_by_coin: expected True or False, got {value!r}")
            if value:
                extras["groupByType"] = "1"
            continue
        extras[WIRE_NAMES[name]] = _CHECKS[name](name, value)
    if params is not None:
        if not isinstance(params, Mapping):
            raise ConfigurationError(f"params: expected a dict of wire fields, got {type(params).__name__}")
        for key, value in params.items():
            if not isinstance(key, str) or not key or key in _RESERVED:
                raise ConfigurationError(f"params: {key!r} is not an allowed extra wire field "
                                         f"(type, exchange, symbol and category are arguments)")
            if value is None:
                continue
            option = _OPTION_NAMES.get(key)
            if option in _CHECKS:  # a known wire field is checked like its keyword argument
                extras[key] = _CHECKS[option](f"params[{key!r}]", value)
            elif key == "groupByType":
                extras[key] = wire_value(f"params[{key!r}]", value)
                if extras[key] not in ("0", "1"):
                    raise ConfigurationError(f"params['groupByType']: expected \"0\" or \"1\", got {value!r}")
            else:
                extras[key] = wire_value(f"params[{key!r}]", value)
    if chan is Channel.BLOCK_BOOK_SNAPSHOT and "blockSize" not in extras:
        raise ConfigurationError("block_size: required for BLOCK_BOOK_SNAPSHOT (see GET /v1/block-sizes)")
    return ChannelSpec(chan, _nonempty("exchange", exchange), _nonempty("symbol", symbol),
                       _nonempty("category", category), tuple(sorted(extras.items())))
