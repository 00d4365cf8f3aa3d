"""The sweeper's safety nets: outbox, lost messages, orphaned jobs, time limits, destruction,
step cache; and the indexes and bounds of its queries."""

from __future__ import annotations

import asyncio
import os
import uuid
from datetime import timedelta
from pathlib import Path

import aio_pika
import pytest

from soda_reduce.config import Settings
from soda_reduce.runtime import sweep_queries
from soda_reduce.runtime.broker import BrokerUnavailable
from soda_reduce.runtime.jobs import JobStore, utcnow
from soda_reduce.runtime.store import Store
from soda_reduce.runtime.sweeper import Sweeper
from soda_reduce.runtime.worker import Worker
from soda_reduce.vo.uws import Phase
from tests.support.rabbit import URL, requires_rabbit
from tests.support.uws_harness import Harness, uws_service
from tests.support.workers import running_worker


@pytest.fixture
async def svc(store: Store, demo_archive: Path, tmp_path: Path):
    async with uws_service(store, demo_archive, tmp_path, worker=False) as harness:
        yield harness


def _sweeper(
    svc: Harness, cache_bytes: int = 10**12, lost_after: timedelta = timedelta(minutes=10)
) -> Sweeper:
    runtime = svc.runtime
    return Sweeper(
        runtime.service,
        runtime.products,
        cache_bytes=cache_bytes,
        outbox_after=timedelta(0),
        lease_grace=timedelta(0),
        lost_after=lost_after,
    )


