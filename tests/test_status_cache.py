"""Job documents served from memory: never stale after a change this process can see."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from soda_reduce.runtime.store import Store
from soda_reduce.web.context import SERVICES
from soda_reduce.web.status_cache import StatusCache
from tests.support.uws_harness import uws_service


def test_generation_guards_against_storing_a_document_read_before_a_change() -> None:
    cache = StatusCache(ttl_s=60)
    key = ("job1", None, "http://x")
    generation = cache.generation("job1")
    cache.on_event({"job_id": "job1", "phase": "QUEUED"})  # arrives during the store read
    cache.put(key, generation, b"<stale/>")
    assert cache.get(key) is None
    cache.put(key, cache.generation("job1"), b"<fresh/>")
    assert cache.get(key) == b"<fresh/>"
    cache.on_event({"job_id": "other", "phase": "QUEUED"})
    assert cache.get(key) == b"<fresh/>"  # other jobs' events leave it alone
    cache.on_event({"job_id": "job1", "phase": "EXECUTING"})
    assert cache.get(key) is None


def test_entries_expire_and_are_bounded() -> None:
    cache = StatusCache(ttl_s=0.05, max_entries=2)
    for n in range(3):
        cache.put((f"j{n}", None, "b"), 0, b"doc")
    assert cache.get(("j0", None, "b")) is None  # evicted, oldest first
    assert cache.get(("j2", None, "b")) == b"doc"
    time.sleep(0.1)
    assert cache.get(("j2", None, "b")) is None  # expired


@pytest.fixture
async def svc(store: Store, demo_archive: Path, tmp_path: Path):
    async with uws_service(store, demo_archive, tmp_path, worker=False) as harness:
        yield harness


async def test_polling_is_served_from_memory_and_changes_show_at_once(svc) -> None:
    cache = svc.client.app[SERVICES].status_cache
    cache.ttl_s = 60.0
    job_id = await svc.create({"ID": svc.complete_id})
    assert await svc.phase(job_id) == "PENDING"
    hits = cache.hits
    assert await svc.phase(job_id) == "PENDING"
    assert cache.hits == hits + 1
    for sub, data in (
        ("executionduration", {"EXECUTIONDURATION": "77"}),
        ("parameters", {"RUNID": "changed"}),
    ):
        await svc.client.post(f"/soda/async/{job_id}/{sub}", data=data)
    doc = await svc.job(job_id)
    assert doc.findtext("{*}executionDuration") == "77"
    assert doc.findtext("{*}runId") == "changed"
    await svc.client.post(f"/soda/async/{job_id}/phase", data={"PHASE": "RUN"})
    assert await svc.phase(job_id) == "QUEUED"
    await svc.client.delete(f"/soda/async/{job_id}")
    assert (await svc.client.get(f"/soda/async/{job_id}")).status == 404
