"""The rows of the HTML job list (``/jobs``): what a person recognises a job by.

A row names the job's raw files (linked to their pages), their object and instrument
setup, the target, the phase and the job's age. The list reads one window of the
caller's jobs as the UWS list does (`runtime/job_lists.py`: newest first, capped, never
the plans), then the headers of at most `RAW_PER_JOB` raw files per row, in one batched
lookup by ID: the cost follows the page, not the archive or the number of jobs.

Pages go back in time with a cursor, the creation time and ID of a page's last row
(``?before=TIME&before_id=ID``): creation times have milliseconds, so the next page reads
jobs created before the end of that millisecond and drops those the last page showed.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from soda_reduce.reduction.index_model import RawFile
from soda_reduce.reduction.tasks import Cascade
from soda_reduce.runtime.archive_plans import ArchivePipelines
from soda_reduce.vo.dali import UsageError
from soda_reduce.vo.uws import format_time
from soda_reduce.web.context import Services
from soda_reduce.web.page_urls import job_page_url, raw_page_url

JOB_PAGE_SIZE = 50  # jobs per page of /jobs
RAW_PER_JOB = 5  # raw files named per row (the job page lists them all)
TIE_SLACK = 10  # rows read beyond a page: jobs sharing the cursor's millisecond
LIST_FIELDS = ("progress", "request.ids", "request.target", "plan.target")
# keywords that tell observations apart but are no instrument setup
NOT_SETUP = frozenset({"NIGHT", "MJD", "DATE", "DATE-OBS", "EXPTIME", "FILE", "OBJECT"})
_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CURSOR_TIME = 40  # characters of an ISO time, at most


@dataclass(frozen=True)
class Cursor:
    """Where the next page starts: after this job, in newest-first order."""

    time: datetime
    job_id: str

    def query(self) -> str:
        return urlencode({"before": format_time(self.time), "before_id": self.job_id})


def parse_cursor(query: Mapping[str, str]) -> Cursor | None:
    """``before`` and ``before_id`` of the query string, checked (a 400 if malformed)."""
    when, job_id = query.get("before"), query.get("before_id")
    if when is None and job_id is None:
        return None
    if not when or not job_id or len(when) > _CURSOR_TIME or not _JOB_ID.fullmatch(job_id):
        raise UsageError("before must be an ISO time and before_id a job ID, both from a page")
    try:
        parsed = datetime.fromisoformat(when)
    except ValueError:
        raise UsageError(f"before is not an ISO 8601 time: {when!r}") from None
    return Cursor(parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC), job_id)


@dataclass(frozen=True)
class JobListPage:
    rows: list[dict[str, Any]]
    next: Cursor | None  # None: this is the last page


async def job_list_page(
    services: Services, owner: str | None, cursor: Cursor | None, root: str
) -> JobListPage:
    """One page of the caller's jobs, newest first (only theirs: the owner is the filter)."""
    before = cursor.time + timedelta(milliseconds=1) if cursor else None
    wanted = JOB_PAGE_SIZE + 1 + (TIE_SLACK if cursor else 0)
    rows = await services.jobs.jobs.list(owner, last=wanted, fields=LIST_FIELDS, before=before)
    if cursor is not None:  # the ones the previous page ended with
        rows = [r for r in rows if not _shown_before(r, cursor)]
    page = rows[:JOB_PAGE_SIZE]
    ids = [i for row in page for i in _raw_ids(row)[:RAW_PER_JOB]]
    found = await services.jobs.store.raw_files_by_id(ids) if ids else []
    described = await asyncio.to_thread(describe_raw_files, services.jobs.pipelines, found)
    now = datetime.now(UTC)
    shown = [_row(row, described, root, now) for row in page]
    last = page[-1] if page else None
    more = len(rows) > JOB_PAGE_SIZE and last is not None
    end = _aware(last["creation_time"]) if more and last is not None else None
    return JobListPage(shown, Cursor(end, last["job_id"]) if end and last else None)


def _shown_before(row: Mapping[str, Any], cursor: Cursor) -> bool:
    created = _aware(row.get("creation_time"))
    return created == cursor.time and str(row.get("job_id")) >= cursor.job_id