async def test_outbox_publishes_what_the_broker_never_confirmed(
    svc: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = svc.runtime.queue

    async def down(job_id: str, payload: object) -> None:
        raise BrokerUnavailable("broker down")

    monkeypatch.setattr(queue, "publish", down)
    job_id = await svc.create({"ID": svc.complete_id, "PHASE": "RUN"})
    job = await svc.runtime.service.jobs.get(job_id, any_owner=True)
    assert job is not None and job.phase.value == "QUEUED" and not job.published
    assert queue.qsize() == 0
    report = await _sweeper(svc).sweep(collect=False)
    assert report.republished == []  # still down: nothing lost, nothing marked
    monkeypatch.undo()
    report = await _sweeper(svc).sweep(collect=False)
    assert report.republished == [job_id]
    job = await svc.runtime.service.jobs.get(job_id, any_owner=True)
    assert job is not None and job.published
    assert queue.qsize() == 1
    report = await _sweeper(svc).sweep(collect=False)
    assert report.republished == []  # published once only


async def test_orphaned_and_overdue_jobs(svc: Harness) -> None:
    jobs = svc.runtime.service.jobs
    orphan = await svc.create({"ID": svc.complete_id, "PHASE": "RUN"})
    overdue = await svc.create({"ID": svc.complete_id, "PHASE": "RUN"})
    long_ago = utcnow() - timedelta(hours=1)
    for job_id in (orphan, overdue):
        assert await jobs.transition(
            job_id,
            _phase("EXECUTING"),
            expect=[_phase("QUEUED")],
            changes={"worker": "dead-worker", "lease_until": long_ago, "start_time": long_ago},
        )
    await jobs.update_if(overdue, {}, {"execution_duration": 60})
    await jobs.update_if(orphan, {}, {"execution_duration": 0})
    before = svc.runtime.queue.qsize()
    report = await _sweeper(svc).sweep(collect=False)
    assert orphan in report.republished
    assert report.aborted == [overdue]
    assert svc.runtime.queue.qsize() > before
    doc = await svc.job(overdue)
    assert doc.findtext("{*}phase") == "ABORTED"
    assert "executionDuration" in doc.findtext("{*}errorSummary/{*}message")


async def test_destruction_removes_the_job(svc: Harness) -> None:
    job_id = await svc.create({"ID": svc.complete_id})
    keep = await svc.create({"ID": svc.complete_id})
    await svc.runtime.service.jobs.update_if(
        job_id, {}, {"destruction": utcnow() - timedelta(seconds=1)}
    )
    report = await _sweeper(svc).sweep(collect=False)
    assert report.destroyed == [job_id]
    assert (await svc.client.get(f"/soda/async/{job_id}")).status == 404
    assert (await svc.client.get(f"/soda/async/{keep}")).status == 200


async def test_step_cache_collection_keeps_referenced_steps(svc: Harness) -> None:
    products = svc.runtime.products
    store = svc.runtime.store
    keys = [f"{n:x}" * 64 for n in range(1, 5)]
    keys = [k[:64] for k in keys]
    for age, key in enumerate(keys):
        directory = products.step_dir(key)
        directory.mkdir(parents=True)
        (directory / "products.json").write_text("{}")
        (directory / "data.fits").write_bytes(b"x" * 1000)
        stamp = 1_700_000_000 + age * 100  # keys[0] is the oldest
        os.utime(directory, (stamp, stamp))
        await store.steps.insert_one({"step_key": key, "state": "done"})
    # a job still refers to the oldest step: it must survive
    job_id = await svc.create({"ID": svc.complete_id})
    await svc.runtime.service.jobs.update_if(job_id, {}, {"steps": [{"step_key": keys[0]}]})
    sweeper = _sweeper(svc, cache_bytes=2500)
    report = await sweeper.sweep(collect=True)
    assert report.collected == [keys[1], keys[2]]  # oldest unreferenced first, down to the cap
    assert products.step_dir(keys[0]).exists() and products.step_dir(keys[3]).exists()
    assert not products.step_dir(keys[1]).exists()
    assert await store.steps.count_documents({"step_key": keys[1]}) == 0
    assert await store.steps.count_documents({"step_key": keys[0]}) == 1
    report = await sweeper.sweep(collect=True)
    assert report.collected == []  # under the cap now


def _phase(name: str):
    from soda_reduce.vo.uws import Phase

    return Phase(name)


async def test_embedded_restart_requeues_queued_jobs(
    store: Store, demo_archive: Path, tmp_path: Path
) -> None:
    """The in-process queue dies with its process: the next start publishes its jobs again."""
    async with uws_service(store, demo_archive, tmp_path, worker=False) as first:
        job_id = await first.create({"ID": first.complete_id, "PHASE": "RUN"})
        job = await first.runtime.service.jobs.get(job_id, any_owner=True)
        assert job is not None and job.published and first.runtime.queue.qsize() == 1
    async with uws_service(store, demo_archive, tmp_path, sweeper=True) as second:
        doc = await second.wait_final(job_id)
        assert doc.findtext("{*}phase") == "COMPLETED"


async def test_quote_comes_from_recorded_step_durations(svc: Harness) -> None:
    service = svc.runtime.service
    job_id = await svc.create({"ID": svc.complete_id})
    job = await service.jobs.get(job_id, any_owner=True)  # an anonymous session's
    assert job is not None
    plan = await service.plan(job)
    steps = plan.runnable_jobs()
    fresh = await service.estimate_seconds(plan)  # nothing recorded: the default per step
    assert fresh == pytest.approx(30.0 * len(steps) / service.limits.concurrency)
    # past runs of the same recipes took 2 s: the quote follows them
    await svc.runtime.store.steps.insert_many(
        [
            {"step_key": f"old-{n}", "state": "done", "recipe": s.recipe, "wall_seconds": 2.0}
            for n, s in enumerate(steps)
        ]
    )
    assert await service.estimate_seconds(plan) == pytest.approx(
        2.0 * len(steps) / service.limits.concurrency
    )
    # a step already in the cache costs nothing
    first = steps[0]
    await svc.runtime.store.steps.insert_one(
        {"step_key": first.step_key, "state": "done", "recipe": first.recipe, "wall_seconds": 2.0}
    )
    assert await service.estimate_seconds(plan) == pytest.approx(
        2.0 * (len(steps) - 1) / service.limits.concurrency
    )
    queued = await service.run(job)
    assert queued.quote is not None and queued.quote >= queued.creation_time


async def test_old_scratch_directories_are_removed(svc: Harness) -> None:
    scratch = svc.runtime.products.root / "scratch"
    old, fresh = scratch / "abc-1-dead", scratch / "abc-2-live"
    for directory in (old, fresh):
        (directory / "out").mkdir(parents=True)
    os.utime(old, (1_700_000_000, 1_700_000_000))
    report = await _sweeper(svc).sweep(collect=True)
    assert report.scratch_removed == 1
    assert not old.exists() and fresh.exists()


async def test_cutouts_of_deleted_jobs_are_removed(svc: Harness) -> None:
    kept = await svc.create({"ID": svc.complete_id})
    gone = await svc.create({"ID": svc.complete_id})
    root = svc.runtime.products.root / "cutouts"
    for job_id in (kept, gone):
        (root / job_id).mkdir(parents=True)
        (root / job_id / "cutout-1.fits").write_bytes(b"x")
    await svc.client.delete(f"/soda/async/{gone}")
    report = await _sweeper(svc).sweep(collect=True)
    assert report.cutouts_removed == [gone]
    assert (root / kept).exists() and not (root / gone).exists()


# --------------------------------------------------------------------------- lost messages


async def _final(jobs: JobStore, job_id: str, limit_s: float = 120) -> dict:
    for _ in range(int(limit_s / 0.2)):  # bounded
        job = await jobs.get(job_id, any_owner=True)
        assert job is not None
        if job.phase in (Phase.COMPLETED, Phase.ERROR, Phase.ABORTED):
            return job.doc
        await asyncio.sleep(0.2)
    raise AssertionError(f"job {job_id} not final after {limit_s} s")


async def _ran_once(svc: Harness, doc: dict) -> None:
    """Completed by one delivery, every step attempted once, no message left behind."""
    assert doc["phase"] == "COMPLETED", doc.get("error")
    assert doc["deliveries"] == 1
    steps = await svc.runtime.store.steps.find({}, {"_id": 0, "attempts": 1}).to_list()
    assert steps and all(s["attempts"] == 1 for s in steps)


async def test_job_whose_message_was_dead_lettered_is_published_again_and_runs_once(
    svc: Harness,
) -> None:
    """A worker failing while taking the job dead-letters its message: the job stays
    QUEUED, published, until the sweeper sends it again; duplicates run it once."""
    queue, jobs = svc.runtime.queue, svc.runtime.service.jobs
    job_id = await svc.create({"ID": svc.complete_id, "PHASE": "RUN"})

    def broken_store(worker: Worker) -> None:
        async def unreachable(*args: object, **kwargs: object) -> None:
            raise ConnectionError("the store is unreachable")

        worker.jobs.get = unreachable  # type: ignore[method-assign]

    async with running_worker(svc, worker_id="broken", before=broken_store):
        for _ in range(100):  # bounded: the handler raises at once
            if queue.dead:
                break
            await asyncio.sleep(0.05)
    assert [d.job_id for d in queue.dead] == [job_id] and queue.qsize() == 0
    job = await jobs.get(job_id, any_owner=True)
    assert job is not None and job.phase == Phase.QUEUED and job.published
    assert (await _sweeper(svc).sweep(collect=False)).lost == []  # not lost for long enough
    sweeper = _sweeper(svc, lost_after=timedelta(0))
    assert (await sweeper.sweep(collect=False)).lost == [job_id]
    assert (await sweeper.sweep(collect=False)).lost == [job_id]  # still untaken: again
    assert queue.qsize() == 2
    job = await jobs.get(job_id, any_owner=True)
    assert job is not None and job.doc["requeues"] == 2
    async with running_worker(svc, worker_id="healthy"):
        doc = await _final(jobs, job_id)
        for _ in range(100):  # the duplicate is acknowledged and dropped
            if queue.qsize() == 0:
                break
            await asyncio.sleep(0.05)
    await _ran_once(svc, doc)
    assert queue.qsize() == 0 and len(queue.dead) == 1
    assert (await sweeper.sweep(collect=False)).lost == []  # taken: never again


async def test_republish_waits_for_the_broker(
    svc: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lost job whose new message the broker refuses is tried again at the next pass."""
    queue, jobs = svc.runtime.queue, svc.runtime.service.jobs
    job_id = await svc.create({"ID": svc.complete_id, "PHASE": "RUN"})
    while queue.qsize():  # the message is lost
        await queue._queue.get()
    before = (await jobs.get(job_id, any_owner=True)).doc  # type: ignore[union-attr]

    async def down(job_id: str, payload: object) -> None:
        raise BrokerUnavailable("broker down")

    monkeypatch.setattr(queue, "publish", down)
    sweeper = _sweeper(svc, lost_after=timedelta(seconds=0))
    assert (await sweeper.sweep(collect=False)).lost == []
    after = (await jobs.get(job_id, any_owner=True)).doc  # type: ignore[union-attr]
    assert after["published_time"] == before["published_time"]
    assert after.get("requeues", 0) == 0
    monkeypatch.undo()
    assert (await sweeper.sweep(collect=False)).lost == [job_id]
    assert queue.qsize() == 1


@requires_rabbit
async def test_job_of_a_purged_queue_is_published_again(
    store: Store, demo_archive: Path, tmp_path: Path
) -> None:
    """RabbitMQ: the plan queue is purged under a QUEUED job; the sweeper sends it again
    and one worker runs it."""
    name = f"soda_reduce.test.{uuid.uuid4().hex[:8]}"
    settings = Settings(
        data_dir=tmp_path,
        archive_dir=demo_archive,
        amqp_url=URL,
        amqp_queue=name,
        amqp_exchange=f"{name}.events",
    )
    try:
        async with uws_service(
            store, demo_archive, tmp_path, settings=settings, worker=False
        ) as svc:
            jobs = svc.runtime.service.jobs
            job_id = await svc.create({"ID": svc.complete_id, "PHASE": "RUN"})
            job = await jobs.get(job_id, any_owner=True)
            assert job is not None and job.phase == Phase.QUEUED and job.published
            async with await aio_pika.connect(URL) as connection:
                channel = await connection.channel()
                queue = await channel.declare_queue(name, passive=True)
                assert queue.declaration_result.message_count == 1
                await queue.purge()
            sweeper = _sweeper(svc, lost_after=timedelta(0))
            assert (await sweeper.sweep(collect=False)).lost == [job_id]
            async with running_worker(svc):
                doc = await _final(jobs, job_id)
            await _ran_once(svc, doc)
    finally:
        async with await aio_pika.connect(URL) as connection:
            channel = await connection.channel()
            for queue_name in (name, f"{name}.dead"):
                await channel.queue_delete(queue_name)
            for exchange in (f"{name}.dlx", f"{name}.events"):
                await channel.exchange_delete(exchange)


# --------------------------------------------------------------------------- the queries


async def test_every_sweeper_query_uses_an_index(store: Store) -> None:
    now = utcnow()
    queries = {
        "phase_published_queued": sweep_queries.unpublished_query(now),
        "phase_published_sent": sweep_queries.lost_query(now),
        "phase_lease": sweep_queries.orphaned_query(now),
        "destruction": sweep_queries.expired_query(now),
        "phase": sweep_queries.overdue_query(),
        "job_id_unique": {"job_id": {"$in": ["a", "b"]}},  # JobStore.existing
    }
    for index, query in queries.items():
        plan = (await store.jobs.find(query).explain())["queryPlanner"]["winningPlan"]
        scan = plan.get("inputStage", plan)
        assert (scan["stage"], scan.get("indexName")) == ("IXSCAN", index), (query, plan)


async def test_sweeper_queries_are_bounded_and_read_no_plans(store: Store) -> None:
    jobs = JobStore(store)
    past = utcnow() - timedelta(hours=1)
    await store.jobs.insert_many(
        [
            {
                "job_id": f"job-{n:04d}",
                "phase": "EXECUTING",
                "creation_time": past,
                "start_time": past,
                "execution_duration": 60,
                "lease_until": past,
                "destruction": past,
                "plan": {"jobs": ["x" * 1000]},
                "steps": [{"step_key": f"k{n % 7}"}],
            }
            for n in range(sweep_queries.SWEEP_BATCH + 50)
        ]
    )
    now = utcnow()
    for found in (
        await jobs.expired(now),
        await jobs.orphaned(now),
        await jobs.overdue(now),
    ):
        assert len(found) == sweep_queries.SWEEP_BATCH
        assert all("plan" not in job.doc and "steps" not in job.doc for job in found)
    assert len(await jobs.expired(now, limit=7)) == 7
    assert await jobs.referenced_step_keys() == {f"k{n}" for n in range(7)}
    assert await jobs.existing(["job-0001", "nope", "job-0200"]) == {"job-0001", "job-0200"}
