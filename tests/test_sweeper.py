"""The sweeper's safety nets: outbox, orphaned jobs, time limits, destruction, step cache."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from soda_reduce.runtime.broker import BrokerUnavailable
from soda_reduce.runtime.jobs import utcnow
from soda_reduce.runtime.store import Store
from soda_reduce.runtime.sweeper import Sweeper
from tests.support.uws_harness import Harness, uws_service


@pytest.fixture
async def svc(store: Store, demo_archive: Path, tmp_path: Path):
    async with uws_service(store, demo_archive, tmp_path, worker=False) as harness:
        yield harness


def _sweeper(svc: Harness, cache_bytes: int = 10**12) -> Sweeper:
    runtime = svc.runtime
    return Sweeper(
        runtime.service,
        runtime.products,
        cache_bytes=cache_bytes,
        outbox_after=timedelta(0),
        lease_grace=timedelta(0),
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
    job = await service.get(job_id, None)
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
