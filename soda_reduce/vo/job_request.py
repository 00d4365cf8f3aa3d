"""One typed job request, parsed once at the HTTP edge.

A SODA async job request mixes three kinds of parameters: UWS control parameters
(PHASE, RUNID, EXECUTIONDURATION, DESTRUCTION), the reduction's (ID, TARGET,
``task.param`` and workflow parameters) and SODA's filters (POS, CIRCLE, POLYGON,
BAND, TIME, POL). `parse_job_request` reads them all once, with limits on what a
client may send (counts, lengths, characters, the number of cutout combinations),
and the result is stored typed with the job (`JobRequest.to_doc`) and handed to the
planner and the worker as is: nothing downstream parses a client's text again.

A request means the same on /soda/sync and /soda/async, and its `JobKind` says what:

- raw IDs: those frames reduced to TARGET (the pipeline's default when absent);
- raw IDs with ``TARGET=raw`` (`RAW_TARGET`, a name no pipeline task may take): the
  frames as archived, cut, no reduction;
- product IDs: those products, cut; TARGET and recipe parameters are usage errors.

Empty values count as absent (DataLink clients send the parameters a user left
unset empty), so the service applies its defaults to them. Checking the reduction
parameters against a pipeline (known targets, declared task parameters) is the job
service's part: it needs the pipeline, this module is pure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

from soda_reduce.vo.dali import UsageError
from soda_reduce.vo.regions import Circle, Interval, Polygon, Range, Region
from soda_reduce.vo.soda import SPATIAL, SodaRequest, parse_soda
from soda_reduce.vo.uws import (
    Phase,
    parse_destruction,
    parse_execution_duration,
    parse_phase_request,
)

CONTROL = frozenset({"PHASE", "EXECUTIONDURATION", "DESTRUCTION", "ACTION", "RUNID"})
SODA_NAMES = frozenset({*SPATIAL, "BAND", "TIME", "POL"})
SINGLE = frozenset({"TARGET", "RUNID", "REQUEST", "RESPONSEFORMAT", *CONTROL})
# a parameter name: letters, digits and the separators task.param and DALI names use
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]*")
# C0 and C1 controls (tab excepted), DEL, unpaired surrogates, non-characters
_BAD_CHARS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
# TARGET=raw: the raw frame as archived, no reduction (pipelines/plugin.py refuses a task
# of that name)
RAW_TARGET: Final = "raw"
# ivo://AUTHORITY/RESOURCE?...: which kind of dataset an ID names (its authority is the
# service's to check)
_RESOURCE = re.compile(r"ivo://[^/?#]+/(raw|product)\?.", re.IGNORECASE)


class JobKind(StrEnum):
    """What a request asks for; one job is one kind."""

    REDUCTION = "reduction"  # raw frames reduced to a target
    RAW_CUTOUT = "raw_cutout"  # raw frames as archived (TARGET=raw), cut
    PRODUCT_CUTOUT = "product_cutout"  # products, cut

    @property
    def cuts_only(self) -> bool:
        return self is not JobKind.REDUCTION


def id_resource(identifier: str) -> str | None:
    """``raw`` or ``product`` for an ID of that shape (any authority), else None."""
    match = _RESOURCE.match(identifier)
    return match.group(1).lower() if match else None


@dataclass(frozen=True)
class RequestLimits:
    """What one request may hold; every bound names itself in the error it raises."""

    max_parameters: int = 200
    max_name_chars: int = 64
    max_value_chars: int = 4096
    max_total_chars: int = 64 * 1024
    max_ids: int = 100
    max_values_per_filter: int = 20  # values of one SODA axis (spatial, BAND, TIME)
    max_cutout_combinations: int = 100  # filter combinations, times the IDs
    max_runid_chars: int = 64


@dataclass(frozen=True)
class JobRequest:
    """Everything a client asked of one job, validated; the job document stores it."""

    ids: tuple[str, ...] = ()
    target: str | None = None
    recipe: tuple[tuple[str, str], ...] = ()  # task.param and workflow names, as given
    soda: SodaRequest = field(default_factory=SodaRequest)
    other: tuple[tuple[str, str], ...] = ()  # unknown names: kept for the record, ignored
    run_id: str | None = None
    execution_duration: int | None = None
    destruction: datetime | None = None
    phase: Phase | None = None

    @property
    def recipe_parameters(self) -> dict[str, str]:
        return dict(self.recipe)

    @property
    def kind(self) -> JobKind:
        """Product IDs: a product cutout; ``TARGET=raw``: a raw cutout; else a reduction.
        (`check_kind` refuses the requests that mix them.)"""
        if any(id_resource(i) == "product" for i in self.ids):
            return JobKind.PRODUCT_CUTOUT
        if self.target is not None and self.target.lower() == RAW_TARGET:
            return JobKind.RAW_CUTOUT
        return JobKind.REDUCTION

    def parameters(self) -> list[tuple[str, str]]:
        """The job's parameters as UWS lists them (control parameters excluded)."""
        pairs = [("ID", i) for i in self.ids]
        if self.target is not None:
            pairs.append(("TARGET", self.target))
        pairs += list(self.recipe)
        soda = self.soda
        pairs += [(_region_name(r), _region_value(r)) for r in soda.regions]
        pairs += [("BAND", str(b)) for b in soda.bands]
        pairs += [("TIME", str(t)) for t in soda.times]
        pairs += [("POL", p) for p in soda.pol]
        return pairs + list(self.other)

    def updated(self, change: JobRequest, names: Iterable[str]) -> JobRequest:
        """POST {job}/parameters: the values of the ``names`` given replace the old ones."""
        given = {n.upper() for n in names}
        merged = self
        if "ID" in given:
            merged = replace(merged, ids=change.ids)
        if "TARGET" in given:
            merged = replace(merged, target=change.target)
        if given & SODA_NAMES:
            old = self.soda
            new = change.soda
            regions = new.regions if given & set(SPATIAL) else old.regions
            merged = replace(
                merged,
                soda=SodaRequest(
                    ids=merged.ids,
                    regions=regions,
                    bands=new.bands if "BAND" in given else old.bands,
                    times=new.times if "TIME" in given else old.times,
                    pol=new.pol if "POL" in given else old.pol,
                ),
            )
        # a name given replaces its old value; given empty, it goes back to its default
        replaced = given | {n.upper() for n, _ in (*change.recipe, *change.other)}
        recipe = [(n, v) for n, v in self.recipe if n.upper() not in replaced]
        other = [(n, v) for n, v in self.other if n.upper() not in replaced]
        merged = replace(
            merged,
            recipe=(*recipe, *change.recipe),
            other=(*other, *change.other),
            soda=replace(merged.soda, ids=merged.ids),
        )
        if "RUNID" in given:
            merged = replace(merged, run_id=change.run_id)
        return merged

    def cutout_combinations(self) -> int:
        return len(self.soda.filters()) * max(1, len(self.ids)) if self.soda.filtering else 0

    # ------------------------------------------------------------ storage

    def to_doc(self) -> dict[str, Any]:
        """Plain BSON-able values (floats stay floats, infinities included)."""
        soda = self.soda
        return {
            "kind": self.kind.value,  # for readers of the document; derived, never read back
            "ids": list(self.ids),
            "target": self.target,
            "recipe": [list(p) for p in self.recipe],
            "regions": [_region_doc(r) for r in soda.regions],
            "bands": [[b.low, b.high] for b in soda.bands],
            "times": [[t.low, t.high] for t in soda.times],
            "pol": list(soda.pol),
            "other": [list(p) for p in self.other],
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any], run_id: str | None = None) -> JobRequest:
        ids = tuple(str(i) for i in doc.get("ids", ()))
        return cls(
            ids=ids,
            target=doc.get("target"),
            recipe=tuple((str(n), str(v)) for n, v in doc.get("recipe", ())),
            soda=SodaRequest(
                ids=ids,
                regions=tuple(_region_from_doc(r) for r in doc.get("regions", ())),
                bands=tuple(Interval(float(lo), float(hi)) for lo, hi in doc.get("bands", ())),
                times=tuple(Interval(float(lo), float(hi)) for lo, hi in doc.get("times", ())),
                pol=tuple(str(p) for p in doc.get("pol", ())),
            ),
            other=tuple((str(n), str(v)) for n, v in doc.get("other", ())),
            run_id=run_id,
        )


