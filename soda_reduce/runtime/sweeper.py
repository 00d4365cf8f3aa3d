"""The sweeper: the periodic safety nets of the job service.

- outbox: QUEUED jobs whose plan the broker never confirmed are published
  again; EXECUTING jobs whose worker stopped renewing its lease are published
  again (in embedded mode there is no broker to redeliver them);
- lost messages: QUEUED jobs published ``lost_after`` ago that no worker has
  taken (a purged queue, a message dead-lettered by a worker that failed while
  taking the job) are published again, once per ``lost_after``; a duplicate is
  harmless, the phase compare-and-set lets one worker take the job and the
  others drop their copy;
- executionDuration: a job past its limit whose worker is gone is aborted;
- destruction: jobs past their destruction time are deleted with their
  result links;
- step cache: finished steps no stored job refers to are collected, oldest
  first, while the product store is over its size cap.

Every action is a compare-and-set or idempotent, so several sweepers (one per
API process) may run at once. Every query is served by an index and bounded
(`runtime.sweep_queries`): a pass acts on at most `SWEEP_BATCH` jobs of each
kind, the next pass on the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from soda_reduce.runtime.jobs import JobStore, utcnow
from soda_reduce.runtime.products import ProductStore
from soda_reduce.runtime.service import JobService
from soda_reduce.vo.uws import Phase

log = logging.getLogger(__name__)


@dataclass
class SweepReport:
    republished: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)  # QUEUED, their message lost: published again
    aborted: list[str] = field(default_factory=list)
    destroyed: list[str] = field(default_factory=list)
    collected: list[str] = field(default_factory=list)
    freed_bytes: int = 0
    scratch_removed: int = 0
    cutouts_removed: list[str] = field(default_factory=list)


class Sweeper:
    def __init__(
        self,
        service: JobService,
        products: ProductStore,
        *,
        cache_bytes: int,
        outbox_after: timedelta = timedelta(seconds=5),
        lease_grace: timedelta = timedelta(seconds=30),
        lost_after: timedelta = timedelta(minutes=10),
        collect_every_s: float = 60.0,
        scratch_max_age: timedelta = timedelta(days=1),
    ) -> None:
        self.service = service
        self.jobs: JobStore = service.jobs
        self.products = products
        self.cache_bytes = cache_bytes
        self.outbox_after = outbox_after
        self.lease_grace = lease_grace
        self.lost_after = lost_after
        self.collect_every_s = collect_every_s
        self.scratch_max_age = scratch_max_age
        self._last_collect = 0.0

    async def run(self, every_s: float) -> None:
        """Sweep until cancelled; one failed sweep is logged, not fatal."""
        while True:
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:  # the store may be restarting: try again next time
                log.exception("sweep failed")
            await asyncio.sleep(every_s)

    async def sweep(self, *, collect: bool | None = None) -> SweepReport:
        report = SweepReport()
        now = utcnow()
        for job in await self.jobs.unpublished(self.outbox_after):
            if await self.service.publish(job.job_id):
                report.republished.append(job.job_id)
        for job in await self.jobs.lost(now - self.lost_after):
            if await self.jobs.mark_lost(job, now):
                if await self.service.publish(job.job_id, again=True):
                    report.lost.append(job.job_id)
                else:  # the broker is down: try again next pass, not a period later
                    await self.jobs.unmark_lost(job, now)
        for job in await self.jobs.orphaned(now - self.lease_grace):
            # mark it (one sweeper republishes, once per grace period) but leave the
            # lease expired: a lease in the future would make workers wait it out
            expect = {
                "phase": Phase.EXECUTING.value,
                "lease_until": job.lease_until,
                "republished_time": job.doc.get("republished_time"),
            }
            marked = await self.jobs.update_if(job.job_id, expect, {"republished_time": now})
            if marked and await self.service.publish(job.job_id, again=True):
                report.republished.append(job.job_id)
        for job in await self.jobs.overdue(now - self.lease_grace):
            if job.lease_until is not None and job.lease_until > now:
                continue  # its worker lives and enforces the limit itself
            message = f"executionDuration of {job.execution_duration} s exceeded"
            if await self.service.abort(job.job_id, message, code="deadline"):
                report.aborted.append(job.job_id)
        for job in await self.jobs.expired(now):
            with contextlib.suppress(Exception):
                await self.service.delete(job.job_id, job.owner)
                report.destroyed.append(job.job_id)
        due = time.monotonic() - self._last_collect >= self.collect_every_s
        if collect or (collect is None and due):
            self._last_collect = time.monotonic()
            await self.collect(report)
        return report

    async def collect(self, report: SweepReport) -> None:
        """Remove unreferenced steps, least recently finished first, down to the cap.

        Also removes attempt directories left in ``scratch/`` by killed or cancelled
        steps (a finished attempt moves its products out and removes its own).
        """
        cutoff = time.time() - self.scratch_max_age.total_seconds()
        report.scratch_removed = await asyncio.to_thread(
            _remove_old, self.products.root / "scratch", cutoff
        )
        await self._remove_orphan_cutouts(report)
        steps = await asyncio.to_thread(_step_dirs, self.products.root / "steps")
        total = sum(size for _, size, _ in steps)
        if total <= self.cache_bytes:
            return
        keep = await self.jobs.referenced_step_keys()  # reads every job: only when needed
        for key, size, _mtime in sorted(steps, key=lambda s: s[2]):
            if total <= self.cache_bytes:
                break
            if key in keep:
                continue
            # forget first: a plan that wants it again recomputes rather than reads half a dir
            await self.service.finished_steps.forget(key)
            await self.service.product_records.forget_step(key)
            await asyncio.to_thread(shutil.rmtree, self.products.step_dir(key), True)
            total -= size
            report.collected.append(key)
            report.freed_bytes += size

    async def _remove_orphan_cutouts(self, report: SweepReport) -> None:
        """Cutouts belong to one job: remove those of jobs deleted or destroyed."""
        root = self.products.root / "cutouts"
        found = await asyncio.to_thread(_job_dirs, root)
        stored = await self.jobs.existing(found)
        for job_id in found:
            if job_id not in stored:
                await asyncio.to_thread(shutil.rmtree, root / job_id, True)
                report.cutouts_removed.append(job_id)


def _job_dirs(root: Path) -> list[str]:
    return [entry.name for entry in os.scandir(root) if entry.is_dir()] if root.is_dir() else []


def _remove_old(root: Path, cutoff: float) -> int:
    """Remove the entries of ``root`` not modified since ``cutoff``; how many went."""
    removed = 0
    if not root.is_dir():
        return removed
    for entry in os.scandir(root):
        with contextlib.suppress(OSError):
            if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                shutil.rmtree(entry.path, ignore_errors=True)
                removed += 1
    return removed


def _step_dirs(root: Path) -> list[tuple[str, int, float]]:
    """(step key, bytes, finish time) of every stored step."""
    found = []
    if not root.is_dir():
        return found
    for prefix in os.scandir(root):
        if not prefix.is_dir():
            continue
        for step in os.scandir(prefix.path):
            size = 0
            for dirpath, _dirs, files in os.walk(step.path):
                for name in files:
                    with contextlib.suppress(OSError):
                        size += os.stat(os.path.join(dirpath, name)).st_size
            found.append((step.name, size, step.stat().st_mtime))
    return found
