"""Job creations written in groups: one journaled ``insert_many`` for every creation waiting.

On SecantusDB a job insert costs ~1 ms of the store's CPU alone (its eight indexes, the
journal flush of ``j: true``, and the profile-settings lookup it makes after every command,
docs/store.md) but ~0.42 ms within a batch of 16. So creations do not each send their own
insert: the first one is written at once, and those that arrive while `IN_FLIGHT` writes
are under way wait for one of them and go together in the next (group commit). An idle
service adds no delay; a busy one writes a batch per round trip. Each creation still
returns only once its job is journaled, and learns its own outcome: a document refused
fails its own creation, not the batch's others.

Per batch the owners' first creations are written first (`JobLists.note_creations`, one
bulk write, skipped for owners already recorded), then the jobs, so a job list never
starts after a stored job.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection

from soda_reduce.runtime.job_lists import Creation, JobLists
from soda_reduce.runtime.store.errors import DuplicateKey, StoreError, retrying

log = logging.getLogger(__name__)

MAX_BATCH = 64  # creations per insert_many (each job document is bounded by the request's limits)
IN_FLIGHT = 1  # batches written at once (2 measured no better: smaller batches)


@dataclass
class _Waiting:
    doc: dict[str, Any]
    creation: Creation
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class JobInserts:
    """The write side of job creation for one process (one per `JobStore`)."""

    def __init__(self, jobs: AsyncCollection, lists: JobLists, in_flight: int = IN_FLIGHT) -> None:
        self._jobs = jobs
        self._lists = lists
        self._in_flight = max(1, in_flight)
        self._waiting: list[_Waiting] = []
        self._writers: set[asyncio.Task[None]] = set()

    async def insert(self, doc: dict[str, Any], *, new_owner: bool = False) -> None:
        """Write one job document (journaled) with its owner's first creation; returns
        once it is stored, raising the store's typed error if it was refused."""
        waiting = _Waiting(doc, Creation(doc["owner"], doc["creation_time"], new_owner))
        self._waiting.append(waiting)
        if len(self._writers) < self._in_flight:
            writer = asyncio.create_task(self._write_all())
            self._writers.add(writer)
            writer.add_done_callback(self._writers.discard)
        await asyncio.shield(waiting.done)  # a cancelled caller leaves the batch intact

    async def _write_all(self) -> None:
        """Batches until nobody waits (bounded by the waiters: each batch takes some)."""
        while self._waiting:
            batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
            try:
                await self._write(batch)
            except Exception as exc:  # every waiter of the batch learns it; none is lost
                for waiting in batch:
                    if not waiting.done.done():
                        waiting.done.set_exception(exc)

    async def _write(self, batch: Sequence[_Waiting]) -> None:
        await self._lists.note_creations([w.creation for w in batch])
        docs = [dict(w.doc) for w in batch]  # insert_many adds an _id to what it is given
        refused: dict[int, StoreError] = {}
        try:
            await retrying(lambda: self._jobs.insert_many(docs, ordered=False))
        except StoreError as exc:
            if not exc.refused:  # nothing says which were written: all fail
                raise
            refused = exc.refused
        for n, error in list(refused.items()):
            if isinstance(error, DuplicateKey) and await self._ours(batch[n].doc):
                del refused[n]
        for n, waiting in enumerate(batch):
            if n in refused:
                waiting.done.set_exception(refused[n])
            else:
                waiting.done.set_result(None)

    async def _ours(self, doc: dict[str, Any]) -> bool:
        """Whether the stored job with this ID is this one: a retried insert_many (after a
        dropped connection) finds the documents its first attempt wrote."""
        stored = await retrying(
            lambda: self._jobs.find_one(
                {"job_id": doc["job_id"]}, {"_id": 0, "owner": 1, "creation_time": 1}
            )
        )
        if stored == {"owner": doc["owner"], "creation_time": doc["creation_time"]}:
            return True
        log.error("job id %s is already another job's", doc["job_id"])
        return False
