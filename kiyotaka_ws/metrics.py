"""Prometheus metrics for a ``KiyotakaClient`` (needs the ``metrics`` extra: ``pip install
'kiyotaka-ws[metrics]'``, which brings ``prometheus-client``).

``register(client, registry=None)`` adds a collector to a registry (the default one:
``prometheus_client.REGISTRY``); ``serve(client, port, addr="127.0.0.1")`` serves the client's
metrics alone over HTTP from a ``kiyotaka-ws-metrics`` thread, stopped by the returned handle's
``stop()`` or by ``client.stop()``. Every scrape reads ``client.stats()``; nothing is recorded on
the hot path for it. Metrics, each labelled with ``family`` (``book`` / ``nonbook``):

- counters ``kiyotaka_ws_frames_total``, ``kiyotaka_ws_bytes_total``, ``kiyotaka_ws_events_total``,
  ``kiyotaka_ws_dropped_total``, ``kiyotaka_ws_reconnects_total``,
  ``kiyotaka_ws_decode_errors_total``, ``kiyotaka_ws_handler_errors_total``,
  ``kiyotaka_ws_skipped_total``, ``kiyotaka_ws_conflated_total``, ``kiyotaka_ws_requests_total``;
- gauges ``kiyotaka_ws_queue_depth``, ``kiyotaka_ws_shards`` (connections in use), ``kiyotaka_ws_last_frame_age_seconds`` (absent before the
  first frame) and ``kiyotaka_ws_state`` (one sample per state, labelled ``state``: 1 for the
  current one, 0 for the others);
- summaries ``kiyotaka_ws_feed_latency_seconds``, ``kiyotaka_ws_queue_delay_seconds`` and
  ``kiyotaka_ws_handler_time_seconds``: quantiles 0.5, 0.9 and 0.99 and ``_count`` over the last
  minute (see ``ConnectionStats``; no ``_sum``: it is not kept), and the matching
  ``..._max_seconds`` gauges. Absent for a family before its first event.

The HTTP server: one ``kiyotaka-ws-metrics`` thread accepts connections; each is served on its
own ``kiyotaka-ws-metrics-scrape`` thread, at most ``MAX_SCRAPES`` at once (more are closed at
once), each with a ``SCRAPE_TIMEOUT`` on every read and write of its socket: an idle connection
or a slow scraper holds one slot for that long at most and never delays another scrape. ``stop()``
(or ``client.stop()``) stops accepting, closes the connections still open and joins every thread
by its deadline. A fault on the accepting thread is reported once to the client's ``on_error``
and kept in ``error``; the client carries on without metrics.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

try:
    from prometheus_client import CollectorRegistry, make_wsgi_app
    from prometheus_client.core import (
        REGISTRY,
        CounterMetricFamily,
        GaugeMetricFamily,
        Metric,
    )
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError("kiyotaka_ws.metrics needs prometheus-client: pip install 'kiyotaka-ws[metrics]'") from exc

from .client import KiyotakaClient
from .errors import KiyotakaError
from .status import State
from .threads import join_by

log = logging.getLogger(__name__)

MAX_SCRAPES = 8         # connections served at once
SCRAPE_TIMEOUT = 5.0    # seconds a connection may wait on each read or write of its socket
_POLL = 0.1             # the accepting thread checks for stop() this often

_COUNTERS = (
    ("frames", "frames", "Data frames received"),
    ("bytes", "bytes", "Bytes of data frames received (on the wire)"),
    ("events", "events", "Events decoded and delivered to handlers"),
    ("dropped", "dropped", "Frames dropped by the overflow policy"),
    ("reconnects", "reconnects", "Connections re-opened after a loss"),
    ("decode_errors", "decode_errors", "Malformed frames and points"),
    ("handler_errors", "handler_errors", "Handler exceptions"),
    ("skipped", "skipped", "Points of unknown types or with no handler left"),
    ("conflated", "conflated", "Snapshots skipped by conflate=True handlers (a newer one was due)"),
    ("requests_sent", "requests", "Requests sent to the server (authenticate, subscribe, unsubscribe)"),
)
_SUMMARIES = (
    ("feed_latency", "Local receive time minus the event's exchange time, last minute"),
    ("queue_delay", "Handler start minus local receive time, once per event, last minute"),
    ("handler_time", "Duration of each handler call, last minute"),
)


class ClientCollector:
    """A Prometheus collector reading one client's ``stats()`` on each scrape (holds it weakly)."""

    def __init__(self, client: KiyotakaClient) -> None:
        self._client = weakref.ref(client)

    def describe(self) -> list[Metric]:
        return []  # nothing up front: the registry then never calls collect() at registration

    def collect(self) -> Iterator[Metric]:
        client = self._client()
        if client is None:
            return
        stats = client.stats()
        for attr, name, doc in _COUNTERS:
            counter = CounterMetricFamily(f"kiyotaka_ws_{name}", doc, labels=["family"])
            for family, each in stats.items():
                counter.add_metric([family], getattr(each, attr))
            yield counter
        depth = GaugeMetricFamily("kiyotaka_ws_queue_depth", "Frames waiting for the dispatcher",
                                  labels=["family"])
        age = GaugeMetricFamily("kiyotaka_ws_last_frame_age_seconds", "Seconds since the last frame of any kind",
                                labels=["family"])
        state = GaugeMetricFamily("kiyotaka_ws_state", "Connection state (1 for the current one)",
                                  labels=["family", "state"])
        shards = GaugeMetricFamily("kiyotaka_ws_shards", "Connections the family's channels are spread over",
                                   labels=["family"])
        for family, each in stats.items():
            depth.add_metric([family], each.queue_depth)
            shards.add_metric([family], each.shards)
            if each.last_frame_age is not None:
                age.add_metric([family], each.last_frame_age)
            for known in State:
                state.add_metric([family, known.value], 1.0 if each.state is known else 0.0)
        yield depth
        yield age
        yield state
        yield shards
        for attr, doc in _SUMMARIES:
            name = f"kiyotaka_ws_{attr}_seconds"
            summary = Metric(name, doc, "summary")
            top = GaugeMetricFamily(f"kiyotaka_ws_{attr}_max_seconds", f"Maximum: {doc[0].lower()}{doc[1:]}",
                                    labels=["family"])
            for family, each in stats.items():
                got = getattr(each, attr)
                if got is None:
                    continue
                for quantile, value in (("0.5", got.p50), ("0.9", got.p90), ("0.99", got.p99)):
                    summary.add_sample(name, {"family": family, "quantile": quantile}, value)
                summary.add_sample(f"{name}_count", {"family": family}, float(got.count))
                top.add_metric([family], got.max)
            yield summary
            yield top