def check_text(name: str, value: str, limits: RequestLimits) -> None:
    """Names, lengths and characters every parameter must respect."""
    if len(name) > limits.max_name_chars or not _NAME.fullmatch(name):
        shown = name[:40].encode("unicode_escape").decode("ascii")
        raise UsageError(
            f"parameter name {shown!r} is not allowed: letters, digits, '.', '_' and '-', "
            f"at most {limits.max_name_chars} characters"
        )
    if len(value) > limits.max_value_chars:
        raise UsageError(
            f"parameter {name}: {len(value)} characters, more than the limit of "
            f"{limits.max_value_chars}"
        )
    bad = _BAD_CHARS.search(value)
    if bad is not None:
        raise UsageError(
            f"parameter {name}: control or invalid character U+{ord(bad.group()):04X} "
            "is not allowed"
        )


def check_pairs(pairs: Iterable[tuple[str, str]], limits: RequestLimits) -> list[tuple[str, str]]:
    """The request's pairs, bounded in count and size, every name and value checked."""
    checked: list[tuple[str, str]] = []
    total = 0
    for name, value in pairs:
        if len(checked) >= limits.max_parameters:
            raise UsageError(f"more than {limits.max_parameters} parameters in one request")
        check_text(name, value, limits)
        total += len(name) + len(value)
        if total > limits.max_total_chars:
            raise UsageError(f"the parameters exceed {limits.max_total_chars} characters in all")
        checked.append((name, value))
    return checked


