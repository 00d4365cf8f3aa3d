"""Operator overrides of a file's types and calibration group: a plain text file.

PypeIt users correct a frame's type by editing the data block of their
``.pypeit`` file; ESO operators by fixing a classification. Here the same
corrections live in one plain file (``overrides.txt`` in the service's data
directory), one line per file::

    # file                   types            calib
    2015-05-20/b1.fits.gz    arc,tilt         0
    b24.fits.gz              standard         0,1
    b27.fits.gz              -                1

``file`` is the path under the archive root, the raw file's IVOA ID, or a bare
file name (it then applies to every file of that name). ``types`` replaces the
types the header rules give (``-`` keeps them); ``calib`` restricts
association to frames sharing a calibration group (``all`` joins every group;
omitted or ``-``: no restriction). The indexer records each file's override,
so index, plan and pages all see the same thing and show it as an override.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

ALL_GROUPS = "all"
MAX_LINES = 100_000
_NAME = re.compile(r"[A-Za-z0-9_+-]{1,64}\Z")


class OverridesError(ValueError):
    """The overrides file cannot be used; the message names the line."""


@dataclass(frozen=True)
class Override:
    """One file's correction: its types (None: keep the rules'), its calibration groups."""

    types: tuple[str, ...] | None = None
    calib: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        if self.types is not None:
            doc["types"] = list(self.types)
        if self.calib is not None:
            doc["calib"] = list(self.calib)
        return doc


@dataclass(frozen=True)
class Overrides:
    """Every override of an archive, looked up by path, ID or bare file name."""

    by_key: Mapping[str, Override] = field(default_factory=dict)
    digest: str = ""

    def lookup(self, path: str, file_id: str) -> Override | None:
        for key in (path, file_id, path.rsplit("/", 1)[-1]):
            found = self.by_key.get(key)
            if found is not None:
                return found
        return None

    def __len__(self) -> int:
        return len(self.by_key)


def parse_overrides(text: str) -> Overrides:
    """The overrides in ``text``; OverridesError naming the first bad line."""
    entries: dict[str, Override] = {}
    lines = text.splitlines()
    if len(lines) > MAX_LINES:
        raise OverridesError(f"overrides: {len(lines)} lines, at most {MAX_LINES}")
    for number, line in enumerate(lines, start=1):
        content = line.split("#", 1)[0].strip()
        if not content:
            continue
        fields = content.split()
        if len(fields) < 2 or len(fields) > 3:
            raise OverridesError(
                f"overrides line {number}: expected 'FILE TYPES [CALIB]', got {content!r}"
            )
        key = fields[0]
        types = _names(fields[1], number, "type")
        calib = _names(fields[2], number, "calibration group") if len(fields) == 3 else None
        if types is None and calib is None:
            raise OverridesError(f"overrides line {number}: {key} changes nothing")
        if key in entries:
            raise OverridesError(f"overrides line {number}: {key} is listed twice")
        entries[key] = Override(
            tuple(t.upper() for t in types) if types is not None else None,
            tuple(c.lower() for c in calib) if calib is not None else None,
        )
    return Overrides(entries, hashlib.sha256(text.encode()).hexdigest())


def _names(value: str, number: int, what: str) -> tuple[str, ...] | None:
    if value == "-":
        return None
    names = tuple(v for v in value.split(",") if v)
    for name in names:
        if not _NAME.match(name):
            raise OverridesError(f"overrides line {number}: bad {what} {name!r}")
    if not names:
        raise OverridesError(f"overrides line {number}: empty {what} list")
    return names


def groups_overlap(first: Iterable[str] | None, second: Iterable[str] | None) -> bool:
    """Whether two frames may serve each other: no groups set, ``all``, or one in common."""
    if first is None or second is None:
        return True
    a, b = set(first), set(second)
    return ALL_GROUPS in a or ALL_GROUPS in b or bool(a & b)