def register(client: KiyotakaClient, registry: Any = None) -> ClientCollector:
    """Add ``client``'s metrics to ``registry`` (default: ``prometheus_client.REGISTRY``); returns
    the collector (``registry.unregister(collector)`` removes it)."""
    collector = ClientCollector(client)
    (REGISTRY if registry is None else registry).register(collector)
    return collector


class _QuietHandler(WSGIRequestHandler):
    timeout = SCRAPE_TIMEOUT  # set on the connection's socket: an idle or slow peer times out

    def log_message(self, format: str, *args: Any) -> None:
        """No access log on stderr."""


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    """A WSGI server with one thread per connection, at most ``MAX_SCRAPES`` of them."""

    daemon_threads = True
    block_on_close = False  # stop() joins the connection threads itself, by its deadline
    timeout = _POLL         # handle_request() returns this often with nothing to accept

    def __init__(self, addr: tuple[str, int]) -> None:
        family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        self.address_family = family
        super().__init__(addr, _QuietHandler)
        self._slots = threading.BoundedSemaphore(MAX_SCRAPES)
        self._guard = threading.Lock()
        self._open: dict[socket.socket, threading.Thread] = {}

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):  # all slots taken: this one is refused
            self.shutdown_request(request)
            return
        thread = threading.Thread(target=self.process_request_thread, args=(request, client_address),
                                  name="kiyotaka-ws-metrics-scrape", daemon=True)
        with self._guard:
            self._open[request] = thread
        thread.start()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._guard:
                self._open.pop(request, None)
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that timed out or broke: nothing on stderr."""
        log.debug("metrics: a scrape from %s failed: %s", client_address, sys.exc_info()[1])

    def close_connections(self) -> list[threading.Thread]:
        """Close every connection still open (their threads then end); returns those threads."""
        with self._guard:
            items = list(self._open.items())
        for sock, _ in items:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        return [thread for _, thread in items]


class MetricsServer:
    """A running ``serve()``: ``port`` (the bound one, useful with port 0), ``url`` and ``stop()``."""

    def __init__(self, client: KiyotakaClient, port: int, addr: str) -> None:
        registry = CollectorRegistry(auto_describe=False)
        register(client, registry)
        self._server = _Server((addr, port))
        self._server.set_app(make_wsgi_app(registry))
        self.port: int = self._server.server_port
        host = addr if ":" not in addr else f"[{addr}]"
        self.url = f"http://{host}:{self.port}/metrics"
        self._client = weakref.ref(client)
        self._lock = threading.Lock()
        self._stopped = False
        self._stopping = threading.Event()
        self.error: str | None = None  # what ended the accepting thread, if not stop()
        self._thread = threading.Thread(target=self._serve, name="kiyotaka-ws-metrics", daemon=True)
        self._thread.start()
        try:
            client.add_stop_hook(self._on_client_stop)
        except BaseException:
            self._on_client_stop(time.monotonic() + 5.0)
            raise

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and join the thread. Idempotent."""
        client = self._client()
        if client is not None:
            client.remove_stop_hook(self._on_client_stop)
        self._on_client_stop(time.monotonic() + timeout)

    def _serve(self) -> None:
        try:
            while not self._stopping.is_set():
                self._server.handle_request()  # accepts one connection, or returns after _POLL
        except BaseException as exc:  # anything at all: reported once, the client carries on
            log.debug("the metrics server failed", exc_info=True)
            self.error = f"{type(exc).__name__}: {exc}"
            client = self._client()
            if client is not None and not self._stopping.is_set():
                client.report_error(KiyotakaError(f"metrics server at {self.url} stopped: {self.error}"))
        finally:
            self._server.server_close()

    def _on_client_stop(self, deadline: float) -> bool:
        with self._lock:
            self._stopped = True
        self._stopping.set()
        joined = join_by(self._thread, deadline)  # within _POLL: then no connection is accepted
        for thread in self._server.close_connections():
            joined = join_by(thread, deadline) and joined
        return joined

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<MetricsServer {self.url}{' stopped' if self._stopped else ''}>"


def serve(client: KiyotakaClient, port: int, addr: str = "127.0.0.1") -> MetricsServer:
    """Serve ``client``'s metrics (and only them) at ``http://addr:port/metrics`` from a
    ``kiyotaka-ws-metrics`` thread, until ``stop()`` on the result or ``client.stop()``.
    ``port=0`` picks a free port (see ``.port``). Raises ``OSError`` if the port is taken and
    ``ClientStoppedError`` for a stopped client."""
    return MetricsServer(client, port, addr)
