"""One archive, several pipelines: which files each claims, and planning with the right one.

The indexer records which pipeline claims each raw file (``RawFile.pipeline``) and what
its rules make of it (``RawFile.classified``); planning a request means choosing that
pipeline (named, or the one that claims the requested IDs), giving its planner only
the files it claims, and its static library (shipped, plus the operator's
``_static/<pipeline>/``). A request naming IDs is planned by asking the store
(`ArchivePipelines.plan_indexed`: the planner reads only the candidates of those
frames); frames are rebuilt from their stored classification, never classified again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from soda_reduce.pipelines import Pipeline, PipelineError, Registry
from soda_reduce.reduction.frame_index import FrameIndexer
from soda_reduce.reduction.frame_source import FrameSource, MemoryFrames
from soda_reduce.reduction.index_model import RawFile
from soda_reduce.reduction.organisation import Frame
from soda_reduce.reduction.plan import PlanRequestError, ReductionPlan
from soda_reduce.reduction.planner import plan_reduction
from soda_reduce.reduction.static import StaticLibrary

if TYPE_CHECKING:
    from soda_reduce.runtime.store import Store

_INDEXERS: dict[int, tuple[Pipeline, FrameIndexer]] = {}


@dataclass
class PipelineCounts:
    claimed: int = 0
    classified: int = 0
    types: Counter[str] = field(default_factory=Counter)
    overridden: int = 0


@dataclass
class ClaimSummary:
    """How the archive's files split between pipelines: what index and plan report."""

    total: int = 0
    per_pipeline: dict[str, PipelineCounts] = field(default_factory=dict)
    unclaimed: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    unclassified: list[tuple[str, str]] = field(default_factory=list)  # (path, pipeline)

    @property
    def classified(self) -> int:
        return sum(c.classified for c in self.per_pipeline.values())

    def lines(self) -> list[str]:
        if not self.total:
            return ["no FITS files in the archive"]
        out = []
        for name, counts in self.per_pipeline.items():
            kinds = ", ".join(f"{n} {t}" for t, n in sorted(counts.types.items())) or "none"
            over = f", {counts.overridden} overridden" if counts.overridden else ""
            out.append(
                f"{name}: {counts.claimed} claimed, {counts.classified} classified ({kinds}){over}"
            )
        if self.unclaimed:
            out.append(f"{len(self.unclaimed)} file(s) no pipeline claims:")
            out += [f"  {path}: {why}" for path, why in self.unclaimed[:50]]
            if len(self.unclaimed) > 50:
                out.append(f"  ... and {len(self.unclaimed) - 50} more")
        if self.unclassified:
            out.append(f"{len(self.unclassified)} claimed file(s) no rule classifies:")
            out += [f"  {path} ({name})" for path, name in self.unclassified[:50]]
        return out


def files_of(files: Sequence[RawFile], pipeline: str) -> list[RawFile]:
    return [raw for raw in files if raw.pipeline == pipeline]


def indexer_of(pipeline: Pipeline) -> FrameIndexer:
    """The pipeline's classification at index time (its rules' version), made once."""
    found = _INDEXERS.get(id(pipeline))
    if found is None or found[0] is not pipeline:
        found = _INDEXERS[id(pipeline)] = (
            pipeline,
            FrameIndexer.of(pipeline.name, pipeline.version, pipeline.cascade),
        )
    return found[1]


def frames_by_pipeline(
    registry: Registry, files: Sequence[RawFile], only: str | None = None
) -> dict[str, list[Frame]]:
    """Each selected pipeline's files seen through its cascade (from their records)."""
    return {p.name: indexer_of(p).frames(files_of(files, p.name)) for p in registry.selected(only)}


def summarise(
    registry: Registry, files: Sequence[RawFile], only: str | None = None
) -> tuple[ClaimSummary, dict[str, list[Frame]]]:
    frames = frames_by_pipeline(registry, files, only)
    summary = ClaimSummary(total=len(files))
    for name, items in frames.items():
        counts = PipelineCounts(claimed=len(items))
        for frame in items:
            if frame.categories:
                counts.classified += 1
                counts.types.update(frame.categories)
            else:
                summary.unclassified.append((frame.raw.path, name))
            counts.overridden += frame.overridden or frame.calib_groups is not None
        summary.per_pipeline[name] = counts
    if only is None:
        summary.unclaimed = [
            (raw.path, raw.claim or "unclaimed") for raw in files if not raw.pipeline
        ]
    return summary, frames


