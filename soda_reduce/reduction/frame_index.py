"""Classification at index time: what a pipeline's rules make of a raw file, stored with it.

The indexer classifies each file once, when it reads it (``runtime/claims.py``), and
keeps the result (`Classified`) in the file's record, so planning, DataLink and the
pages rebuild a `Frame` without running any rule. The record also carries the *query
fields* of the planner's questions (``reduction/frame_source.py``): the night ordinal,
the MJD, the normalised values of every keyword the cascade groups, matches, ranks or
tolerates by, and ``slots``: one short string per (category, keyword set) the planner
asks equality on, naming the rules and the values, so that "BIAS frames with these
INSTRUME, BINNING, READOUT within three nights" is one range of one index
(``slots``, ``night``).

The rules' version (`rules_version`) is the pipeline's version, its cascade's, and a
digest of what the rules say (classifications, derivations, the keyword sets): a
record of another version is stale, and the indexer classifies it again from its
stored header. A rule that is a Python function (``where``) is known by its words
only: change its code, bump the pipeline's version.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from soda_reduce.reduction.cascade import DataSource
from soda_reduce.reduction.frame_source import (
    KeyValues,
    bottom_category,
    night_ordinal,
)
from soda_reduce.reduction.index_model import (
    INT64_MAX,
    INT64_MIN,
    Classified,
    RawFile,
    storable_header,
)
from soda_reduce.reduction.organisation import Frame, derive, make_frame
from soda_reduce.reduction.rules import normalise
from soda_reduce.reduction.tasks import Cascade, Task

RECORD_SCHEMA = "1"  # the shape of `Classified` and of slots: a change re-classifies all
KeySet = tuple[str, ...]


def query_keysets(cascade: Cascade) -> dict[str, tuple[KeySet, ...]]:
    """Per category, every keyword tuple the planner asks equality on for its frames:
    the grouping of each task's main input (a group is fetched whole) and the keywords
    of every quality level of every association (candidates in a window)."""
    found: dict[str, dict[KeySet, None]] = {}
    regrouped = _regrouped_tasks(cascade)
    for item in cascade.tasks:
        main = item.main
        if isinstance(main.source, DataSource):
            if main.grouping:
                found.setdefault(main.source.category, {})[main.grouping] = None
        elif item.name in regrouped and main.grouping:
            found.setdefault(bottom_category(item), {})[main.grouping] = None
        for spec in item.associated:
            for level in spec.rule.levels:
                found.setdefault(bottom_category(spec.source), {})[level.keywords] = None
    return {category: tuple(sets) for category, sets in found.items()}


def _regrouped_tasks(cascade: Cascade) -> set[str]:
    """Tasks of tasks whose groups association may need whole: those associated with
    another task, and every task of tasks under one of them."""
    names: set[str] = set()
    stack = [s.source for t in cascade.tasks for s in t.associated if isinstance(s.source, Task)]
    while stack:
        item = stack.pop()
        if item.name in names:
            continue
        names.add(item.name)
        if isinstance(item.main.source, Task):
            stack.append(item.main.source)
    return names


def query_keywords(cascade: Cascade) -> tuple[str, ...]:
    """Every keyword a query or a ranking of the planner reads (stored normalised)."""
    found: dict[str, None] = {}
    for sets in query_keysets(cascade).values():
        for keyset in sets:
            found.update(dict.fromkeys(keyset))
    for item in cascade.tasks:
        for spec in item.associated:
            if spec.rule.closest_by != "MJD":
                found[spec.rule.closest_by] = None
            for level in spec.rule.levels:
                found.update(dict.fromkeys(k for k, _ in level.tolerances))
    for source in cascade.data_sources:
        found.update(dict.fromkeys(k for k, _ in source.group_near))
    return tuple(found)


def rules_version(cascade: Cascade, pipeline_version: str) -> str:
    """The version of a pipeline's rules: its declared versions and a digest of the rules."""
    material = {
        "schema": RECORD_SCHEMA,
        "pipeline": pipeline_version,
        "cascade": [cascade.name, cascade.version],
        "classes": [(c.category, c.rule.describe()) for c in cascade.classifications],
        "derived": [(d.name, d.description) for d in cascade.derivations],
        "keysets": sorted((c, list(sets)) for c, sets in query_keysets(cascade).items()),
        "keywords": list(query_keywords(cascade)),
    }
    digest = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
    return f"{pipeline_version}.{cascade.version}-{digest[:10]}"


