"""Run a reduction plan: its DAG of steps, each computed once for everyone.

Jobs start as soon as their upstream jobs are done; the executor bounds how
many recipes run at once. Every step goes through the shared step cache: a
done step is reused, a step another runner is computing is waited for, a step
whose runner died is taken over when its lease expires. Transient failures
are retried with exponential backoff; ``max_attempts=1`` is phoenix's "one
attempt only".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from soda_reduce.reduction.plan import PlanJob, ReductionPlan
from soda_reduce.reduction.static import PIPELINE_SCHEME
from soda_reduce.runtime.archive_boundary import inside
from soda_reduce.runtime.executors.base import Executor, StepResources, StepRun
from soda_reduce.runtime.products import LOG_NAME, ProductError, ProductStore
from soda_reduce.runtime.public_text import public_message
from soda_reduce.runtime.step_cache import DONE, FAILED, LeaseLost, StepCache
from soda_reduce.runtime.store import Store

Event = dict[str, Any]


@dataclass(frozen=True)
class RunnerConfig:
    max_attempts: int = 3
    backoff_s: float = 1.0
    backoff_max_s: float = 60.0
    lease_s: float = 30.0
    poll_s: float = 0.25
    rerun: bool = False  # recompute even cached steps (a request may ask for it)
    in_flight: int | None = None  # steps claimed at once; default: the executor's concurrency


@dataclass
class JobOutcome:
    job_id: str
    task: str
    step_key: str
    status: str  # done | cached | failed | skipped
    error: str | None = None
    attempts: int = 0
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0  # the recipe processes' own lifetimes
    queued_seconds: float = 0.0  # waiting for an executor slot
    total_seconds: float = 0.0  # claim to record: wall + queued + orchestration


@dataclass
class PlanOutcome:
    jobs: dict[str, JobOutcome] = field(default_factory=dict)
    wall_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(j.status in ("done", "cached") for j in self.jobs.values())

    def count(self, status: str) -> int:
        return sum(1 for j in self.jobs.values() if j.status == status)


class StepFailed(Exception):
    def __init__(self, message: str, attempts: int = 0, cpu_seconds: float = 0.0) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.cpu_seconds = cpu_seconds


class PlanRunner:
    def __init__(
        self,
        store: Store,
        executor: Executor,
        products: ProductStore,
        archive_root: Path,
        owner: str | None = None,
        config: RunnerConfig | None = None,
        request_id: str | None = None,
        on_event: Callable[[Event], None] | None = None,
        pipeline: str = "ccd",
    ) -> None:
        self.store = store
        self.executor = executor
        self.products = products
        self.archive_root = archive_root
        self.config = config or RunnerConfig()
        self.owner = owner or f"{os.uname().nodename}:{os.getpid()}:{id(self):x}"
        self.cache = StepCache(store, self.owner, self.config.lease_s, self.config.poll_s)
        self.request_id = request_id
        self.on_event = on_event or (lambda event: None)
        self.pipeline = pipeline
        self._running: set[str] = set()
        # Claim only what can run soon: a step claimed but queued holds a lease and a
        # heartbeat for nothing, and hundreds of simultaneous claims only load the store.
        limit = self.config.in_flight or getattr(executor, "concurrency", None) or 4
        self._in_flight = asyncio.Semaphore(limit)
        self._outcome = PlanOutcome()
        self._total = 0

    # ------------------------------------------------------------------ plan

    async def run(self, plan: ReductionPlan) -> PlanOutcome:
        started = time.monotonic()
        jobs = plan.runnable_jobs()
        self._total = len(jobs)
        self._outcome = PlanOutcome()
        futures: dict[str, asyncio.Task[JobOutcome]] = {}
        for job in jobs:  # upstream first, so every dependency's task exists
            deps = [futures[d] for d in job.depends_on]
            futures[job.job_id] = asyncio.create_task(self._job(job, deps, plan))
        try:
            await asyncio.gather(*futures.values())
        except asyncio.CancelledError:
            # gather has cancelled every job already: let them clean up, once
            await asyncio.gather(*futures.values(), return_exceptions=True)
            raise
        except BaseException:
            for task in futures.values():
                task.cancel()
            await asyncio.gather(*futures.values(), return_exceptions=True)
            raise
        self._outcome.wall_seconds = time.monotonic() - started
        return self._outcome

    def _progress(self) -> None:
        done = sum(1 for j in self._outcome.jobs.values() if j.status in ("done", "cached"))
        self.on_event(
            {
                "type": "progress",
                "done": done,
                "failed": sum(1 for j in self._outcome.jobs.values() if j.status == "failed"),
                "total": self._total,
                "running": sorted(self._running),
            }
        )

    async def _job(
        self, job: PlanJob, deps: list[asyncio.Task[JobOutcome]], plan: ReductionPlan
    ) -> JobOutcome:
        upstream = [await dep for dep in deps]
        assert job.step_key is not None
        if any(u.status not in ("done", "cached") for u in upstream):
            failed = ", ".join(u.job_id for u in upstream if u.status not in ("done", "cached"))
            outcome = JobOutcome(
                job.job_id, job.task, job.step_key, "skipped", f"upstream failed: {failed}"
            )
        else:
            try:
                async with self._in_flight:
                    began = time.monotonic()
                    outcome = await self._step(job, plan)
            except StepFailed as exc:
                outcome = JobOutcome(
                    job.job_id,
                    job.task,
                    job.step_key,
                    "failed",
                    public_message(str(exc), self.archive_root, self.products.root),
                    attempts=exc.attempts,
                    cpu_seconds=exc.cpu_seconds,
                )
            outcome.total_seconds = time.monotonic() - began
        self._outcome.jobs[job.job_id] = outcome
        self.on_event({"type": "step", **outcome.__dict__})
        self._progress()
        return outcome

    # ------------------------------------------------------------------ step

    async def _step(self, job: PlanJob, plan: ReductionPlan) -> JobOutcome:
        key = job.step_key
        assert key is not None
        try:
            return await self._claim_and_run(job, plan)
        except asyncio.CancelledError:
            # give the step back at once (a no-op unless this runner holds it);
            # finish that even if cancelled again: it is short and bounded
            release = asyncio.ensure_future(self.cache.release(key))
            while not release.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(release)
            with contextlib.suppress(Exception):
                release.result()
            raise

    async def _claim_and_run(self, job: PlanJob, plan: ReductionPlan) -> JobOutcome:
        key = job.step_key
        assert key is not None
        info = {"job_id": job.job_id, "task": job.task, "recipe": job.recipe}
        claim = await self.cache.claim(key, info, rerun=self.config.rerun)
        for _ in range(10):  # bounded: each turn is a hit, a wait, or a run
            if claim.action == DONE:
                if self.products.has(key):
                    return JobOutcome(job.job_id, job.task, key, "cached", attempts=0)
                await self.cache.forget(key)  # products deleted: compute again
                claim = await self.cache.claim(key, info)
            elif claim.action == "wait":
                limit = job.resources.get("timeout_s", 3600) * self.config.max_attempts
                claim = await self.cache.wait(key, limit + 2 * self.config.lease_s)
            elif claim.action == FAILED:
                raise StepFailed(claim.doc.get("error") or "failed in another run")
            else:
                return await self._run_claimed(job, plan)
        raise StepFailed(f"step {key[:12]}: gave up after repeated hand-overs")

    async def _run_claimed(self, job: PlanJob, plan: ReductionPlan) -> JobOutcome:
        key = job.step_key
        assert key is not None
        heartbeat = asyncio.create_task(self.cache.heartbeat(key))
        self._running.add(job.job_id)
        self._progress()
        try:
            return await self._attempts(job, plan, heartbeat)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError, LeaseLost):
                await heartbeat
            self._running.discard(job.job_id)

    async def _attempts(
        self, job: PlanJob, plan: ReductionPlan, heartbeat: asyncio.Task[None]
    ) -> JobOutcome:
        key = job.step_key
        assert key is not None
        cpu = wall = queued = 0.0
        error = "not run"
        for attempt in range(1, self.config.max_attempts + 1):
            await self.cache.record_attempt(key, attempt)
            workdir = self.products.new_workdir(key, attempt)
            try:
                self._write_inputs(job, plan, workdir)
            except ProductError as exc:
                await self.cache.fail(key, str(exc))
                raise StepFailed(str(exc)) from None
            run = StepRun(
                step_key=key,
                job_id=job.job_id,
                pipeline=plan.cascade or self.pipeline,
                recipe=job.recipe,
                workdir=workdir,
                log_path=workdir / LOG_NAME,
                resources=StepResources(
                    cpu=float(job.resources.get("cpu", 1)),
                    memory_mb=int(job.resources.get("memory_mb", 1024)),
                    timeout_s=float(job.resources.get("timeout_s", 3600)),
                ),
                request_id=self.request_id,
                attempt=attempt,
            )
            self.on_event({"type": "attempt", "job_id": job.job_id, "attempt": attempt})
            result = await self._execute(run, heartbeat)
            cpu += result.cpu_seconds
            wall += result.wall_seconds
            queued += result.queued_seconds
            if result.ok:
                try:
                    self.products.commit(key, workdir)
                except (ProductError, OSError) as exc:
                    error = f"products could not be stored: {exc}"
                    await self.cache.fail(key, error)
                    raise StepFailed(error) from None
                await self.cache.finish(
                    key, {"attempts": attempt, "cpu_seconds": cpu, "wall_seconds": wall}
                )
                return JobOutcome(
                    job.job_id, job.task, key, "done", None, attempt, cpu, wall, queued
                )
            error = f"{result.error} (log: {run.log_path})"
            if not result.transient or attempt == self.config.max_attempts:
                break
            delay = min(self.config.backoff_s * 2 ** (attempt - 1), self.config.backoff_max_s)
            self.on_event({"type": "retry", "job_id": job.job_id, "delay_s": delay, "error": error})
            await asyncio.sleep(delay)
        await self.cache.fail(key, error, {"attempts": attempt, "cpu_seconds": cpu})
        raise StepFailed(error, attempt, cpu)

    async def _execute(self, run: StepRun, heartbeat: asyncio.Task[None]) -> Any:
        """The executor's run, abandoned if the heartbeat loses the lease."""
        work = asyncio.create_task(self.executor.run(run))
        try:
            done, _ = await asyncio.wait({work, heartbeat}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            work.cancel()  # the executor kills what it started
            with contextlib.suppress(asyncio.CancelledError):
                await work
            raise
        if work in done:
            return work.result()
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work
        raise StepFailed(f"lost the lease on step {run.step_key[:12]} to another runner")

    def _write_inputs(self, job: PlanJob, plan: ReductionPlan, workdir: Path) -> None:
        entries = []
        for item in job.inputs:
            if item.job is not None:
                upstream = plan.job(item.job)
                assert upstream.step_key is not None
                path = self.products.product_path(upstream.step_key, item.category)
                entries.append(
                    {
                        "category": item.category,
                        "role": item.role,
                        "path": self.executor.container_path(path),
                        "file_id": None,
                        "checksum": None,
                        "step_key": upstream.step_key,
                    }
                )
            else:
                assert item.path is not None
                if item.path.startswith(PIPELINE_SCHEME):
                    where = item.path  # shipped with the pipeline: the recipe resolves it
                else:
                    path = Path(item.path)
                    host = path if path.is_absolute() else inside(self.archive_root, item.path)
                    if host is None:  # a link planted after indexing, leading out
                        raise ProductError(f"{item.path}: resolves outside the archive")
                    where = self.executor.container_path(host)
                entry = {
                    "category": item.category,
                    "role": item.role,
                    "path": where,
                    "file_id": item.file_id,
                    "checksum": item.checksum,
                    "step_key": None,
                }
                if item.types:
                    entry["types"] = list(item.types)
                entries.append(entry)
        document = {
            "step_key": job.step_key,
            "job_id": job.job_id,
            "recipe": job.recipe,
            "recipe_version": job.recipe_version,
            "inputs": entries,
        }
        (workdir / "inputs.json").write_text(json.dumps(document, indent=1))
        (workdir / "params.json").write_text(json.dumps(job.parameters, indent=1))
