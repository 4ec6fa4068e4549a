"""``ssl_context``: an SSLContext from websocket-client's ``sslopt`` keys."""

from __future__ import annotations

import os
import ssl
from typing import Any

from .errors import BadArgument

__all__ = ["SSLOPT_KEYS", "ssl_context"]

SSLOPT_KEYS = frozenset({"context", "cert_reqs", "check_hostname", "ca_certs", "ca_cert_path", "certfile",
                         "keyfile", "password", "server_hostname", "ciphers"})


def ssl_context(sslopt: dict[str, Any]) -> ssl.SSLContext:
    """An SSLContext honouring websocket-client's common ``sslopt`` keys (and its
    ``WEBSOCKET_CLIENT_CA_BUNDLE`` variable); unknown keys are a ``BadArgument`` naming ``sslopt``
    (a silently ignored security option is worse than a clear message)."""
    if not isinstance(sslopt, dict):
        raise BadArgument(f"sslopt: expected a dict, got a {type(sslopt).__name__}")
    unknown = sorted(set(sslopt) - SSLOPT_KEYS)
    if unknown:
        raise BadArgument(f"sslopt: unsupported keys {unknown}; supported: {sorted(SSLOPT_KEYS)}")
    given = sslopt.get("context")
    if given is not None:
        if not isinstance(given, ssl.SSLContext):
            raise BadArgument("sslopt: 'context' must be an ssl.SSLContext")
        return given
    cafile = sslopt.get("ca_certs")
    capath = sslopt.get("ca_cert_path")
    bundle = os.environ.get("WEBSOCKET_CLIENT_CA_BUNDLE")  # as websocket-client does
    if bundle and cafile is None and capath is None:
        if os.path.isfile(bundle):
            cafile = bundle
        elif os.path.isdir(bundle):
            capath = bundle
    try:
        context = ssl.create_default_context(cafile=cafile, capath=capath)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise BadArgument(f"sslopt: cannot load the CA certificates: {exc}") from exc
    cert_reqs = sslopt.get("cert_reqs", ssl.CERT_REQUIRED)
    check_hostname = sslopt.get("check_hostname")
    if cert_reqs == ssl.CERT_NONE:
        if check_hostname:
            raise BadArgument("sslopt: check_hostname cannot be enabled when cert_reqs is CERT_NONE")
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.check_hostname = True if check_hostname is None else bool(check_hostname)
        context.verify_mode = cert_reqs
    if sslopt.get("certfile"):
        try:
            context.load_cert_chain(sslopt["certfile"], sslopt.get("keyfile"), sslopt.get("password"))
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise BadArgument(f"sslopt: cannot load the client certificate: {type(exc).__name__}") from exc
    if sslopt.get("ciphers"):
        try:
            context.set_ciphers(sslopt["ciphers"])
        except ssl.SSLError as exc:
            raise BadArgument("sslopt: no usable cipher in 'ciphers'") from exc
    return context
