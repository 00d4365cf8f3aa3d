"""Our content of the UWS 1.1 `uws:jobInfo` element: plan, progress, datasets and steps.

UWS leaves jobInfo open (`xs:any`, lax), so the reduction state lives in a namespace of our own
with its own XSD (`vo_schemas/soda-reduce-jobinfo-v1.xsd`). Clients that know it get typed
progress and the reasons a dataset is incomplete; clients that do not (pyvo) simply skip it.
Pure functions only: the store builds a `JobInfo`, `jobinfo_elements` turns it into elements
for `uws.JobSummary.job_info`, and `parse_jobinfo` reads them back.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Final

from lxml import etree

JOBINFO_NS: Final = "http://soda-reduce.org/xml/jobinfo/v1"
JOBINFO_PREFIX: Final = "sr"
# The system id the XML catalog (vo_schemas/catalog.xml) maps to the local XSD.
JOBINFO_SCHEMA_URL: Final = "http://soda-reduce.org/xml/jobinfo/v1/soda-reduce-jobinfo-v1.xsd"

STEP_STATUSES: Final = ("pending", "running", "done", "cached", "failed", "skipped", "aborted")
# what a step that had not finished shows once its job was aborted
_INTERRUPTED: Final = {"running": "aborted", "pending": "skipped"}
QUALITY_LEVELS: Final = (0, 1, 2)

_NSMAP = {JOBINFO_PREFIX: JOBINFO_NS}
# Characters XML 1.0 cannot carry at all; recipe stderr (ANSI colours, NULs) is full of them,
# and lxml would raise while rendering the job document, so they become U+FFFD instead.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _q(name: str) -> str:
    return f"{{{JOBINFO_NS}}}{name}"


def xml_safe(value: str) -> str:
    """`value` with the characters XML 1.0 cannot represent replaced by U+FFFD."""
    return _NOT_XML.sub("\ufffd", value)


def _strings(value: Iterable[str], what: str) -> tuple[str, ...]:
    """A tuple of strings; a bare str would silently become a tuple of characters."""
    if isinstance(value, str):
        raise TypeError(f"{what} must be a sequence of strings, not a str")
    return tuple(value)


def _require(value: str, what: str) -> None:
    if not value:
        raise ValueError(f"{what} must not be empty")


def _non_negative(value: int, what: str) -> None:
    if value < 0:
        raise ValueError(f"{what} must be >= 0, not {value}")


@dataclass(frozen=True, slots=True)
class StepStatus:
    """One planned step (an EDPS "job": one task on one group of inputs) and where it stands.

    `cached` means the step key matched an earlier run and its products were reused; `skipped`
    means it was not needed (e.g. its dataset could not be completed, or its job was aborted
    before it started); `aborted` means it was running when its job was aborted.
    """

    job_id: str
    task: str
    status: str
    step_key: str | None = None
    attempts: int = 0
    error: str | None = None
    label: str = ""

    def __post_init__(self) -> None:
        _require(self.job_id, "step job_id")
        _require(self.task, "step task")
        if self.status not in STEP_STATUSES:
            raise ValueError(f"step status must be one of {STEP_STATUSES}, not {self.status!r}")
        _non_negative(self.attempts, "step attempts")


@dataclass(frozen=True, slots=True)
class DatasetInfo:
    """One dataset of the plan: the inputs reduced together up to the target task.

    `quality_level` is the worst association level reached (0 = same night and setup, 1 =
    within 3 nights, 2 = any valid); `reasons` say why it is incomplete or degraded, in words a
    user can act on; `main_inputs` are the IVOA identifiers of the raw files it reduces.
    """

    label: str
    target_job: str
    complete: bool
    quality_level: int
    reasons: tuple[str, ...] = ()
    main_inputs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.quality_level not in QUALITY_LEVELS:
            raise ValueError(
                f"quality_level must be one of {QUALITY_LEVELS}, not {self.quality_level!r}"
            )
        object.__setattr__(self, "reasons", _strings(self.reasons, "reasons"))
        object.__setattr__(self, "main_inputs", _strings(self.main_inputs, "main_inputs"))


@dataclass(frozen=True, slots=True)
class JobProgress:
    """Step counts of a running plan; `running` holds the job ids of the steps in flight."""

    done: int
    failed: int
    total: int
    running: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _non_negative(self.done, "done")
        _non_negative(self.failed, "failed")
        _non_negative(self.total, "total")
        if self.done + self.failed > self.total:
            raise ValueError(f"done + failed ({self.done} + {self.failed}) > total {self.total}")
        object.__setattr__(self, "running", _strings(self.running, "running"))

    @property
    def fraction(self) -> float:
        """Share of steps that are finished (done or failed); 0.0 while nothing is planned."""
        if self.total == 0:
            return 0.0
        return (self.done + self.failed) / self.total


@dataclass(frozen=True, slots=True)
class JobInfo:
    """Everything our jobInfo shows; `planned` is False until the planner has derived a DAG."""

    pipeline: str
    target: str
    progress: JobProgress | None = None
    datasets: tuple[DatasetInfo, ...] = ()
    steps: tuple[StepStatus, ...] = ()
    planned: bool = False
    cached_steps: int = 0

    def __post_init__(self) -> None:
        _require(self.pipeline, "pipeline")
        _require(self.target, "target")
        _non_negative(self.cached_steps, "cached_steps")
        object.__setattr__(self, "datasets", tuple(self.datasets))
        object.__setattr__(self, "steps", tuple(self.steps))

    def interrupted(self) -> JobInfo:
        """As an aborted job shows it: nothing running, steps in flight ``aborted``, steps
        not started ``skipped`` (whatever the stored progress last said)."""
        progress = self.progress
        if progress is not None:
            progress = replace(progress, running=())
        steps = tuple(
            replace(step, status=_INTERRUPTED.get(step.status, step.status)) for step in self.steps
        )
        return replace(self, progress=progress, steps=steps)


# --------------------------------------------------------------------------- rendering


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _sub(
    parent: etree._Element, name: str, text: str | None = None, **attrs: str
) -> etree._Element:
    child = etree.SubElement(parent, _q(name), {k: xml_safe(v) for k, v in attrs.items()})
    if text is not None:
        child.text = xml_safe(text)
    return child


def reduction_element(info: JobInfo) -> etree._Element:
    """The `sr:reduction` element, a fresh root with the sr prefix declared on it.

    Empty datasets/steps lists are left out (a PENDING job has neither), so the document stays
    small; `parse_jobinfo` reads an absent list as empty.
    """
    root = etree.Element(_q("reduction"), nsmap=_NSMAP)
    root.set("pipeline", xml_safe(info.pipeline))
    root.set("target", xml_safe(info.target))
    root.set("planned", _bool(info.planned))
    root.set("cachedSteps", str(info.cached_steps))
    if info.progress is not None:
        p = info.progress
        el = _sub(root, "progress", done=str(p.done), failed=str(p.failed), total=str(p.total))
        for job_id in p.running:
            _sub(el, "running", job_id)
    if info.datasets:
        datasets = _sub(root, "datasets")
        for ds in info.datasets:
            el = _sub(
                datasets,
                "dataset",
                label=ds.label,
                targetJob=ds.target_job,
                complete=_bool(ds.complete),
                qualityLevel=str(ds.quality_level),
            )
            for ident in ds.main_inputs:
                _sub(el, "mainInput", ident)
            for reason in ds.reasons:
                _sub(el, "reason", reason)
    if info.steps:
        steps = _sub(root, "steps")
        for step in info.steps:
            el = _sub(steps, "step", jobId=step.job_id, task=step.task, status=step.status)
            if step.step_key is not None:
                el.set("stepKey", xml_safe(step.step_key))
            el.set("attempts", str(step.attempts))
            if step.label:
                el.set("label", xml_safe(step.label))
            if step.error is not None:
                _sub(el, "error", step.error)
    return root


def jobinfo_elements(info: JobInfo) -> list[etree._Element]:
    """The children of `uws:jobInfo` for `uws.JobSummary.job_info` (one `sr:reduction`)."""
    return [reduction_element(info)]


# --------------------------------------------------------------------------- parsing


def _parse_bool(text: str | None, what: str) -> bool:
    if text in ("true", "1"):
        return True
    if text in ("false", "0"):
        return False
    raise ValueError(f"{what}: not an xs:boolean: {text!r}")


def _parse_int(el: etree._Element, name: str, default: int | None = None) -> int:
    text = el.get(name)
    if text is None:
        if default is None:
            raise ValueError(f"{etree.QName(el).localname}: missing attribute {name}")
        return default
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"{etree.QName(el).localname}@{name}: not an integer: {text!r}") from None


def _attr(el: etree._Element, name: str) -> str:
    value = el.get(name)
    if value is None:
        raise ValueError(f"{etree.QName(el).localname}: missing attribute {name}")
    return value


def _texts(el: etree._Element, name: str) -> tuple[str, ...]:
    return tuple(child.text or "" for child in el.iterfind(_q(name)))


def _find_reduction(element: etree._Element | etree._ElementTree) -> etree._Element:
    if isinstance(element, etree._ElementTree):
        element = element.getroot()
    if element.tag == _q("reduction"):
        return element
    found = element.find(f".//{_q('reduction')}")
    if found is None:
        raise ValueError(f"no {{{JOBINFO_NS}}}reduction element in {element.tag}")
    return found


def parse_jobinfo(element: etree._Element | etree._ElementTree) -> JobInfo:
    """Read a `JobInfo` back from `sr:reduction`, or from any element containing it.

    Accepting the enclosing `uws:jobInfo` or the whole `uws:job` lets clients pass what they
    fetched without digging; unknown elements and attributes are ignored for forward
    compatibility. Raises ValueError when the element is missing or malformed.
    """
    root = _find_reduction(element)
    progress = None
    p = root.find(_q("progress"))
    if p is not None:
        progress = JobProgress(
            done=_parse_int(p, "done"),
            failed=_parse_int(p, "failed"),
            total=_parse_int(p, "total"),
            running=_texts(p, "running"),
        )
    datasets = tuple(
        DatasetInfo(
            label=_attr(el, "label"),
            target_job=_attr(el, "targetJob"),
            complete=_parse_bool(el.get("complete"), "dataset@complete"),
            quality_level=_parse_int(el, "qualityLevel"),
            reasons=_texts(el, "reason"),
            main_inputs=_texts(el, "mainInput"),
        )
        for el in root.iterfind(f"{_q('datasets')}/{_q('dataset')}")
    )
    steps = tuple(
        StepStatus(
            job_id=_attr(el, "jobId"),
            task=_attr(el, "task"),
            status=_attr(el, "status"),
            step_key=el.get("stepKey"),
            attempts=_parse_int(el, "attempts", 0),
            error=None if (err := el.find(_q("error"))) is None else (err.text or ""),
            label=el.get("label", ""),
        )
        for el in root.iterfind(f"{_q('steps')}/{_q('step')}")
    )
    return JobInfo(
        pipeline=_attr(root, "pipeline"),
        target=_attr(root, "target"),
        progress=progress,
        datasets=datasets,
        steps=steps,
        planned=_parse_bool(root.get("planned", "false"), "reduction@planned"),
        cached_steps=_parse_int(root, "cachedSteps", 0),
    )
