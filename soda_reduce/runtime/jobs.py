"""UWS jobs in the store: documents, atomic phase changes, the outbox flag, worker leases.

Every phase change is one ``update_one`` whose filter holds the phase(s) the
caller expects (compare-and-set): the modified count says who won, so two API
processes, two workers and the sweeper can never both move one job. Never
``find_one_and_update`` (it scans the whole collection on SecantusDB).

The plan is stored with the job before it is published (``published`` False):
a job whose plan never reached the broker is found and published again by the
sweeper, so a crash between the two writes loses nothing.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ASCENDING, DESCENDING

from soda_reduce.runtime.step_cache import retrying
from soda_reduce.runtime.store import Store
from soda_reduce.vo.uws import FINAL, Phase, can_transition

# a job list never reads plans, steps or results: they can be large
LIST_PROJECTION = {"_id": 0, "job_id": 1, "phase": 1, "run_id": 1, "owner": 1, "creation_time": 1}


def utcnow() -> datetime:
    # Mongo keeps milliseconds: round here so a document read back equals what was written
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def new_job_id() -> str:
    """Unguessable (a job URL is a capability for anonymous users), short enough to read."""
    return secrets.token_urlsafe(12).replace("-", "x").replace("_", "y")


@dataclass
class JobRecord:
    """One job document, typed; ``doc`` keeps what this class does not name."""

    job_id: str
    owner: str | None
    phase: Phase
    creation_time: datetime
    parameters: list[tuple[str, str]]
    run_id: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    execution_duration: int = 0
    destruction: datetime | None = None
    quote: datetime | None = None
    error: dict[str, Any] | None = None
    plan: dict[str, Any] | None = None
    published: bool = False
    progress: dict[str, Any] | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    worker: str | None = None
    lease_until: datetime | None = None
    deliveries: int = 0
    doc: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> JobRecord:
        return cls(
            job_id=doc["job_id"],
            owner=doc.get("owner"),
            phase=Phase(doc["phase"]),
            creation_time=doc["creation_time"],
            parameters=[(str(n), str(v)) for n, v in doc.get("parameters", [])],
            run_id=doc.get("run_id"),
            start_time=doc.get("start_time"),
            end_time=doc.get("end_time"),
            execution_duration=int(doc.get("execution_duration") or 0),
            destruction=doc.get("destruction"),
            quote=doc.get("quote"),
            error=doc.get("error"),
            plan=doc.get("plan"),
            published=bool(doc.get("published")),
            progress=doc.get("progress"),
            steps=list(doc.get("steps") or []),
            results=list(doc.get("results") or []),
            worker=doc.get("worker"),
            lease_until=doc.get("lease_until"),
            deliveries=int(doc.get("deliveries") or 0),
            doc=dict(doc),
        )

    def parameter(self, name: str) -> list[str]:
        return [v for n, v in self.parameters if n.upper() == name.upper()]


class JobStore:
    """The ``jobs`` collection: the only code that writes job documents."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.jobs = store.jobs

    async def create(
        self,
        owner: str | None,
        parameters: Sequence[tuple[str, str]],
        *,
        run_id: str | None,
        execution_duration: int,
        destruction: datetime,
        job_id: str | None = None,
    ) -> JobRecord:
        doc = {
            "job_id": job_id or new_job_id(),
            "owner": owner,
            "run_id": run_id,
            "phase": Phase.PENDING.value,
            "creation_time": utcnow(),
            "parameters": [[n, v] for n, v in parameters],
            "execution_duration": execution_duration,
            "destruction": destruction,
            "published": False,
            "version": 0,
        }
        await retrying(lambda: self.jobs.insert_one(dict(doc)))
        return JobRecord.from_doc(doc)

    async def get(self, job_id: str, owner: str | None = None, *, any_owner: bool = False):
        """The job, or None when unknown or someone else's (callers answer 404 for both)."""
        # the owner is compared here, not in the filter: on SecantusDB a second condition
        # costs more than the indexed lookup itself (640 vs 390 us of store CPU per read)
        doc = await retrying(lambda: self.jobs.find_one({"job_id": job_id}, {"_id": 0}))
        if doc is None or (not any_owner and doc.get("owner") != owner):
            return None
        return JobRecord.from_doc(doc)

    async def list(
        self,
        owner: str | None,
        phases: Iterable[Phase] = (),
        after: datetime | None = None,
        last: int | None = None,
    ) -> list[dict[str, Any]]:
        """Job-list rows, newest first when LAST is given, otherwise oldest first.

        No PHASE filter leaves ARCHIVED jobs out (UWS 1.1 section 2.2.1.1).
        """
        query: dict[str, Any] = {"owner": owner}
        wanted = sorted(p.value for p in phases)
        if wanted:
            query["phase"] = {"$in": wanted}
        else:
            query["phase"] = {"$ne": Phase.ARCHIVED.value}
        if after is not None:
            query["creation_time"] = {"$gt": after}
        if last is not None:
            cursor = self.jobs.find(query, LIST_PROJECTION).sort(
                [("creation_time", DESCENDING), ("job_id", DESCENDING)]
            )
            return await cursor.limit(last).to_list()
        cursor = self.jobs.find(query, LIST_PROJECTION).sort(
            [("creation_time", ASCENDING), ("job_id", ASCENDING)]
        )
        return await cursor.to_list()

    async def update_if(
        self, job_id: str, expect: Mapping[str, Any], changes: Mapping[str, Any]
    ) -> bool:
        """Set ``changes`` only if the job still matches ``expect``; True if this call won."""
        query = {"job_id": job_id, **expect}
        result = await retrying(
            lambda: self.jobs.update_one(query, {"$set": dict(changes), "$inc": {"version": 1}})
        )
        return result.modified_count == 1

    async def transition(
        self,
        job_id: str,
        to: Phase,
        *,
        expect: Iterable[Phase],
        changes: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> bool:
        """Atomic phase change from one of ``expect`` (only legal ones are attempted).

        ``extra`` adds conditions to the filter (e.g. the worker that holds the job).
        """
        allowed = [p.value for p in expect if can_transition(p, to) and p != to]
        if not allowed:
            return False
        fields: dict[str, Any] = {"phase": to.value, **(changes or {})}
        if to in FINAL and "end_time" not in fields:
            fields["end_time"] = utcnow()
        return await self.update_if(job_id, {"phase": {"$in": allowed}, **(extra or {})}, fields)

    async def set_progress(self, job_id: str, worker: str, changes: Mapping[str, Any]) -> bool:
        """Progress written by the worker holding the job, only while it is EXECUTING."""
        return await self.update_if(
            job_id, {"phase": Phase.EXECUTING.value, "worker": worker}, changes
        )

    async def delete(self, job_id: str, owner: str | None) -> JobRecord | None:
        doc = await retrying(lambda: self.jobs.find_one({"job_id": job_id, "owner": owner}))
        if doc is None:
            return None
        await retrying(lambda: self.jobs.delete_one({"job_id": job_id}))
        return JobRecord.from_doc(doc)

    async def unpublished(self, older_than: timedelta) -> list[JobRecord]:
        """QUEUED jobs whose plan was never confirmed by the broker (the outbox)."""
        cutoff = utcnow() - older_than
        query = {"phase": Phase.QUEUED.value, "published": False, "queued_time": {"$lt": cutoff}}
        return [JobRecord.from_doc(d) async for d in self.jobs.find(query, {"_id": 0})]

    async def unpublish_queued(self) -> int:
        """Mark every QUEUED job unpublished: the in-process queue died with the last process.

        The sweeper then publishes them again (embedded mode only; RabbitMQ keeps its
        messages across restarts).
        """
        result = await retrying(
            lambda: self.jobs.update_many(
                {"phase": Phase.QUEUED.value, "published": True}, {"$set": {"published": False}}
            )
        )
        return result.modified_count

    async def orphaned(self, before: datetime) -> list[JobRecord]:
        """EXECUTING jobs whose worker stopped renewing its lease before ``before``
        and that were not republished since then."""
        query = {"phase": Phase.EXECUTING.value, "lease_until": {"$lt": before}}
        found = []
        async for doc in self.jobs.find(query, {"_id": 0}):
            again = doc.get("republished_time")
            if again is None or again < before:
                found.append(JobRecord.from_doc(doc))
        return found

    async def expired(self, now: datetime) -> list[JobRecord]:
        """Jobs past their destruction time."""
        query = {"destruction": {"$lt": now}}
        return [JobRecord.from_doc(d) async for d in self.jobs.find(query, {"_id": 0})]

    async def overdue(self, now: datetime) -> list[JobRecord]:
        """EXECUTING jobs with an executionDuration (the worker enforces it; this is a net)."""
        query = {"phase": Phase.EXECUTING.value, "execution_duration": {"$gt": 0}}
        found = []
        async for doc in self.jobs.find(query, {"_id": 0, "plan": 0}):
            job = JobRecord.from_doc(doc)
            start = job.start_time
            if start is not None and start + timedelta(seconds=job.execution_duration) < now:
                found.append(job)
        return found

    async def referenced_step_keys(self) -> set[str]:
        """Step keys any stored job still names in its results (kept by the collector)."""
        keys: set[str] = set()
        async for doc in self.jobs.find({}, {"_id": 0, "steps": 1}):
            for step in doc.get("steps") or []:
                if step.get("step_key"):
                    keys.add(step["step_key"])
        return keys
