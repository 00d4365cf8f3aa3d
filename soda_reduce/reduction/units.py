"""What one job reduces (`Unit`), found by asking the frame source, never by walking it.

A group is found *whole*: the frames of its category whose grouping keywords equal
those of one frame it holds (one question), grouped as the planner always groups
(``group_frames``: calibration groups, ``near`` splits, time clusters). Grouping the
union of whole families gives exactly the groups that grouping the whole archive would,
so a request's groups, a shared bias group and a calibration's candidates are the same
wherever they are found. Families are memoised for the planning run.

Only a request without IDs (``plan --target science`` over an archive, a ``--where``
filter) reads a whole category: `UnitFinder.scan`, the one path that grows with the
archive.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from soda_reduce.reduction.cascade import DataSource, TimeClustering
from soda_reduce.reduction.frame_source import (
    FrameQuery,
    FrameSource,
    KeyValues,
    bottom_category,
    key_values,
)
from soda_reduce.reduction.organisation import Frame, FrameGroup, frames_of, group_frames
from soda_reduce.reduction.plan import PlanJob
from soda_reduce.reduction.tasks import MainInput, Task


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


@dataclass(frozen=True)
class Grouping:
    """How the frames of a data-source main input are grouped."""

    source: DataSource
    keywords: tuple[str, ...]
    clustering: TimeClustering | None
    near: tuple[tuple[str, float], ...]

    @classmethod
    def of(cls, main: MainInput) -> Grouping:
        source = main.source
        assert isinstance(source, DataSource)
        near = source.group_near if main.group_by is None else ()
        return cls(source, main.grouping, main.time_clustering, near)

    @property
    def key(self) -> tuple[Any, ...]:
        return (self.source.name, self.keywords, self.clustering, self.near)

    def groups(self, frames: Sequence[Frame]) -> list[FrameGroup]:
        return group_frames(self.source.name, frames, self.keywords, self.clustering, self.near)


@dataclass
class Selection:
    """The frames a request selects: by ID, or by a header filter over a category scan."""

    ids: set[str]
    frames: list[Frame] = field(default_factory=list)
    scanned: bool = False


Resolve = Callable[[Task, Unit], PlanJob]


class UnitFinder:
    """Units of a planning run, found group by group through the frame source."""

    def __init__(self, source: FrameSource, resolve: Resolve) -> None:
        self.source = source
        self.resolve = resolve
        self._members: dict[tuple[str, KeyValues], list[Frame]] = {}
        self._families: dict[tuple[Any, ...], dict[str, Unit]] = {}
        self._unit_of: dict[tuple[Any, ...], dict[str, Unit]] = {}  # grouping -> file -> unit
        self._regrouped: dict[tuple[str, KeyValues | str], dict[str, Unit]] = {}
        self._scans: dict[str, list[Frame]] = {}

    def scan(self, category: str) -> list[Frame]:
        """Every frame of a category: only for requests without IDs (grows with the archive)."""
        found = self._scans.get(category)
        if found is None:
            found = self._scans[category] = self.source.find(FrameQuery(category))
        return found

    # ------------------------------------------------------------ requests

    def selected_groups(self, main: MainInput, selection: Selection | None) -> list[FrameGroup]:
        """The groups of a data-source main input a request reduces: all (no selection),
        or those holding a selected frame."""
        grouping = Grouping.of(main)
        if selection is None or selection.scanned:
            groups = grouping.groups(
                frames_of(grouping.source, self.scan(grouping.source.category))
            )
        else:
            members: dict[str, Frame] = {}
            for frame in frames_of(grouping.source, selection.frames):
                members.update((f.file_id, f) for f in self._family_frames(grouping, frame))
            groups = grouping.groups(list(members.values()))
        if selection is None:
            return groups
        return [g for g in groups if any(f.file_id in selection.ids for f in g.frames)]

    # --------------------------------------------------------- association

    def containing(self, item: Task, frames: Sequence[Frame]) -> list[Unit]:
        """The units of ``item`` (as the whole archive groups them) holding any of ``frames``
        (frames of its bottom category), each once."""
        found: dict[int, Unit] = {}
        source = item.main.source
        if isinstance(source, DataSource):
            grouping = Grouping.of(item.main)
            known = self._unit_of.setdefault(grouping.key, {})
            for frame in frames_of(source, frames):
                unit = known.get(frame.file_id)
                if unit is None:
                    unit = self._family(grouping, frame).get(frame.file_id)
                if unit is not None:
                    found.setdefault(id(unit), unit)
        else:
            for lower in self.containing(source, frames):
                unit = self._regrouped_of(item, source, lower)
                if unit is not None:
                    found.setdefault(id(unit), unit)
        return list(found.values())

    def _family_frames(self, grouping: Grouping, frame: Frame) -> list[Frame]:
        """The frames sharing ``frame``'s grouping values (its whole groups), memoised."""
        if not grouping.keywords:
            return [frame]
        values = key_values(frame, grouping.keywords)
        key = (grouping.source.name, values)
        found = self._members.get(key)
        if found is None:
            asked = self.source.find(FrameQuery(grouping.source.category, values))
            found = self._members[key] = frames_of(grouping.source, asked)
        return found

    def _family(self, grouping: Grouping, frame: Frame) -> dict[str, Unit]:
        """file ID -> unit, for the groups sharing ``frame``'s grouping values."""
        values: KeyValues | str = (
            key_values(frame, grouping.keywords) if grouping.keywords else frame.file_id
        )
        key = (*grouping.key, values)
        family = self._families.get(key)
        if family is None:
            groups = grouping.groups(self._family_frames(grouping, frame))
            units = [Unit.of_frames(g) for g in groups]
            family = {f.file_id: u for u in units for f in u.frames or []}
            self._families[key] = family
            self._unit_of.setdefault(grouping.key, {}).update(family)
        return family

    def _regrouped_of(self, item: Task, upstream: Task, lower: Unit) -> Unit | None:
        """The unit of a task of tasks that holds the upstream unit ``lower`` (if usable)."""
        keywords = item.main.grouping
        values: KeyValues | str = (
            key_values(lower.reference, keywords) if keywords else lower.group_id
        )
        family = self._regrouped.get((item.name, values))
        if family is None:
            if keywords:
                assert not isinstance(values, str)
                asked = self.source.find(FrameQuery(bottom_category(item), values))
                members = [
                    u
                    for u in self.containing(upstream, asked)
                    if key_values(u.reference, keywords) == values
                ]
            else:
                members = [lower]
            members.sort(key=lambda u: (_time(u.reference), u.group_id))
            usable = [u for u in members if self.resolve(upstream, u).complete]
            units = Unit.regroup(item.name, usable, keywords, item.main.clustering)
            family = {m.group_id: u for u in units for m in u.members or []}
            self._regrouped[(item.name, values)] = family
        return family.get(lower.group_id)


def _time(frame: Frame) -> tuple[float, str]:
    mjd = frame.mjd
    return (mjd if mjd is not None else float("inf"), frame.file_id)
