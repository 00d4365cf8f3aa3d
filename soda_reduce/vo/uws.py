"""UWS 1.1 document layer: phases, a table-driven state machine, XML rendering, request parsing.

Pure functions only (no I/O): the aiohttp handlers and the job store build a `JobSummary` and
call `render_job`; keeping XML here means the schema order and nil rules live in one place and
are checked against the REC XSD in the tests.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal
from urllib.parse import urlsplit

from lxml import etree

from soda_reduce.vo.dali import render_error_votable

UWS_NS = "http://www.ivoa.net/xml/UWS/v1.0"
XLINK_NS = "http://www.w3.org/1999/xlink"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
NSMAP = {"uws": UWS_NS, "xlink": XLINK_NS, "xsi": XSI_NS}
UWS_VERSION = "1.1"
XML_MEDIA_TYPE = "text/xml"
INT32_MAX = 2**31 - 1  # executionDuration is xs:int


class Phase(StrEnum):
    """The UWS 1.1 execution phases (the XSD's ExecutionPhase enumeration)."""

    PENDING = "PENDING"
    QUEUED = "QUEUED"
    EXECUTING = "EXECUTING"
    COMPLETED = "COMPLETED"
    ERROR = "ERROR"
    ABORTED = "ABORTED"
    UNKNOWN = "UNKNOWN"
    HELD = "HELD"
    SUSPENDED = "SUSPENDED"
    ARCHIVED = "ARCHIVED"


P = Phase
# DaCHS style: one table says which changes are legal, so handlers and workers cannot disagree.
# Staying in the same phase is always allowed (a no-op, e.g. RUN on a QUEUED job).
TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    P.PENDING: frozenset({P.QUEUED, P.EXECUTING, P.HELD, P.ABORTED, P.ERROR, P.ARCHIVED}),
    P.QUEUED: frozenset({P.EXECUTING, P.HELD, P.ABORTED, P.ERROR}),
    P.EXECUTING: frozenset({P.COMPLETED, P.ERROR, P.ABORTED, P.SUSPENDED, P.HELD}),
    P.HELD: frozenset({P.PENDING, P.QUEUED, P.EXECUTING, P.ABORTED, P.ERROR}),
    P.SUSPENDED: frozenset({P.EXECUTING, P.QUEUED, P.ABORTED, P.ERROR}),
    P.COMPLETED: frozenset({P.ARCHIVED}),
    P.ERROR: frozenset({P.ARCHIVED}),
    P.ABORTED: frozenset({P.ARCHIVED}),
    P.ARCHIVED: frozenset(),
    # UNKNOWN is a recovery state (e.g. lost track of a worker): it may resolve to anything.
    P.UNKNOWN: frozenset(set(Phase) - {P.UNKNOWN}),
}
# Phases in which WAIT blocks (UWS 1.1 section 2.2.1.1).
ACTIVE: frozenset[Phase] = frozenset({P.PENDING, P.QUEUED, P.EXECUTING})
# Phases the job never leaves except for ARCHIVED.
FINAL: frozenset[Phase] = frozenset({P.COMPLETED, P.ERROR, P.ABORTED, P.ARCHIVED})


def can_transition(old: Phase, new: Phase) -> bool:
    """Whether a job may go from `old` to `new` (identical phases count as a legal no-op)."""
    return old == new or new in TRANSITIONS[old]


@dataclass(frozen=True, slots=True)
class Parameter:
    """One job parameter; `by_reference` means `value` is a URL to the actual value."""

    name: str
    value: str
    is_post: bool = False
    by_reference: bool = False


@dataclass(frozen=True, slots=True)
class Result:
    """One result link; the href must be absolute because clients (pyvo) do not resolve it."""

    id: str
    href: str
    mime_type: str | None = None
    size: int | None = None

    def __post_init__(self) -> None:
        parts = urlsplit(self.href)
        if not (parts.scheme and parts.netloc):
            raise ValueError(f"result {self.id!r}: href must be an absolute URL: {self.href!r}")


@dataclass(frozen=True, slots=True)
class ErrorSummary:
    """errorSummary content; the message is always written because pyvo reports it."""

    message: str
    type: Literal["fatal", "transient"] = "fatal"
    has_detail: bool = False


@dataclass(frozen=True, slots=True)
class JobSummary:
    """Everything the uws:job document shows; times are timezone-aware (naive means UTC)."""

    job_id: str
    phase: Phase
    creation_time: datetime
    run_id: str | None = None
    owner_id: str | None = None
    quote: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    execution_duration: int = 0
    destruction: datetime | None = None
    parameters: Sequence[Parameter] = ()
    results: Sequence[Result] = ()
    error_summary: ErrorSummary | None = None
    job_info: etree._Element | Sequence[etree._Element] | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class JobRef:
    """One row of the job list; `href` is the job's absolute URL."""

    id: str
    phase: Phase
    href: str
    run_id: str | None = None
    owner_id: str | None = None
    creation_time: datetime | None = None


