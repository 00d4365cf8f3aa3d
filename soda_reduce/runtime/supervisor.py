"""Supervision of everything a worker does for one job, from its steps to its cutouts.

A job's work (the plan's steps, then registering its products and cutting its
SODA results) runs as one task; `Supervisor.guard` waits for it while it

- renews the worker's lease on the job every third of the lease, so no other
  worker takes a job that is still being worked on (a republished message finds
  a live lease and is dropped);
- stops it when the job is aborted or deleted (an event wakes the guard at once;
  a store poll every ``check_s`` is the safety net) or taken over by another
  worker (the lease's compare-and-set failed);
- stops it when the job's executionDuration runs out, moving the job to ABORTED
  with the reason as its error (UWS 1.1: the service aborts an overrunning job).

Stopping raises `Stop`; the caller cancels the work task, whose parts clean up
on cancellation (the runner kills its recipes, cutting stops between cutouts).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

from soda_reduce.runtime.events import JobEvents
from soda_reduce.runtime.jobs import JobError, JobRecord, JobStore, utcnow
from soda_reduce.vo.uws import Phase

T = TypeVar("T")


class Stop(Exception):
    """Why a job's work was stopped (abort, deletion, time limit, lost lease)."""


def elapsed(job: JobRecord) -> float:
    """Seconds since the job started executing (0 before)."""
    if job.start_time is None:
        return 0.0
    return max(0.0, (utcnow() - job.start_time).total_seconds())


@dataclass
class Supervisor:
    jobs: JobStore
    events: JobEvents
    worker_id: str
    lease_s: float
    check_s: float

    async def guard(self, job: JobRecord, work: asyncio.Task[T]) -> T:
        """The result of ``work``, unless a stop reason came first (then `Stop`)."""
        deadline = (
            time.monotonic() + job.execution_duration - elapsed(job)
            if job.execution_duration
            else None
        )
        renew_every = self.lease_s / 3
        next_renew = time.monotonic() + renew_every
        async with self.events.watch(job.job_id) as watch:
            while not work.done():  # ends with the work, or by a Stop
                now = time.monotonic()
                timeout = min(self.check_s, max(0.0, next_renew - now))
                if deadline is not None:
                    timeout = min(timeout, max(0.0, deadline - now))
                waiter = asyncio.create_task(watch.wait(timeout))
                done, _ = await asyncio.wait({work, waiter}, return_when=asyncio.FIRST_COMPLETED)
                if work in done:
                    waiter.cancel()
                    break
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    await self._overrun(job)
                current = await self.jobs.get(job.job_id, any_owner=True)
                if current is None:
                    raise Stop("the job was deleted")
                if current.phase != Phase.EXECUTING or current.worker != self.worker_id:
                    raise Stop(f"the job is now {current.phase.value} ({current.worker})")
                if now >= next_renew:
                    lease = utcnow() + timedelta(seconds=self.lease_s)
                    renewed = await self.jobs.update_if(
                        job.job_id,
                        {"phase": Phase.EXECUTING.value, "worker": self.worker_id},
                        {"lease_until": lease},
                    )
                    if not renewed:
                        raise Stop("lost the job to another worker")
                    next_renew = now + renew_every
        return work.result()

    async def _overrun(self, job: JobRecord) -> None:
        message = f"executionDuration of {job.execution_duration} s exceeded"
        won = await self.jobs.transition(
            job.job_id,
            Phase.ABORTED,
            expect=[Phase.EXECUTING],
            changes={"abort_reason": message, "error": JobError("deadline", message).to_doc()},
            extra={"worker": self.worker_id},
        )
        if won:
            await self.events.publish(job.job_id, Phase.ABORTED.value)
        raise Stop(message)
