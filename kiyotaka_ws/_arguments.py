"""The arguments of every public constructor, one declarative table each, and the checks they use.

``KiyotakaClient(...)``, ``KiyotakaClient.replay``, ``KiyotakaClient.from_nats``, ``client.events``,
``nats.Relay`` and ``stop()`` pass what they were given through their table first, so an argument
of a wrong type or value raises ``ConfigurationError`` naming it before anything is built and
before any thread starts. Every message has one shape::

    <name>: expected <what the table says>, got <the value, shortened>

A secret argument (``api_key``) shows only its type; URLs show neither credentials nor query.
Checks between arguments (``backoff_max >= backoff_initial``) are the tables' rules. Channel
parameters are checked per channel in ``channels.py``; what touches the file system (``record``,
``replay``'s path) is checked by the recording module after the table has checked the types.
``Options`` holds the checked connection settings a family's session works with.
"""

from __future__ import annotations

import datetime
import difflib
import math
import os
from collections.abc import Mapping
from typing import Any, Callable, NoReturn

import attrs

from ._transport import BadArgument, Proxy, redact_url
from .dispatch import OVERFLOW_POLICIES
from .errors import ConfigurationError
from .session_core import Settings

REGIONS = {"singapore": "wss://ap-sin3.ws.api.kiyotaka.ai", "europe": "wss://eu-de3.ws.api.kiyotaka.ai"}
_SHOWN = 80  # characters of a bad value's repr shown in a message
# Longest duration any argument takes (~3 years): every wait on it stays far below
# threading.TIMEOUT_MAX, so a huge value is refused here rather than crash a thread later.
MAX_SECONDS = 1e8
_MAX_TEXT = "1e8"


@attrs.frozen
class Options(Settings):
    """The connection settings of ``KiyotakaClient``, checked by ``CLIENT``: what each family's
    ``Session`` (and a NATS consumer's connection) works with. The protocol rules' own parameters
    are the session core's ``Settings`` (inherited: written once)."""

    compression: str | None = "brotli"
    connect_timeout: float = 10.0
    send_timeout: float = 10.0
    max_frame_bytes: int = 16 * 2**20
    max_channels_per_request: int = 50
    max_requests_per_second: float = 10.0
    max_subscriptions_per_connection: int | None = None
    sslopt: dict[str, Any] | None = None
    proxy: Proxy | None = None


def _same(value: Any) -> Any:
    return value


def shown(value: Any) -> str:
    """A bad value as a message shows it: its repr, at most ``_SHOWN`` characters."""
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


