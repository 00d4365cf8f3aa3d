"""Association: choose the best calibrations for a group, level by level, by asking.

For each quality level the frame source is asked for the frames of the input's bottom
category whose match keywords equal the reference's, within the level's window (for a
task's products, the groups holding them, found whole: ``reduction/units.py``); the
candidates then pass the same checks as ever (window on the group's reference,
predicate, tolerances, calibration groups, a complete upstream job) and are ranked by
the ``closest_by`` keyword, then time, then ID.

A level with no time limit and ranked by MJD widens its window around the reference
(`WIDEN_DAYS`, x4 each round) and stops as soon as the candidates within the current
radius give enough usable choices: every candidate beyond it is farther. Ranked by
another keyword, or for a reference without a time, it asks for every candidate of
that category and keys at once (in proportion to those).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from soda_reduce.reduction.cascade import DataSource, MatchLevel, TimeWindow
from soda_reduce.reduction.frame_source import (
    MJD_ORDINAL,
    FrameQuery,
    KeyValues,
    NightRange,
    bottom_category,
    key_values,
    night_ordinal,
)
from soda_reduce.reduction.organisation import Frame, frames_of
from soda_reduce.reduction.overrides import groups_overlap
from soda_reduce.reduction.plan import AssociationResult, PlanJob
from soda_reduce.reduction.rules import normalise, show
from soda_reduce.reduction.tasks import AssociatedInput, Task
from soda_reduce.reduction.units import Unit

if TYPE_CHECKING:
    from soda_reduce.reduction.planner import Planner

__all__ = ["Associator", "Unit", "bottom_category", "window_phrase"]

WIDEN_DAYS = 1.0  # the first radius of a search without time limit
WIDEN_FACTOR = 4.0
WIDEN_ROUNDS = 10  # radii 1 d ... 4**9 d (~700 years), then everything
_EPSILON = 1e-9


@dataclass(eq=False)
class Candidate:
    """A possible association, with its time coordinates computed once."""

    reference: Frame
    payload: Frame | Unit
    night: int | None = None  # ordinal of the night label
    mjd: float | None = None
    gap: float = math.inf  # days from the frame it would serve

    @classmethod
    def of(cls, reference: Frame, payload: Frame | Unit) -> Candidate:
        return cls(reference, payload, night_ordinal(reference.night), reference.mjd)


@dataclass(frozen=True)
class Round:
    """One question's time parts, and the time gap (days) within which every candidate
    has been seen once they are answered."""

    parts: tuple[FrameQuery, ...]
    settled: float


def window_phrase(window: TimeWindow, ref: Frame) -> str:
    when = ref.get("DATE") or ref.get("DATE-OBS") or ref.night or "the observation"
    if window.max_nights == 0 and window.max_hours is None:
        return f"on the night of {ref.night or when}"
    if window.max_nights is not None:
        unit = "night" if window.max_nights == 1 else "nights"
        return f"within {window.max_nights} {unit} of {when}"
    if window.max_hours is not None:
        return f"within {window.max_hours:g} hours of {when}"
    return "at any time"


class Associator:
    def __init__(self, planner: Planner) -> None:
        self.planner = planner

    def associate(
        self, item: Task, spec: AssociatedInput, unit: Unit
    ) -> tuple[AssociationResult, list[Frame | PlanJob]]:
        source_name = spec.source.name
        if spec.condition is not None and not spec.condition.holds(self.planner.workflow):
            result = AssociationResult(
                spec.category,
                source_name,
                "skipped",
                reason=f"used only when {spec.condition.describe()}",
                optional=spec.optional,
            )
            return result, []
        ref = unit.reference
        unusable: list[str] = []
        for level in spec.rule.levels:
            chosen, rejected = self._try_level(spec, level, ref, spec.rule.closest_by)
            unusable.extend(r for r in rejected if r not in unusable)
            if len(chosen) >= spec.min_count:
                picked = chosen[: spec.max_count]
                ids = tuple(p.file_id if isinstance(p, Frame) else p.job_id for p in picked)
                result = AssociationResult(
                    spec.category,
                    source_name,
                    "matched",
                    level=level.level,
                    window=level.window.name,
                    chosen=ids,
                    optional=spec.optional,
                )
                return result, picked
        last = spec.rule.levels[-1]
        conditions = ", ".join(f"{k}={show(ref.get(k))}" for k in last.keywords)
        if last.tolerances:
            conditions = ", ".join(filter(None, (conditions, last.describe_tolerances(ref))))
        if ref.calib_groups is not None:
            conditions = ", ".join(
                filter(None, (conditions, f"calibration group {','.join(ref.calib_groups)}"))
            )
        reason = f"no {bottom_category(spec.source)}"
        if conditions:
            reason += f" with {conditions}"
        reason += f" {window_phrase(last.window, ref)}"
        if spec.min_count > 1:
            reason += f" (at least {spec.min_count} needed)"
        if unusable:
            reason += f"; candidates found but not usable: {unusable[0]}"
        status = "absent" if spec.optional else "missing"
        return AssociationResult(
            spec.category, source_name, status, reason=reason, optional=spec.optional
        ), []

    def _try_level(
        self, spec: AssociatedInput, level: MatchLevel, ref: Frame, closest_by: str
    ) -> tuple[list[Frame | PlanJob], list[str]]:
        values = key_values(ref, level.keywords)
        ref_night = night_ordinal(ref.night)
        base = FrameQuery(bottom_category(spec.source), values)
        chosen: list[Frame | PlanJob] = []
        rejected: list[str] = []
        seen: set[int] = set()
        waiting: list[Candidate] = []
        # raw frames: every admitted one counts for min_count; tasks: stop at max_count
        enough = (
            spec.max_count if isinstance(spec.source, Task) else max(spec.max_count, spec.min_count)
        )
        for round_ in self._rounds(base, level.window, ref_night, ref.mjd, closest_by):
            for part in round_.parts:
                for candidate in self._candidates(spec.source, self.planner.source.find(part)):
                    if id(candidate.payload) in seen:
                        continue
                    seen.add(id(candidate.payload))
                    if self._admits(level, values, ref, ref_night, candidate):
                        candidate.gap = _gap(ref, candidate.reference)
                        waiting.append(candidate)
            ready = [c for c in waiting if c.gap <= round_.settled]
            waiting = [c for c in waiting if c.gap > round_.settled]
            ready.sort(key=lambda c: _distance(ref, c.reference, closest_by))
            for candidate in ready:
                if isinstance(candidate.payload, Frame):
                    chosen.append(candidate.payload)
                else:
                    assert isinstance(spec.source, Task)
                    job = self.planner.resolve(spec.source, candidate.payload)
                    if job.complete:
                        chosen.append(job)
                    else:
                        rejected.append(f"{job.label}: {'; '.join(job.reasons)}")
                if len(chosen) >= enough:
                    return chosen, rejected
        return chosen, rejected

    def _candidates(self, source: DataSource | Task, frames: list[Frame]) -> list[Candidate]:
        if isinstance(source, Task):
            units = self.planner.finder.containing(source, frames)
            return [Candidate.of(u.reference, u) for u in units]
        return [Candidate.of(f, f) for f in frames_of(source, frames)]

    @staticmethod
    def _admits(
        level: MatchLevel,
        values: KeyValues,
        ref: Frame,
        ref_night: int | None,
        candidate: Candidate,
    ) -> bool:
        if key_values(candidate.reference, level.keywords) != values:
            return False  # a group found through one of its frames, its reference elsewhere
        nights = (
            abs(ref_night - candidate.night)
            if ref_night is not None and candidate.night is not None
            else None
        )
        hours = (
            abs(ref.mjd - candidate.mjd) * 24.0
            if ref.mjd is not None and candidate.mjd is not None
            else None
        )
        if not level.window.admits(nights, hours):
            return False
        if level.predicate is not None and not level.predicate.matches(candidate.reference):
            return False
        if level.tolerances and not level.close_enough(ref, candidate.reference):
            return False
        return groups_overlap(ref.calib_groups, candidate.reference.calib_groups)

    def _rounds(
        self,
        base: FrameQuery,
        window: TimeWindow,
        ref_night: int | None,
        ref_mjd: float | None,
        closest_by: str,
    ) -> Iterator[Round]:
        """The questions of one level, in rounds (see the module's docstring)."""
        everything = Round((base,), math.inf)
        if window.max_nights is not None:
            if ref_night is not None:  # a frame without a night is never within N nights
                span = NightRange(ref_night - window.max_nights, ref_night + window.max_nights)
                yield Round((_part(base, span),), math.inf)
            return
        nightless = FrameQuery(base.category, base.keys, nightless=True)
        offsets = self.planner.source.night_offsets()
        if window.max_hours is not None:
            if ref_mjd is not None:
                days = window.max_hours / 24.0
                parts = [nightless]
                if offsets is not None:
                    parts.insert(0, _part(base, _nights(ref_mjd - days, ref_mjd + days, offsets)))
                yield Round(tuple(parts), math.inf)
            return
        if closest_by != "MJD" or ref_mjd is None or offsets is None:
            yield everything
            return
        radius, previous = WIDEN_DAYS, None
        for _ in range(WIDEN_ROUNDS):
            span = _nights(ref_mjd - radius, ref_mjd + radius, offsets)
            if previous is None:
                parts = [_part(base, span), nightless]
            else:
                parts = [
                    _part(base, NightRange(span.low, previous.low - 1)),  # type: ignore[operator]
                    _part(base, NightRange(previous.high + 1, span.high)),  # type: ignore[operator]
                ]
            yield Round(tuple(p for p in parts if _non_empty(p)), radius)
            previous, radius = span, radius * WIDEN_FACTOR
        assert previous is not None
        yield Round(
            (
                _part(base, NightRange(None, previous.low - 1)),  # type: ignore[operator]
                _part(base, NightRange(previous.high + 1, None)),  # type: ignore[operator]
            ),
            math.inf,
        )


def _part(base: FrameQuery, nights: NightRange) -> FrameQuery:
    return FrameQuery(base.category, base.keys, nights=nights)


def _non_empty(query: FrameQuery) -> bool:
    span = query.nights
    return span is None or span.low is None or span.high is None or span.low <= span.high


def _nights(low_mjd: float, high_mjd: float, offsets: tuple[float, float]) -> NightRange:
    """The night ordinals of every frame whose MJD lies within [low_mjd, high_mjd], given
    the bounds of "night - MJD" over the frames (a frame's night is its MJD plus that)."""
    low = math.floor(low_mjd + offsets[0] - _EPSILON)
    high = math.ceil(high_mjd + offsets[1] + _EPSILON)
    return NightRange(low + MJD_ORDINAL, high + MJD_ORDINAL)


def _gap(ref: Frame, other: Frame) -> float:
    if ref.mjd is None or other.mjd is None:
        return math.inf
    return abs(ref.mjd - other.mjd)


def _distance(ref: Frame, other: Frame, keyword: str) -> tuple[float, float, str]:
    """Rank by the closest_by keyword, then by time, then by ID (deterministic)."""
    time_gap = (
        abs(ref.mjd - other.mjd) if ref.mjd is not None and other.mjd is not None else float("inf")
    )
    if keyword == "MJD":
        return (time_gap, 0.0, other.file_id)
    a, b = ref.get(keyword), other.get(keyword)
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        primary = abs(float(a) - float(b))
    else:
        primary = 0.0 if normalise(a) == normalise(b) else 1.0
    return (primary, time_gap, other.file_id)
