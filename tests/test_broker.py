"""The plan queue: the in-process one, and RabbitPlanQueue against the real broker on :5672.

Each Rabbit test uses queues of its own (uuid names) and deletes them. The
broker-restart test restarts RabbitMQ's app, so it is the last test of the file
(pytest runs a file's tests in order) and always leaves the broker running.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aio_pika
import pytest

from soda_reduce.runtime.broker import (
    DEAD_REASON_HEADER,
    BrokerUnavailable,
    Delivery,
    InProcessQueue,
    PlanQueue,
    RabbitPlanQueue,
)
from soda_reduce.runtime.events import RabbitJobEvents
from tests.support.rabbit import (
    URL,
    ensure_broker_running,
    requires_rabbit,
    run_command,
    wait_port,
)

CLOSED_URL = "amqp://guest:guest@127.0.0.1:1/"


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


@asynccontextmanager
async def consuming(queue: PlanQueue, handler: Any, prefetch: int = 1) -> AsyncIterator[None]:
    task = asyncio.create_task(queue.consume(handler, prefetch))
    try:
        yield
    finally:
        task.cancel()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 15)


@asynccontextmanager
async def raw_channel() -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """A plain connection to look at queues behind RabbitPlanQueue's back."""
    conn = await aio_pika.connect(URL, timeout=5)
    try:
        yield await conn.channel()
    finally:
        await asyncio.wait_for(conn.close(), 5)


async def depth(name: str) -> int:
    async with raw_channel() as channel:
        queue = await channel.declare_queue(name, passive=True)
        return queue.declaration_result.message_count or 0


async def drain(name: str, count: int, timeout: float = 5.0) -> list[aio_pika.IncomingMessage]:
    """Take `count` messages off a queue (acked), waiting up to `timeout`."""
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    async with raw_channel() as channel:
        queue = await channel.declare_queue(name, passive=True)
        while len(got) < count and time.monotonic() < deadline:
            message = await queue.get(no_ack=True, fail=False)
            if message is None:
                await asyncio.sleep(0.05)
            else:
                got.append(message)
    assert len(got) == count, f"{len(got)} of {count} messages in {name}"
    return got


@pytest.fixture
async def name() -> AsyncIterator[str]:
    """A queue name of the test's own; the queue, its DLX and dead queue are deleted after."""
    queue = f"test.plans.{uuid.uuid4().hex[:10]}"
    yield queue
    async with raw_channel() as channel:
        for q in (queue, f"{queue}.dead"):
            await channel.queue_delete(q)
        await channel.exchange_delete(f"{queue}.dlx")


@pytest.fixture
async def make() -> AsyncIterator[Callable[..., Awaitable[RabbitPlanQueue]]]:
    """Started RabbitPlanQueues, closed after the test."""
    made: list[RabbitPlanQueue] = []

    async def factory(queue: str, **options: Any) -> RabbitPlanQueue:
        plans = RabbitPlanQueue(URL, queue, **options)
        made.append(plans)
        await plans.start()
        return plans

    yield factory
    for plans in made:
        await plans.close()


# --------------------------------------------------------------------------- in-process


async def test_inprocess_publish_consume_ack_and_prefetch() -> None:
    plans = InProcessQueue()
    for i in range(6):
        await plans.publish(f"job-{i}", {"n": i})
    active, peak, done = 0, 0, []

    async def handler(delivery: Delivery) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.05)
        active -= 1
        done.append((delivery.job_id, delivery.payload, delivery.redelivered))
        await delivery.ack()

    async with consuming(plans, handler, prefetch=2):
        await eventually(lambda: _true(len(done) == 6))
    assert peak == 2
    assert sorted(done) == [(f"job-{i}", {"n": i, "job_id": f"job-{i}"}, False) for i in range(6)]
    assert plans.qsize() == 0 and plans.dead == [] and await plans.ping()


async def test_inprocess_dead_letter_requeue_and_limit() -> None:
    plans = InProcessQueue(max_redeliveries=2)
    seen: list[tuple[str, bool]] = []

    async def handler(delivery: Delivery) -> None:
        seen.append((delivery.job_id, delivery.redelivered))
        if delivery.job_id == "poison":
            raise RuntimeError("bad plan")
        if delivery.job_id == "loop":
            await delivery.requeue()  # never finishes: the limit stops it
        # "forgetful" returns without settling: requeued, so also stopped by the limit

    for job_id in ("poison", "loop", "forgetful"):
        await plans.publish(job_id, {})
    async with consuming(plans, handler):
        await eventually(lambda: _true(len(plans.dead) == 3))
    assert seen.count(("poison", False)) == 1
    assert [r for j, r in seen if j == "loop"] == [False, True, True]  # 1 + 2 redeliveries
    reasons = {d.job_id: d.reason for d in plans.dead}
    assert "RuntimeError: bad plan" in reasons["poison"]
    assert "delivered 3 times" in reasons["loop"] and "delivered 3 times" in reasons["forgetful"]


