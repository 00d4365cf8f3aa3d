"""Data organisation (Reflex/EDPS): classify frames, then group them.

A ``Frame`` is a raw file seen through a cascade: its header plus the derived
keywords (NIGHT, BINNING, MJD...) and the categories its classification gave.
A frame may carry several types (an arc that is also a tilt frame, a dome flat
that is pixel flat, illumination flat and slit trace), as in EDPS and PypeIt;
an operator's override replaces them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from soda_reduce.reduction.cascade import DataSource, TimeClustering
from soda_reduce.reduction.index_model import RawFile
from soda_reduce.reduction.overrides import ALL_GROUPS
from soda_reduce.reduction.rules import normalise, show
from soda_reduce.reduction.tasks import Cascade


@dataclass(eq=False)
class Frame:
    raw: RawFile
    derived: dict[str, Any]
    categories: tuple[str, ...] = ()
    overridden: bool = False  # types set by the operator, not by the rules
    calib_groups: tuple[str, ...] | None = None  # operator's calibration groups
    note: str | None = None  # why an override could not be applied

    @property
    def category(self) -> str | None:
        """The first type, for listings; ``categories`` has them all."""
        return self.categories[0] if self.categories else None

    def has(self, category: str) -> bool:
        return category in self.categories

    def get(self, keyword: str) -> Any:
        if keyword in self.derived:
            return self.derived[keyword]
        return self.raw.header.get(keyword)

    @property
    def file_id(self) -> str:
        return self.raw.file_id

    @property
    def mjd(self) -> float | None:
        value = self.derived.get("MJD")
        return float(value) if isinstance(value, int | float) else None

    @property
    def night(self) -> str | None:
        value = self.derived.get("NIGHT")
        return value if isinstance(value, str) else None


def derive(cascade: Cascade, raw: RawFile) -> dict[str, Any]:
    """The cascade's derived keywords of a file (None where one cannot be computed)."""
    derived: dict[str, Any] = {}
    for derivation in cascade.derivations:
        try:
            derived[derivation.name] = derivation.compute(raw.header)
        except Exception:  # a derivation that trips on one odd header must not stop planning
            derived[derivation.name] = None
    return derived


def make_frame(cascade: Cascade, raw: RawFile) -> Frame:
    """The file seen through the cascade: derived keywords, then types (or the override's)."""
    frame = Frame(raw, derive(cascade, raw))
    if raw.problem is not None:
        return frame
    override = raw.override or {}
    types = override.get("types")
    if override.get("calib"):
        frame.calib_groups = tuple(override["calib"])
    if types:
        known = {c.category for c in cascade.classifications}
        unknown = [t for t in types if t not in known]
        if unknown:
            frame.note = (
                f"override names unknown type(s) {', '.join(unknown)} "
                f"(types of {cascade.name}: {', '.join(sorted(known))})"
            )
        frame.categories = tuple(t for t in types if t in known)
        frame.overridden = True
        return frame
    frame.categories = tuple(
        item.category for item in cascade.classifications if item.rule.matches(frame)
    )
    return frame


def classify_all(cascade: Cascade, files: Iterable[RawFile]) -> list[Frame]:
    return [make_frame(cascade, raw) for raw in files]


def _sort_key(frame: Frame) -> tuple[float, str]:
    mjd = frame.mjd
    return (mjd if mjd is not None else float("inf"), frame.file_id)


