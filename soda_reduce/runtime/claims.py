"""What the indexer records beside each header: the pipeline that claims the file, or why
none does, and the operator's override of its types and calibration group.

Recorded at index time, so that index, plan, pages and the service all see
the same claims and overrides. When the installed pipelines or the overrides
file change, the next scan re-annotates every file from its stored header
(no file is read again): the annotator's fingerprint says when.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

from soda_reduce.pipelines import Registry
from soda_reduce.reduction.index_model import RawFile
from soda_reduce.reduction.overrides import Overrides, OverridesError, parse_overrides

OVERRIDES_FILE = "overrides.txt"
MAX_OVERRIDES_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Annotator:
    registry: Registry
    overrides: Overrides

    def fingerprint(self) -> str:
        material = f"{self.registry.fingerprint()}\n{self.overrides.digest}"
        return hashlib.sha256(material.encode()).hexdigest()

    def annotate(self, raw: RawFile) -> RawFile:
        override = self.overrides.lookup(raw.path, raw.file_id)
        doc = override.to_dict() if override is not None else None
        if raw.problem is not None:
            return replace(raw, pipeline=None, claim=f"unreadable: {raw.problem}", override=doc)
        name, why = self.registry.claim(raw.header)
        return replace(raw, pipeline=name, claim=why, override=doc)


def load_overrides(path: Path | None) -> Overrides:
    """The overrides file, or none if there is no such file; OverridesError if malformed."""
    if path is None or not path.is_file():
        return Overrides()
    if path.stat().st_size > MAX_OVERRIDES_BYTES:
        raise OverridesError(f"{path}: larger than {MAX_OVERRIDES_BYTES} bytes")
    try:
        return parse_overrides(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise OverridesError(f"{path}: not UTF-8 text ({exc})") from None
    except OverridesError as exc:
        raise OverridesError(f"{path}: {exc}") from None


def annotator_for(registry: Registry, data_dir: Path, overrides: Path | None = None) -> Annotator:
    return Annotator(registry, load_overrides(overrides or data_dir / OVERRIDES_FILE))
