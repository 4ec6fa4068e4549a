"""Channels, their endpoint families, and the validated subscription spec with its wire form.

Each channel takes its own parameters (``CHANNEL_PARAMS``, from the protocol notes §3.2-3.3);
a name a channel does not take, misspelt or foreign (``blockSize`` on ``TRADE``), is a
``ConfigurationError`` naming it, suggesting the closest valid name and listing the valid ones.
A field this version does not know yet goes, explicitly, in ``extra_params``: sent as given
(as a string), checked only against the channel's own and the reserved names.
"""

from __future__ import annotations

import difflib
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
# The parameters each channel takes, by keyword name. Protocol notes §3.3; ``quote`` is in the
# common table (§3.2) but its row is cut off, and it was only seen on books and volume profiles.
CHANNEL_PARAMS: dict[str, tuple[str, ...]] = {
    "TRADE": (),
    "TRADE_AGG": ("batch_interval",),
    "BLOCK_BOOK_SNAPSHOT": ("block_size", "max_depth", "update_frequency", "quote", "group_by_coin"),
    "LIQUIDATION": (),
    "FUNDING_RATE": (),
    "OPEN_INTEREST": (),
    "VOLUME_PROFILE_AGG": ("quote", "update_frequency", "group_by_coin"),
}
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
_OPTION_NAMES = {wire: option for option, wire in WIRE_NAMES.items()}


def param_option(channel: Channel, name: str, *, label: str, escape: str) -> str:
    """The keyword name (``max_depth``) of ``channel``'s parameter ``name``, given in either form
    (``max_depth`` or ``maxDepth``). Otherwise ``ConfigurationError`` starting with ``label``,
    suggesting the closest valid name, listing the valid ones and saying how to send a field this
    version does not know (``escape``)."""
    option = name if name in WIRE_NAMES else _OPTION_NAMES.get(name)
    known = CHANNEL_PARAMS[channel.value]
    if option is not None and option in known:
        return option
    forms = [form for known_name in known for form in (known_name, WIRE_NAMES[known_name])]
    close = difflib.get_close_matches(name, forms, n=1)
    guess = f"did you mean {_OPTION_NAMES.get(close[0], close[0])}? " if close else ""
    takes = ", ".join(k if WIRE_NAMES[k] == k else f"{k} ({WIRE_NAMES[k]})" for k in known) or "no parameters"
    raise ConfigurationError(f"{label}: not a parameter of {channel.value}; {guess}{channel.value} takes "
                             f"{takes}. A field this version does not know yet goes in {escape}")


def _escape(name: Any) -> str:
    return f"extra_params={{{name!r}: ...}}"


def _group_flag(name: str, value: Any) -> str:
    text = wire_value(name, value)
    if text not in ("0", "1"):
        raise ConfigurationError(f"{name}: expected \"0\" or \"1\" (or True/False), got {value!r}")
    return text


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
              options: Mapping[str, Any] | None = None, params: Mapping[str, Any] | None = None,
              extra_params: Mapping[str, Any] | None = None) -> ChannelSpec:
    """Validate the arguments of an ``on_*``/``subscribe``/``events`` call and build its spec.

    ``options`` (keyword arguments, named as the user wrote them) and ``params`` (a dict) hold the
    channel's parameters by keyword (``block_size``) or wire name (``blockSize``), each checked for
    this channel; ``extra_params`` wire
    fields this version does not know, sent as given. ``None`` values are left out;
    ``ConfigurationError`` names any bad argument.
    """
    chan = parse_channel(channel)
    extras: dict[str, str] = {}
    for name, value in (options or {}).items():
        option = param_option(chan, name, label=name, escape=_escape(name))
        if value is None:
            continue
        if name == "group_by_coin":  # the keyword argument: a bool, False leaves the field out
            if not isinstance(value, bool):
                raise ConfigurationError(f"group_by_coin: expected True or False, got {value!r}")
            if value:
                extras["groupByType"] = "1"
            continue
        extras[WIRE_NAMES[option]] = _checked(option, name, value)
    if params is not None:
        if not isinstance(params, Mapping):
            raise ConfigurationError(f"params: expected a dict of wire fields, got {type(params).__name__}")
        for key, value in params.items():
            if not isinstance(key, str) or not key or key in _RESERVED:
                raise ConfigurationError(f"params: {key!r} is not an allowed extra wire field "
                                         f"(type, exchange, symbol and category are arguments)")
            option = param_option(chan, key, label=f"params[{key!r}]", escape=_escape(key))
            if value is not None:
                extras[WIRE_NAMES[option]] = _checked(option, f"params[{key!r}]", value)
    if extra_params is not None:
        if not isinstance(extra_params, Mapping):
            raise ConfigurationError(f"extra_params: expected a dict of wire fields, got "
                                     f"{type(extra_params).__name__}")
        for key, value in extra_params.items():
            label = f"extra_params[{key!r}]"
            if not isinstance(key, str) or not key.strip() or key in _RESERVED:
                raise ConfigurationError(f"{label}: not an allowed wire field (a non-empty name other than "
                                         "type, exchange, symbol and category, which are arguments)")
            known = key if key in WIRE_NAMES else _OPTION_NAMES.get(key)
            if known is not None and known in CHANNEL_PARAMS[chan.value]:
                raise ConfigurationError(f"{label}: a parameter of {chan.value} this version knows and checks: "
                                         f"pass it as {known} ({WIRE_NAMES[known]}), not as an extra field")
            if value is not None:
                extras[key] = wire_value(label, value)
    if chan is Channel.BLOCK_BOOK_SNAPSHOT and "blockSize" not in extras:
        raise ConfigurationError("block_size: required for BLOCK_BOOK_SNAPSHOT (see GET /v1/block-sizes)")
    return ChannelSpec(chan, _nonempty("exchange", exchange), _nonempty("symbol", symbol),
                       _nonempty("category", category), tuple(sorted(extras.items())))


def _checked(option: str, label: str, value: Any) -> str:
    """The wire value of parameter ``option``, given under ``label``, checked like its keyword argument."""
    if option == "group_by_coin":
        return _group_flag(label, value)
    return _CHECKS[option](label, value)
