"""The job service: what the UWS handlers ask for, in runtime terms.

create -> PENDING; run -> plan (pure), store the plan with the job and go
QUEUED in one compare-and-set, then publish (outbox: the sweeper re-publishes
what the broker never confirmed); abort / delete -> a phase change plus an
event that the worker holding the job obeys at once.

Errors are raised as DALI errors (the vo layer's taxonomy), so the web layer
only renders them.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from soda_reduce.pipelines import Pipeline
from soda_reduce.reduction.index_model import DEFAULT_AUTHORITY, RawFile
from soda_reduce.reduction.plan import PlanRequestError, ReductionPlan
from soda_reduce.runtime.archive_plans import ArchivePipelines
from soda_reduce.runtime.broker import BrokerUnavailable, PlanQueue
from soda_reduce.runtime.events import JobEvents
from soda_reduce.runtime.job_checks import ReductionRequest, RequestChecks
from soda_reduce.runtime.job_lists import MAX_JOB_AGE
from soda_reduce.runtime.jobs import JobError, JobRecord, JobStore, utcnow
from soda_reduce.runtime.product_records import ProductRecords
from soda_reduce.runtime.quotas import ActiveJobTally
from soda_reduce.runtime.step_cache import FinishedSteps
from soda_reduce.runtime.store import Store
from soda_reduce.vo.dali import (
    ForbiddenError,
    NotFoundError,
    TooManyRequestsError,
    UsageError,
)
from soda_reduce.vo.job_request import (
    JobKind,
    JobRequest,
    RequestLimits,
    check_request_limits,
    parse_job_request,
)
from soda_reduce.vo.soda import SPATIAL
from soda_reduce.vo.uws import ACTIVE, FINAL, Phase

log = logging.getLogger(__name__)

DEFAULT_STEP_S = 30.0  # quote for a recipe never run here before
CUTOUT_S = 0.5  # quote per cutout of a job that only cuts
__all__ = ["JobService", "Limits", "ReductionRequest"]


@dataclass(frozen=True)
class Limits:
    execution_duration_s: int = 4 * 3600
    max_execution_duration_s: int = 24 * 3600
    destruction: timedelta = timedelta(days=7)
    max_destruction: timedelta = timedelta(days=30)
    concurrency: int = 2  # recipes at once, for the quote
    max_active_jobs: int = 100  # per owner (each anonymous session is one owner)
    requeue_after: timedelta = timedelta(minutes=1)  # RUN on a QUEUED job older republishes


class JobService:
    def __init__(
        self,
        store: Store,
        pipelines: ArchivePipelines,
        queue: PlanQueue,
        events: JobEvents,
        limits: Limits | None = None,
        request_limits: RequestLimits | None = None,
        *,
        authority: str = DEFAULT_AUTHORITY,
    ) -> None:
        self.store = store
        self.jobs = JobStore(store)
        self.pipelines = pipelines
        self.cascade = pipelines.default.cascade  # for requests that name no file
        self.queue = queue
        self.events = events
        self.limits = limits or Limits()
        self.request_limits = request_limits or RequestLimits()
        self.checks = RequestChecks(store, pipelines, authority)
        self.active = ActiveJobTally()  # the quota's count, kept between creations
        self.finished_steps = FinishedSteps(store)
        self.product_records = ProductRecords(store)
        self._files: tuple[int, list[RawFile]] | None = None

    # ------------------------------------------------------------ parameters

    async def parse(self, pairs: Sequence[tuple[str, str]]) -> JobRequest:
        """The typed request (`vo.job_request`). Regions are validated geometrically,
        which costs CPU in proportion to what a client sends: a request with any is parsed
        off the event loop. Without, parsing is linear in a request the limits bound, and
        cheaper than the thread hop (measured: the hop's GIL contention was most of the
        API's time per creation)."""
        if any(name.upper() in SPATIAL for name, _ in pairs):
            return await asyncio.to_thread(parse_job_request, pairs, self.request_limits)
        return parse_job_request(pairs, self.request_limits)

    async def checked_request(self, request: JobRequest) -> tuple[ReductionRequest, Pipeline]:
        """A reduction request checked against the pipeline its IDs belong to (TARGET
        defaulted per frame, `runtime.job_checks`)."""
        return await self.checks.reduction(request)

    async def check(self, request: JobRequest) -> None:
        """Whatever its kind, the request names what exists here; UsageError if not."""
        if request.kind is JobKind.REDUCTION:
            await self.checks.reduction(request)
        else:
            await self.checks.cutout(request)

    def clamp_duration(self, seconds: int | None) -> int:
        """The server may lower a requested executionDuration to its maximum (UWS 1.1 2.2.3.4)."""
        top = self.limits.max_execution_duration_s
        if seconds is None:
            return self.limits.execution_duration_s
        if top and (seconds == 0 or seconds > top):
            return top
        return seconds

    def clamp_destruction(self, when: datetime | None, created: datetime | None = None) -> datetime:
        """Within the configured maximum from now, and never beyond `MAX_JOB_AGE` after
        the job's creation (job lists read no further back)."""
        now = utcnow()
        top = now + self.limits.max_destruction
        if created is not None:
            top = min(top, created + MAX_JOB_AGE)
        if when is None:
            return min(now + self.limits.destruction, top)
        return min(max(when, now), top)

    # ------------------------------------------------------------ lifecycle

    async def create(
        self, owner: str | None, request: JobRequest, *, new_owner: bool = False
    ) -> JobRecord:
        """A PENDING job (run at once for PHASE=RUN). ``new_owner``: the owner has no job
        yet (a session minted for this request), so the quota needs no count."""
        if request.phase not in (None, Phase.QUEUED):
            raise UsageError("PHASE at creation may only be RUN")
        await self.check(request)
        await self._reserve_quota(owner, new_owner)
        try:
            job = await self.jobs.create(
                owner,
                request,
                execution_duration=self.clamp_duration(request.execution_duration),
                destruction=self.clamp_destruction(request.destruction),
                new_owner=new_owner,
            )
        except Exception:  # not stored (a cancelled creation may be: its count stays)
            self.active.release(owner)
            raise
        if request.phase == Phase.QUEUED:
            job = await self.run(job)
        return job

    async def _reserve_quota(self, owner: str | None, new_owner: bool) -> None:
        """One more active job for ``owner`` within ``max_active_jobs``, counted in the
        store only when the tally (`runtime.quotas.ActiveJobTally`) cannot tell."""
        quota = self.limits.max_active_jobs
        if new_owner:
            self.active.counted(owner, 0)
        if self.active.reserve(owner, quota):
            return
        active = await self.jobs.count_active(owner, quota)
        self.active.counted(owner, active)
        if active >= quota:
            raise TooManyRequestsError(
                f"{active} jobs of yours are still pending or running (the limit is "
                f"{quota}): delete or wait for some",
                retry_after=30,
            )
        self.active.add(owner)

    async def get(self, job_id: str, owner: str | None) -> JobRecord:
        job = await self.jobs.get(job_id, owner)
        if job is None:
            raise NotFoundError(f"no job {job_id!r}")
        return job

    async def set_parameters(
        self, job: JobRecord, change: JobRequest, names: Sequence[str]
    ) -> JobRecord:
        """POST to {job}/parameters: replace values by name (``names``: those given),
        only while PENDING."""
        if job.phase != Phase.PENDING:
            raise ForbiddenError(f"parameters cannot change in phase {job.phase.value}")
        merged = job.request.updated(change, names)
        check_request_limits(merged, self.request_limits)
        await self.check(merged)
        changes: dict[str, Any] = {
            "request": merged.to_doc(),
            "parameters": [list(p) for p in merged.parameters()],
            "run_id": merged.run_id,
        }
        if change.execution_duration is not None:
            changes["execution_duration"] = self.clamp_duration(change.execution_duration)
        if change.destruction is not None:
            changes["destruction"] = self.clamp_destruction(change.destruction, job.creation_time)
        if not await self.jobs.update_if(job.job_id, {"phase": Phase.PENDING.value}, changes):
            raise ForbiddenError("the job left PENDING while its parameters were being changed")
        await self.events.publish(job.job_id, Phase.PENDING.value, changed="parameters")
        job = await self.get(job.job_id, job.owner)
        if change.phase == Phase.QUEUED:
            job = await self.run(job)
        return job

    async def set_execution_duration(self, job: JobRecord, seconds: int) -> None:
        if job.phase not in (Phase.PENDING, Phase.HELD):
            raise ForbiddenError(f"executionDuration cannot change in phase {job.phase.value}")
        await self.jobs.update_if(
            job.job_id,
            {"phase": job.phase.value},
            {"execution_duration": self.clamp_duration(seconds)},
        )
        await self.events.publish(job.job_id, job.phase.value, changed="executionDuration")

    async def set_destruction(self, job: JobRecord, when: datetime) -> None:
        await self.jobs.update_if(
            job.job_id,
            {"phase": job.phase.value},
            {"destruction": self.clamp_destruction(when, job.creation_time)},
        )
        await self.events.publish(job.job_id, job.phase.value, changed="destruction")

    async def change_phase(self, job: JobRecord, target: Phase) -> JobRecord:
        if target == Phase.QUEUED:
            if job.phase == Phase.QUEUED:
                await self.republish_if_lost(job)
                return job  # RUN again is harmless: retries are safe
            if job.phase == Phase.EXECUTING:
                return job
            if job.phase not in (Phase.PENDING, Phase.HELD):
                raise ForbiddenError(f"cannot run a job in phase {job.phase.value}")
            return await self.run(job)
        if target == Phase.ABORTED:
            if job.phase in FINAL:
                if job.phase == Phase.ABORTED:
                    return job
                raise ForbiddenError(f"cannot abort a job in phase {job.phase.value}")
            await self.abort(job.job_id, "aborted at the owner's request")
            return await self.get(job.job_id, job.owner)
        raise ForbiddenError(f"PHASE must be RUN or ABORT, not {target.value}")

    async def republish_if_lost(self, job: JobRecord) -> bool:
        """RUN on a job QUEUED for long and taken by no worker: its message may be lost
        (a purged queue); publish it again now rather than at the sweeper's next look.
        The compare-and-set on the publication time lets one request do it per period,
        and a duplicate message is dropped by the worker (the phase decides)."""
        published = job.doc.get("published_time")
        now = utcnow()
        if not job.published or published is None or now - published < self.limits.requeue_after:
            return False
        if not await self.jobs.mark_lost(job, now):
            return False
        if not await self.publish(job.job_id, again=True):
            await self.jobs.unmark_lost(job, now)
            return False
        log.info("job %s: queued since %s and not taken: published again", job.job_id, published)
        return True

    async def abort(
        self, job_id: str, message: str | None = None, *, error: bool = True, code: str = "aborted"
    ) -> bool:
        """Any active job -> ABORTED; the message becomes its errorSummary (pyvo shows it)."""
        changes: dict[str, Any] = {}
        if message:
            changes["abort_reason"] = message
            if error:
                changes["error"] = JobError(code, message).to_doc()
        won = await self.jobs.transition(
            job_id,
            Phase.ABORTED,
            expect=(*ACTIVE, Phase.HELD, Phase.SUSPENDED),
            changes=changes,
        )
        if won:
            await self.events.publish(job_id, Phase.ABORTED.value)
        return won

    async def delete(self, job_id: str, owner: str | None) -> None:
        job = await self.jobs.delete(job_id, owner)
        if job is None:
            raise NotFoundError(f"no job {job_id!r}")
        # a worker running it stops at once (it also sees the document gone)
        await self.events.publish(job_id, "DELETED")

    # ------------------------------------------------------------ running

    async def raw_files(self) -> list[RawFile]:
        """The whole header index, cached while its version does not change: only for the
        pages that list or summarise the archive (landing page, ``/archive/raw``), which
        grow with it. Planning asks the store instead (`plan_ids`)."""
        version = await self.store.raw_files_version()
        if self._files is None or self._files[0] != version:
            self._files = (version, await self.store.all_raw_files())
        return self._files[1]

    async def plan(self, job: JobRecord) -> ReductionPlan:
        request, pipeline = await self.checked_request(job.request)
        if not request.ids:
            raise PlanRequestError("no ID given: name at least one raw file to reduce")
        return await self.plan_ids(pipeline, request.ids, request.target, request.parameters)

    async def plan_ids(
        self,
        pipeline: Pipeline,
        ids: Sequence[str],
        target: str | None,
        parameters: Mapping[str, Any],
    ) -> ReductionPlan:
        """Plan raw files by asking the store (their groups and candidates only), in a
        worker thread with the store's synchronous client."""
        return await asyncio.to_thread(
            self.pipelines.plan_indexed,
            pipeline,
            self.store,
            target=target,
            ids=list(ids),
            parameters=dict(parameters),
        )

    async def run(self, job: JobRecord) -> JobRecord:
        """PENDING -> QUEUED with the plan stored (a job that only cuts has none), then
        publish; or ERROR with the reason."""
        try:
            changes = await self._queued_fields(job)
        except (PlanRequestError, UsageError) as exc:
            await self.jobs.transition(
                job.job_id,
                Phase.ERROR,
                expect=(Phase.PENDING, Phase.HELD),
                changes={"error": JobError("usage", str(exc)).to_doc()},
            )
            await self.events.publish(job.job_id, Phase.ERROR.value)
            return await self.get(job.job_id, job.owner)
        won = await self.jobs.transition(
            job.job_id, Phase.QUEUED, expect=(Phase.PENDING, Phase.HELD), changes=changes
        )
        if won:
            await self.events.publish(job.job_id, Phase.QUEUED.value)
            await self.publish(job.job_id)
        return await self.get(job.job_id, job.owner)

    async def _queued_fields(self, job: JobRecord) -> dict[str, Any]:
        """What RUN stores: a reduction's plan and quote, or a cutout job's quote (its IDs
        checked again: a product may have been collected since creation)."""
        now = utcnow()
        request = job.request
        fields: dict[str, Any] = {"queued_time": now, "published": False}
        if request.kind.cuts_only:
            await self.checks.cutout(request)
            count = len(request.ids) * len(request.soda.filters())
            return {**fields, "quote": now + timedelta(seconds=CUTOUT_S * count)}
        plan = await self.plan(job)
        if not plan.complete:
            reasons = [f"{d.label}: {'; '.join(d.reasons)}" for d in plan.datasets]
            if not plan.datasets:
                reasons = ["nothing to reduce for this selection"]
            raise PlanRequestError("cannot be reduced: " + " | ".join(reasons))
        return {
            **fields,
            "plan": plan.to_dict(),
            "quote": now + timedelta(seconds=await self.estimate_seconds(plan)),
            "progress": {"done": 0, "failed": 0, "total": len(plan.runnable_jobs())},
        }

    async def publish(self, job_id: str, *, again: bool = False) -> bool:
        """Hand the job to the broker; False if it could not confirm (the sweeper retries).

        A first publication marks the job published once confirmed (the outbox);
        ``again`` re-publishes a job already marked (its worker died, and in embedded
        mode no broker redelivers).
        """
        try:
            await self.queue.publish(job_id, {"job_id": job_id})
        except BrokerUnavailable as exc:
            log.warning("job %s: plan not published (%s); the sweeper retries", job_id, exc)
            return False
        if not again:
            await self.jobs.update_if(
                job_id, {"published": False}, {"published": True, "published_time": utcnow()}
            )
        return True

    async def estimate_seconds(self, plan: ReductionPlan) -> float:
        """Sum of the median recorded durations of the steps not yet cached, over the cores."""
        jobs = plan.runnable_jobs()
        done = await self.finished_steps.done(j.step_key for j in jobs if j.step_key)
        durations = await self.finished_steps.durations()
        medians = {recipe: statistics.median(v) for recipe, v in durations.items()}
        total = sum(medians.get(j.recipe, DEFAULT_STEP_S) for j in jobs if j.step_key not in done)
        return total / max(1, self.limits.concurrency)
