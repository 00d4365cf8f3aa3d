"""The planner's questions about an archive, and the in-memory answer.

The planner never walks an archive: it asks a *frame source* for "frames of category C
whose keywords K equal these values, within these nights" and for frames by ID. Two
sources answer: `MemoryFrames` over a list of frames (``plan_reduction``, the scenario
tests, small callers) and the store's (``runtime/store/raw_files.py``), which answers
each question with one range of an index. Both return every matching frame, in no
particular order: the planner sorts.

Key values are *normalised* (``rules.normalise``) and compared as Python compares them
(``2 == 2.0``). A frame's night is the ordinal of its night label; MJD windows are
turned into night ranges with the source's ``night_offsets`` (the bounds of
"night - MJD" over its frames), so one index on (key values, night) serves both.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from functools import cached_property
from typing import Any, Protocol

from soda_reduce.reduction.cascade import DataSource
from soda_reduce.reduction.organisation import Frame
from soda_reduce.reduction.rules import normalise
from soda_reduce.reduction.tasks import Task

MJD_ORDINAL = date(1858, 11, 17).toordinal()  # the night ordinal of MJD 0

KeyValues = tuple[tuple[str, Any], ...]  # (keyword, normalised value), in the cascade's order


def night_ordinal(label: Any) -> int | None:
    """The ordinal of a night label (``2024-01-05``); None if there is none or it is no date."""
    if not isinstance(label, str) or not label:
        return None
    try:
        return date.fromisoformat(label).toordinal()
    except ValueError:
        return None


def night_offset(night: int | None, mjd: float | None) -> float | None:
    """How far a frame's night lies from its MJD, in days (about -1.5 to 0.5 on Earth)."""
    if night is None or mjd is None:
        return None
    return float(night - MJD_ORDINAL) - mjd


def bottom_category(source: DataSource | Task) -> str:
    """The category of raw frames under a chain of tasks (MASTER_BIAS: BIAS)."""
    while isinstance(source, Task):
        source = source.main.source
    return source.category


def key_values(frame: Frame, keywords: Sequence[str]) -> KeyValues:
    return tuple((k, normalise(frame.get(k))) for k in keywords)


@dataclass(frozen=True)
class NightRange:
    """Night ordinals from ``low`` to ``high``, both included; None: unbounded."""

    low: int | None = None
    high: int | None = None

    def holds(self, night: int) -> bool:
        return (self.low is None or night >= self.low) and (self.high is None or night <= self.high)


@dataclass(frozen=True)
class FrameQuery:
    """Frames of ``category`` whose ``keys`` equal the given values.

    ``nights`` keeps those whose night lies in the range (frames without a night are
    left out); ``nightless`` keeps only frames without a night; neither: every night.
    """

    category: str
    keys: KeyValues = ()
    nights: NightRange | None = None
    nightless: bool = False

    @property
    def keywords(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.keys)


class FrameSource(Protocol):
    """What the planner asks of an archive (one pipeline's frames)."""

    def find(self, query: FrameQuery) -> list[Frame]:
        """Every frame matching ``query``, in any order."""
        ...

    def by_ids(self, ids: Sequence[str]) -> dict[str, Frame]:
        """The frames with these IDs (unknown IDs are left out)."""
        ...

    def night_offsets(self) -> tuple[float, float] | None:
        """The lowest and highest ``night_offset`` of any frame (None: no frame has both)."""
        ...


@dataclass
class _Pool:
    """Frames of one category and key values, sorted by night for bisection."""

    dated: list[Frame]
    nights: list[int]
    nightless: list[Frame]

    def select(self, query: FrameQuery) -> list[Frame]:
        if query.nightless:
            return list(self.nightless)
        if query.nights is None:
            return self.dated + self.nightless
        low = 0 if query.nights.low is None else bisect_left(self.nights, query.nights.low)
        high = (
            len(self.nights)
            if query.nights.high is None
            else bisect_right(self.nights, query.nights.high)
        )
        return self.dated[low:high]


class MemoryFrames:
    """A frame source over frames in memory, indexed per (category, keywords) on first use."""

    def __init__(self, frames: Sequence[Frame]) -> None:
        self.frames = list(frames)
        self._by_id = {f.file_id: f for f in self.frames}
        self._pools: dict[tuple[str, tuple[str, ...]], dict[tuple[Any, ...], _Pool]] = {}

    def find(self, query: FrameQuery) -> list[Frame]:
        pool = self._index(query.category, query.keywords).get(tuple(v for _, v in query.keys))
        return pool.select(query) if pool is not None else []

    def by_ids(self, ids: Sequence[str]) -> dict[str, Frame]:
        return {i: self._by_id[i] for i in ids if i in self._by_id}

    def night_offsets(self) -> tuple[float, float] | None:
        return self._offsets

    @cached_property
    def _offsets(self) -> tuple[float, float] | None:
        found = [
            o for f in self.frames if (o := night_offset(night_ordinal(f.night), f.mjd)) is not None
        ]
        return (min(found), max(found)) if found else None

    def _index(self, category: str, keywords: tuple[str, ...]) -> dict[tuple[Any, ...], _Pool]:
        key = (category, keywords)
        index = self._pools.get(key)
        if index is None:
            buckets: dict[tuple[Any, ...], list[tuple[int | None, Frame]]] = {}
            for frame in self.frames:
                if frame.has(category):
                    values = tuple(normalise(frame.get(k)) for k in keywords)
                    buckets.setdefault(values, []).append((night_ordinal(frame.night), frame))
            index = {}
            for values, items in buckets.items():
                dated = sorted((item for item in items if item[0] is not None), key=_night)
                index[values] = _Pool(
                    [f for _, f in dated],
                    [n for n, _ in dated],  # type: ignore[misc]
                    [f for n, f in items if n is None],
                )
            self._pools[key] = index
        return index


def _night(item: tuple[int | None, Frame]) -> int:
    return item[0] or 0