def parse_job_request(
    pairs: Iterable[tuple[str, str]],
    limits: RequestLimits | None = None,
    *,
    workflow: Iterable[str] = (),
) -> JobRequest:
    """The typed request; `UsageError` naming the rule or the limit a request breaks.

    ``workflow``: names of the pipeline's workflow parameters (bare names that are
    reduction parameters, not unknown ones). Names are case-insensitive; values not.
    """
    limits = limits or RequestLimits()
    checked = check_pairs(pairs, limits)
    grouped: dict[str, list[str]] = {}
    for name, value in checked:
        grouped.setdefault(name.upper(), []).append(value)
    for name in SINGLE:
        if len(grouped.get(name, [])) > 1:
            raise UsageError(f"parameter {name} given {len(grouped[name])} times")
    control = _control(grouped, limits)
    ids = tuple(dict.fromkeys(i for v in grouped.get("ID", []) for i in v.split()))
    if len(ids) > limits.max_ids:  # before the regions are built: cheap refusals first
        raise UsageError(f"{len(ids)} IDs: one job takes at most {limits.max_ids}")
    _check_filter_counts(grouped, limits)
    soda = parse_soda(checked, sync=False)
    soda = SodaRequest(ids, soda.regions, soda.bands, soda.times, soda.pol)
    target = grouped.get("TARGET", [None])[0]
    workflow_names = {w.upper(): w for w in workflow}
    recipe: dict[str, tuple[str, str]] = {}
    other: list[tuple[str, str]] = []
    for name, value in checked:
        upper = name.upper()
        if not value.strip() and upper not in CONTROL:
            continue  # left empty: the default applies (DataLink clients send unset ones so)
        if "." in name or upper in workflow_names:
            key = name.lower() if "." in name else workflow_names[upper]
            if key in recipe and recipe[key][1] != value:
                raise UsageError(f"parameter {name} given more than once")
            recipe[key] = (key, value)
        elif upper not in CONTROL and upper not in SODA_NAMES and upper not in ("ID", "TARGET"):
            other.append((upper, value))
    request = JobRequest(
        ids=ids,
        target=(target or "").strip() or None,
        recipe=tuple(recipe.values()),
        soda=soda,
        other=tuple(other),
        **control,
    )
    check_request_limits(request, limits)
    return request


