"""Job events: the in-process bus, and RabbitJobEvents between two instances on :5672."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest

from soda_reduce.runtime.events import JobEvents, RabbitJobEvents
from tests.support.rabbit import URL, requires_rabbit


@pytest.fixture
async def pair() -> AsyncIterator[tuple[RabbitJobEvents, RabbitJobEvents]]:
    """Two processes' worth of RabbitJobEvents on an exchange of the test's own."""
    exchange = f"test.events.{uuid.uuid4().hex[:10]}"
    first, second = RabbitJobEvents(URL, exchange), RabbitJobEvents(URL, exchange)
    await first.start()
    await second.start()
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()
        conn = await aio_pika.connect(URL, timeout=5)
        try:
            await (await conn.channel()).exchange_delete(exchange)
        finally:
            await conn.close()


async def test_inprocess_wakes_every_watcher_of_the_job_only() -> None:
    events = JobEvents()
    await events.start()
    async with (
        events.watch("A") as a1,
        events.watch("A") as a2,
        events.watch("B") as b,
    ):
        waiting = asyncio.gather(a1.wait(1), a2.wait(1))
        await asyncio.sleep(0.01)
        await events.publish("A", "EXECUTING", progress=0.5)
        expected = {"job_id": "A", "phase": "EXECUTING", "progress": 0.5}
        assert await asyncio.wait_for(waiting, 0.2) == [expected, expected]
        assert await b.wait(0.05) is None
    assert events._watchers == {}  # unregistered on exit
    await events.close()


async def test_inprocess_keeps_events_since_registration() -> None:
    events = JobEvents()
    async with events.watch("A") as watch:
        await events.publish("A", "QUEUED")  # before anyone waits: not lost
        await events.publish("A", "EXECUTING")
        assert (await watch.wait(0))["phase"] == "QUEUED"
        assert (await watch.wait(0))["phase"] == "EXECUTING"
        assert await watch.wait(0.01) is None
    await events.publish("A", "COMPLETED")  # nobody watching: fine


async def test_publish_never_raises() -> None:
    events = JobEvents()
    async with events.watch("A") as watch:
        await events.publish("A", "ERROR", detail=object())  # not JSON: stringified
        assert (await watch.wait(0))["detail"].startswith("<object")
    down = RabbitJobEvents("amqp://guest:guest@127.0.0.1:1/", connect_timeout=1)
    started = time.monotonic()
    await down.start()
    async with down.watch("A") as watch:
        await down.publish("A", "ABORTED")  # broker unreachable: local watchers still hear it
        assert await watch.wait(0) == {"job_id": "A", "phase": "ABORTED"}
    await down.close()
    assert time.monotonic() - started < 3


@requires_rabbit
async def test_rabbit_wakes_a_watcher_in_another_instance(
    pair: tuple[RabbitJobEvents, RabbitJobEvents],
) -> None:
    sender, receiver = pair
    async with (
        receiver.watch("A") as there,
        receiver.watch("B") as other_job,
        sender.watch("A") as here,
    ):
        started = time.monotonic()
        await sender.publish("A", "ABORTED", by="user")
        event = await there.wait(2)
        latency = time.monotonic() - started
        assert event == {"job_id": "A", "phase": "ABORTED", "by": "user"}
        assert latency < 0.3, latency
        assert await here.wait(0) == event  # dispatched locally at once...
        assert await here.wait(0.2) is None  # ...and not a second time via the broker
        assert await other_job.wait(0.05) is None


@requires_rabbit
async def test_rabbit_many_watchers_all_woken(
    pair: tuple[RabbitJobEvents, RabbitJobEvents],
) -> None:
    sender, receiver = pair
    async with receiver.watch("A") as w1, receiver.watch("A") as w2, receiver.watch("A") as w3:
        await sender.publish("A", "COMPLETED")
        results = await asyncio.gather(w1.wait(2), w2.wait(2), w3.wait(2))
    assert results == [{"job_id": "A", "phase": "COMPLETED"}] * 3
