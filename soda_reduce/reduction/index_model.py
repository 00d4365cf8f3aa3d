"""The header index model: what the planner knows about one raw file.

The planner never opens files; it works on these records, which the indexer
(runtime) builds from FITS headers and keeps in the ``raw_files`` collection.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

HeaderValue = str | int | float | bool | None

DEFAULT_AUTHORITY = "example.org"
RAW_RESOURCE = "raw"


def raw_file_id(relative_path: str, authority: str = DEFAULT_AUTHORITY) -> str:
    """The stable IVOA identifier of a raw file, from its path under the archive root.

    The path is the query part of an ``ivo://`` URI, so it survives moving the
    archive root and is readable by people (``ivo://example.org/raw?2024-01-05/b1.fits``).
    """
    rel = relative_path.replace("\\", "/").lstrip("/")
    return f"ivo://{authority}/{RAW_RESOURCE}?{rel}"


@dataclass(frozen=True)
class RawFile:
    """One indexed raw file.

    ``header`` holds upper-case keyword -> value for the primary header (or, for
    tile-compressed ``.fz`` files, the first image header). ``checksum`` is what
    step keys are built from: it changes whenever the file's bytes change.
    ``problem`` is set (and ``header`` empty) when the file could not be read.
    ``pipeline`` names the pipeline that claims the file (``claim`` says why none
    does); ``override`` is the operator's correction of its types or calibration
    group (``{"types": [...], "calib": [...]}``), recorded by the indexer.
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

    def to_dict(self) -> dict[str, Any]:
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
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> RawFile:
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
        )
