"""What the indexer records beside each header: the pipeline that claims the file, or why
none does, the operator's override of its types and calibration group, and what the
pipeline's rules make of it (its classification and query fields, ``reduction/frame_index.py``).

Recorded at index time, so that index, plan, pages and the service all see
the same claims, overrides and types, and nothing classifies a file again per request.
When what the installed pipelines claim or the overrides file change, the next scan
re-annotates every file from its stored header (no file is read again): the annotator's
fingerprint says when. When only a pipeline's rules change (its version, its cascade's,
or what they say), only that pipeline's files are classified again, found by their
rules (`reclassify_stale`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from soda_reduce.pipelines import Registry
from soda_reduce.reduction.frame_index import RECORD_SCHEMA, FrameIndexer
from soda_reduce.reduction.index_model import RawFile
from soda_reduce.reduction.overrides import Overrides, OverridesError, parse_overrides
from soda_reduce.runtime.store.raw_files import nights_windows

if TYPE_CHECKING:
    from soda_reduce.runtime.store import Store

OVERRIDES_FILE = "overrides.txt"
MAX_OVERRIDES_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Annotator:
    registry: Registry
    overrides: Overrides

    def fingerprint(self) -> str:
        """Changes when what the pipelines claim, or the overrides, change (not their rules:
        those are each pipeline's ``FrameIndexer.rules``)."""
        material = f"{claims_fingerprint(self.registry)}\n{self.overrides.digest}\n{RECORD_SCHEMA}"
        return hashlib.sha256(material.encode()).hexdigest()

    @cached_property
    def indexers(self) -> dict[str, FrameIndexer]:
        """Each installed pipeline's classification at index time."""
        return {
            name: FrameIndexer.of(name, pipeline.version, pipeline.cascade)
            for name, pipeline in self.registry.pipelines.items()
        }

    def annotate(self, raw: RawFile) -> RawFile:
        override = self.overrides.lookup(raw.path, raw.file_id)
        doc = override.to_dict() if override is not None else None
        if raw.problem is not None:
            return replace(
                raw,
                pipeline=None,
                claim=f"unreadable: {raw.problem}",
                override=doc,
                classified=None,
            )
        name, why = self.registry.claim(raw.header)
        indexer = self.indexers.get(name) if name is not None else None
        if indexer is None:
            return replace(raw, pipeline=name, claim=why, override=doc, classified=None)
        claimed = replace(raw, pipeline=name, claim=why, override=doc)
        return replace(claimed, classified=indexer.classify(claimed))


async def reannotate_all(
    store: Store, annotator: Annotator, skip: set[str], stored_others: bool = True
) -> tuple[int, int]:
    """Re-annotate every stored file when what the pipelines claim or the overrides changed
    (the whole index is read: rare); (files changed, writes made). ``stored_others`` False
    says every stored file is in ``skip`` (just annotated): only the fingerprint is saved."""
    fingerprint = annotator.fingerprint()
    if await store.annotations_fingerprint() == fingerprint:
        return 0, 0
    if not stored_others:
        await store.save_annotations_fingerprint(fingerprint)
        await store.rules.forget(list(annotator.indexers))
        return 0, 0
    files = [raw for raw in await store.all_raw_files() if raw.path not in skip]
    changed = await asyncio.to_thread(
        lambda: [new for raw in files if (new := annotator.annotate(raw)) != raw]
    )
    await store.upsert_raw_files(changed)
    await store.save_annotations_fingerprint(fingerprint)
    await store.rules.forget(list(annotator.indexers))
    return len(changed), 1 if changed else 0


async def reclassify_stale(store: Store, annotator: Annotator) -> tuple[int, int]:
    """Classify again, from their stored headers, the files of each pipeline whose rules
    changed: found through the rules they were classified with, a window of nights per
    question (never the whole index); (files re-classified, writes made)."""
    count = writes = 0
    for name, indexer in annotator.indexers.items():
        for rules in await store.rules.stale(name, indexer.rules):
            for filter_ in nights_windows(rules):
                files = await store.raw_files_where(filter_)
                if not files:
                    continue
                again = await asyncio.to_thread(lambda f=files: [annotator.annotate(r) for r in f])
                await store.upsert_raw_files(again)
                count, writes = count + len(again), writes + 1
            await store.rules.forget([name], only=rules["_id"])
    return count, writes


def claims_fingerprint(registry: Registry) -> str:
    """What decides which pipeline claims a file: the pipelines, their claims, fallbacks."""
    material = sorted(
        (name, p.claims.describe(), p.fallback) for name, p in registry.pipelines.items()
    )
    return hashlib.sha256(json.dumps(material).encode()).hexdigest()


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