def _raw_ids(row: Mapping[str, Any]) -> list[str]:
    request = row.get("request") if isinstance(row.get("request"), dict) else {}
    return [str(i) for i in request.get("ids") or []]


@dataclass(frozen=True)
class RawSummary:
    """What the list says of one raw file."""

    path: str
    object: str
    setup: str


def describe_raw_files(pipelines: ArchivePipelines, files: list[RawFile]) -> dict[str, RawSummary]:
    """Object and setup of each file, through its pipeline's derivations (CPU: a thread)."""
    described = {}
    for raw in files:
        pipeline = pipelines.of(raw)
        frame = pipelines.frame(raw)
        keys = setup_keywords(pipeline.cascade) if pipeline is not None else ()
        setup = ", ".join(f"{k}={frame.get(k)}" for k in keys if frame.get(k) not in (None, ""))
        described[raw.file_id] = RawSummary(raw.path, str(raw.header.get("OBJECT") or ""), setup)
    return described


_SETUPS: dict[int, tuple[Cascade, tuple[str, ...]]] = {}


def setup_keywords(cascade: Cascade) -> tuple[str, ...]:
    """The keywords that decide which calibrations serve a frame (grouping, association
    levels, tolerances), less those of time and target: the cascade's own notion of an
    instrument setup (FILTER, BINNING... for ccd; ARM, DISPNAME, DICHROIC for kast)."""
    cached = _SETUPS.get(id(cascade))
    if cached is not None and cached[0] is cascade:
        return cached[1]
    found: list[str] = []
    for source in cascade.data_sources:
        found += [*source.group_by, *(k for k, _ in source.group_near)]
    for task in cascade.tasks:
        for associated in task.associated:
            for level in associated.rule.levels:
                found += [*level.keywords, *(k for k, _ in level.tolerances)]
    keys = tuple(k for k in dict.fromkeys(found) if k not in NOT_SETUP)
    _SETUPS[id(cascade)] = (cascade, keys)
    return keys


def _row(
    row: Mapping[str, Any], described: Mapping[str, RawSummary], root: str, now: datetime
) -> dict[str, Any]:
    ids = _raw_ids(row)
    raws = []
    for file_id in ids[:RAW_PER_JOB]:
        summary = described.get(file_id)
        if summary is None:  # no longer indexed: its ID says which it was
            raws.append({"name": file_id.rsplit("?", 1)[-1], "url": None})
        else:
            raws.append({"name": summary.path, "url": raw_page_url(root, summary.path)})
    summaries = [described[i] for i in ids[:RAW_PER_JOB] if i in described]
    request = row.get("request") if isinstance(row.get("request"), dict) else {}
    plan = row.get("plan") if isinstance(row.get("plan"), dict) else {}
    created = _aware(row.get("creation_time"))
    return {
        "id": row["job_id"],
        "url": job_page_url(root, row["job_id"]),
        "phase": row["phase"],
        "run_id": row.get("run_id") or "",
        "created": created,
        "age": age_text(created, now),
        "target": plan.get("target") or request.get("target") or "",
        "raws": raws,
        "more_raws": max(0, len(ids) - RAW_PER_JOB),
        "objects": ", ".join(dict.fromkeys(s.object for s in summaries if s.object)),
        "setups": list(dict.fromkeys(s.setup for s in summaries if s.setup)),
        "progress": progress(row.get("progress")),
    }


def age_text(when: datetime | None, now: datetime) -> str:
    """ "3 min ago": how long since ``when``, in the largest whole unit."""
    when = _aware(when)
    if when is None:
        return ""
    seconds = (now - when).total_seconds()
    if seconds < 60:
        return "just now"
    for size, unit in ((86400, "day"), (3600, "h"), (60, "min")):
        if seconds >= size:
            count = int(seconds // size)
            plural = "s" if unit == "day" and count > 1 else ""
            return f"{count} {unit}{plural} ago"
    return "just now"


def progress(value: Mapping[str, Any] | None) -> dict[str, Any]:
    """A job's step counts, for the list and the job page."""
    value = value or {}
    done, total = int(value.get("done", 0)), int(value.get("total", 0))
    return {
        "done": done,
        "failed": int(value.get("failed", 0)),
        "total": total,
        "running": list(value.get("running") or []),
        "percent": round(100 * done / total) if total else 0,
    }


def _aware(value: Any) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)
