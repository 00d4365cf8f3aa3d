"""The header index model: what the planner knows about one raw file.

The planner never opens files; it works on these records, which the indexer
(runtime) builds from FITS headers and keeps in the ``raw_files`` collection.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

HeaderValue = str | int | float | bool | None

DEFAULT_AUTHORITY = "example.org"
RAW_RESOURCE = "raw"
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def raw_file_id(relative_path: str, authority: str = DEFAULT_AUTHORITY) -> str:
    """The stable IVOA identifier of a raw file, from its path under the archive root.

    The path is the query part of an ``ivo://`` URI, so it survives moving the
    archive root and is readable by people (``ivo://example.org/raw?2024-01-05/b1.fits``).
    """
    rel = relative_path.replace("\\", "/").lstrip("/")
    return f"ivo://{authority}/{RAW_RESOURCE}?{rel}"


def storable_header(header: Mapping[str, HeaderValue]) -> dict[str, HeaderValue]:
    """The header as the index stores it: BSON holds no integer beyond 64 bits, so such
    values become strings. Files are classified on this form, so a frame rebuilt from
    the store and one classified again from the stored header agree."""
    if not any(isinstance(v, int) and not INT64_MIN <= v <= INT64_MAX for v in header.values()):
        return dict(header)
    return {
        key: str(value)
        if isinstance(value, int)
        and not isinstance(value, bool)
        and not INT64_MIN <= value <= INT64_MAX
        else value
        for key, value in header.items()
    }


@dataclass(frozen=True)
class Classified:
    """What a pipeline's rules made of a raw file, computed when it was indexed.

    ``rules`` names the pipeline and the version of its rules (``ccd@1.1-3f2a...``): a
    record of other rules is stale and re-classified. ``derived`` is None when a derived
    value is not a plain scalar (it is then derived again when the frame is rebuilt).
    ``night`` (the night label's ordinal), ``mjd``, ``keys`` (the normalised values of
    every keyword the cascade groups, matches, ranks or tolerates by) and ``slots``
    (the index entries of its queries, ``reduction/frame_index.py``) are query fields.
    """

    rules: str
    categories: tuple[str, ...] = ()
    derived: Mapping[str, HeaderValue] | None = None
    overridden: bool = False
    calib_groups: tuple[str, ...] | None = None
    note: str | None = None
    night: int | None = None
    mjd: float | None = None
    keys: Mapping[str, Any] = field(default_factory=dict)
    slots: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "rules": self.rules,
            "categories": list(self.categories),
            "derived": dict(self.derived) if self.derived is not None else None,
            "overridden": self.overridden,
            "calib_groups": list(self.calib_groups) if self.calib_groups is not None else None,
            "note": self.note,
            "mjd": self.mjd,
            "keys": dict(self.keys),
        }

    @classmethod
    def from_dict(
        cls, doc: Mapping[str, Any], night: int | None, slots: Sequence[str]
    ) -> Classified:
        calib = doc.get("calib_groups")
        derived = doc.get("derived")
        return cls(
            rules=str(doc.get("rules", "")),
            categories=tuple(doc.get("categories") or ()),
            derived=dict(derived) if derived is not None else None,
            overridden=bool(doc.get("overridden")),
            calib_groups=tuple(calib) if calib is not None else None,
            note=doc.get("note"),
            night=night,
            mjd=doc.get("mjd"),
            keys=dict(doc.get("keys") or {}),
            slots=tuple(slots),
        )


@dataclass(frozen=True)
class RawFile:
    """One indexed raw file.

    ``header`` holds upper-case keyword -> value for the primary header (or, for
    tile-compressed ``.fz`` files, the first image header). ``checksum`` is what
    step keys are built from: it changes whenever the file's bytes change.
    ``problem`` is set (and ``header`` empty) when the file could not be read.
    ``pipeline`` names the pipeline that claims the file (``claim`` says why none
    does); ``override`` is the operator's correction of its types or calibration
    group (``{"types": [...], "calib": [...]}``), recorded by the indexer, and
    ``classified`` what its pipeline's rules made of it then. ``slots`` and ``night``
    are stored at the top of the document, where the index ``slots_night`` sees them.
    """

    file_id: str
    path: str
    header: Mapping[str, HeaderValue] = field(default_factory=dict)
    checksum: str = ""
    header_checksum: str = ""
    size: int = 0
    mtime_ns: int = 0
    problem: str | None = None
    pipeline: str | None = None
    claim: str | None = None
    override: Mapping[str, Any] | None = None
    classified: Classified | None = None

    def to_dict(self) -> dict[str, Any]:
        classified = self.classified
        return {
            "file_id": self.file_id,
            "path": self.path,
            "header": dict(self.header),
            "checksum": self.checksum,
            "header_checksum": self.header_checksum,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "problem": self.problem,
            "pipeline": self.pipeline,
            "claim": self.claim,
            "override": dict(self.override) if self.override else None,
            "classified": classified.to_dict() if classified is not None else None,
            "slots": list(classified.slots) if classified is not None else [],
            "night": classified.night if classified is not None else None,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> RawFile:
        classified = doc.get("classified")
        return cls(
            file_id=doc["file_id"],
            path=doc["path"],
            header=dict(doc.get("header") or {}),
            checksum=doc.get("checksum", ""),
            header_checksum=doc.get("header_checksum", ""),
            size=int(doc.get("size", 0)),
            mtime_ns=int(doc.get("mtime_ns", 0)),
            problem=doc.get("problem"),
            pipeline=doc.get("pipeline"),
            claim=doc.get("claim"),
            override=doc.get("override") or None,
            classified=Classified.from_dict(classified, doc.get("night"), doc.get("slots") or ())
            if classified
            else None,
        )