def canonical(value: Any) -> Any:
    """A normalised value as a JSON value that is equal exactly when Python says so
    (``2 == 2.0 == True``-style numbers agree, ``"2"`` differs)."""
    if value is None or isinstance(value, str):
        return value if value is None else ["s", value]
    if isinstance(value, bool | int):
        return ["n", int(value)]
    if isinstance(value, float):
        return ["n", int(value)] if value.is_integer() else ["f", repr(value)]
    return ["r", repr(value)]


def _scalar(value: Any) -> bool:
    if isinstance(value, int) and not isinstance(value, bool):
        return INT64_MIN <= value <= INT64_MAX
    return value is None or isinstance(value, str | float | bool)


@dataclass(frozen=True)
class FrameIndexer:
    """One pipeline's classification at index time, and frames rebuilt from its records."""

    cascade: Cascade
    rules: str  # "pipeline@version": the records this indexer wrote
    keysets: Mapping[str, tuple[KeySet, ...]]
    keywords: tuple[str, ...]

    @classmethod
    def of(cls, name: str, version: str, cascade: Cascade) -> FrameIndexer:
        return cls(
            cascade,
            f"{name}@{rules_version(cascade, version)}",
            query_keysets(cascade),
            query_keywords(cascade),
        )

    def slot(self, category: str, keys: KeyValues) -> str:
        """The index entry of "frames of ``category`` whose keys have these values"."""
        material = [self.rules, [k for k, _ in keys], [canonical(v) for _, v in keys]]
        text = json.dumps(material, separators=(",", ":"), ensure_ascii=True)
        return f"{category}|{hashlib.sha256(text.encode()).hexdigest()[:24]}"

    def classify(self, raw: RawFile) -> Classified:
        """What the rules make of ``raw`` (its override applied), with its query fields."""
        stored = storable_header(raw.header)
        frame = make_frame(
            self.cascade, raw if stored == raw.header else replace(raw, header=stored)
        )
        slots = [self.rules]
        for category in frame.categories:
            for keyset in self.keysets.get(category, ()):
                slots.append(
                    self.slot(category, tuple((k, normalise(frame.get(k))) for k in keyset))
                )
        derived = frame.derived if all(_scalar(v) for v in frame.derived.values()) else None
        return Classified(
            rules=self.rules,
            categories=frame.categories,
            derived=dict(derived) if derived is not None else None,
            overridden=frame.overridden,
            calib_groups=frame.calib_groups,
            note=frame.note,
            night=night_ordinal(frame.night),
            mjd=frame.mjd,
            keys={k: _plain(normalise(frame.get(k))) for k in self.keywords},
            slots=tuple(dict.fromkeys(slots)),
        )

    def frame(self, raw: RawFile) -> Frame:
        """The file as the planner sees it: from its record when the record is of these
        rules, else classified now (a stale record, before the indexer has caught up)."""
        record = raw.classified
        if record is None or record.rules != self.rules or raw.problem is not None:
            return make_frame(self.cascade, raw)
        derived = record.derived
        if derived is None:  # a derived value that is no plain scalar: derive again
            derived = derive(self.cascade, raw)
        return Frame(
            raw,
            dict(derived),
            record.categories,
            record.overridden,
            record.calib_groups,
            record.note,
        )

    def frames(self, files: Sequence[RawFile]) -> list[Frame]:
        return [self.frame(raw) for raw in files]


def _plain(value: Any) -> Any:
    return value if _scalar(value) else repr(value)
