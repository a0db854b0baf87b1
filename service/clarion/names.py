"""Names shared by the gateway, the operator, the chart and the dashboard.

Everything that two parts of Clarion must spell the same way lives here, once:
the broker topology, the Kubernetes labels and the metric names.
"""

from __future__ import annotations

#: The fanout exchange every message is published to.
EXCHANGE = "clarion.fanout"
#: Prefix of the per-pod queue; the pod name follows it.
QUEUE_PREFIX = "clarion.pod."
#: With ``--routing direct``: the direct exchange that routes user and channel messages to
#: the pods holding them, bound to the fanout exchange and named after it.
ROUTED_SUFFIX = ".routed"
#: The stream that keeps recent history for missed-message recovery is named
#: after the gateway's exchange: one per gateway, even when gateways share a vhost.
HISTORY_SUFFIX = ".history"

#: The webhook events a pod can send (``--webhook-events``), and the field of each that
#: names what it is about.
WEBHOOK_EVENTS = {
    "channel_occupied": "channel",
    "channel_vacated": "channel",
    "user_online": "user",
    "user_offline": "user",
}

#: Maximum length of a user id or channel name.
MAX_NAME_LENGTH = 256
#: Characters of channel patterns (the token's ``channels`` claim), never of a channel name.
PATTERN_CHARS = frozenset("*?[]")

#: Kubernetes label keys put on everything the operator makes, pods included.
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_GATEWAY = "clarion.dev/gateway"
APP_NAME = "clarion"
#: The name of the gateway container's HTTP port.
HTTP_PORT_NAME = "http"

#: Custom resource coordinates.
CRD_GROUP = "clarion.dev"
CRD_VERSION = "v1alpha1"
CRD_PLURAL = "websocketgateways"
CRD_KIND = "WebSocketGateway"

# Gateway metrics (Prometheus names, without the _total suffix that
# prometheus_client appends to counters).
M_CONNECTIONS = "clarion_connections"
M_CONNECTIONS_OPENED = "clarion_connections_opened"
M_CONNECTIONS_CLOSED = "clarion_connections_closed"
M_SUBSCRIPTIONS = "clarion_subscriptions"
M_PUBLISHED = "clarion_messages_published"
M_CONSUMED = "clarion_messages_consumed"
M_DELIVERED = "clarion_messages_delivered"
M_DROPPED = "clarion_messages_dropped"
M_DELIVERY_LATENCY = "clarion_delivery_latency_seconds"
M_BROKER_CONNECTED = "clarion_broker_connected"
#: Which broker address (host:port) the pod is connected to, and its failovers.
M_BROKER_ADDRESS = "clarion_broker_address"
M_BROKER_FAILOVERS = "clarion_broker_failovers"
M_BROKER_RECONNECT = "clarion_broker_reconnect_seconds"
#: Publish API requests by status, and the broker confirm time of each.
M_PUBLISH_REQUESTS = "clarion_publish_requests"
M_PUBLISH_CONFIRM = "clarion_publish_confirm_seconds"
#: Publishes whose idempotency key was known (not published again).
M_IDEMPOTENT_HITS = "clarion_idempotent_hits"
#: Presence queries answered, complete or partial.
M_PRESENCE_QUERIES = "clarion_presence_queries"
#: since= replays by scope and result, and the history reads that served them.
M_REPLAYS = "clarion_replays"
M_HISTORY_READS = "clarion_history_reads"
M_HISTORY_READ_SECONDS = "clarion_history_read_seconds"
#: How often each limit refused something.
M_LIMIT_HITS = "clarion_limit_hits"
#: Webhook events by event and result (sent, failed, dropped), and the queue's length.
M_WEBHOOK_EVENTS = "clarion_webhook_events"
M_WEBHOOK_QUEUE = "clarion_webhook_queue_length"
#: Routing keys bound to the pod's queue (``--routing direct``), how long a bind takes to be
#: confirmed, and the bind/unbind operations that failed.
M_BINDINGS = "clarion_bindings"
M_ROUTING_WIDE = "clarion_routing_wide"
M_BIND_SECONDS = "clarion_bind_seconds"
M_BIND_ERRORS = "clarion_bind_errors"
#: Frames written to sockets, by transport path (fast or asgi).
M_SOCKET_WRITES = "clarion_socket_writes"
#: Deliveries the broker consumed, by path (fast, or fallback: aiormq's task per delivery).
M_BROKER_CONSUME = "clarion_broker_consume"
#: Messages the broker published, by path (fast: a batch in one write, or fallback).
M_BROKER_PUBLISH = "clarion_broker_publish"
M_STREAM_CONNECTIONS = "clarion_stream_connections"
M_EMULATION_POSTS = "clarion_emulation_posts"
#: Connect/refresh proxy calls by result and their latency; refreshes by result; refused
#: and revoked subscriptions by reason.
M_PROXY_REQUESTS = "clarion_proxy_requests"
M_PROXY_SECONDS = "clarion_proxy_seconds"
M_REFRESHES = "clarion_refreshes"
M_SUBSCRIPTIONS_REFUSED = "clarion_subscriptions_refused"

# Operator metrics.
M_OP_DESIRED = "clarion_operator_desired_replicas"
M_OP_OBSERVED = "clarion_operator_observed_connections"
M_OP_SCALE_EVENTS = "clarion_operator_scale_events"
M_OP_ORPHANS_DELETED = "clarion_operator_orphan_queues_deleted"


def history_queue(exchange: str = EXCHANGE) -> str:
    """The history stream of the gateway publishing to ``exchange``."""
    return f"{exchange}{HISTORY_SUFFIX}"


def routed_exchange(exchange: str = EXCHANGE) -> str:
    """The direct exchange of the gateway publishing to ``exchange`` (``--routing direct``)."""
    return f"{exchange}{ROUTED_SUFFIX}"


def queue_name(pod_name: str, prefix: str = QUEUE_PREFIX) -> str:
    """The queue a pod consumes: one per pod, named after it."""
    return f"{prefix}{pod_name}"


def pod_of_queue(queue: str, prefix: str = QUEUE_PREFIX) -> str | None:
    """The pod name a queue belongs to, or None if it is not a pod queue."""
    if not queue.startswith(prefix) or len(queue) == len(prefix):
        return None
    return queue[len(prefix) :]


def gateway_labels(gateway: str) -> dict[str, str]:
    """The labels every object of one gateway carries."""
    return {LABEL_NAME: APP_NAME, LABEL_INSTANCE: gateway, LABEL_GATEWAY: gateway}
