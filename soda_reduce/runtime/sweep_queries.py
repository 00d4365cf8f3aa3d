"""The filters of the sweeper's job queries, and the bounds of one sweeper pass.

The sweeper runs every few seconds over a collection that may hold 100,000 jobs,
so each filter is served by an index of `store.INDEXES` (named in its docstring;
tests/test_sweeper.py checks the store's explain) and `JobStore` reads
`SWEEP_FIELDS` only: never a job's plan, steps or results, which can be large.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from soda_reduce.vo.uws import Phase

SWEEP_BATCH = 200  # jobs one sweeper pass acts on per query; the next pass takes the rest
SWEEP_SCAN = 2000  # documents one sweeper query reads at most
SWEEP_FIELDS: dict[str, int] = {
    "_id": 0,
    **dict.fromkeys(
        [
            "job_id",
            "owner",
            "phase",
            "creation_time",
            "start_time",
            "execution_duration",
            "destruction",
            "published",
            "published_time",
            "queued_time",
            "requeues",
            "republished_time",
            "worker",
            "lease_until",
        ],
        1,
    ),
}


def unpublished_query(cutoff: datetime) -> dict[str, Any]:
    """QUEUED, never confirmed by the broker, queued before ``cutoff``: index
    ``phase_published_queued``."""
    return {"phase": Phase.QUEUED.value, "published": False, "queued_time": {"$lt": cutoff}}


def lost_query(cutoff: datetime) -> dict[str, Any]:
    """QUEUED, last message sent before ``cutoff``: index ``phase_published_sent``."""
    return {"phase": Phase.QUEUED.value, "published": True, "published_time": {"$lt": cutoff}}


def orphaned_query(before: datetime) -> dict[str, Any]:
    """EXECUTING under a lease that ended before ``before``: index ``phase_lease``."""
    return {"phase": Phase.EXECUTING.value, "lease_until": {"$lt": before}}


def expired_query(now: datetime) -> dict[str, Any]:
    """Past the destruction time: index ``destruction``."""
    return {"destruction": {"$lt": now}}


def overdue_query() -> dict[str, Any]:
    """EXECUTING: index ``phase`` (as many jobs as run at once; whether one is past its
    executionDuration is computed from its start time, so no other condition is needed,
    and SecantusDB would scan the collection for a second one on this index)."""
    return {"phase": Phase.EXECUTING.value}