@attrs.frozen
class Check:
    """One argument's check: ``accepts(value)`` says whether it is good, ``convert`` normalises it.

    ``accepts`` may raise ``ConfigurationError`` itself (with a more precise message); a
    ``TypeError``/``ValueError``/``OverflowError`` it raises counts as a refusal.
    """

    expected: str
    accepts: Callable[[Any], bool]
    convert: Callable[[Any], Any] = _same
    secret: bool = False                 # show only the type of a bad value
    show: Callable[[Any], str] = shown   # how a bad value is shown

    def __call__(self, name: str, value: Any) -> Any:
        try:
            good = self.accepts(value)
        except ConfigurationError:  # the check's own, more precise message (a ValueError too)
            raise
        except (TypeError, ValueError, OverflowError):
            good = False
        if not good:
            got = f"a value of type {type(value).__name__}" if self.secret else self.show(value)
            raise ConfigurationError(f"{name}: expected {self.expected}, got {got}")
        return self.convert(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def seconds(zero: bool = False, what: str = "number of seconds") -> Check:
    """A number > 0 (``zero``: >= 0) and at most ``MAX_SECONDS``, as a float."""
    if zero:
        return Check(f"a {what} from 0 to {_MAX_TEXT}", lambda v: _is_number(v) and 0 <= v <= MAX_SECONDS, float)
    return Check(f"a positive {what} up to {_MAX_TEXT}", lambda v: _is_number(v) and 0 < v <= MAX_SECONDS, float)


def whole(minimum: int, maximum: int | None = None, *, also: int | None = None, also_means: str = "") -> Check:
    """An ``int`` (never a bool) in ``[minimum, maximum]``, or the special value ``also``."""
    expected = f"a whole number >= {minimum}" if maximum is None else f"a whole number from {minimum} to {maximum}"
    if also is not None:
        expected += f", or {also} {also_means}"

    def accepts(v: Any) -> bool:
        if not isinstance(v, int) or isinstance(v, bool):
            return False
        return v == also or (v >= minimum and (maximum is None or v <= maximum))
    return Check(expected, accepts)


def flag() -> Check:
    """``True`` or ``False``: not 0/1, not a string."""
    return Check("True or False", lambda v: isinstance(v, bool))


def one_of(*choices: Any) -> Check:
    """One of ``choices`` (compared by type and equality, so an unhashable value is only refused)."""
    texts = [repr(c) if isinstance(c, str) else str(c) for c in choices]
    expected = " or ".join(texts) if len(texts) == 2 else "one of " + ", ".join(str(c) for c in choices)
    return Check(expected, lambda v: any(type(v) is type(c) and v == c for c in choices))


def function(what: str = "a callable") -> Check:
    return Check(what, callable)


def text(what: str = "a non-empty string", *, secret: bool = False) -> Check:
    return Check(what, lambda v: isinstance(v, str) and bool(v.strip()), secret=secret)


def optional(check: Check, meaning: str) -> Check:
    """``check``, or ``None`` (``meaning`` says what None does: "to turn it off")."""
    return Check(f"{check.expected}, or None {meaning}", lambda v: v is None or check.accepts(v),
                 lambda v: None if v is None else check.convert(v), check.secret, check.show)


def _url_shown(value: Any) -> str:
    """A URL without credentials or query (where a key could hide); anything else as ``shown``."""
    if isinstance(value, str):
        return shown(redact_url(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_url_shown(v) for v in value[:3]) + (", ...]" if len(value) > 3 else "]")
    return shown(value)


def _ws_url(value: Any) -> bool:
    from urllib.parse import urlsplit

    if not isinstance(value, str):
        return False
    parts = urlsplit(value)
    return parts.scheme in ("ws", "wss") and bool(parts.netloc)


def _path(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike)) and bool(os.fspath(value))


def _proxy(value: Any) -> bool:
    _parse_proxy(value)
    return True


def _parse_proxy(value: Any) -> Proxy:
    """The transport's "proxy: ..." message (it never shows the password) as a ConfigurationError."""
    try:
        return Proxy.parse(value)
    except BadArgument as exc:
        raise ConfigurationError(str(exc)) from None


def _epoch_or_datetime(value: Any) -> bool:
    if isinstance(value, datetime.datetime):
        return True
    try:
        return _is_number(value) and value >= 0 and _as_utc(value) is not None
    except OSError:  # out of the platform's range
        return False


def _as_utc(value: Any) -> datetime.datetime:
    if isinstance(value, datetime.datetime):
        return value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)
    return datetime.datetime.fromtimestamp(float(value), tz=datetime.timezone.utc)


def _nats_urls(value: Any) -> bool:
    urls = [value] if isinstance(value, str) else value
    return isinstance(urls, (list, tuple)) and bool(urls) and all(
        isinstance(url, str) and "://" in url and url.split("://", 1)[0] in ("nats", "tls", "ws", "wss")
        for url in urls)


def _subject_prefix(value: Any) -> bool:
    tokens = value.split(".") if isinstance(value, str) else [""]
    return all(t and t not in ("*", ">") and not any(c.isspace() for c in t) for t in tokens)


def _stream_name(value: Any) -> bool:
    return isinstance(value, str) and bool(value) and not any(c in value for c in ".*> \t\r\n")


@attrs.frozen
class Rule:
    """A check between arguments: when every name in ``names`` was given and ``holds(values)`` is
    False, ``ConfigurationError(message.format(**values))`` (the message starts with the name at fault)."""

    names: tuple[str, ...]
    holds: Callable[[dict[str, Any]], bool]
    message: str


