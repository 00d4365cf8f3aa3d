"""Job creation off the store's hot path, through the whole stack on the real store.

What one creation asks the store is counted with PyMongo's command monitoring on the
service's own client: concurrent creations share their inserts (group commit), a new
session's job needs no quota count, a returning session's is counted again only once its
tally is stale, and raw IDs asked for before need no lookup while the index keeps its
version. Every check stays: the quota still refuses at its limit (tests/test_job_requests.py
too), an unknown ID is still a 400, a file indexed a moment ago is accepted.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pymongo import monitoring

from soda_reduce.config import Settings
from soda_reduce.reduction.index_model import RawFile
from soda_reduce.runtime.job_inserts import JobInserts
from soda_reduce.runtime.job_lists import OWNERS, JobLists
from soda_reduce.runtime.jobs import JobStore, new_job_id, utcnow
from soda_reduce.runtime.known_raw_files import KnownRawFiles
from soda_reduce.runtime.quotas import ActiveJobTally
from soda_reduce.runtime.store import EmbeddedMongo, Store
from soda_reduce.runtime.store.errors import DocumentTooLarge
from soda_reduce.vo.job_request import parse_job_request
from tests.support.uws_harness import Harness, uws_service


@dataclass
class Commands(monitoring.CommandListener):
    """Every command the client sends: (name, collection)."""

    seen: list[tuple[str, Any]] = field(default_factory=list)

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.seen.append((event.command_name, event.command.get(event.command_name)))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def since(self, mark: int) -> Counter[tuple[str, Any]]:
        return Counter(self.seen[mark:])


@pytest.fixture
async def watched(mongo: EmbeddedMongo) -> AsyncIterator[tuple[Store, Commands]]:
    """A store on a database of its own whose client reports every command."""
    commands = Commands()
    store = Store.connect(mongo.url, f"test_{uuid.uuid4().hex[:12]}", event_listeners=[commands])
    await store.ensure_indexes()
    try:
        yield store, commands
    finally:
        await store.drop()
        await store.close()


@pytest.fixture
async def svc(
    watched: tuple[Store, Commands], demo_archive: Path, tmp_path: Path
) -> AsyncIterator[Harness]:
    store, _ = watched
    settings = Settings(
        data_dir=tmp_path, archive_dir=demo_archive, sweep_s=60.0, max_active_jobs=5
    )
    async with uws_service(store, demo_archive, tmp_path, settings=settings, worker=False) as h:
        yield h


async def _post(svc: Harness, data: dict[str, str], cookies: Any = None) -> tuple[int, Any]:
    response = await svc.client.post(
        "/soda/async", data=data, allow_redirects=False, cookies=cookies
    )
    await response.read()
    return response.status, response


async def test_new_sessions_share_inserts_and_need_no_count(
    svc: Harness, watched: tuple[Store, Commands]
) -> None:
    _, commands = watched
    await svc.create({"ID": svc.complete_id})  # the first lookup of the ID
    mark = len(commands.seen)
    svc.client.session.cookie_jar.clear()  # each POST below starts a session of its own
    results = await asyncio.gather(*(_post(svc, {"ID": svc.complete_id}) for _ in range(24)))
    assert [status for status, _ in results] == [303] * 24
    sent = commands.since(mark)
    assert sent[("aggregate", "jobs")] == 0  # no quota count: new sessions own nothing
    assert sent[("aggregate", "raw_files")] == 0  # the ID was looked up before
    inserts = sent[("insert", "jobs")]
    assert 1 <= inserts < 24, sent  # grouped: one insert_many per batch
    job_ids = [r.headers["Location"].rsplit("/", 1)[1] for _, r in results]
    owners = set()
    for job_id in job_ids:  # each journaled, as its own session's, first creation recorded
        job = await svc.runtime.service.jobs.get(job_id, any_owner=True)
        assert job is not None and job.owner is not None and job.owner.startswith("anon:")
        owners.add(job.owner)
        first = await svc.runtime.service.jobs.lists.first_creation(job.owner)
        assert first == job.creation_time
    assert len(owners) == 24


async def test_a_returning_session_is_counted_when_its_tally_is_stale(
    svc: Harness, watched: tuple[Store, Commands]
) -> None:
    _, commands = watched
    service = svc.runtime.service
    await svc.create({"ID": svc.complete_id})  # a new session: counted as 0, then 1
    mark = len(commands.seen)
    for _ in range(2):
        await svc.create({"ID": svc.complete_id})  # the same session (its cookie)
    sent = commands.since(mark)
    assert sent[("aggregate", "jobs")] == 0  # within the quota by the tally
    assert sent[("update", OWNERS)] == sent[("insert", OWNERS)] == 0  # first already kept
    service.active.trust_s = 0.0  # every bound is stale now: each creation counts
    mark = len(commands.seen)
    await svc.create({"ID": svc.complete_id})
    assert commands.since(mark)[("aggregate", "jobs")] == 1
    # the quota (5) still refuses, on a fresh count
    await svc.create({"ID": svc.complete_id})
    status, response = await _post(svc, {"ID": svc.complete_id})
    assert status == 429 and "still pending or running" in await response.text()
    service.active.trust_s = 10.0
    status, _ = await _post(svc, {"ID": svc.complete_id})
    assert status == 429  # a refusal leaves the tally at the quota: counted again, refused


async def test_known_ids_follow_the_index_version(watched: tuple[Store, Commands]) -> None:
    store, commands = watched
    files = [RawFile(f"ivo://x/raw?f{n}", f"f{n}.fits", {"OBJECT": "M67"}) for n in range(3)]
    await store.upsert_raw_files(files[:2])
    known = KnownRawFiles(store, recheck_s=60.0)
    assert set(await known.by_id(["ivo://x/raw?f0", "ivo://x/raw?f2"])) == {"ivo://x/raw?f0"}
    mark = len(commands.seen)
    assert set(await known.by_id(["ivo://x/raw?f0"])) == {"ivo://x/raw?f0"}
    assert commands.since(mark)[("aggregate", "raw_files")] == 0  # remembered
    await store.upsert_raw_files(files[2:])  # a file indexed a moment ago: looked up
    assert set(await known.by_id(["ivo://x/raw?f2"])) == {"ivo://x/raw?f2"}
    await store.delete_raw_files(["f0.fits"])
    assert "ivo://x/raw?f0" in await known.by_id(["ivo://x/raw?f0"])  # within recheck_s
    known.recheck_s = 0.0  # the version is read again: it moved, everything is forgotten
    assert await known.by_id(["ivo://x/raw?f0"]) == {}
    small = KnownRawFiles(store, recheck_s=60.0, max_files=1)
    await small.by_id(["ivo://x/raw?f1", "ivo://x/raw?f2"])
    assert len(small._files) == 1  # bounded


async def test_a_refused_job_document_fails_only_its_own_creation(store: Store) -> None:
    jobs = JobStore(store)
    inserts = JobInserts(store.jobs, JobLists(store))

    def doc(owner: str, extra: str = "") -> dict[str, Any]:
        now = utcnow()
        return {"job_id": new_job_id(), "owner": owner, "creation_time": now, "x": extra}

    batch = [doc("a"), doc("b", "v" * (17 * 1024 * 1024)), doc("c")]
    outcomes = await asyncio.gather(
        *(inserts.insert(d, new_owner=True) for d in batch), return_exceptions=True
    )
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], DocumentTooLarge)
    assert "16 MiB" in str(outcomes[1]) and "vvvv" not in str(outcomes[1])
    stored = await jobs.existing(d["job_id"] for d in batch)
    assert stored == {batch[0]["job_id"], batch[2]["job_id"]}


async def test_first_creations_keep_the_earliest_and_survive_races(store: Store) -> None:
    """Two processes (two JobStores) creating for one owner: the earliest creation is
    its first, whoever wrote first; an owner recorded once is not written again."""
    one, two = JobStore(store), JobStore(store)
    request = parse_job_request([("ID", "x")])
    until = datetime.now(UTC) + timedelta(days=1)
    created = await asyncio.gather(
        *(
            jobs.create("me", request, execution_duration=60, destruction=until, new_owner=True)
            for jobs in (one, two)
        )
    )
    first = await one.lists.first_creation("me")
    assert first == min(job.creation_time for job in created)
    assert await store.db[OWNERS].count_documents({}) == 1


def test_the_tally_is_an_upper_bound_trusted_for_a_while() -> None:
    tally = ActiveJobTally(trust_s=10.0)
    assert not tally.reserve("o", 3, now=0.0)  # never counted: count
    tally.counted("o", 1, now=0.0)
    assert tally.reserve("o", 3, now=1.0) and tally.reserve("o", 3, now=2.0)
    assert not tally.reserve("o", 3, now=3.0)  # 3 of 3: count again before refusing
    tally.release("o")
    assert tally.reserve("o", 3, now=4.0)
    assert not tally.reserve("o", 10, now=11.0)  # stale: count again
    small = ActiveJobTally(max_owners=2)
    for owner in "abc":
        small.counted(owner, 0, now=0.0)
    assert not small.reserve("a", 3, now=0.0) and small.reserve("c", 3, now=0.0)
