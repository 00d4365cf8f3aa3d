"""Job lists: an owner's jobs by creation time, bounded, on what SecantusDB does well.

SecantusDB sorts every document a filter matches before it applies a limit (an owner
with 100,000 jobs cost 6 s per list), scans the whole collection when the filter names
the phase, and reads a whole index even for an index-only sort; but it bounds an owner +
creation-time range on the ``owner_created`` index. So a list reads windows of creation
time that widen (x4) until it has enough rows, and filters phases itself: newest first
from now for LAST, oldest first from the owner's first creation (kept in ``job_owners``
with ``$min`` at each creation) or from AFTER. Each window stays small because creations
are rate-limited per caller; no job outlives `MAX_JOB_AGE`, so the windows end there.

The first creation is written before the job (a list never starts after a stored job),
once per owner and process: an owner this process has recorded is not written again
(``$min`` could not lower it), and a new anonymous session's record is inserted, not
upserted (SecantusDB: an upsert costs ~2.5 inserts).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ASCENDING, DESCENDING, InsertOne, UpdateOne

from soda_reduce.runtime.store import Store
from soda_reduce.runtime.store.errors import DuplicateKey, retrying
from soda_reduce.vo.uws import Phase

OWNERS = "job_owners"  # _id: the owner (or "" for none), first: its first creation time
MAX_LIST = 1000  # rows of one job list; AFTER pages on
LIST_WINDOW = timedelta(minutes=2)  # the first window of creation time a list reads
LIST_WINDOWS = 16  # windows, each 4 times the last: from 2 minutes to beyond MAX_JOB_AGE
MAX_JOB_AGE = timedelta(days=365)  # no job outlives this (destruction is clamped to it)
RECORDED_OWNERS = 20_000  # owners whose first creation this process remembers having written
# a job list never reads plans, steps or results: they can be large
LIST_PROJECTION = {"_id": 0, "job_id": 1, "phase": 1, "run_id": 1, "owner": 1, "creation_time": 1}


def _key(owner: str | None) -> str:
    return owner or ""


@dataclass(frozen=True)
class Creation:
    """A job about to be inserted, as its owner's record sees it."""

    owner: str | None
    when: datetime
    new_owner: bool = False  # an owner that has no job yet (a session minted for this job)


class JobLists:
    def __init__(self, store: Store) -> None:
        self._jobs = store.jobs
        self._owners = store.db[OWNERS]
        self._recorded: OrderedDict[str, None] = OrderedDict()

    async def note_creations(self, creations: Sequence[Creation]) -> None:
        """Keep the owners' first creation times (where an oldest-first list starts), in
        one bulk write; owners this process already recorded are skipped."""
        firsts: dict[str, Creation] = {}
        for creation in creations:
            key = _key(creation.owner)
            if key in self._recorded:
                self._recorded.move_to_end(key)
            elif key not in firsts or creation.when < firsts[key].when:
                firsts[key] = creation
        if not firsts:
            return
        writes = [
            InsertOne({"_id": key, "first": c.when})
            if c.new_owner
            else UpdateOne({"_id": key}, {"$min": {"first": c.when}}, upsert=True)
            for key, c in firsts.items()
        ]
        try:
            await retrying(lambda: self._owners.bulk_write(writes, ordered=False))
        except DuplicateKey as exc:  # another creation raced to insert, or a retry: $min then
            keys = list(firsts)
            again = [
                UpdateOne({"_id": keys[i]}, {"$min": {"first": firsts[keys[i]].when}})
                for i in exc.duplicates
            ]
            if again:
                await retrying(lambda: self._owners.bulk_write(again, ordered=False))
        for key in firsts:
            self._recorded[key] = None
        while len(self._recorded) > RECORDED_OWNERS:
            self._recorded.popitem(last=False)

    async def first_creation(self, owner: str | None) -> datetime | None:
        doc = await retrying(lambda: self._owners.find_one({"_id": _key(owner)}))
        first = doc.get("first") if doc else None
        if first is not None and first.tzinfo is None:
            first = first.replace(tzinfo=UTC)
        return first

    async def rows(
        self,
        owner: str | None,
        phases: Iterable[Phase] = (),
        after: datetime | None = None,
        last: int | None = None,
        *,
        fields: Iterable[str] = (),
        before: datetime | None = None,
    ) -> list[dict[str, Any]]:
        """At most `MAX_LIST` rows, newest first when LAST is given, otherwise oldest first
        (a client pages on with AFTER, the last row's time). No PHASE filter leaves
        ARCHIVED jobs out (UWS 1.1 section 2.2.1.1). ``fields``: more to project.
        ``before`` (newest first only): jobs created before it, the HTML list's next page."""
        wanted = {p.value for p in phases}
        limit = min(last or MAX_LIST, MAX_LIST)
        newest_first = last is not None
        edge = datetime.now(UTC) + timedelta(minutes=1)  # creation times never lie beyond
        floor = edge - MAX_JOB_AGE - timedelta(days=1)
        if before is not None and newest_first:
            edge = max(min(edge, before), floor)
        if not newest_first:
            first = await self.first_creation(owner)  # None: jobs from before job_owners
            if first is not None:
                floor = max(floor, first - timedelta(seconds=1))
        if after is not None:
            floor = max(floor, after)
        projection = LIST_PROJECTION | dict.fromkeys(fields, 1)
        rows: list[dict[str, Any]] = []
        span = LIST_WINDOW
        start = edge if newest_first else floor
        for _ in range(LIST_WINDOWS):
            if (start <= floor) if newest_first else (start >= edge):
                break
            if newest_first:
                window = (max(start - span, floor), start)
                start = window[0]
            else:
                window = (start, min(start + span, edge))
                start = window[1]
            query = {"owner": owner, "creation_time": _times(window, after)}
            found = await self._window(query, projection, newest_first)
            for row in found:
                phase = row.get("phase")
                if (phase in wanted) if wanted else phase != Phase.ARCHIVED.value:
                    rows.append(row)
                    if len(rows) >= limit:
                        return rows
            span = min(span * 4, MAX_JOB_AGE)
        return rows

    async def _window(
        self, query: dict[str, Any], projection: dict[str, Any], newest_first: bool
    ) -> list[dict[str, Any]]:
        direction = DESCENDING if newest_first else ASCENDING
        order = [("creation_time", direction), ("job_id", direction)]
        return await retrying(lambda: self._jobs.find(query, projection).sort(order).to_list())


def _times(window: tuple[datetime, datetime], after: datetime | None) -> dict[str, Any]:
    low, high = window
    if after is not None and low <= after:
        return {"$gt": after, "$lt": high}
    return {"$gte": low, "$lt": high}
