"""Job notifications: a UWS WAIT returns as soon as the phase changes, a worker learns of an ABORT.

Best effort by design: an event may be lost (broker down, restart, slow watcher),
so every caller also polls the store slowly; events only make the common case fast.
Events are small JSON dicts ``{"job_id", "phase", ...extra}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aio_pika
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage, AbstractRobustConnection

from soda_reduce.runtime.amqp import AmqpLink

log = logging.getLogger(__name__)

ORIGIN_HEADER = "x-soda-origin"


class Watch:
    """Events of one job since registration, in order; a slow reader loses the oldest."""

    def __init__(self, job_id: str, backlog: int = 64) -> None:
        self.job_id = job_id
        self._pending: deque[dict[str, Any]] = deque(maxlen=backlog)
        self._signal = asyncio.Event()

    def _deliver(self, event: dict[str, Any]) -> None:
        self._pending.append(event)
        self._signal.set()

    async def wait(self, timeout: float) -> dict[str, Any] | None:
        """The next event after registration (or after the last wait), None on timeout."""
        if not self._pending:
            self._signal.clear()
            try:
                await asyncio.wait_for(self._signal.wait(), max(timeout, 0))
            except TimeoutError:
                return None
        return self._pending.popleft() if self._pending else None


class JobEvents:
    """In-process event bus (embedded mode), and the base of the RabbitMQ one."""

    def __init__(self) -> None:
        self._watchers: dict[str, set[Watch]] = {}
        self._listeners: list[Callable[[dict[str, Any]], None]] = []

    @property
    def reliable(self) -> bool:
        """Whether every event of every process reaches this one right now."""
        return True

    def add_listener(self, listener: Callable[[dict[str, Any]], None]) -> None:
        """Call ``listener`` with every event of every job (e.g. to invalidate a cache)."""
        self._listeners.append(listener)

    async def start(self) -> None:
        pass

    async def publish(self, job_id: str, phase: str, **extra: Any) -> None:
        """Dispatch to local watchers at once, then forward; never raises."""
        try:
            # Through JSON here too, so both modes hand watchers the same values.
            event = json.loads(json.dumps({**extra, "job_id": job_id, "phase": phase}, default=str))
            self._dispatch(event)
            await self._forward(event)
        except Exception:
            log.warning("could not publish event %s %s", job_id, phase, exc_info=True)

    async def _forward(self, event: dict[str, Any]) -> None:
        """Hook for other processes; nothing to do in-process."""

    def _dispatch(self, event: dict[str, Any]) -> None:
        for listener in self._listeners:
            listener(event)
        for watch in tuple(self._watchers.get(event.get("job_id", ""), ())):
            watch._deliver(dict(event))

    def wake_all(self) -> None:
        """Wake every watcher with a ``shutdown`` event: a stopping API answers its WAITs now
        rather than holding its shutdown for the whole WAIT cap."""
        for job_id, watchers in tuple(self._watchers.items()):
            for watch in tuple(watchers):
                watch._deliver({"job_id": job_id, "phase": None, "shutdown": True})

    @asynccontextmanager
    async def watch(self, job_id: str) -> AsyncIterator[Watch]:
        """Register before reading the job from the store, so no change falls in between."""
        watch = Watch(job_id)
        self._watchers.setdefault(job_id, set()).add(watch)
        try:
            yield watch
        finally:
            watchers = self._watchers.get(job_id)
            if watchers is not None:
                watchers.discard(watch)
                if not watchers:
                    del self._watchers[job_id]

    async def close(self) -> None:
        pass


class RabbitJobEvents(JobEvents):
    """Production: a fanout exchange shared by all processes.

    Each process binds its own exclusive auto-delete queue (client-named, so the
    robust connection can re-declare it after a broker restart) and dispatches
    what arrives to its local watchers; its own events, already dispatched at
    publish time, are recognised by an origin header and skipped. Messages are
    transient and expire after a minute: a stale event is worth nothing.
    """

    def __init__(
        self,
        url: str,
        exchange: str = "soda_reduce.job_events",
        *,
        publish_timeout: float = 2.0,
        connect_timeout: float = 5.0,
        reconnect_interval: float = 1.0,
    ) -> None:
        super().__init__()
        self.exchange_name = exchange
        self.publish_timeout = publish_timeout
        self.origin = f"{os.uname().nodename}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        self._link = AmqpLink(
            url,
            self._declare,
            connect_timeout=connect_timeout,
            reconnect_interval=reconnect_interval,
        )
        self._exchange: AbstractExchange | None = None

    async def _declare(self, conn: AbstractRobustConnection) -> None:
        channel = await conn.channel(publisher_confirms=False)
        fanout = aio_pika.ExchangeType.FANOUT
        exchange = await channel.declare_exchange(self.exchange_name, fanout, durable=True)
        queue = await channel.declare_queue(
            f"{self.exchange_name}.{self.origin}",
            exclusive=True,
            auto_delete=True,
            arguments={"x-message-ttl": 60_000, "x-max-length": 10_000},
        )
        await queue.bind(exchange)
        await queue.consume(self._on_message, no_ack=True)
        self._exchange = exchange

    @property
    def connected(self) -> bool:
        return self._link.up

    @property
    def reliable(self) -> bool:
        return self._link.up  # events of other processes are lost while disconnected

    async def start(self) -> None:
        await self._link.start()

    async def _forward(self, event: dict[str, Any]) -> None:
        if self._exchange is None or not self._link.up:
            log.debug("broker down, event %s not forwarded", event)
            return
        message = aio_pika.Message(
            json.dumps(event).encode(),
            content_type="application/json",
            headers={ORIGIN_HEADER: self.origin},
            expiration=60,
        )
        async with asyncio.timeout(self.publish_timeout):
            await self._exchange.publish(message, routing_key="")

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if (message.headers or {}).get(ORIGIN_HEADER) == self.origin:
            return
        try:
            event = json.loads(message.body)
        except ValueError:
            log.warning("ignoring a job event that is not JSON: %r", message.body[:200])
            return
        if isinstance(event, dict) and isinstance(event.get("job_id"), str):
            self._dispatch(event)

    async def close(self) -> None:
        await self._link.close()