def pipelines_for_ids(
    registry: Registry, files: Sequence[RawFile], ids: Sequence[str]
) -> list[Pipeline]:
    """The pipeline that claims the requested files; PlanRequestError if none or several."""
    by_id = {raw.file_id: raw for raw in files}
    names: dict[str, None] = {}
    for file_id in ids:
        raw = by_id.get(file_id)
        if raw is None:
            raise PlanRequestError(f"unknown ID {file_id}")
        if raw.pipeline is None:
            raise PlanRequestError(f"{file_id} cannot be reduced: {raw.claim or 'no pipeline'}")
        names[raw.pipeline] = None
    if len(names) > 1:
        raise PlanRequestError(
            f"the IDs belong to different pipelines ({', '.join(names)}): one request, one pipeline"
        )
    return [registry.get(name) for name in names]


def plan_with(
    pipeline: Pipeline,
    files: Sequence[RawFile],
    static_root: Path | None,
    *,
    target: str | None = None,
    ids: Sequence[str] = (),
    where: Mapping[str, Any] | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> ReductionPlan:
    """Plan one request with one pipeline, its files and its static library."""
    return plan_reduction(
        pipeline.cascade,
        files_of(files, pipeline.name),
        target=target,
        ids=ids,
        where=where,
        parameters=parameters,
        static=static_library(pipeline, static_root),
    )


def static_library(pipeline: Pipeline, static_root: Path | None) -> StaticLibrary:
    """The pipeline's static library; PlanRequestError if the operator's is unreadable."""
    try:
        return pipeline.static_library(static_root)
    except PipelineError as exc:
        raise PlanRequestError(f"the {pipeline.name} static library: {exc}") from None


@dataclass
class ArchivePipelines:
    """The pipelines serving one archive, with the operator's static calibrations."""

    registry: Registry
    static_root: Path | None = None
    default_name: str = "ccd"
    _static: dict[str, StaticLibrary] = field(default_factory=dict)

    @property
    def default(self) -> Pipeline:
        """The pipeline of requests that name no file (their parameters are checked by it)."""
        if self.default_name in self.registry.pipelines:
            return self.registry.pipelines[self.default_name]
        return next(iter(self.registry.pipelines.values()))

    def get(self, name: str) -> Pipeline:
        return self.registry.get(name)

    def of(self, raw: RawFile) -> Pipeline | None:
        return self.registry.pipelines.get(raw.pipeline) if raw.pipeline else None

    def frame(self, raw: RawFile) -> Frame:
        """The file seen through the cascade of its pipeline (unclassified if none claims it),
        rebuilt from its stored classification."""
        pipeline = self.of(raw)
        return indexer_of(pipeline).frame(raw) if pipeline is not None else Frame(raw, {})

    def static(self, pipeline: Pipeline) -> StaticLibrary:
        """The pipeline's static library; PlanRequestError if the operator's is unreadable."""
        found = self._static.get(pipeline.name)
        if found is None:
            found = self._static[pipeline.name] = static_library(pipeline, self.static_root)
        return found

    def plan(self, pipeline: Pipeline, files: Sequence[RawFile], **request: Any) -> ReductionPlan:
        """Plan over files in memory (the whole archive: requests without IDs)."""
        frames = indexer_of(pipeline).frames(files_of(files, pipeline.name))
        return self.plan_from(pipeline, MemoryFrames(frames), **request)

    def source(self, pipeline: Pipeline, store: Store) -> FrameSource:
        """The store's frame source over the pipeline's files (synchronous: use it in a
        worker thread)."""
        return store.frame_source(pipeline.name, indexer_of(pipeline))

    def plan_from(self, pipeline: Pipeline, source: FrameSource, **request: Any) -> ReductionPlan:
        """Plan one request by asking ``source``; CPU-bound and synchronous (a thread)."""
        return plan_reduction(
            pipeline.cascade, (), static=self.static(pipeline), source=source, **request
        )

    def plan_indexed(self, pipeline: Pipeline, store: Store, **request: Any) -> ReductionPlan:
        """Plan a request by asking the store: what one science frame touches is its
        candidates, whatever the archive's size. Synchronous: call it in a thread."""
        return self.plan_from(pipeline, self.source(pipeline, store), **request)
