"""UWS jobs in the store: documents, atomic phase changes, the outbox flag, worker leases.

Every phase change is one ``update_one`` whose filter holds the phase(s) the
caller expects (compare-and-set): the modified count says who won, so two API
processes, two workers and the sweeper can never both move one job. Never
``find_one_and_update`` (it scans the whole collection on SecantusDB).

The plan is stored with the job before it is published (``published`` False):
a job whose plan never reached the broker is found and published again by the
sweeper, so a crash between the two writes loses nothing.

This module, `job_lists.py` (lists, ``job_owners``) and `job_inserts.py` (creations,
written in groups) are the only code that touches the ``jobs`` collection; its indexes
are `JOB_INDEXES`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ASCENDING, DESCENDING, IndexModel

from soda_reduce.runtime.job_inserts import JobInserts
from soda_reduce.runtime.job_lists import JobLists
from soda_reduce.runtime.store import Store
from soda_reduce.runtime.store.errors import retrying
from soda_reduce.runtime.store.store import IN_CHUNK
from soda_reduce.runtime.sweep_queries import (
    SWEEP_BATCH,
    SWEEP_FIELDS,
    SWEEP_SCAN,
    expired_query,
    lost_query,
    orphaned_query,
    overdue_query,
    unpublished_query,
)
from soda_reduce.vo.dali import DaliError
from soda_reduce.vo.job_request import JobRequest, parse_job_request
from soda_reduce.vo.uws import ACTIVE, FINAL, Phase, can_transition

JOB_INDEXES = [
    IndexModel([("job_id", ASCENDING)], unique=True, name="job_id_unique"),
    # job lists: windows of an owner's creation times (runtime/job_lists.py)
    IndexModel([("owner", ASCENDING), ("creation_time", DESCENDING)], name="owner_created"),
    IndexModel([("owner", ASCENDING), ("phase", ASCENDING)], name="owner_phase"),  # the quota
    IndexModel([("phase", ASCENDING)], name="phase"),
    # the sweeper's queries (runtime/sweep_queries.py), one index each
    IndexModel([("destruction", ASCENDING)], name="destruction"),
    IndexModel(
        [("phase", ASCENDING), ("published", ASCENDING), ("queued_time", ASCENDING)],
        name="phase_published_queued",
    ),
    IndexModel(
        [("phase", ASCENDING), ("published", ASCENDING), ("published_time", ASCENDING)],
        name="phase_published_sent",
    ),
    IndexModel([("phase", ASCENDING), ("lease_until", ASCENDING)], name="phase_lease"),
]


def utcnow() -> datetime:
    # Mongo keeps milliseconds: round here so a document read back equals what was written
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def new_job_id() -> str:
    """Unguessable (a job URL is a capability for anonymous users), short enough to read."""
    return secrets.token_urlsafe(12).replace("-", "x").replace("_", "y")


@dataclass(frozen=True)
class JobError:
    """Why a job ended in ERROR or ABORTED: what UWS's errorSummary shows, typed.

    ``code`` is stable for clients and operators (``usage``: the request cannot be
    reduced; ``step``: recipe steps failed; ``limit``: a limit of the service was
    reached; ``deadline``: executionDuration ran out; ``aborted``: the owner aborted;
    ``products``: products could not be read back; ``internal``: a fault of the
    service); ``kind`` is UWS's errorSummary type, ``fatal`` or ``transient``.
    The message is public: no server paths.
    """

    code: str
    message: str
    kind: str = "fatal"

    def to_doc(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message, "type": self.kind}

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any] | None) -> JobError | None:
        if not doc:
            return None
        kind = doc.get("type") if doc.get("type") in ("fatal", "transient") else "fatal"
        return cls(str(doc.get("code") or "internal"), str(doc.get("message") or "failed"), kind)


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
    error: JobError | None = None
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
            error=JobError.from_doc(doc.get("error")),
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

    @property
    def request(self) -> JobRequest:
        """The typed request stored at creation (jobs stored before it existed are parsed
        from their parameters once, leniently: they were checked when created)."""
        stored = self.doc.get("request")
        if stored is not None:
            return JobRequest.from_doc(stored, self.run_id)
        try:
            parsed = parse_job_request(self.parameters)
        except DaliError:
            return JobRequest(run_id=self.run_id)
        return replace(parsed, run_id=self.run_id)


class JobStore:
    """The ``jobs`` collection: the only code that writes job documents."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._jobs = store.jobs  # journaled: clients are told about every job written
        self.lists = JobLists(store)
        self._inserts = JobInserts(self._jobs, self.lists)

    async def create(
        self,
        owner: str | None,
        request: JobRequest,
        *,
        execution_duration: int,
        destruction: datetime,
        job_id: str | None = None,
        new_owner: bool = False,
    ) -> JobRecord:
        """Store a PENDING job (with the owner's first creation; ``new_owner``: the owner
        has no job yet, e.g. a session minted for this request); returns once journaled."""
        doc = {
            "job_id": job_id or new_job_id(),
            "owner": owner,
            "run_id": request.run_id,
            "phase": Phase.PENDING.value,
            "creation_time": utcnow(),
            "request": request.to_doc(),
            "parameters": [list(p) for p in request.parameters()],
            "execution_duration": execution_duration,
            "destruction": destruction,
            "published": False,
            "version": 0,
        }
        await self._inserts.insert(doc, new_owner=new_owner)
        return JobRecord.from_doc(doc)

    async def get(self, job_id: str, owner: str | None = None, *, any_owner: bool = False):
        """The job, or None when unknown or someone else's (callers answer 404 for both)."""
        # the owner is compared here, not in the filter: on SecantusDB a second condition
        # costs more than the indexed lookup itself (640 vs 390 us of store CPU per read)
        doc = await retrying(lambda: self._jobs.find_one({"job_id": job_id}, {"_id": 0}))
        if doc is None or (not any_owner and doc.get("owner") != owner):
            return None
        return JobRecord.from_doc(doc)

    async def phase(self, job_id: str, owner: str | None) -> Phase | None:
        """The phase alone (WAIT polls it): None when unknown or someone else's."""
        doc = await retrying(
            lambda: self._jobs.find_one({"job_id": job_id}, {"_id": 0, "phase": 1, "owner": 1})
        )
        if doc is None or doc.get("owner") != owner:
            return None
        return Phase(doc["phase"])

    async def list(
        self,
        owner: str | None,
        phases: Iterable[Phase] = (),
        after: datetime | None = None,
        last: int | None = None,
        *,
        fields: Iterable[str] = (),
        before: datetime | None = None,
    ) -> list[dict[str, Any]]:
        """Job-list rows (`runtime/job_lists.py`): newest first with LAST, else oldest first."""
        return await self.lists.rows(owner, phases, after, last, fields=fields, before=before)

    async def count_active(self, owner: str | None, up_to: int) -> int:
        """Jobs of ``owner`` not yet final (PENDING, HELD, QUEUED, EXECUTING, SUSPENDED),
        counted up to ``up_to`` (the quota): the cost stays bounded."""
        active = [p.value for p in (*ACTIVE, Phase.HELD, Phase.SUSPENDED)]
        query = {"owner": owner, "phase": {"$in": active}}
        return await retrying(lambda: self._jobs.count_documents(query, limit=up_to))

    async def update_if(
        self, job_id: str, expect: Mapping[str, Any], changes: Mapping[str, Any]
    ) -> bool:
        """Set ``changes`` only if the job still matches ``expect``; True if this call won."""
        query = {"job_id": job_id, **expect}
        result = await retrying(
            lambda: self._jobs.update_one(query, {"$set": dict(changes), "$inc": {"version": 1}})
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
        doc = await retrying(lambda: self._jobs.find_one({"job_id": job_id, "owner": owner}))
        if doc is None:
            return None
        await retrying(lambda: self._jobs.delete_one({"job_id": job_id}))
        return JobRecord.from_doc(doc)

    # ------------------------------------------------------------ the sweeper's queries
    #
    # Every sweeper pass runs these. Each filter is served by an index (store.INDEXES;
    # tests/test_sweeper.py asks the store's explain), reads `SWEEP_FIELDS` only (never
    # plans, steps or results), reads at most `SWEEP_SCAN` documents and returns at most
    # ``limit`` jobs (`SWEEP_BATCH`): what is left waits for the next pass.

    async def unpublished(self, older_than: timedelta, limit: int = 0) -> list[JobRecord]:
        """QUEUED jobs whose plan was never confirmed by the broker (the outbox)."""
        return await self._sweep_find(unpublished_query(utcnow() - older_than), limit)

    async def unpublish_queued(self) -> int:
        """Mark every QUEUED job unpublished: the in-process queue died with the last process.

        The sweeper then publishes them again (embedded mode only; RabbitMQ keeps its
        messages across restarts).
        """
        result = await retrying(
            lambda: self._jobs.update_many(
                {"phase": Phase.QUEUED.value, "published": True}, {"$set": {"published": False}}
            )
        )
        return result.modified_count

    async def lost(self, before: datetime, limit: int = 0) -> list[JobRecord]:
        """QUEUED jobs last published before ``before`` and still taken by no worker (taking
        a job makes it EXECUTING under a lease): their message may be lost, to a purged
        queue or a worker that dead-lettered it failing to take the job."""
        return await self._sweep_find(lost_query(before), limit)

    async def mark_lost(self, job: JobRecord, now: datetime) -> bool:
        """Compare-and-set before republishing a lost job: one sweeper does it, once per
        period (``published_time`` becomes the time of the latest message)."""
        expect = {**lost_query(now), "published_time": job.doc.get("published_time")}
        changes = {"published_time": now, "requeues": int(job.doc.get("requeues") or 0) + 1}
        return await self.update_if(job.job_id, expect, changes)

    async def unmark_lost(self, job: JobRecord, now: datetime) -> bool:
        """Undo `mark_lost` when the message could not be sent: the next pass tries again."""
        expect = {"phase": Phase.QUEUED.value, "published_time": now}
        changes = {
            "published_time": job.doc.get("published_time"),
            "requeues": int(job.doc.get("requeues") or 0),
        }
        return await self.update_if(job.job_id, expect, changes)

    async def orphaned(self, before: datetime, limit: int = 0) -> list[JobRecord]:
        """EXECUTING jobs whose worker stopped renewing its lease before ``before``
        and that were not republished since then."""

        def unmarked(job: JobRecord) -> bool:
            again = job.doc.get("republished_time")
            return again is None or again < before

        return await self._sweep_find(orphaned_query(before), limit, unmarked)

    async def expired(self, now: datetime, limit: int = 0) -> list[JobRecord]:
        """Jobs past their destruction time."""
        return await self._sweep_find(expired_query(now), limit)

    async def overdue(self, now: datetime, limit: int = 0) -> list[JobRecord]:
        """EXECUTING jobs past their executionDuration (the worker enforces it; this is a
        net)."""

        def late(job: JobRecord) -> bool:
            start, duration = job.start_time, job.execution_duration
            return duration > 0 and start is not None and start + timedelta(seconds=duration) < now

        return await self._sweep_find(overdue_query(), limit, late)

    async def referenced_step_keys(self) -> set[str]:
        """Step keys any stored job still names in its steps (kept by the collector).

        Reads every job, but only their step keys, in batches: memory is one batch plus
        the set of keys, whatever the jobs hold.
        """
        keys: set[str] = set()
        cursor = self._jobs.find({}, {"_id": 0, "steps.step_key": 1}).batch_size(SWEEP_SCAN)
        async for doc in cursor:
            for step in doc.get("steps") or []:
                if isinstance(step, dict) and step.get("step_key"):
                    keys.add(step["step_key"])
        return keys

    async def existing(self, job_ids: Iterable[str]) -> set[str]:
        """Which of ``job_ids`` are still stored (only their ids are read)."""
        wanted, found = sorted(set(job_ids)), set()
        for start in range(0, len(wanted), IN_CHUNK):  # $in is quadratic on SecantusDB
            query = {"job_id": {"$in": wanted[start : start + IN_CHUNK]}}
            async for doc in self._jobs.find(query, {"_id": 0, "job_id": 1}):
                found.add(doc["job_id"])
        return found

    async def _sweep_find(
        self, query: dict[str, Any], limit: int, keep: Callable[[JobRecord], bool] | None = None
    ) -> list[JobRecord]:
        """Up to ``limit`` jobs matching ``query`` and ``keep``, from `SWEEP_SCAN` read at most."""
        limit = limit or SWEEP_BATCH
        found: list[JobRecord] = []
        cursor = self._jobs.find(query, SWEEP_FIELDS).limit(SWEEP_SCAN).batch_size(500)
        async for doc in cursor:
            job = JobRecord.from_doc(doc)
            if keep is None or keep(job):
                found.append(job)
                if len(found) >= limit:
                    break
        await cursor.close()
        return found