async def test_inprocess_cancel_requeues_only_unacked() -> None:
    plans = InProcessQueue()
    started, release, finished = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def handler(delivery: Delivery) -> None:
        if delivery.job_id == "acked":
            await delivery.ack()
            started.set()
            await release.wait()
            finished.set()
        else:
            await asyncio.Event().wait()  # holds the plan until cancelled

    await plans.publish("acked", {})
    await plans.publish("held", {})
    task = asyncio.create_task(plans.consume(handler, 2))
    await asyncio.wait_for(started.wait(), 2)
    await asyncio.sleep(0.05)
    task.cancel()
    asyncio.get_running_loop().call_later(0.1, release.set)
    await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 5)
    assert finished.is_set()  # the acked handler was not cancelled
    assert plans.qsize() == 1  # the held one is back in the queue


async def _true(value: bool) -> bool:
    return value


# --------------------------------------------------------------------------- RabbitMQ


async def test_publish_raises_quickly_when_broker_down() -> None:
    plans = RabbitPlanQueue(CLOSED_URL, f"test.plans.{uuid.uuid4().hex[:10]}", connect_timeout=1)
    started = time.monotonic()
    await plans.start()  # does not fail: the API must run without the broker
    with pytest.raises(BrokerUnavailable):
        await plans.publish("job-1", {})
    assert not await plans.ping()
    consumer = asyncio.create_task(plans.consume(lambda d: d.ack(), 1))  # waits for the broker
    await asyncio.sleep(0.05)
    consumer.cancel()
    await asyncio.wait_for(asyncio.gather(consumer, return_exceptions=True), 2)
    await plans.close()
    assert time.monotonic() - started < 3


@requires_rabbit
async def test_rabbit_publish_consume_ack(name: str, make: Any) -> None:
    plans = await make(name)
    assert await plans.ping()
    for i in range(3):
        await plans.publish(f"job-{i}", {"recipe": "bias", "n": i})
    got: list[tuple[str, dict[str, Any], bool]] = []

    async def handler(delivery: Delivery) -> None:
        got.append((delivery.job_id, delivery.payload, delivery.redelivered))
        await delivery.ack()

    async with consuming(plans, handler, prefetch=2):
        await eventually(lambda: _true(len(got) == 3))
    assert sorted(got) == [
        (f"job-{i}", {"recipe": "bias", "n": i, "job_id": f"job-{i}"}, False) for i in range(3)
    ]
    assert await depth(name) == 0
    assert await depth(f"{name}.dead") == 0


@requires_rabbit
async def test_rabbit_persistent_across_connections(name: str, make: Any) -> None:
    first = await make(name)
    await first.publish("job-1", {"steps": ["bias"]})
    await first.close()
    async with raw_channel() as channel:  # what is on the wire
        queue = await channel.declare_queue(name, passive=True)
        message = await queue.get(timeout=5)
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert message.message_id == "job-1"
        assert message.content_type == "application/json"
        assert json.loads(message.body) == {"steps": ["bias"], "job_id": "job-1"}
        await message.nack(requeue=True)
    second = await make(name)
    got: list[str] = []

    async def handler(delivery: Delivery) -> None:
        got.append(delivery.job_id)
        await delivery.ack()

    async with consuming(second, handler):
        await eventually(lambda: _true(got == ["job-1"]))


@requires_rabbit
async def test_rabbit_prefetch_limits_concurrent_handlers(name: str, make: Any) -> None:
    plans = await make(name)
    for i in range(6):
        await plans.publish(f"job-{i}", {})
    active, peak, done = 0, 0, []

    async def handler(delivery: Delivery) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.15)
        active -= 1
        done.append(delivery.job_id)
        await delivery.ack()

    async with consuming(plans, handler, prefetch=2):
        await eventually(lambda: _true(len(done) == 6))
    assert peak == 2


@requires_rabbit
async def test_rabbit_poison_goes_to_dead_queue(name: str, make: Any) -> None:
    plans = await make(name)
    async with raw_channel() as channel:  # bodies our publish() would never produce
        for body in (b"not json", b'{"no": "job id"}'):
            await channel.default_exchange.publish(aio_pika.Message(body), routing_key=name)
    await plans.publish("job-bad", {})
    await plans.publish("job-good", {})
    called: list[str] = []

    async def handler(delivery: Delivery) -> None:
        called.append(delivery.job_id)
        if delivery.job_id == "job-bad":
            raise RuntimeError("cannot reduce this")
        await delivery.ack()

    async with consuming(plans, handler):
        dead = await drain(f"{name}.dead", 3)
    assert called == ["job-bad", "job-good"]  # poison bodies never reach the handler
    reasons = sorted((m.headers or {})[DEAD_REASON_HEADER] for m in dead)
    assert reasons[0] == "body has no job_id"
    assert reasons[1].startswith("body is not JSON")
    assert reasons[2] == "handler raised RuntimeError: cannot reduce this"
    assert await depth(name) == 0


