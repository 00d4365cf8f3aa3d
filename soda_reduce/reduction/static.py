"""Static calibrations: files not tied to an observation (arc templates, line lists, masks).

A pipeline ships a library of them, and an operator may add a directory of
their own; each entry has a category and match keywords (``REID_ARXIV`` for
``GRISM_N=600/4310``). The planner associates them like any other input: the
entry of the right category whose match keywords equal the frame's, its
checksum part of the step key. PypeIt downloads such files at run time; here
they are inputs, listed in the plan and in DataLink, and nothing downloads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from soda_reduce.reduction.rules import KeywordSource, normalise, show

PIPELINE_SCHEME = "pipeline:"  # a file shipped inside a pipeline package: pipeline:NAME/FILE
STATIC_SCHEME = "static:"  # a file of the operator's static library: static:NAME/FILE


@dataclass(frozen=True)
class StaticFile:
    """One static calibration: where it is, what it is for, its checksum."""

    path: str  # absolute, or ``pipeline:NAME/FILE`` for a file shipped with a pipeline
    checksum: str
    file_id: str = ""
    category: str = ""
    match: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    origin: str = "pipeline"  # pipeline | operator

    def fits(self, frame: KeywordSource, keywords: Iterable[str]) -> bool:
        return all(
            normalise(self.match.get(k)) == normalise(frame.get(k))
            and self.match.get(k) is not None
            for k in keywords
        )


@dataclass(frozen=True)
class StaticLibrary:
    """Every static calibration one pipeline can use; operator entries win over shipped ones."""

    files: tuple[StaticFile, ...] = ()

    def choose(
        self, category: str, keywords: Iterable[str], frame: KeywordSource
    ) -> tuple[StaticFile | None, str]:
        """The entry for ``frame``, or None with the reason in words."""
        wanted = tuple(keywords)
        of_category = [f for f in self.files if f.category == category]
        if not of_category:
            return None, f"no static calibration {category} in the library"
        matching = [f for f in of_category if f.fits(frame, wanted)]
        if not matching:
            values = ", ".join(f"{k}={show(frame.get(k))}" for k in wanted)
            have = "; ".join(
                ", ".join(f"{k}={show(f.match.get(k))}" for k in wanted) for f in of_category
            )
            return None, f"no static {category} for {values} in the library (it has: {have})"
        operator = [f for f in matching if f.origin == "operator"]
        pick = sorted(operator or matching, key=lambda f: (f.path, f.checksum))[0]
        return pick, ""

    def categories(self) -> set[str]:
        return {f.category for f in self.files}

    def __len__(self) -> int:
        return len(self.files)


def library_of(entries: Mapping[str, StaticFile] | StaticLibrary | None) -> StaticLibrary:
    """A library from a library, None, or the older ``{category: file}`` mapping."""
    if entries is None:
        return StaticLibrary()
    if isinstance(entries, StaticLibrary):
        return entries
    files = tuple(
        StaticFile(
            f.path, f.checksum, f.file_id, f.category or category, f.match, f.description, f.origin
        )
        for category, f in sorted(entries.items())
    )
    return StaticLibrary(files)
