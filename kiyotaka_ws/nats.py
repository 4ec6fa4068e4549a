"""NATS fan-out: a relay publishes the feed to subjects; ``KiyotakaClient.from_nats`` consumes them.

Subjects (``prefix`` defaults to ``kiyotaka``)::

    <prefix>.<TYPE>.<EXCHANGE>.<SYMBOL>   one point per message, e.g. kiyotaka.TRADE.BINANCE_FUTURES.BTCUSDT
    <prefix>._status.<family>             the relay's upstream statuses, heartbeats and drop notices

A point without a symbol (``group_by_coin``) goes to ``<prefix>.<TYPE>.<EXCHANGE>.<COIN>``. The
category and the other channel parameters are not in the subject: the point's ``series`` carries
them and the consumer's routing filters on them as live. Each token is escaped: ``%`` -> ``%25``,
``.`` -> ``%2E``, ``*`` -> ``%2A``, ``>`` -> ``%3E``, whitespace and control characters ->
``%XX`` (their UTF-8 bytes); a missing value is ``%00``.

Payload: the point's JSON object exactly as the service sent it (``{"series": {...}, ...}``),
UTF-8, one per message. A status message is a JSON object ``{"kind": "status", "family",
"state", "attempt", "reason", "time_ns", "heartbeat"}`` or ``{"kind": "dropped", "family",
"count", "reason", "time_ns"}``.

Threads. The only maintained NATS library (nats-py) is asyncio: each relay and each consumer
client runs it on one private thread, ``kiyotaka-ws-nats``, with its own event loop; user code
stays synchronous and ``stop()`` joins that thread. The relay takes points from its client's
dispatcher (a sink in place of delivery) into a bounded buffer that the NATS thread publishes;
while NATS is unreachable the buffer holds up to ``buffer_size`` points, then drops the oldest,
counts them and announces the count (and a DISCONNECTED -> READY pair) once NATS is back. The
consumer puts the points it receives, wrapped as ``{"points": [...]}`` frames, into the family's
``EventQueue``: from there they take the live path (decode, route, filters, overflow, stats).

Subscriptions. The consumer holds one NATS subscription per (family, channel type, symbol), on
``<prefix>.<TYPE>.*.<SYMBOL>``, whatever the exchanges registered, and keeps the messages of the
exchanges some registration wants (``exchange="*"``: all). Subscriptions never overlap, so each
point arrives once and is delivered once per matching handler, as from the service (two NATS
subscriptions matching one message would deliver it twice, and could not be told apart). The
cost: the points of other exchanges for the same symbol cross the network and are discarded.

Trust. The bus is trusted to say who published (secure the prefix with NATS permissions: anyone
who may publish there can inject points), never to be well-formed: each message body is checked
(one JSON object) before it joins a frame, so a malformed one costs only itself (its own frame:
counted in ``decode_errors`` and reported as ``DecodeError``); a malformed status message is
reported the same way. A frame holds at most ``MAX_BATCH`` points and ``MAX_BATCH_BYTES`` bytes
(a body alone may be larger, up to the server's ``max_payload``; above ``max_frame_bytes`` it
fails alone). The relay never publishes a point larger than the server's ``max_payload``: it is
counted (``RelayStats.oversized``), reported as ``EventsDropped`` to ``on_error`` and announced to
consumers as dropped; the relay goes on with the next.

Failure. An unexpected exception on a ``kiyotaka-ws-nats`` thread is reported once through
``on_error``: a consumer's families go FAILED (``stats()``, ``run_forever()`` raises it); a relay's
``stats().state`` becomes FAILED and ``run_forever()`` raises it. ``stop()`` returns within its
timeout either way.

Layout. This module is the public face; the code is in ``kiyotaka_ws._nats`` (subjects, the
private loop thread, the consumer, the relay).
"""


from __future__ import annotations

from ._nats.consumer import MAX_BATCH, MAX_BATCH_BYTES
from ._nats.loop import INSTALL_HINT, THREAD_NAME, check_available
from ._nats.relay import HEARTBEAT, PUBLISH_BATCH, Relay, RelayStats
from ._nats.subjects import (
    STATUS_TOKEN,
    NatsSettings,
    escape_token,
    series_subject,
    status_subject,
    unescape_token,
)

__all__ = [
    "HEARTBEAT",
    "INSTALL_HINT",
    "MAX_BATCH",
    "MAX_BATCH_BYTES",
    "PUBLISH_BATCH",
    "STATUS_TOKEN",
    "THREAD_NAME",
    "NatsSettings",
    "Relay",
    "RelayStats",
    "check_available",
    "escape_token",
    "series_subject",
    "status_subject",
    "unescape_token",
]