def check_kind(request: JobRequest) -> None:
    """One job is one kind: product IDs take no TARGET nor recipe parameters, raw frames
    as archived no recipe parameters, and raw and product IDs are not mixed."""
    resources = {id_resource(i) for i in request.ids}
    if {"product", "raw"} <= resources:
        raise UsageError(
            "product IDs and raw IDs in one request: a job either cuts products or "
            "reduces (or cuts) raw frames; send one request for each"
        )
    kind = request.kind
    if kind is JobKind.PRODUCT_CUTOUT and request.target is not None:
        raise UsageError(
            f"TARGET {request.target!r} with a product ID: a product is already reduced; "
            "TARGET applies to raw IDs only"
        )
    if kind.cuts_only and request.recipe:
        names = ", ".join(n for n, _ in request.recipe[:3])
        what = "products" if kind is JobKind.PRODUCT_CUTOUT else "raw frames as archived"
        raise UsageError(f"recipe parameters ({names}) with {what}: nothing is reduced")


def check_request_limits(request: JobRequest, limits: RequestLimits) -> None:
    """Bounds on the whole request, and its kind (`check_kind`): after a merge of
    parameters too."""
    check_kind(request)
    if len(request.ids) > limits.max_ids:
        raise UsageError(f"{len(request.ids)} IDs: one job takes at most {limits.max_ids}")
    combinations = request.cutout_combinations()
    if combinations > limits.max_cutout_combinations:
        raise UsageError(
            f"{combinations} cutouts requested (every combination of POS/CIRCLE/POLYGON, BAND "
            f"and TIME values, for each ID): the limit is {limits.max_cutout_combinations}"
        )


def _control(grouped: Mapping[str, list[str]], limits: RequestLimits) -> dict[str, Any]:
    run_id = grouped.get("RUNID", [None])[0]
    if run_id is not None and len(run_id) > limits.max_runid_chars:
        raise UsageError(f"RUNID is longer than {limits.max_runid_chars} characters")
    try:
        duration = (
            parse_execution_duration(grouped["EXECUTIONDURATION"][0])
            if "EXECUTIONDURATION" in grouped
            else None
        )
        destruction = (
            parse_destruction(grouped["DESTRUCTION"][0]) if "DESTRUCTION" in grouped else None
        )
        phase = parse_phase_request(grouped["PHASE"][0]) if "PHASE" in grouped else None
    except (ValueError, OverflowError) as exc:
        raise UsageError(str(exc)) from None
    return {
        "run_id": run_id,
        "execution_duration": duration,
        "destruction": destruction,
        "phase": phase,
    }


def _check_filter_counts(grouped: Mapping[str, list[str]], limits: RequestLimits) -> None:
    top = limits.max_values_per_filter
    spatial = sum(len(grouped.get(n, [])) for n in SPATIAL)
    for what, count in (
        ("POS, CIRCLE and POLYGON", spatial),
        ("BAND", len(grouped.get("BAND", []))),
        ("TIME", len(grouped.get("TIME", []))),
        ("POL", len(grouped.get("POL", []))),
    ):
        if count > top:
            raise UsageError(f"{count} values of {what}: at most {top} per request")


def _region_name(region: Region) -> str:
    return {"Circle": "CIRCLE", "Polygon": "POLYGON"}.get(type(region).__name__, "POS")


def _region_value(region: Region) -> str:
    text = region.soda()
    return text if isinstance(region, Range) else text.partition(" ")[2]


def _region_doc(region: Region) -> dict[str, Any]:
    if isinstance(region, Circle):
        return {"circle": [region.lon, region.lat, region.radius]}
    if isinstance(region, Polygon):
        return {"polygon": [list(v) for v in region.vertices]}
    assert isinstance(region, Range)
    return {"range": [region.lon1, region.lon2, region.lat1, region.lat2]}


def _region_from_doc(doc: Mapping[str, Any]) -> Region:
    if "circle" in doc:
        return Circle(*(float(x) for x in doc["circle"]))
    if "polygon" in doc:
        return Polygon(tuple((float(a), float(b)) for a, b in doc["polygon"]))
    return Range(*(float(x) for x in doc["range"]))
