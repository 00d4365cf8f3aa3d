"""Association: choose the best calibrations for a group, level by level.

Candidates are indexed once per (source, match keywords), so a request over
tens of thousands of frames compares each frame with its own setup only.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any

from soda_reduce.reduction.cascade import DataSource, MatchLevel, TimeClustering, TimeWindow
from soda_reduce.reduction.organisation import Frame, FrameGroup, frames_of, group_frames
from soda_reduce.reduction.overrides import groups_overlap
from soda_reduce.reduction.plan import AssociationResult, PlanJob
from soda_reduce.reduction.rules import normalise, show
from soda_reduce.reduction.tasks import AssociatedInput, Task

if TYPE_CHECKING:
    from soda_reduce.reduction.planner import Planner


@dataclass(eq=False)
class Unit:
    """What one job reduces: a group of frames, or a group of upstream units (jobs)."""

    group_id: str
    label: str
    keys: tuple[tuple[str, Any], ...]
    reference: Frame
    frames: list[Frame] | None = None
    members: list[Unit] | None = None

    @classmethod
    def of_frames(cls, group: FrameGroup) -> Unit:
        return cls(group.group_id, group.label, group.keys, group.reference(), list(group.frames))

    @classmethod
    def regroup(
        cls,
        name: str,
        units: Sequence[Unit],
        keywords: tuple[str, ...],
        clustering: TimeClustering | None,
    ) -> list[Unit]:
        by_frame = {id(u.reference): u for u in units}
        groups = group_frames(name, [u.reference for u in units], keywords, clustering)
        return [
            cls(
                g.group_id,
                g.label,
                g.keys,
                g.reference(),
                members=[by_frame[id(f)] for f in g.frames],
            )
            for g in groups
        ]

    def file_ids(self) -> list[str]:
        if self.frames is not None:
            return [f.file_id for f in self.frames]
        return [fid for member in self.members or [] for fid in member.file_ids()]

    def closest_frames(self, count: int) -> list[Frame]:
        """The ``count`` frames nearest the reference in time, kept in time order."""
        frames = self.frames or []
        ref = self.reference.mjd or 0.0
        ranked = sorted(frames, key=lambda f: (abs((f.mjd or 0.0) - ref), f.file_id))[:count]
        keep = set(map(id, ranked))
        return [f for f in frames if id(f) in keep]


@dataclass(eq=False)
class Candidate:
    """A possible association, with its time coordinates computed once."""

    reference: Frame
    payload: Frame | Unit
    night: int | None = None  # ordinal of the night label
    mjd: float | None = None

    @classmethod
    def of(cls, reference: Frame, payload: Frame | Unit) -> Candidate:
        label = reference.night
        ordinal = date.fromisoformat(label).toordinal() if label else None
        return cls(reference, payload, ordinal, reference.mjd)


@dataclass
class Pool:
    """Candidates of one setup, sorted by night, so a time window is a bisection."""

    candidates: list[Candidate]
    nights: list[int]
    undated: list[Candidate]

    @classmethod
    def of(cls, candidates: list[Candidate]) -> Pool:
        dated = sorted((c for c in candidates if c.night is not None), key=lambda c: c.night)
        undated = [c for c in candidates if c.night is None]
        return cls(dated, [c.night for c in dated], undated)  # type: ignore[misc]

    def within(self, window: TimeWindow, night: int | None) -> list[Candidate]:
        if window.max_nights is None or night is None:
            return self.candidates + self.undated
        low = bisect_left(self.nights, night - window.max_nights)
        high = bisect_right(self.nights, night + window.max_nights)
        return self.candidates[low:high]


def bottom_category(source: DataSource | Task) -> str:
    while isinstance(source, Task):
        source = source.main.source
    return source.category


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
        self._candidates: dict[str, list[Candidate]] = {}
        self._indexes: dict[
            tuple[str, tuple[str, ...]], dict[tuple[Any, ...], list[Candidate]]
        ] = {}

    def _source_key(self, source: DataSource | Task) -> str:
        kind = "task" if isinstance(source, Task) else "source"
        return f"{kind}:{source.name}"

    def candidates(self, source: DataSource | Task) -> list[Candidate]:
        key = self._source_key(source)
        found = self._candidates.get(key)
        if found is None:
            if isinstance(source, Task):
                found = [Candidate.of(u.reference, u) for u in self.planner.units(source)]
            else:
                found = [Candidate.of(f, f) for f in frames_of(source, self.planner.frames)]
            self._candidates[key] = found
        return found

    def _index(self, source: DataSource | Task, keywords: tuple[str, ...]) -> dict[Any, Pool]:
        key = (self._source_key(source), keywords)
        index = self._indexes.get(key)
        if index is None:
            buckets: dict[tuple[Any, ...], list[Candidate]] = {}
            for candidate in self.candidates(source):
                values = tuple(normalise(candidate.reference.get(k)) for k in keywords)
                buckets.setdefault(values, []).append(candidate)
            index = {values: Pool.of(items) for values, items in buckets.items()}
            self._indexes[key] = index
        return index

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
        values = tuple(normalise(ref.get(k)) for k in level.keywords)
        pool = self._index(spec.source, level.keywords).get(values)
        if pool is None:
            return [], []
        ref_night = date.fromisoformat(ref.night).toordinal() if ref.night else None
        ref_mjd = ref.mjd
        admitted: list[Candidate] = []
        for candidate in pool.within(level.window, ref_night):
            nights = (
                abs(ref_night - candidate.night)
                if ref_night is not None and candidate.night is not None
                else None
            )
            hours = (
                abs(ref_mjd - candidate.mjd) * 24.0
                if ref_mjd is not None and candidate.mjd is not None
                else None
            )
            if not level.window.admits(nights, hours):
                continue
            if level.predicate is not None and not level.predicate.matches(candidate.reference):
                continue
            if level.tolerances and not level.close_enough(ref, candidate.reference):
                continue
            if not groups_overlap(ref.calib_groups, candidate.reference.calib_groups):
                continue
            admitted.append(candidate)
        admitted.sort(key=lambda c: _distance(ref, c.reference, closest_by))
        chosen: list[Frame | PlanJob] = []
        rejected: list[str] = []
        for candidate in admitted:
            if isinstance(candidate.payload, Frame):
                chosen.append(candidate.payload)
                continue
            assert isinstance(spec.source, Task)
            job = self.planner.resolve(spec.source, candidate.payload)
            if job.complete:
                chosen.append(job)
            else:
                rejected.append(f"{job.label}: {'; '.join(job.reasons)}")
            if len(chosen) >= spec.max_count:
                break
        return chosen, rejected


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
