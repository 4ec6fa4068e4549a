"""URLs: the one redactor (for messages and logs) and the parsed ``ws://``/``wss://`` target."""

from __future__ import annotations

from urllib.parse import urlsplit

import attrs

from .errors import BadArgument

__all__ = ["Target", "host_port", "parse_target", "redact_url"]


def redact_url(url: str) -> str:
    """``url`` fit for a message or a log: no query, no fragment, credentials shown as ``***@``.

    Works on text that is not a valid URL too (it never raises, and never shows what it cannot
    place): everything up to the last ``@`` goes, since a password may hold ``/``, ``?`` or ``#``.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "<not a URL, not shown>"
    credentials = "@" in rest
    if credentials:
        rest = rest.rpartition("@")[2]
    rest = rest.split("?", 1)[0].split("#", 1)[0]
    return f"{scheme}{sep}{'***@' if credentials else ''}{rest}"


def host_port(host: str, port: int) -> str:
    """``host:port``, with an IPv6 literal in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@attrs.frozen
class Target:
    """A parsed WebSocket URL. ``shown`` is the URL without query or credentials, for messages."""

    secure: bool
    host: str
    port: int
    resource: str
    shown: str

    @property
    def host_header(self) -> str:
        """The ``Host`` header: the port only when it is not the scheme's default."""
        bracketed = f"[{self.host}]" if ":" in self.host else self.host
        return bracketed if self.port == (443 if self.secure else 80) else f"{bracketed}:{self.port}"


def parse_target(url: str) -> Target:
    """Parse a ``ws://`` or ``wss://`` URL; ``BadArgument`` naming ``url`` otherwise."""
    expected = "url: expected a ws:// or wss:// URL"
    if not isinstance(url, str):
        raise BadArgument(f"{expected}, got a {type(url).__name__}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise BadArgument(f"{expected}, got {redact_url(url)!r}") from None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in ("ws", "wss") or not host:
        raise BadArgument(f"{expected}, got {redact_url(url)!r}")
    secure = scheme == "wss"
    port = port or (443 if secure else 80)
    path = parts.path or "/"
    if any(c in path + parts.query for c in " \r\n\t"):
        raise BadArgument("url: the path and query must be URL-encoded (no spaces or line breaks)")
    resource = f"{path}?{parts.query}" if parts.query else path
    target = Target(secure, host, port, resource, "")
    return attrs.evolve(target, shown=f"{scheme}://{target.host_header}{path}")
