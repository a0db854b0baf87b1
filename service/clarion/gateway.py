"""One gateway pod: its state (settings, broker, hub, metrics), lifecycle and drain.

``Gateway`` is the pod's single object: the broker calls it (it is the broker's
listener), the session and the HTTP API call it. Nothing is module-global, so
several pods can share one process (``clarion dev``) and tests build as many
as they like.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

from . import disconnects
from .auth import Authenticator, JwtAuth, NoAuth
from .broker import Broker, BrokerOptions, MemoryExchange, create_broker
from .config import Settings, drain_seconds
from .emulation import COMMANDS as EMULATION_COMMANDS
from .emulation import Emulation
from .hub import Hub
from .idempotency import Idempotency
from .kick import COMMANDS as KICK_COMMANDS
from .kick import Kick
from .message import Envelope, Target
from .metrics import Metrics
from .namespaces import Namespaces
from .occupancy import COMMANDS as OCCUPANCY_COMMANDS
from .occupancy import Key, Occupancy, event_name
from .presence import COMMANDS as PRESENCE_COMMANDS
from .presence import Presence
from .protocol import Publication
from .proxy import Proxies
from .ratelimit import RateLimiter
from .replays import Replays
from .webhooks import Webhooks

log = logging.getLogger("clarion.gateway")


def broker_options(s: Settings) -> BrokerOptions:
    """The broker's part of the pod's settings (the broker does not know ``Settings``)."""
    return BrokerOptions(
        exchange=s.exchange,
        queue_prefix=s.queue_prefix,
        queue_max_length=s.queue_max_length,
        queue_message_ttl_ms=s.queue_message_ttl_ms,
        queue_expires_ms=s.queue_expires_ms,
        history_max_age=s.history_max_age,
        history_max_bytes=s.history_max_bytes,
        pod_queue_type=s.pod_queue_type,
        routing=s.routing,
    )


class Gateway:
    """The state of one pod."""

    def __init__(
        self,
        settings: Settings,
        broker: Broker | None = None,
        memory_exchange: MemoryExchange | None = None,
    ) -> None:
        settings.validate()
        self.settings = settings
        self.pod_name = settings.pod_name
        self.metrics = Metrics()
        self.hub = Hub(self.metrics, self.pod_name)
        self.broker = broker or create_broker(
            settings.amqp_url,
            settings.pod_name,
            options=broker_options(settings),
            memory_exchange=memory_exchange,
        )
        # The first socket of a user or channel binds its key, the last one unbinds it.
        self.hub.on_route = self.broker.route
        self.metrics.bindings.set_function(lambda: self.broker.bindings)
        self.broker.consume_counts = self.metrics.consumes
        self.broker.publish_counts = self.metrics.publishes
        self.metrics.routing_wide.set_function(lambda: int(self.broker.routing_wide))
        self.replays = Replays(
            self.broker.read_stream,
            self.broker.history_start,
            settings.replay_timeout,
            on_read=self._replayed,
        )
        self.idempotency = Idempotency(settings.idempotency_window)
        self.presence = Presence(
            self.hub,
            self.pod_name,
            self._publish_command,
            settings.presence_interval,
            settings.presence_timeout,
        )
        #: ``POST /api/disconnect``: closes a user's sockets on every pod (kick.py).
        self.kick = Kick(self.hub, self.pod_name, lambda env: self.broker.publish([env]))
        #: The HTTP streams' sessions, and their posted frames (streams.py, emulation.py).
        self.emulation = Emulation(self.pod_name, self._publish_command, self.presence.alive)
        self.webhooks: Webhooks | None = None
        namespaces = Namespaces.of_setting(settings.namespaces)
        join_leave = settings.join_leave or namespaces.any_join_leave()
        kinds = {"member"} if join_leave else set()
        if settings.webhook_url is not None:
            assert settings.webhook_secret is not None  # validate() says so
            self.webhooks = Webhooks(
                settings.webhook_url,
                settings.webhook_secret,
                settings.webhook_events,
                self.metrics,
                pod_name=self.pod_name,
                queue_size=settings.webhook_queue_size,
                retries=settings.webhook_retries,
                retry_delay=settings.webhook_retry_delay,
                timeout=settings.webhook_timeout,
            )
            kinds |= {e.split("_")[0] for e in settings.webhook_events}
        #: Cluster-wide transitions, each decided by one pod (None: nothing asks for them).
        self.occupancy = (
            Occupancy(
                self.hub,
                self.presence,
                self._publish_command,
                self._fired,
                frozenset(kinds),
                members=lambda channel: namespaces.join_leave(channel, settings.join_leave),
            )
            if kinds
            else None
        )
        self.auth: Authenticator
        if settings.auth == "none":
            self.auth = NoAuth()
        else:
            self.auth = JwtAuth(
                settings.jwt_secret,
                settings.jwt_public_key,
                settings.jwks_file,
                settings.jwt_audience,
                require_exp=settings.jwt_require_exp,
                any_channel=settings.jwt_any_channel,
            )
        #: The connect and refresh proxies (proxy.py; each None when off).
        self.proxies = Proxies.from_settings(settings, self.metrics)
        #: New sockets admitted per second (``--max-connects-per-second``; None: no limit).
        self.admission = (
            RateLimiter(settings.max_connects_per_second)
            if settings.max_connects_per_second
            else None
        )
        self.draining = False
        self.started = False

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        if self.settings.auth == "none":
            log.warning(
                "pod=%s AUTH IS OFF (--auth none): any client can claim any user id; "
                "use --auth jwt in production",
                self.pod_name,
            )
        if not self.settings.api_keys:
            log.warning(
                "pod=%s POST /api/publish IS OPEN: no API key is set, anyone who reaches the "
                "API port can publish (%s)",
                self.pod_name,
                "--auth none" if self.settings.auth == "none" else "--public-api",
            )
        await self.broker.start(self)
        self.presence.start()
        if self.webhooks is not None:
            self.webhooks.start()
        if self.occupancy is not None:
            self.occupancy.start()
        self.metrics.broker_connected.set(1 if self.broker.ready else 0)
        self.started = True

    async def stop(self) -> None:
        self.hub.close_all(disconnects.SHUTDOWN)
        if self.occupancy is not None:
            await self.occupancy.stop()
        if self.webhooks is not None:
            await self.webhooks.stop(drain=self.settings.webhook_timeout)
        await self.presence.stop()
        await self.broker.stop()

    @property
    def ready(self) -> bool:
        return self.started and not self.draining and self.broker.ready

    async def drain(self, delay: float | None = None, window: float | None = None) -> None:
        """Graceful shutdown: unready at once, wait, then close sockets spread over a window
        (``drain_seconds``: longer for more sockets, so the others can take them)."""
        delay = self.settings.drain_delay if delay is None else delay
        window = drain_seconds(
            len(self.hub),
            self.settings.drain_window if window is None else window,
            self.settings.drain_rate,
        )
        self.draining = True
        log.info(
            "pod=%s draining: %d sockets, delay %.1fs, window %.1fs",
            self.pod_name,
            len(self.hub),
            delay,
            window,
        )
        await asyncio.sleep(delay)
        conns = list(self.hub.connections.values())
        random.shuffle(conns)
        started = time.monotonic()
        for i, conn in enumerate(conns):
            due = started + window * i / max(1, len(conns))
            pause = due - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
            conn.close(disconnects.DRAIN)
        # Give the close frames a moment to go out.
        deadline = time.monotonic() + 2.0
        while self.hub.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    def _replayed(self, requests: int, seconds: float, ok: bool) -> None:
        self.metrics.history_reads.labels(result="ok" if ok else "failed").inc()
        self.metrics.history_read_seconds.observe(seconds)

    # -- the broker's listener -----------------------------------------------

    def on_message(self, env: Envelope, caught_up: bool = False) -> object:
        if env.command is not None:
            return self._command(env)
        if env.key is not None and not self.idempotency.consumed(env):
            self.metrics.dropped.labels(reason="duplicate").inc()
            return 0  # another message came first with this idempotency key
        return self.hub.deliver(env, caught_up)

    def _command(self, env: Envelope) -> int:
        """A command to every pod (its id is remembered: a redelivery is not run twice)."""
        if not self.hub.first_time(env.id):
            return 0
        if env.command in PRESENCE_COMMANDS:
            self.presence.on_command(env)
            return 0
        if env.command in OCCUPANCY_COMMANDS:
            if self.occupancy is not None:
                self.occupancy.on_command(env)
            return 0
        if env.command in EMULATION_COMMANDS:
            self.emulation.on_command(env)
            return 0
        if env.command in KICK_COMMANDS:
            return self.kick.on_command(env)
        return 0

    def _fired(self, key: Key, up: bool) -> None:
        """A channel or user changed cluster-wide, and this pod owns it: tell the webhook."""
        if self.webhooks is not None:
            self.webhooks.enqueue(event_name(key, up), key[1])

    def on_state(self, up: bool) -> None:
        self.metrics.broker_connected.set(1 if up else 0)
        log.info("pod=%s broker %s", self.pod_name, "up" if up else "DOWN")

    def on_bound(self, seconds: float) -> None:
        self.metrics.bind_seconds.observe(seconds)

    def on_bind_error(self, keys: int) -> None:
        self.metrics.bind_errors.inc(keys)

    def on_connected(self, address: str, reconnect_seconds: float | None) -> None:
        self.metrics.broker_address.clear()
        self.metrics.broker_address.labels(address=address).set(1)
        if reconnect_seconds is not None:
            self.metrics.broker_failovers.labels(address=address).inc()
            self.metrics.broker_reconnect.observe(reconnect_seconds)

    def on_gap(self) -> None:
        # After a reconnect the pod could not read the history stream to fill
        # what its queue may have lost: its sockets reconnect (1012) and
        # recover with since= on their own.
        log.warning(
            "pod=%s could not catch up from history after a broker outage: "
            "asking %d sockets to reconnect and recover",
            self.pod_name,
            len(self.hub),
        )
        self.hub.close_all(disconnects.OUTAGE)

    # -- what the session and the API ask of the pod ---------------------------

    async def publish(self, items: list[Publication], source: str) -> list[str]:
        """Publish and wait for the broker's confirm; raises BrokerUnavailable.

        A message whose idempotency key is known is not published again: its id is
        the first message's (idempotency.py).
        """
        ids: list[str] = []
        envelopes: list[Envelope] = []
        for item in items:
            known = self.idempotency.lookup(item.key) if item.key is not None else None
            if known is not None:
                self.metrics.idempotent_hits.inc()
                ids.append(known)
                continue
            env = Envelope.create(item.target, item.data, item.key)
            envelopes.append(env)
            ids.append(env.id)
        if not envelopes:
            return ids
        # The keyed messages this pod will consume itself (all of them, unless routed).
        keyed = [e.id for e in envelopes if e.key is not None and self._consumes(e.target)]
        arrived = self.idempotency.expect(keyed)
        began = time.monotonic()
        try:
            await self.broker.publish(envelopes)
        except BaseException:
            await self.idempotency.settled(keyed, arrived, 0)
            raise
        self.metrics.publish_confirm.observe(time.monotonic() - began)
        for env in envelopes:
            if env.key is not None and env.id not in keyed:
                # Routed past this pod: it learns the key from its own publish.
                self.idempotency.published(env.key, env.id)
        for env in envelopes:
            self.metrics.published.labels(source=source, target=env.target.kind).inc()
        if keyed:
            # Answer with the id that won, should a copy from a retry elsewhere have come first.
            await self.idempotency.settled(keyed, arrived, self.settings.publish_settle_timeout)
            ids = [
                (self.idempotency.lookup(item.key) or mid) if item.key is not None else mid
                for item, mid in zip(items, ids, strict=True)
            ]
        return ids

    def _consumes(self, target: Target) -> bool:
        """Whether this pod receives messages to ``target`` (routed delivery: if it holds it)."""
        if self.settings.routing == "fanout" or target.kind == "broadcast":
            return True
        index = self.hub.by_user if target.kind == "user" else self.hub.by_channel
        return target.name in index

    async def _publish_command(
        self, command: str, args: dict[str, Any], to_pod: str | None = None
    ) -> None:
        env = Envelope.create_command(command, Target("broadcast"), args)
        await self.broker.publish([env], to_pod=to_pod)

    async def disconnect(
        self, user: str, code: int | None, reason: str | None, conn: str | None
    ) -> str:
        """Close ``user``'s sockets (or one of them) on every pod; raises BrokerUnavailable."""
        return await self.kick.request(user, code, reason, conn)

    def shed(self, count: int) -> int:
        """Close up to ``count`` sockets with 1012 so the load balancer spreads them."""
        conns = [c for c in self.hub.connections.values() if not c.closing]
        random.shuffle(conns)
        for conn in conns[:count]:
            conn.close(disconnects.SHED)
        return min(count, len(conns))
