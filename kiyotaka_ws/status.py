"""Connection state as users see it: ``State``, ``ConnectionStatus`` events, ``ConnectionStats``,
and a recorder's ``RecorderStats``."""

from __future__ import annotations

import enum

import attrs


class State(str, enum.Enum):
    """Lifecycle of one endpoint family's connection."""

    CONNECTING = "CONNECTING"      # opening the socket, authenticating, replaying subscriptions
    READY = "READY"                # authenticated and every replayed subscription answered
    DISCONNECTED = "DISCONNECTED"  # lost; a reconnect is scheduled (data may be missed until READY)
    STOPPED = "STOPPED"            # not running: never started, or stop() was called
    FAILED = "FAILED"              # gave up: rejected API key, or lost with reconnect=False
    # Running, but this family has had no subscription, so no connection was ever opened: nothing
    # is wrong, and an alert on "not READY" should not fire (stats() and the Prometheus gauge).
    UNUSED = "UNUSED"

    def __str__(self) -> str:
        return self.value


@attrs.frozen
class ConnectionStatus:
    """A state change of one family's connection, as passed to ``on_status`` handlers.

    A DISCONNECTED followed by READY means data may have been missed in between, on that
    connection: ``shard`` says which of the family's connections it is (0 unless the family's
    channels are spread over several: ``max_subscriptions_per_connection``).
    """

    family: str
    state: State
    attempt: int = 0
    reason: str | None = None
    shard: int = 0


@attrs.frozen
class Percentiles:
    """Latency percentiles over the last minute (``p50``, ``p90``, ``p99``, ``max`` in seconds)
    and how many values they summarise. Each percentile is the upper bound of a log-scale bucket
    (four per octave: at most 25 % above the true value), capped by the exact ``max``."""

    p50: float
    p90: float
    p99: float
    max: float
    count: int


@attrs.define
class ConnectionStats:
    """Counters of one endpoint family, as returned by ``KiyotakaClient.stats()``."""

    state: State = State.STOPPED
    frames: int = 0           # data frames received
    bytes: int = 0            # their size on the wire
    events: int = 0           # events decoded and delivered to handlers
    decode_errors: int = 0    # malformed frames and points
    handler_errors: int = 0   # handler exceptions
    dropped: int = 0          # frames dropped by the overflow policy
    reconnects: int = 0       # connections re-opened after a loss
    queue_depth: int = 0      # frames waiting for the dispatcher
    last_frame_age: float | None = None  # seconds since the last frame of any kind
    skipped: int = 0          # points of unknown types or with no handler left
    # Over the last minute (None before any event): receive time minus the event's exchange time,
    # handler start minus receive time (once per event), and each handler call's duration.
    feed_latency: Percentiles | None = None
    queue_delay: Percentiles | None = None
    handler_time: Percentiles | None = None
    conflated: int = 0        # snapshots skipped by conflate=True handlers (a newer one was due)
    requests_sent: int = 0    # requests sent to the server (authenticate, subscribe, unsubscribe)
    shards: int = 0           # connections the family's channels are spread over (0: none opened)


@attrs.define
class RecorderStats:
    """What a recorder did: frames and bytes written, frames dropped, files written to."""

    frames: int = 0
    bytes: int = 0
    dropped: int = 0
    files: int = 0
    error: str | None = None
    lost: int = 0  # frames buffered when a write failed (part of ``dropped``)