# --------------------------------------------------------------------------- rendering


def format_time(value: datetime) -> str:
    """ISO 8601 in UTC with a Z; milliseconds only when present, as most services write."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += f".{value.microsecond // 1000:03d}"
    return text + "Z"


def _q(name: str) -> str:
    return f"{{{UWS_NS}}}{name}"


def _sub(parent: etree._Element, name: str, text: str | None) -> etree._Element:
    """A child element; None becomes xsi:nil so nillable elements stay present in order."""
    child = etree.SubElement(parent, _q(name))
    if text is None:
        child.set(f"{{{XSI_NS}}}nil", "true")
    else:
        child.text = text
    return child


def _time_or_none(value: datetime | None) -> str | None:
    return None if value is None else format_time(value)


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _root(name: str) -> etree._Element:
    return etree.Element(_q(name), nsmap=NSMAP)


def _serialize(root: etree._Element) -> bytes:
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def parameters_element(parameters: Iterable[Parameter]) -> etree._Element:
    """uws:parameters; a fresh root element so it can be embedded or served alone."""
    root = _root("parameters")
    for param in parameters:
        el = etree.SubElement(root, _q("parameter"), id=param.name)
        if param.by_reference:
            el.set("byReference", "true")
        if param.is_post:
            el.set("isPost", "true")
        el.text = param.value
    return root


def results_element(results: Iterable[Result]) -> etree._Element:
    """uws:results with xlink:type="simple" links, as the UWS reference attribute group wants."""
    root = _root("results")
    for result in results:
        el = etree.SubElement(root, _q("result"), id=result.id)
        el.set(f"{{{XLINK_NS}}}type", "simple")
        el.set(f"{{{XLINK_NS}}}href", result.href)
        if result.size is not None:
            el.set("size", str(result.size))
        if result.mime_type is not None:
            el.set("mime-type", result.mime_type)
    return root


def error_summary_element(error: ErrorSummary) -> etree._Element:
    """uws:errorSummary with its message (a type, not a global element, in the XSD)."""
    root = _root("errorSummary")
    root.set("type", error.type)
    root.set("hasDetail", _bool(error.has_detail))
    _sub(root, "message", error.message)
    return root


def job_element(job: JobSummary) -> etree._Element:
    """uws:job with every element in XSD order; optional-but-nillable ones written as nil."""
    root = _root("job")
    root.set("version", UWS_VERSION)
    _sub(root, "jobId", job.job_id)
    if job.run_id is not None:
        _sub(root, "runId", job.run_id)
    _sub(root, "ownerId", job.owner_id)
    _sub(root, "phase", Phase(job.phase).value)
    _sub(root, "quote", _time_or_none(job.quote))
    _sub(root, "creationTime", format_time(job.creation_time))
    _sub(root, "startTime", _time_or_none(job.start_time))
    _sub(root, "endTime", _time_or_none(job.end_time))
    _sub(root, "executionDuration", str(job.execution_duration))
    _sub(root, "destruction", _time_or_none(job.destruction))
    root.append(parameters_element(job.parameters))
    root.append(results_element(job.results))
    if job.error_summary is not None:
        root.append(error_summary_element(job.error_summary))
    if job.job_info is not None:
        info = etree.SubElement(root, _q("jobInfo"))
        items = [job.job_info] if isinstance(job.job_info, etree._Element) else job.job_info
        for item in items:
            info.append(copy.deepcopy(item))  # append() would move the caller's element
    return root


def render_job(job: JobSummary) -> bytes:
    """The job document (GET {jobs}/{id})."""
    return _serialize(job_element(job))


def render_job_list(refs: Iterable[JobRef]) -> bytes:
    """The job list (GET {jobs}), version 1.1, one uws:jobref with xlink:href per job."""
    root = _root("jobs")
    root.set("version", UWS_VERSION)
    for ref in refs:
        el = etree.SubElement(root, _q("jobref"), id=ref.id)
        el.set(f"{{{XLINK_NS}}}type", "simple")
        el.set(f"{{{XLINK_NS}}}href", ref.href)
        _sub(el, "phase", Phase(ref.phase).value)
        if ref.run_id is not None:
            _sub(el, "runId", ref.run_id)
        _sub(el, "ownerId", ref.owner_id)
        if ref.creation_time is not None:
            _sub(el, "creationTime", format_time(ref.creation_time))
    return _serialize(root)


def render_results(results: Iterable[Result]) -> bytes:
    """The results sub-resource (GET {job}/results)."""
    return _serialize(results_element(results))


def render_parameters(parameters: Iterable[Parameter]) -> bytes:
    """The parameters sub-resource (GET {job}/parameters)."""
    return _serialize(parameters_element(parameters))


def render_error_summary(error: ErrorSummary) -> bytes:
    """The error sub-resource (GET {job}/error): a DALI error VOTable, as DaCHS serves it.

    UWS 1.1 leaves the representation open; the errorSummary element itself is not a global
    element of the XSD, so a VOTable is the document clients can actually parse.
    """
    return render_error_votable(error.message)


# --------------------------------------------------------------------------- request parsing

_PHASE_ACTIONS = {"RUN": Phase.QUEUED, "ABORT": Phase.ABORTED}
_UINT = re.compile(r"\+?[0-9]+")


def parse_phase_request(value: str) -> Phase:
    """PHASE=RUN|ABORT (case-insensitive) to the target phase: RUN→QUEUED, ABORT→ABORTED.

    Returning the target lets callers check `can_transition(job.phase, target)` directly.
    """
    target = _PHASE_ACTIONS.get(value.strip().upper())
    if target is None:
        raise ValueError(f"PHASE must be RUN or ABORT, not {value!r}")
    return target


def parse_datetime(text: str) -> datetime:
    """ISO 8601 with or without Z/offset; naive values are taken as UTC, results are UTC.

    Dates at the ends of the calendar (year 1 at +14:00) cannot move to UTC: refused."""
    shown = text[:64]
    try:
        value = datetime.fromisoformat(text.strip())
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)
    except (ValueError, OverflowError):
        raise ValueError(f"not an ISO 8601 date-time in range: {shown!r}") from None


def parse_destruction(text: str) -> datetime:
    """DESTRUCTION=<ISO 8601 date-time>."""
    return parse_datetime(text)


def _shown(text: str) -> str:
    return repr(text[:40])


def filter_error(name: str, expected: str, value: str) -> ValueError:
    """The one wording of every job-list and WAIT filter error: "NAME must be ..., not '...'"."""
    return ValueError(f"{name} must be {expected}, not {_shown(value)}")


def repeated_error(name: str, count: int) -> ValueError:
    """A single-valued filter given more than once (the wording of DALI's `single`)."""
    return ValueError(f"parameter {name} given {count} times; expected once")


_PHASE_NAMES = ", ".join(p.value for p in Phase)


def parse_phase_filter(value: str, name: str = "PHASE") -> Phase:
    """A PHASE filter value (job list, WAIT): any UWS phase, case-insensitive."""
    try:
        return Phase(value.strip().upper())
    except ValueError:
        raise filter_error(name, f"a UWS phase ({_PHASE_NAMES})", value) from None


def _parse_uint(text: str, name: str, expected: str = "a non-negative integer") -> int:
    stripped = text.strip()
    if len(stripped) > 19 or not _UINT.fullmatch(stripped):  # beyond int64: no use
        raise filter_error(name, expected, text)
    return int(stripped)


def parse_execution_duration(text: str) -> int:
    """EXECUTIONDURATION in whole seconds; 0 means unlimited, the maximum is an xs:int."""
    seconds = _parse_uint(text, "EXECUTIONDURATION")
    if seconds > INT32_MAX:
        raise ValueError(f"EXECUTIONDURATION must be at most {INT32_MAX}")
    return seconds


def parse_wait(text: str) -> int:
    """WAIT in seconds: -1 (as long as the server allows) or >= 0; the caller applies its cap."""
    if text.strip() == "-1":
        return -1
    return _parse_uint(text, "WAIT", "-1 or a non-negative integer (seconds)")


def _items(items: Iterable[tuple[str, str]] | Mapping[str, str]) -> Iterable[tuple[str, str]]:
    if isinstance(items, Mapping) or hasattr(items, "items"):
        return items.items()  # type: ignore[union-attr]
    return items


def parse_job_list_filters(
    items: Iterable[tuple[str, str]] | Mapping[str, str],
) -> tuple[set[Phase], datetime | None, int | None]:
    """Job-list PHASE (repeatable, union), AFTER and LAST; names case-insensitive.

    An empty phase set means no PHASE filter: the caller then leaves ARCHIVED jobs out, as
    UWS 1.1 requires. Other parameter names are ignored.
    """
    phases: set[Phase] = set()
    after: datetime | None = None
    last: int | None = None
    counts: dict[str, int] = {}
    for raw_name, value in _items(items):
        name = raw_name.upper()
        counts[name] = counts.get(name, 0) + 1
        if name == "PHASE":
            phases.add(parse_phase_filter(value))
        elif name == "AFTER":
            try:
                after = parse_datetime(value)
            except ValueError:
                raise filter_error("AFTER", "an ISO 8601 date-time", value) from None
        elif name == "LAST":
            last = _parse_uint(value, "LAST", "a positive integer")
            if last == 0:
                raise filter_error("LAST", "a positive integer", value)
    for name in ("AFTER", "LAST"):
        if counts.get(name, 0) > 1:
            raise repeated_error(name, counts[name])
    return phases, after, last
