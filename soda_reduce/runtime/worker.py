"""The worker: consumes plan messages and runs each plan to COMPLETED or ERROR.

A message is acknowledged only once its job has reached a final phase (or is
gone), so a worker killed mid-plan leaves the message to the broker, which
gives it to another worker; that worker takes the job over once the dead
worker's lease on it has expired, and the shared step cache hands it every
step already done. Everything done for a job after taking it (steps, products,
SODA cutouts) runs under one supervision (`runtime.supervisor`): the lease is
renewed throughout, and ABORT, DELETE and the executionDuration stop it at once
(the runner kills its recipes, cutting stops before its next cutout).

A message for a job that is final, gone, or held under a live lease is a
duplicate (the sweeper republishes jobs whose message may be lost): it is
acknowledged and dropped. Only a redelivered message (its consumer died) waits
for the holder's lease to run out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from soda_reduce.reduction.index_model import DEFAULT_AUTHORITY
from soda_reduce.reduction.plan import ReductionPlan
from soda_reduce.runtime.broker import Delivery, PlanQueue
from soda_reduce.runtime.cutout import cutouts_dir
from soda_reduce.runtime.cutout_jobs import (
    CutoutLimitExceeded,
    CutoutLimits,
    CutTarget,
    cut_in_thread,
    reduction_targets,
    request_targets,
)
from soda_reduce.runtime.events import JobEvents
from soda_reduce.runtime.executors.base import Executor
from soda_reduce.runtime.jobs import JobError, JobRecord, JobStore, utcnow
from soda_reduce.runtime.plan_progress import PlanProgress
from soda_reduce.runtime.product_records import ProductRecords
from soda_reduce.runtime.products import ProductError, ProductStore
from soda_reduce.runtime.public_text import public_message
from soda_reduce.runtime.runner import PlanOutcome, PlanRunner, RunnerConfig
from soda_reduce.runtime.store import Store
from soda_reduce.runtime.store.errors import StoreError
from soda_reduce.runtime.supervisor import Stop, Supervisor
from soda_reduce.vo.uws import Phase

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerConfig:
    lease_s: float = 30.0  # a job whose worker stops renewing is taken over after this
    check_s: float = 2.0  # store poll under the event notifications: the safety net
    progress_s: float = 0.5  # at most one progress write per this interval
    max_deliveries: int = 5  # a plan that killed this many workers is poison
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    cutouts: CutoutLimits = field(default_factory=CutoutLimits)  # per job
    authority: str = DEFAULT_AUTHORITY  # of the product IDs the cutouts' HISTORY names


class Worker:
    def __init__(
        self,
        store: Store,
        queue: PlanQueue,
        events: JobEvents,
        executor: Executor,
        products: ProductStore,
        archive_root: Path,
        *,
        pipeline: str = "ccd",
        config: WorkerConfig | None = None,
        worker_id: str | None = None,
        prefetch: int = 2,
    ) -> None:
        self.store = store
        self.jobs = JobStore(store)
        self.product_records = ProductRecords(store)
        self.queue = queue
        self.events = events
        self.executor = executor
        self.products = products
        self.archive_root = archive_root
        self.pipeline = pipeline
        self.config = config or WorkerConfig()
        self.worker_id = worker_id or f"{os.uname().nodename}:{os.getpid()}:{id(self):x}"
        self.prefetch = prefetch
        self.supervisor = Supervisor(
            self.jobs, events, self.worker_id, self.config.lease_s, self.config.check_s
        )

    async def run(self) -> None:
        """Consume until cancelled."""
        await self.queue.consume(self.handle, self.prefetch)

    # ------------------------------------------------------------ one message

    async def handle(self, delivery: Delivery) -> None:
        job: JobRecord | None = None
        for _ in range(3):  # bounded: a live holder is waited for twice at most
            job, busy_until = await self.take(delivery.job_id)
            if job is not None or busy_until is None or not delivery.redelivered:
                break  # a fresh message for a job held under a live lease: a duplicate
            # another worker holds the job: if it died (this is its message, redelivered)
            # its lease runs out and the job is ours; if it lives, this is a duplicate
            wait = (busy_until - utcnow()).total_seconds()
            await asyncio.sleep(min(max(wait, 0.0), self.config.lease_s) + 0.5)
        if job is None:
            await delivery.ack()  # final, deleted, or held by a live worker
            return
        if job.deliveries > self.config.max_deliveries:
            message = f"gave up: the plan was started {job.deliveries} times without finishing"
            await self._finish(job, Phase.ERROR, {"error": JobError("internal", message).to_doc()})
            await delivery.dead_letter(message)
            return
        try:
            await self.execute(job)
        except asyncio.CancelledError:
            # shutting down: hand the job over at once, leave the message unacknowledged
            with contextlib.suppress(Exception):
                await asyncio.shield(
                    self.jobs.update_if(
                        job.job_id, {"worker": self.worker_id}, {"lease_until": utcnow()}
                    )
                )
            raise
        await delivery.ack()

    async def take(self, job_id: str) -> tuple[JobRecord | None, datetime | None]:
        """QUEUED -> EXECUTING, or take over an EXECUTING job whose worker's lease expired.

        Returns the job if taken; else None and, when a live worker holds it, the end
        of that worker's lease.
        """
        for _ in range(3):
            job = await self.jobs.get(job_id, any_owner=True)
            if job is None or job.phase not in (Phase.QUEUED, Phase.EXECUTING):
                return None, None
            now = utcnow()
            mine = {
                "worker": self.worker_id,
                "lease_until": now + timedelta(seconds=self.config.lease_s),
                "deliveries": job.deliveries + 1,
            }
            if job.phase == Phase.QUEUED:
                won = await self.jobs.transition(
                    job_id,
                    Phase.EXECUTING,
                    expect=[Phase.QUEUED],
                    changes={**mine, "start_time": now},
                )
            elif job.lease_until is None or job.lease_until < now:
                won = await self.jobs.update_if(
                    job_id,
                    {
                        "phase": Phase.EXECUTING.value,
                        "worker": job.worker,
                        "lease_until": job.lease_until,
                    },
                    mine,
                )
            else:
                return None, job.lease_until  # a live worker has it
            if won:
                await self.events.publish(job_id, Phase.EXECUTING.value)
                return await self.jobs.get(job_id, any_owner=True), None
        return None, None

    # ------------------------------------------------------------ one plan

    async def execute(self, job: JobRecord) -> None:
        if job.request.kind.cuts_only:
            await self._supervised(job, asyncio.create_task(self._cut_request(job)))
            return
        if job.plan is None:
            error = JobError("internal", "the job has no plan").to_doc()
            await self._finish(job, Phase.ERROR, {"error": error})
            return
        plan = ReductionPlan.from_dict(job.plan)
        tracker = PlanProgress(plan)
        wake = asyncio.Event()

        def on_event(event: dict[str, Any]) -> None:
            tracker.update(event)
            wake.set()

        runner = PlanRunner(
            self.store,
            self.executor,
            self.products,
            self.archive_root,
            owner=f"{self.worker_id}:{job.job_id}",
            config=self.config.runner,
            request_id=job.job_id,
            on_event=on_event,
            pipeline=self.pipeline,
        )
        work = asyncio.create_task(self._work(job, plan, runner, tracker))
        reporter = asyncio.create_task(self._report(job, tracker, wake))
        try:
            stopped = await self._supervised(job, work)
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
        if stopped:
            await self._record_interruption(job, plan, tracker)

    async def _supervised(
        self, job: JobRecord, work: asyncio.Task[tuple[Phase, dict[str, Any]]]
    ) -> bool:
        """The job's work under the lease, ABORT and executionDuration; its end written.
        True when it was stopped (the work is cancelled and over by then)."""
        try:
            phase, fields = await self.supervisor.guard(job, work)
        except Stop as stop:
            log.info("job %s stopped: %s", job.job_id, stop)
            return True
        finally:
            if not work.done():
                work.cancel()  # the runner kills its recipes; cutting stops and is waited for
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await work
        await self._finish(job, phase, fields)
        return False

    async def _record_interruption(
        self, job: JobRecord, plan: ReductionPlan, tracker: PlanProgress
    ) -> None:
        """An ABORTED job (its owner, or its executionDuration) keeps what it had done: the
        products of its finished steps become its results, its steps in flight say
        ``aborted`` and those never started ``skipped``. Written only while the job is
        ABORTED and still this worker's (not deleted, not taken over)."""
        fields = tracker.interrupted_fields()
        finished = {s["job_id"] for s in fields["steps"] if s["status"] in ("done", "cached")}
        try:
            fields["results"] = await self._register_products(job, plan, only=finished)
        except (ProductError, OSError, StoreError) as exc:
            log.warning("job %s: products of its finished steps not kept: %s", job.job_id, exc)
            fields["results"] = []
        expect = {"phase": Phase.ABORTED.value, "worker": self.worker_id}
        if await self.jobs.update_if(job.job_id, expect, {**fields, "lease_until": None}):
            await self.events.publish(job.job_id, Phase.ABORTED.value, changed="results")

    async def _cut_request(self, job: JobRecord) -> tuple[Phase, dict[str, Any]]:
        """A job that only cuts (raw frames as archived, or products): its cutouts."""
        request = job.request
        targets = await request_targets(request, self.store, self.archive_root, self.products)
        try:
            return Phase.COMPLETED, {"cutouts": await self._cut(job, targets)}
        except CutoutLimitExceeded as exc:
            return Phase.ERROR, {"error": JobError("limit", str(exc)).to_doc()}
        except ProductError as exc:
            message = public_message(str(exc), self.archive_root, self.products.root)
            return Phase.ERROR, {"error": JobError("products", message).to_doc()}

    async def _work(
        self, job: JobRecord, plan: ReductionPlan, runner: PlanRunner, tracker: PlanProgress
    ) -> tuple[Phase, dict[str, Any]]:
        """All of a job's work, supervised as one: the steps, then products and cutouts."""
        outcome = await runner.run(plan)
        return await self._complete(job, plan, outcome, tracker)

    async def _report(self, job: JobRecord, tracker: PlanProgress, wake: asyncio.Event) -> None:
        """Write progress to the job, coalescing bursts of runner events."""
        while True:
            await wake.wait()
            wake.clear()
            await self.jobs.set_progress(job.job_id, self.worker_id, tracker.fields())
            await self.events.publish(job.job_id, Phase.EXECUTING.value, progress=True)
            await asyncio.sleep(self.config.progress_s)

    async def _complete(
        self, job: JobRecord, plan: ReductionPlan, outcome: PlanOutcome, tracker: PlanProgress
    ) -> tuple[Phase, dict[str, Any]]:
        """The final phase and fields of a plan that ran (written by the caller)."""
        fields = tracker.fields()
        if outcome.ok:
            try:
                fields["results"] = await self._register_products(job, plan)
                fields["cutouts"] = await self._cut_targets(job, fields["results"])
            except CutoutLimitExceeded as exc:
                fields["error"] = JobError("limit", str(exc)).to_doc()
                return Phase.ERROR, fields
            except ProductError as exc:
                message = f"products unreadable: {exc}"
                roots = (self.archive_root, self.products.root)
                fields["error"] = JobError("products", public_message(message, *roots)).to_doc()
                return Phase.ERROR, fields
            except StoreError as exc:  # refused, not unreachable (that is StoreUnavailable)
                message = f"products not registered: {exc.message}"
                fields["error"] = JobError("products", message).to_doc()
                return Phase.ERROR, fields
            return Phase.COMPLETED, fields
        failed = [j for j in outcome.jobs.values() if j.status == "failed"]
        lines = [f"{j.job_id} ({j.task}): {j.error}" for j in failed[:3]]
        more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""
        summary = f"{len(failed)} of {len(outcome.jobs)} steps failed: " + "; ".join(lines)
        fields["error"] = JobError("step", summary + more).to_doc()
        return Phase.ERROR, fields

    async def _cut_targets(self, job: JobRecord, rows: list[dict[str, Any]]) -> list[dict]:
        """SODA parameters of a reduction job (POS, CIRCLE, ...) cut its target FITS
        products: one result per product and combination of values (docs/soda.md)."""
        if not job.request.soda.filtering:  # parsed and validated at creation
            return []
        return await self._cut(job, reduction_targets(rows, self.products, self.config.authority))

    async def _cut(self, job: JobRecord, targets: list[CutTarget]) -> list[dict]:
        """Each target cut by each combination of the job's values, within the job's
        limits (past one, the job's cutouts are removed and CutoutLimitExceeded raised)."""
        out = cutouts_dir(self.products.root, job.job_id)
        filters = job.request.soda.filters()
        try:
            return await cut_in_thread(out, targets, filters, self.config.cutouts)
        except CutoutLimitExceeded:
            await asyncio.to_thread(shutil.rmtree, out, True)
            raise
        except OSError as exc:
            raise ProductError(f"cutouts not written to {out}: {exc}") from None

    async def _finish(self, job: JobRecord, phase: Phase, fields: dict[str, Any]) -> None:
        fields = {**fields, "lease_until": None}
        won = await self.jobs.transition(
            job.job_id,
            phase,
            expect=[Phase.EXECUTING, Phase.QUEUED],
            changes=fields,
            extra={"worker": self.worker_id},
        )
        if won:
            await self.events.publish(job.job_id, phase.value)

    async def _register_products(
        self, job: JobRecord, plan: ReductionPlan, only: set[str] | None = None
    ) -> list[dict]:
        """Every product of the plan's steps (``only``: of these plan jobs), target
        products first; also in ``products``."""
        targets = {d.target_job: d.label for d in plan.datasets if d.complete}
        dataset_of = {j: d.label for d in plan.datasets for j in d.jobs}
        rows: list[dict[str, Any]] = []
        for plan_job in plan.runnable_jobs():
            if only is not None and plan_job.job_id not in only:
                continue
            key = plan_job.step_key
            assert key is not None
            manifest = await asyncio.to_thread(self.products.manifest, key)
            for item in manifest.get("products", []):
                path = self.products.step_dir(key) / item["file"]
                rows.append(
                    {
                        "step_key": key,
                        "file": item["file"],
                        "category": item.get("category", ""),
                        "content_type": item.get("content_type", "application/octet-stream"),
                        "size": path.stat().st_size if path.exists() else None,
                        "task": plan_job.task,
                        "plan_job": plan_job.job_id,
                        "dataset": dataset_of.get(plan_job.job_id, ""),
                        "main": bool(item.get("main")),
                        "target": plan_job.job_id in targets,
                    }
                )
        rows.sort(key=lambda r: (not r["target"], not r["main"], r["task"], r["file"]))
        # each product doc records its step's inputs (DataLink #progenitor and #calibration)
        step_of = {j.job_id: j.step_key for j in plan.jobs}
        inputs_of = {
            j.job_id: [
                {
                    "category": i.category,
                    "role": i.role,
                    "file_id": i.file_id,
                    "step_key": step_of.get(i.job) if i.job else None,
                }
                for i in j.inputs
            ]
            for j in plan.runnable_jobs()
        }
        docs = [
            {
                "product_id": f"{r['step_key']}/{r['file']}",
                **r,
                "inputs": inputs_of[r["plan_job"]],
                "registered": utcnow(),
            }
            for r in rows
        ]
        await self.product_records.register(docs)  # those already registered are fine
        return rows