@requires_rabbit
async def test_rabbit_cancelled_consumer_hands_unacked_to_another(name: str, make: Any) -> None:
    first, second = await make(name), await make(name)
    await first.publish("held", {})
    await first.publish("acked", {})
    held, acked, release, finished = (asyncio.Event() for _ in range(4))
    cancelled: list[str] = []

    async def handler(delivery: Delivery) -> None:
        if delivery.job_id == "acked":
            await delivery.ack()
            acked.set()
            await release.wait()  # still running when the consumer is cancelled
            finished.set()
            return
        held.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(delivery.job_id)
            raise

    task = asyncio.create_task(first.consume(handler, 2))
    await asyncio.wait_for(asyncio.gather(held.wait(), acked.wait()), 5)
    task.cancel()
    asyncio.get_running_loop().call_later(0.2, release.set)
    await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 10)
    assert finished.is_set() and cancelled == ["held"]

    got: list[tuple[str, bool]] = []

    async def take(delivery: Delivery) -> None:
        got.append((delivery.job_id, delivery.redelivered))
        await delivery.ack()

    async with consuming(second, take):
        await eventually(lambda: _true(len(got) == 1))
        await asyncio.sleep(0.2)  # and nothing else (the acked one is gone)
    assert got == [("held", True)]


@requires_rabbit
async def test_rabbit_delivery_limit(name: str, make: Any) -> None:
    plans = await make(name, max_redeliveries=2)
    await plans.publish("job-loop", {})
    seen: list[bool] = []

    async def handler(delivery: Delivery) -> None:
        seen.append(delivery.redelivered)
        await delivery.requeue()  # as a worker would at each shutdown

    async with consuming(plans, handler):
        (dead,) = await drain(f"{name}.dead", 1)
    assert seen == [False, True, True]  # first delivery + max_redeliveries
    assert (dead.headers or {})["x-first-death-reason"] == "delivery_limit"
    assert json.loads(dead.body)["job_id"] == "job-loop"


# --------------------------------------------------------------------------- keep last


@requires_rabbit
@pytest.mark.skipif(
    shutil.which("rabbitmqctl") is None and not os.environ.get("CI"),
    reason="rabbitmqctl not installed",
)
async def test_broker_restart(name: str, make: Any) -> None:
    """A robust consumer and the job events survive `rabbitmqctl stop_app/start_app`."""
    plans = await make(name)
    exchange = f"test.events.{uuid.uuid4().hex[:10]}"
    sender, receiver = RabbitJobEvents(URL, exchange), RabbitJobEvents(URL, exchange)
    await sender.start()
    await receiver.start()
    held, got = asyncio.Event(), []

    async def handler(delivery: Delivery) -> None:
        if not held.is_set():  # the first delivery stays unacked across the restart
            held.set()
            await asyncio.Event().wait()
        got.append((delivery.job_id, delivery.redelivered))
        await delivery.ack()

    consumer = asyncio.create_task(plans.consume(handler, 1))
    try:
        await plans.publish("job-held", {})
        await asyncio.wait_for(held.wait(), 5)
        await plans.publish("job-waiting", {})  # persistent, behind prefetch=1
        await run_command("rabbitmqctl", "stop_app")
        outage = time.monotonic()
        with pytest.raises(BrokerUnavailable):  # fails fast while the broker is away
            await plans.publish("job-lost", {})
        late = await make(name, connect_timeout=1)  # starts anyway, connects later
        assert not await late.ping()
        assert time.monotonic() - outage < 3
        await run_command("rabbitmqctl", "start_app")
        assert await wait_port(60)
        await eventually(lambda: _true(len(got) == 2), timeout=30)
        assert sorted(got) == [("job-held", True), ("job-waiting", False)]
        await eventually(late.ping, timeout=20)
        await late.publish("job-late", {})
        await eventually(lambda: _true(len(got) == 3), timeout=5)

        deadline, event = time.monotonic() + 20, None
        while event is None and time.monotonic() < deadline:  # until the receiver is back
            async with receiver.watch("job-e") as watch:
                await sender.publish("job-e", "EXECUTING")
                event = await watch.wait(0.5)
        assert event == {"job_id": "job-e", "phase": "EXECUTING"}
    finally:
        await ensure_broker_running()
        consumer.cancel()
        await asyncio.wait_for(asyncio.gather(consumer, return_exceptions=True), 15)
        await sender.close()
        await receiver.close()
        async with raw_channel() as channel:
            await channel.exchange_delete(exchange)
