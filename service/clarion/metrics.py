"""Prometheus metrics of one gateway pod.

Each pod (an app instance) has its own registry, so ``clarion dev`` can run
several pods in one process and each ``/metrics`` shows only its own numbers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from . import disconnects, names
from .broker.base import PathCounts
from .transport import WriteCounts

#: The answers of the publish API, pre-created at zero.
PUBLISH_STATUSES = (202, 400, 401, 413, 503)

#: The proxies, and what a call to one can end in.
PROXIES = ("connect", "refresh", "subscribe")
PROXY_RESULTS = ("allow", "deny", "timeout", "error")
REFRESH_RESULTS = (
    "ok",
    "invalid",
    "expired",
    "proxy_ok",
    "proxy_denied",
    "proxy_unavailable",
    "subscription_ok",
    "subscription_invalid",
    "subscription_expired",
)
#: Why the server refused or ended a subscription.
SUBSCRIPTION_REFUSALS = (
    "forbidden",
    "too_many_subscriptions",
    "revoked",
    "bad_token",
    "token_expired",
    "subscription_expired",
    "proxy_denied",
    "proxy_unavailable",
    "bad_channel",
)

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.connections = Gauge(
            names.M_CONNECTIONS,
            "Open connections on every transport (WebSockets and HTTP streams)",
            registry=r,
        )
        self.opened = Counter(
            names.M_CONNECTIONS_OPENED, "WebSocket connections accepted", registry=r
        )
        self.closed = Counter(
            names.M_CONNECTIONS_CLOSED,
            "WebSocket connections closed, by reason",
            ["reason"],
            registry=r,
        )
        self.subscriptions = Gauge(
            names.M_SUBSCRIPTIONS, "Channel subscriptions held by open sockets", registry=r
        )
        self.published = Counter(
            names.M_PUBLISHED,
            "Messages published to the broker by this pod, by source (api|client) and target",
            ["source", "target"],
            registry=r,
        )
        #: Messages consumed (queue and catch-up): a plain int, read at scrape time.
        self.consumed = Count()
        r.register(
            _ScrapedCounter(
                names.M_CONSUMED,
                "Messages consumed from this pod's queue",
                lambda: self.consumed.value,
            )
        )
        self.dropped = Counter(
            names.M_DROPPED, "Messages not delivered to a socket, by reason", ["reason"], registry=r
        )
        self.latency = Histogram(
            names.M_DELIVERY_LATENCY,
            "Time from publish until this pod has written the message to its sockets "
            "(once per live message and pod)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        #: Frames written to sockets and the latency of live messages, off the per-socket path.
        self.deliveries = Deliveries(self.latency)
        r.register(
            _ScrapedCounter(
                names.M_DELIVERED,
                "Message frames written to sockets (live and replayed)",
                lambda: self.deliveries.count,
            )
        )
        self.broker_connected = Gauge(
            names.M_BROKER_CONNECTED,
            "1 while connected to the broker and consuming this pod's queue",
            registry=r,
        )
        self.broker_address = Gauge(
            names.M_BROKER_ADDRESS,
            "1 for the broker address (host:port of one of --amqp-url) the pod is connected to",
            ["address"],
            registry=r,
        )
        self.broker_failovers = Counter(
            names.M_BROKER_FAILOVERS,
            "Times the pod got the broker back after losing it, by the address it got back to",
            ["address"],
            registry=r,
        )
        self.broker_reconnect = Histogram(
            names.M_BROKER_RECONNECT,
            "Time from losing the broker to consuming again (catch-up included)",
            buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
            registry=r,
        )
        self.publish_requests = Counter(
            names.M_PUBLISH_REQUESTS,
            "POST /api/publish requests, by HTTP status (202, 400, 401, 413, 503)",
            ["status"],
            registry=r,
        )
        for status in PUBLISH_STATUSES:
            self.publish_requests.labels(status=str(status))
        self.publish_confirm = Histogram(
            names.M_PUBLISH_CONFIRM,
            "Time from publishing to the broker's confirm of every message of a request",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # CPU, memory and file descriptors of this process (process_cpu_seconds_total, ...).
        ProcessCollector(registry=r)
        self.idempotent_hits = Counter(
            names.M_IDEMPOTENT_HITS,
            "Publishes answered with the id of an earlier message with the same idempotency key",
            registry=r,
        )
        self.presence_queries = Counter(
            names.M_PRESENCE_QUERIES,
            "Presence queries this pod answered, by complete (false: some pod did not answer)",
            ["complete"],
            registry=r,
        )
        for complete in ("true", "false"):
            self.presence_queries.labels(complete=complete)
        self.replays = Counter(
            names.M_REPLAYS,
            "since= replays, by scope (connect|subscribe) and result "
            "(recovered|expired|unknown|unavailable)",
            ["scope", "result"],
            registry=r,
        )
        self.history_reads = Counter(
            names.M_HISTORY_READS,
            "History reads for since= replays (concurrent replays share one), by result",
            ["result"],
            registry=r,
        )
        self.history_read_seconds = Histogram(
            names.M_HISTORY_READ_SECONDS,
            "Time one history read for since= replays took",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=r,
        )
        self.limit_hits = Counter(
            names.M_LIMIT_HITS,
            "Requests refused by a limit: connections (pod full), user_connections "
            "(--max-connections-per-user), connect_rate (admission), subscriptions, frame_size, "
            "frame_rate, namespace_rate (a namespace's rate), body_size",
            ["limit"],
            registry=r,
        )
        for limit in (
            "connections",
            "user_connections",
            "connect_rate",
            "subscriptions",
            "frame_size",
            "frame_rate",
            "namespace_rate",
            "body_size",
        ):
            self.limit_hits.labels(limit=limit)
        self.webhook_events = Counter(
            names.M_WEBHOOK_EVENTS,
            "Webhook events, by event and result (sent, failed: retries exhausted, "
            "dropped: queue full)",
            ["event", "result"],
            registry=r,
        )
        self.webhook_queue = Gauge(
            names.M_WEBHOOK_QUEUE, "Webhook events queued on this pod, not yet sent", registry=r
        )
        self.bindings = Gauge(
            names.M_BINDINGS,
            "Routing keys (users and channels) bound to this pod's queue (--routing direct)",
            registry=r,
        )
        self.routing_wide = Gauge(
            names.M_ROUTING_WIDE,
            "1 while this pod's queue takes every message because its sockets waited for "
            "their keys' binds (--routing direct, a reconnect storm)",
            registry=r,
        )
        self.bind_seconds = Histogram(
            names.M_BIND_SECONDS,
            "Time from the first socket of a user or channel to the broker's confirm of its "
            "binding (--routing direct)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.bind_errors = Counter(
            names.M_BIND_ERRORS,
            "Routing keys whose bind or unbind failed (tried again)",
            registry=r,
        )
        self.stream_connections = Gauge(
            names.M_STREAM_CONNECTIONS,
            "Open HTTP streams, by transport (sse, http_stream); each is also counted in "
            "clarion_connections, and WebSockets are the rest",
            ["transport"],
            registry=r,
        )
        self.emulation_posts = Counter(
            names.M_EMULATION_POSTS,
            "POST /emulation answers by HTTP status (202 taken by the holding pod, 403 a token "
            "not issued for the connection, 404 unknown connection, 429, 503, 504)",
            ["status"],
            registry=r,
        )
        for transport in ("sse", "http_stream"):
            self.stream_connections.labels(transport=transport)
        self.proxy_requests = Counter(
            names.M_PROXY_REQUESTS,
            "Calls to the connect and refresh proxies, by proxy and result (allow, deny, "
            "timeout, error: unreachable, 5xx, redirect or no valid answer)",
            ["proxy", "result"],
            registry=r,
        )
        self.proxy_seconds = Histogram(
            names.M_PROXY_SECONDS,
            "Time a proxy call took, waiting for a free slot included",
            ["proxy"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        for proxy in PROXIES:
            self.proxy_seconds.labels(proxy=proxy)
            for result in PROXY_RESULTS:
                self.proxy_requests.labels(proxy=proxy, result=result)
        self.refreshes = Counter(
            names.M_REFRESHES,
            "Connection renewals, by result: in band (refresh frames: ok, invalid, expired), "
            "by the refresh proxy (proxy_ok, proxy_denied, proxy_unavailable), and of "
            "subscription tokens (subscription_ok, subscription_invalid, subscription_expired)",
            ["result"],
            registry=r,
        )
        for result in REFRESH_RESULTS:
            self.refreshes.labels(result=result)
        self.subscriptions_refused = Counter(
            names.M_SUBSCRIPTIONS_REFUSED,
            "Subscriptions refused or ended by the server, by reason (forbidden, "
            "too_many_subscriptions, revoked: a refresh took the right away, bad_token, "
            "token_expired: a subscription token refused, subscription_expired: its expiry "
            "passed unrefreshed, proxy_denied, proxy_unavailable: the subscribe proxy, "
            "bad_channel: no namespace of this gateway)",
            ["reason"],
            registry=r,
        )
        for reason in SUBSCRIPTION_REFUSALS:
            self.subscriptions_refused.labels(reason=reason)
        #: Socket writes per transport path (transport.py), counted as plain ints.
        self.writes = WriteCounts()
        r.register(
            _PathCollector(
                names.M_SOCKET_WRITES,
                "Frames written to sockets, by path: frame (pre-built, uvicorn fast path), "
                "direct (ASGI send completed at once) or asgi (awaited)",
                self.writes,
            )
        )
        #: Broker deliveries per consume path (broker/fastconsume.py), counted as plain ints.
        self.consumes = PathCounts()
        r.register(
            _PathCollector(
                names.M_BROKER_CONSUME,
                "Deliveries consumed from the broker, by path: fast (in aiormq's channel reader) "
                "or fallback (a task per delivery: the installed aiormq lacks what the fast path "
                "replaces; see broker/fastconsume.py)",
                self.consumes,
            )
        )
        #: Broker publishes per path (broker/fastpublish.py), counted as plain ints.
        self.publishes = PathCounts()
        r.register(
            _PathCollector(
                names.M_BROKER_PUBLISH,
                "Messages published to the broker, by path: fast (a batch's frames in one "
                "write, its confirms awaited together) or fallback (basic_publish per message: "
                "the installed aiormq lacks what the fast path needs; see broker/fastpublish.py)",
                self.publishes,
            )
        )
        # Pre-create the label sets the dashboard queries, so they exist at 0.
        for scope in ("connect", "subscribe"):
            for result in ("recovered", "expired", "unknown", "unavailable"):
                self.replays.labels(scope=scope, result=result)
        for result in ("ok", "failed"):
            self.history_reads.labels(result=result)
        for reason in disconnects.LABELS:
            self.closed.labels(reason=reason)
        # Refused client frames are not messages: clarion_limit_hits_total{limit="frame_rate"}.
        for reason in ("slow_client", "duplicate"):
            self.dropped.labels(reason=reason)
        for source in ("api", "client"):
            for target in ("user", "channel", "broadcast"):
                self.published.labels(source=source, target=target)


class Deliveries:
    """What fan-out counts, once per message and pod or as a plain int, never a metric per socket.

    ``count`` is the number of message frames (live and replayed) written to
    sockets: the writers add to it (once per socket per event-loop iteration on
    the fast path) and ``/metrics`` reads it as ``clarion_messages_delivered_total``.
    ``live(ts)`` is called once per live message the pod fanned out: its latency
    is observed once, after the socket writes of that event-loop iteration (the
    hub writes the iteration's frames in a callback scheduled before this one).
    """

    __slots__ = ("_histogram", "_pending", "count")

    def __init__(self, histogram: Histogram) -> None:
        self.count = 0
        self._histogram = histogram
        #: Publish times (unix ms) of the live messages fanned out in this iteration.
        self._pending: list[int] = []

    def live(self, ts_ms: int) -> None:
        pending = self._pending
        if not pending:
            try:
                asyncio.get_running_loop().call_soon(self._observe)
            except RuntimeError:  # no event loop (a synchronous caller): at once
                pending.append(ts_ms)
                self._observe()
                return
        pending.append(ts_ms)

    def _observe(self) -> None:
        pending, self._pending = self._pending, []
        now_ms = time.time() * 1000.0
        observe = self._histogram.observe
        for ts_ms in pending:
            observe(max(0.0, (now_ms - ts_ms) / 1000.0))


class Count:
    """A counter the hot path adds to as a plain int (``value += 1``)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


class _ScrapedCounter(Collector):
    """A counter kept as a plain int on the hot path, read at scrape time."""

    def __init__(self, name: str, documentation: str, read: Callable[[], int]) -> None:
        self.name = name
        self.documentation = documentation
        self.read = read

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation)
        family.add_metric([], self.read())
        yield family


class _PathCollector(Collector):
    """A counter by ``path`` whose values are plain ints on the hot path (``counts``' slots,
    one per path), read at scrape time; every path is there at 0 from the start."""

    def __init__(self, name: str, documentation: str, counts: WriteCounts | PathCounts) -> None:
        self.name = name
        self.documentation = documentation
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=["path"])
        for path in self.counts.__slots__:
            family.add_metric([path], getattr(self.counts, path))
        yield family
