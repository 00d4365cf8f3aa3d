"""The plan queue: how a planned job travels from the API to a worker.

The job is written to the store before its plan is published, so the queue is
only a doorbell with the plan attached: a publish that fails leaves a QUEUED
job for the sweeper, and a duplicate message is harmless because workers claim
jobs with a compare-and-set on the phase. Delivery is at least once.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aio_pika
import aiormq
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel, AbstractRobustConnection

from soda_reduce.runtime.amqp import AmqpLink
from soda_reduce.runtime.amqp import quietly as _quietly

log = logging.getLogger(__name__)

DEAD_REASON_HEADER = "x-soda-dead-reason"


class BrokerUnavailable(Exception):
    """A publish could not be confirmed: the job stays QUEUED and the sweeper retries."""


class Delivery(Protocol):
    """One consumed plan; settle it once: ack when the plan is done or failed for good,
    dead_letter if it is poison, requeue to give it back (worker shutting down)."""

    job_id: str
    payload: dict[str, Any]
    redelivered: bool

    async def ack(self) -> None: ...
    async def dead_letter(self, reason: str) -> None: ...
    async def requeue(self) -> None: ...


Handler = Callable[[Delivery], Awaitable[None]]


class PlanQueue(Protocol):
    """What the API (publish) and the worker (consume) need from the queue."""

    async def start(self) -> None: ...
    async def publish(self, job_id: str, payload: Mapping[str, Any]) -> None: ...
    async def consume(self, handler: Handler, prefetch: int) -> None: ...
    async def ping(self) -> bool: ...
    async def close(self) -> None: ...


def encode_plan(job_id: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """The message body: the payload with its job_id, so a consumer needs nothing else.

    Round-tripped through JSON in embedded mode too, so both modes accept the same payloads.
    """
    if payload.get("job_id", job_id) != job_id:
        raise ValueError(f"payload job_id {payload['job_id']!r} differs from {job_id!r}")
    return json.loads(json.dumps({**payload, "job_id": job_id}))


class _Delivery:
    """Settle-once bookkeeping shared by both queues; later settle calls are ignored."""

    def __init__(
        self,
        job_id: str,
        payload: dict[str, Any],
        redelivered: bool,
        settler: Callable[[str, str], Awaitable[None]],
    ) -> None:
        self.job_id, self.payload, self.redelivered = job_id, payload, redelivered
        self.settled = False
        self.on_settle: Callable[[], None] | None = None  # frees a prefetch slot
        self._settler = settler

    async def _settle(self, action: str, reason: str = "") -> None:
        if self.settled:
            log.debug("plan %s already settled, ignoring %s", self.job_id, action)
            return
        self.settled = True
        if self.on_settle is not None:
            self.on_settle()
        await self._settler(action, reason)

    async def ack(self) -> None:
        await self._settle("ack")

    async def dead_letter(self, reason: str) -> None:
        await self._settle("dead_letter", reason)

    async def requeue(self) -> None:
        await self._settle("requeue")


class _HandlerPool:
    """One task per delivery, and the shutdown rules of `consume`.

    On shutdown, handlers whose delivery is still unsettled are cancelled and the
    message requeued (another worker takes the plan); handlers that already
    settled are not cancelled but given up to `grace` seconds to finish.
    A handler that raises dead-letters its plan (it is expected to settle itself).
    """

    def __init__(self, handler: Handler, grace: float) -> None:
        self._handler, self._grace = handler, grace
        self._tasks: dict[asyncio.Task[None], _Delivery] = {}
        self.closing = False

    def spawn(self, delivery: _Delivery) -> None:
        task = asyncio.create_task(self._run(delivery), name=f"plan {delivery.job_id}")
        self._tasks[task] = delivery
        task.add_done_callback(lambda t: self._tasks.pop(t, None))

    async def _run(self, delivery: _Delivery) -> None:
        try:
            await self._handler(delivery)
        except asyncio.CancelledError:
            if not delivery.settled:
                await delivery.requeue()
            raise
        except Exception as exc:
            log.exception("handler failed on plan %s", delivery.job_id)
            await delivery.dead_letter(f"handler raised {type(exc).__name__}: {exc}")
        else:
            if not delivery.settled:
                log.warning("handler returned without settling plan %s: requeued", delivery.job_id)
                await delivery.requeue()

    def cancel_unsettled(self) -> int:
        """Cancel the handlers whose message is not settled yet; how many there were."""
        doomed = [task for task, delivery in self._tasks.items() if not delivery.settled]
        for task in doomed:
            task.cancel()
        return len(doomed)

    async def shutdown(self) -> None:
        self.closing = True
        self.cancel_unsettled()
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=self._grace)
        for task in pending:
            log.warning("%s still running %.0f s after shutdown: cancelled", task, self._grace)
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)


# --------------------------------------------------------------------------- embedded mode


@dataclass
class DeadLetter:
    """A plan the in-process queue gave up on, kept for inspection."""

    job_id: str
    payload: dict[str, Any]
    reason: str


@dataclass
class _Envelope:
    job_id: str
    payload: dict[str, Any]
    deliveries: int = 0


class InProcessQueue:
    """Embedded mode: one process, no broker; the job store's outbox provides persistence.

    Follows the RabbitMQ queue's rules (prefetch, delivery limit, dead letters) so
    that a worker behaves the same in both modes.
    """

    def __init__(self, max_redeliveries: int = 5, shutdown_grace: float = 10.0) -> None:
        self.max_redeliveries = max_redeliveries
        self.shutdown_grace = shutdown_grace
        self.dead: list[DeadLetter] = []
        self._queue: asyncio.Queue[_Envelope] = asyncio.Queue()

    async def start(self) -> None:
        pass

    async def publish(self, job_id: str, payload: Mapping[str, Any]) -> None:
        self._queue.put_nowait(_Envelope(job_id, encode_plan(job_id, payload)))

    async def consume(self, handler: Handler, prefetch: int) -> None:
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        slots = asyncio.Semaphore(prefetch)
        pool = _HandlerPool(handler, self.shutdown_grace)
        try:
            while True:
                await slots.acquire()
                try:
                    envelope = await self._queue.get()
                except BaseException:
                    slots.release()
                    raise
                envelope.deliveries += 1
                settler = functools.partial(self._settle, envelope)
                redelivered = envelope.deliveries > 1
                delivery = _Delivery(envelope.job_id, envelope.payload, redelivered, settler)
                delivery.on_settle = slots.release
                if envelope.deliveries > self.max_redeliveries + 1:
                    await delivery.dead_letter(f"delivered {envelope.deliveries - 1} times")
                else:
                    pool.spawn(delivery)
        finally:
            await pool.shutdown()

    async def _settle(self, envelope: _Envelope, action: str, reason: str) -> None:
        if action == "requeue":
            self._queue.put_nowait(envelope)
        elif action == "dead_letter":
            log.warning("plan %s dead-lettered: %s", envelope.job_id, reason)
            self.dead.append(DeadLetter(envelope.job_id, envelope.payload, reason))

    def qsize(self) -> int:
        """Plans waiting (not counting those being handled)."""
        return self._queue.qsize()

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        pass


# --------------------------------------------------------------------------- RabbitMQ


async def _settle_quietly(settle: Awaitable[None], message: AbstractIncomingMessage) -> None:
    """Ack/nack; a lost channel is no error here, the broker has requeued the message."""
    what = f"could not settle plan {message.message_id}; the broker will redeliver it"
    await _quietly(settle, what, logging.WARNING)


class RabbitPlanQueue:
    """The production plan queue on RabbitMQ (aio-pika, robust connection).

    The queue is a *quorum* queue with `x-delivery-limit`: RabbitMQ counts every
    delivery itself, including those whose consumer died (a worker killed by the
    OOM killer while running a poison plan cannot bump a header of ours), and
    dead-letters the message past the limit. Quorum queues are always durable, and
    on 3.10 dead-letter at least once (with `x-overflow: reject-publish`). The cost:
    a requeue at worker shutdown or a broker restart also counts as a delivery.
    Dead letters go through the fanout exchange `<queue>.dlx` to `<queue>.dead`;
    those this class dead-letters itself carry the reason in `x-soda-dead-reason`.
    """

    def __init__(
        self,
        url: str,
        queue: str = "soda_reduce.plans",
        *,
        max_redeliveries: int = 5,
        publish_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        reconnect_interval: float = 1.0,
        shutdown_grace: float = 10.0,
    ) -> None:
        self.queue, self.dead_queue, self.dead_exchange = queue, f"{queue}.dead", f"{queue}.dlx"
        self.max_redeliveries = max_redeliveries
        self.publish_timeout = publish_timeout
        self.shutdown_grace = shutdown_grace
        self._link = AmqpLink(
            url,
            self._declare,
            connect_timeout=connect_timeout,
            reconnect_interval=reconnect_interval,
        )
        self._channel: AbstractRobustChannel | None = None  # publisher confirms
        self._dlx: aio_pika.abc.AbstractExchange | None = None

    def queue_arguments(self) -> dict[str, Any]:
        return {
            "x-queue-type": "quorum",
            "x-delivery-limit": self.max_redeliveries,
            "x-dead-letter-exchange": self.dead_exchange,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }

    async def _declare(self, conn: AbstractRobustConnection) -> None:
        channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
        fanout = aio_pika.ExchangeType.FANOUT
        dlx = await channel.declare_exchange(self.dead_exchange, fanout, durable=True)
        dead = await channel.declare_queue(self.dead_queue, durable=True)
        await dead.bind(dlx)
        await channel.declare_queue(self.queue, durable=True, arguments=self.queue_arguments())
        self._channel, self._dlx = channel, dlx

    async def start(self) -> None:
        await self._link.start()

    async def publish(self, job_id: str, payload: Mapping[str, Any]) -> None:
        """Return once the broker confirmed the persistent message; else BrokerUnavailable.

        A timeout does not prove the message was lost: consumers tolerate duplicates.
        """
        body = json.dumps(encode_plan(job_id, payload)).encode()
        if not self._link.up or self._channel is None:
            raise BrokerUnavailable(f"not connected to the broker ({self._link.last_error!r})")
        message = aio_pika.Message(
            body,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=job_id,
        )
        try:
            async with asyncio.timeout(self.publish_timeout):
                confirmation = await self._channel.default_exchange.publish(
                    message, routing_key=self.queue, mandatory=True
                )
        except TimeoutError as exc:
            raise BrokerUnavailable(f"no confirmation within {self.publish_timeout} s") from exc
        except Exception as exc:
            raise BrokerUnavailable(f"publish failed: {exc!r}") from exc
        if not isinstance(confirmation, aiormq.spec.Basic.Ack):
            raise BrokerUnavailable(f"broker refused the plan: {confirmation!r}")

    async def consume(self, handler: Handler, prefetch: int) -> None:
        """Run handlers until cancelled; waits first if the broker was never reached."""
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        conn = await self._link.wait_ready()
        await conn.ready()
        channel = await conn.channel(publisher_confirms=False)
        pool = _HandlerPool(handler, self.shutdown_grace)
        queue, tag = None, None

        def on_connection_lost(*_: Any) -> None:
            # The broker requeues the unacked messages of a lost connection: running
            # those plans on would duplicate the redelivered ones.
            if count := pool.cancel_unsettled():
                log.warning("broker connection lost: cancelled %d unacked handler(s)", count)

        async def on_message(message: AbstractIncomingMessage) -> None:
            if pool.closing:
                await _settle_quietly(message.nack(requeue=True), message)
                return
            delivery = self._parse(message)
            if isinstance(delivery, str):
                await self._dead_letter(message, delivery)
            else:
                pool.spawn(delivery)

        conn.close_callbacks.add(on_connection_lost)
        try:
            await channel.set_qos(prefetch_count=prefetch)
            args = self.queue_arguments()
            queue = await channel.declare_queue(self.queue, durable=True, arguments=args)
            tag = await queue.consume(on_message)
            await asyncio.Future()  # until cancelled
        finally:
            conn.close_callbacks.discard(on_connection_lost)
            if queue is not None and tag is not None:
                await _quietly(queue.cancel(tag), "cancelling the consumer")
            await pool.shutdown()
            # Closing the channel makes the broker requeue anything still unacked.
            await _quietly(channel.close(), "closing the consumer channel")

    def _parse(self, message: AbstractIncomingMessage) -> _Delivery | str:
        """A delivery, or the reason the message is poison."""
        try:
            body = json.loads(message.body)
        except ValueError as exc:
            return f"body is not JSON: {exc}"
        if not isinstance(body, dict) or not isinstance(body.get("job_id"), str):
            return "body has no job_id"
        settler = functools.partial(self._settle, message)
        return _Delivery(body["job_id"], body, bool(message.redelivered), settler)

    async def _settle(self, message: AbstractIncomingMessage, action: str, reason: str) -> None:
        if action == "ack":
            await _settle_quietly(message.ack(), message)
        elif action == "requeue":
            await _settle_quietly(message.nack(requeue=True), message)
        else:
            await self._dead_letter(message, reason)

    async def _dead_letter(self, message: AbstractIncomingMessage, reason: str) -> None:
        """Copy to the dead-letter exchange with the reason, then ack; else a plain reject."""
        log.warning("plan message %s dead-lettered: %s", message.message_id, reason)
        try:
            if self._dlx is None or not self._link.up:
                raise BrokerUnavailable("no publisher channel")
            copy = aio_pika.Message(
                message.body,
                headers={**(message.headers or {}), DEAD_REASON_HEADER: reason[:1000]},
                content_type=message.content_type,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=message.message_id,
            )
            async with asyncio.timeout(self.publish_timeout):
                await self._dlx.publish(copy, routing_key=self.queue)
        except Exception as exc:
            log.warning("could not copy to %s (%r): rejecting instead", self.dead_exchange, exc)
            await _settle_quietly(message.reject(requeue=False), message)
        else:
            await _settle_quietly(message.ack(), message)

    async def ping(self) -> bool:
        """The broker answers and the queue exists (a passive declare, 2 s at most)."""
        if not self._link.up or self._channel is None:
            return False
        try:
            async with asyncio.timeout(2):
                channel = await self._channel.get_underlay_channel()
                await channel.queue_declare(self.queue, passive=True)
        except Exception:
            return False
        return True

    async def close(self) -> None:
        await self._link.close()