@attrs.frozen
class Table:
    """The arguments of one constructor: name -> check, the rules between them, and the client
    arguments it forwards (``**options``) minus those it ``refuses`` (name -> why)."""

    owner: str
    args: Mapping[str, Check]
    rules: tuple[Rule, ...] = ()
    options: Table | None = None
    refuses: Mapping[str, str] = attrs.field(factory=dict)

    def check(self, given: Mapping[str, Any], options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``given``'s values checked and converted; ``options`` (forwarded ``KiyotakaClient``
        arguments) checked against the client's table. Raises ``ConfigurationError`` naming the
        first bad argument."""
        values = {name: self._check_one(name, value) for name, value in given.items() if name != "self"}
        for rule in self.rules:
            if all(values.get(n) is not None for n in rule.names) and not rule.holds(values):
                raise ConfigurationError(rule.message.format(**values))
        if options:
            if self.options is None:
                raise ConfigurationError(f"{next(iter(options))}: not an argument of {self.owner}")
            for name in options:
                if name in self.refuses:
                    raise ConfigurationError(f"{name}: {self.refuses[name]}")
                if name not in self.options.args:
                    _unknown(name, self.owner, list(self.args) + list(self.options.args))
            self.options.check(options)
        return values

    def _check_one(self, name: str, value: Any) -> Any:
        check = self.args.get(name)
        if check is None:
            _unknown(name, self.owner, list(self.args))
        return check(name, value)


def _unknown(name: str, owner: str, known: list[str]) -> NoReturn:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    raise ConfigurationError(f"{name}: not an argument of {owner}{hint}")


_SECONDS_OFF = "to turn it off"

CLIENT = Table("KiyotakaClient", {
    "api_key": optional(text(secret=True), "to read KIYOTAKA_API_KEY"),
    "region": one_of(*REGIONS),
    "book_url": optional(Check("a ws:// or wss:// URL", _ws_url, show=_url_shown), "for the region's endpoint"),
    "nonbook_url": optional(Check("a ws:// or wss:// URL", _ws_url, show=_url_shown), "for the region's endpoint"),
    "compression": one_of("brotli", None),
    "reconnect": flag(),
    "backoff_initial": seconds(),
    "backoff_max": seconds(),
    "ping_interval": optional(seconds(), _SECONDS_OFF),
    "ping_timeout": optional(seconds(), _SECONDS_OFF),
    "stale_timeout": optional(seconds(), _SECONDS_OFF),
    "auth_timeout": seconds(zero=True),
    "subscribe_timeout": seconds(),
    "queue_size": whole(1),
    "overflow": one_of(*OVERFLOW_POLICIES),
    "max_frame_bytes": whole(1024),
    "sslopt": optional(Check("a dict of ssl options", lambda v: isinstance(v, Mapping)), "for the defaults"),
    "proxy": optional(Check("a proxy URL", _proxy, _parse_proxy, show=_url_shown), "for a direct connection"),
    "max_retries": optional(whole(0), "to retry for ever"),
    "max_channels_per_request": whole(1),
    "max_requests_per_second": seconds(what="number of requests per second"),
    "max_subscriptions_per_connection": optional(whole(1), "to learn it from the server"),
    "max_queue_bytes": whole(1024),
    "connect_timeout": seconds(),
    "send_timeout": seconds(),
    "rng": optional(function("a function returning a float in [0, 1)"), "for random.random"),
    "record": optional(Check("a file path", _path), "not to record"),
    "record_rotate_bytes": optional(whole(1024), "not to rotate by size"),
    "record_rotate_seconds": optional(seconds(), "not to rotate by time"),
}, rules=(
    Rule(("backoff_initial", "backoff_max"), lambda v: v["backoff_max"] >= v["backoff_initial"],
         "backoff_max: must be >= backoff_initial ({backoff_initial}), got {backoff_max}"),
    Rule(("record_rotate_bytes",), lambda v: v.get("record") is not None,
         "record_rotate_bytes: needs record=PATH"),
    Rule(("record_rotate_seconds",), lambda v: v.get("record") is not None,
         "record_rotate_seconds: needs record=PATH"),
))

REPLAY = Table("KiyotakaClient.replay", {
    "path": Check("the path of a recording", _path),
    "speed": optional(seconds(what="number"), "for as fast as possible"),
}, options=CLIENT, refuses={"api_key": "a replay needs no key"})

_NATS = {
    "servers": Check("a nats:// URL or a list of them", _nats_urls, lambda v: (v,) if isinstance(v, str) else tuple(v),
                     show=_url_shown),
    "subject_prefix": Check("dot-separated tokens without wildcards or whitespace, e.g. 'kiyotaka'", _subject_prefix),
    "jetstream": flag(),
}

FROM_NATS = Table("KiyotakaClient.from_nats", {
    **_NATS,
    "start_time": optional(Check("a datetime or seconds since the epoch", _epoch_or_datetime, _as_utc),
                           "for new points only"),
}, rules=(
    Rule(("start_time",), lambda v: v.get("jetstream") is True,
         "start_time: needs jetstream=True (core NATS keeps no history)"),
), options=CLIENT, refuses={"api_key": "a NATS consumer needs no key"})

RELAY = Table("Relay", {
    **_NATS,
    "stream": Check("a stream name (no '.', '*', '>' or spaces)", _stream_name),
    "max_age": seconds(),
    "max_bytes": whole(1, also=-1, also_means="for no limit"),
    "buffer_size": whole(1),
    "heartbeat": seconds(),
}, options=CLIENT)

EVENTS = Table("KiyotakaClient.events", {
    "maxsize": whole(1),
})
EVENTS_REFUSED = {  # keyword arguments of the on_* methods that events() does not take
    "conflate": "events() gives its stream every event; conflation is for handlers "
                "(on_book(..., conflate=True) and the like)",
}

_BOUNDED = seconds(zero=True)
STOP = Table("stop", {
    # None is refused, not "for ever": stop() promises to end within its timeout in every state.
    "timeout": attrs.evolve(_BOUNDED, expected=f"{_BOUNDED.expected} (stop() always ends in a bounded time)"),
})