@dataclass(eq=False)
class FrameGroup:
    """Frames reduced together: equal grouping keywords, one time cluster."""

    source: str
    keys: tuple[tuple[str, Any], ...]
    frames: list[Frame] = field(default_factory=list)
    cluster: int = 0

    @property
    def group_id(self) -> str:
        parts = [f"{k}={show(v)}" for k, v in self.keys]
        if self.cluster:
            parts.append(f"cluster={self.cluster}")
        return f"{self.source}[{','.join(parts)}]"

    @property
    def label(self) -> str:
        if len(self.keys) == 1 and self.keys[0][0] == "FILE":
            return str(self.keys[0][1])
        text = ", ".join(f"{k}={show(v)}" for k, v in self.keys)
        return text + (f" #{self.cluster + 1}" if self.cluster else "")

    def reference(self) -> Frame:
        """The frame that stands for the group in associations (the middle one in time)."""
        return self.frames[(len(self.frames) - 1) // 2]


def group_frames(
    source_name: str,
    frames: Sequence[Frame],
    keywords: tuple[str, ...],
    clustering: TimeClustering | None,
    near: tuple[tuple[str, float], ...] = (),
) -> list[FrameGroup]:
    """Groups in a deterministic order: by keyword values, then time.

    No grouping keywords means each frame is reduced on its own (one job per file).
    ``near`` keywords (a grating tilt) split groups where sorted values jump by more
    than the tolerance, as PypeIt tells setups apart by a relative tolerance.
    """
    if not keywords:
        return [
            FrameGroup(source_name, (("FILE", f.raw.path),), [f])
            for f in sorted(frames, key=_sort_key)
        ]
    buckets: dict[tuple[Any, ...], FrameGroup] = {}
    for frame in sorted(frames, key=_sort_key):
        values = tuple(frame.get(k) for k in keywords)
        # frames an operator put in different calibration groups are never combined;
        # a frame in "all" groups joins the frames of its setup as if it had none
        groups = frame.calib_groups
        if groups is not None and ALL_GROUPS in groups:
            groups = None
        bucket_key = (*(normalise(v) for v in values), groups)
        group = buckets.get(bucket_key)
        if group is None:
            keys = tuple(zip(keywords, values, strict=True))
            if groups is not None:
                keys += (("CALIB", ",".join(groups)),)
            group = FrameGroup(source_name, keys)
            buckets[bucket_key] = group
        group.frames.append(frame)
    ordered = sorted(buckets.values(), key=lambda g: (_sort_key(g.frames[0]), g.group_id))
    for keyword, tolerance in near:
        ordered = [part for group in ordered for part in _split_by_value(group, keyword, tolerance)]
    if clustering is None:
        return ordered
    return [part for group in ordered for part in _split_by_gap(group, clustering.max_gap_hours)]


def _split_by_value(group: FrameGroup, keyword: str, tolerance: float) -> list[FrameGroup]:
    """Runs of frames whose ``keyword`` values lie within ``tolerance`` of their neighbours."""
    numbers = [f.get(keyword) for f in group.frames]
    if all(v is None for v in numbers):
        return [group]
    by_value = sorted(group.frames, key=lambda f: (_number(f.get(keyword)), _sort_key(f)))
    runs: list[list[Frame]] = [[by_value[0]]]
    for previous, frame in itertools.pairwise(by_value):
        a, b = _number(previous.get(keyword)), _number(frame.get(keyword))
        if not (abs(b - a) <= tolerance):  # NaN (a missing value) always starts a new run
            runs.append([])
        runs[-1].append(frame)
    if len(runs) == 1:
        return [group]
    parts = []
    for run in runs:
        run.sort(key=_sort_key)
        keys = (*group.keys, (keyword, run[0].get(keyword)))
        parts.append(FrameGroup(group.source, keys, run, group.cluster))
    return parts


def _number(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return float("nan")


def _split_by_gap(group: FrameGroup, max_gap_hours: float) -> list[FrameGroup]:
    parts = [FrameGroup(group.source, group.keys, [group.frames[0]], 0)]
    for previous, frame in zip(group.frames, group.frames[1:], strict=False):
        gap_ok = previous.mjd is not None and frame.mjd is not None
        if gap_ok and (frame.mjd - previous.mjd) * 24.0 > max_gap_hours:  # type: ignore[operator]
            parts.append(FrameGroup(group.source, group.keys, [], len(parts)))
        parts[-1].frames.append(frame)
    return parts


def frames_of(source: DataSource, frames: Iterable[Frame]) -> list[Frame]:
    return [f for f in frames if source.category in f.categories and source.condition.matches(f)]
