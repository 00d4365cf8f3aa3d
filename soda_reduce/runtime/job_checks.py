"""A typed job request checked against the archive: what the job service accepts.

The request says what it asks for (`JobKind`, vo/job_request.py); here each kind meets
what it names. A reduction's IDs must be raw files of one pipeline, its TARGET and
recipe parameters that pipeline's (TARGET defaults per frame, as DataLink's
descriptors say: the pipeline's default target when it reduces the frames, else the
first task that does). A raw cutout's IDs must be indexed raw files; a product
cutout's, registered FITS products. Nothing here reads a file: the store answers, by
ID (indexed lookups, bounded by the request's 100 IDs), and raw files found are remembered
while the index keeps its version (`runtime/known_raw_files.py`), so a request naming
frames asked for before costs no store call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from soda_reduce.pipelines import Pipeline
from soda_reduce.reduction.cascade import DataSource
from soda_reduce.reduction.index_model import DEFAULT_AUTHORITY
from soda_reduce.reduction.organisation import Frame
from soda_reduce.reduction.plan import PlanRequestError
from soda_reduce.reduction.planner import split_parameters
from soda_reduce.reduction.tasks import Cascade, Task
from soda_reduce.runtime.archive_plans import ArchivePipelines
from soda_reduce.runtime.known_raw_files import KnownRawFiles
from soda_reduce.runtime.product_records import ProductRecords
from soda_reduce.runtime.store import Store
from soda_reduce.vo.dali import UsageError
from soda_reduce.vo.datalink import local_id
from soda_reduce.vo.job_request import JobKind, JobRequest

FITS_TYPES = frozenset({"application/fits", "image/fits"})


@dataclass(frozen=True)
class ReductionRequest:
    """The job parameters the planner understands, validated."""

    ids: tuple[str, ...]
    target: str | None
    parameters: dict[str, str]  # task.param and workflow parameters, as given


def bottom_source(task: Task) -> DataSource:
    """The data source under a task's chain of main inputs (what its request IDs select)."""
    while isinstance(task.main.source, Task):
        task = task.main.source
    source = task.main.source
    assert isinstance(source, DataSource)
    return source


def reducing_tasks(cascade: Cascade, frames: Sequence[Frame]) -> tuple[Task, ...]:
    """The tasks whose main input is frames of every one of ``frames``' types, in order."""
    return tuple(t for t in cascade.tasks if all(f.has(bottom_source(t).category) for f in frames))


def default_target(cascade: Cascade, frames: Sequence[Frame]) -> str | None:
    """The target a request without TARGET reduces ``frames`` to: the pipeline's default
    target when it reduces them, else the first task that does (None: no task does)."""
    names = [t.name for t in reducing_tasks(cascade, frames)]
    if cascade.default_target in names or not frames:
        return cascade.default_target or None
    return names[0] if names else None


class RequestChecks:
    """Checks a request against the pipelines and the store (the job service's part)."""

    def __init__(
        self, store: Store, pipelines: ArchivePipelines, authority: str = DEFAULT_AUTHORITY
    ) -> None:
        self.store = store
        self.pipelines = pipelines
        self.authority = authority  # of product IDs (raw IDs are looked up whole)
        self.raw_files = KnownRawFiles(store)
        self.products = ProductRecords(store)

    def reduction_request(
        self, request: JobRequest, cascade: Cascade, frames: Sequence[Frame] = ()
    ) -> ReductionRequest:
        """The reduction parameters checked against ``cascade``; UsageError if they do
        not fit. Without TARGET, the default for ``frames`` (`default_target`).

        Unknown bare names are kept and ignored, as DALI asks of services, unless the
        cascade declares them as workflow parameters; ``task.param`` names must name a
        real task parameter.
        """
        target = request.target
        if target is not None:
            try:
                found = cascade.targets(target)
                target = found[0].name if len(found) == 1 else target.lower()
            except KeyError:
                names = ", ".join([*(t.name for t in cascade.tasks), *cascade.meta_targets])
                raise UsageError(
                    f"unknown TARGET {target!r} for the {cascade.name} pipeline (targets: "
                    f"{names}; or raw, for the raw frame as archived)"
                ) from None
        else:
            target = default_target(cascade, frames)
        workflow = {p.name.upper(): p.name for p in cascade.workflow_params}
        recipe = dict(request.recipe)
        for name, value in request.other:
            key = workflow.get(name.upper())
            if key is None:
                continue
            if key in recipe and recipe[key] != value:
                raise UsageError(f"parameter {name} given more than once")
            recipe[key] = value
        try:
            split_parameters(cascade, recipe)
        except PlanRequestError as exc:
            raise UsageError(str(exc)) from None
        return ReductionRequest(request.ids, target, recipe)

    async def reduction(self, request: JobRequest) -> tuple[ReductionRequest, Pipeline]:
        """A reduction request checked against the pipeline its IDs belong to."""
        pipeline, frames = await self.pipeline_for(request.ids)
        return self.reduction_request(request, pipeline.cascade, frames), pipeline

    async def pipeline_for(self, ids: Sequence[str]) -> tuple[Pipeline, list[Frame]]:
        """The pipeline claiming the requested files, and their frames; UsageError if
        unknown, unclaimed, or of several pipelines. Without IDs, the default pipeline."""
        if not ids:
            return self.pipelines.default, []
        files = await self.raw_files.by_id(ids)
        unknown = [i for i in ids if i not in files]
        if unknown:
            raise UsageError(f"unknown ID {unknown[0]!r}: not a raw file of this archive")
        names: dict[str, Pipeline] = {}
        for file_id in ids:
            raw = files[file_id]
            pipeline = self.pipelines.of(raw)
            if pipeline is None:
                why = raw.claim or "no pipeline claims it"
                raise UsageError(f"ID {file_id!r} cannot be reduced here: {why}")
            names[pipeline.name] = pipeline
        if len(names) > 1:
            raise UsageError(
                f"the IDs belong to different pipelines ({', '.join(names)}): "
                "send one job per pipeline"
            )
        pipeline = self.pipelines.get(next(iter(names)))
        return pipeline, [self.pipelines.frame(files[i]) for i in ids]  # stored classification

    async def cutout(self, request: JobRequest) -> None:
        """A cutout request's IDs name what it cuts: indexed, readable raw files, or
        registered FITS products; UsageError naming the first that does not."""
        if not request.ids:
            raise UsageError("ID is required: the raw files or products to cut")
        if request.kind is JobKind.RAW_CUTOUT:
            files = await self.raw_files.by_id(request.ids)
            for file_id in request.ids:
                raw = files.get(file_id)
                if raw is None:
                    raise UsageError(f"unknown ID {file_id!r}: not a raw file of this archive")
                if raw.problem:
                    raise UsageError(f"{raw.path} cannot be read: {raw.problem}")
            return
        wanted = {}
        for identifier in request.ids:
            local = local_id(identifier, self.authority)
            if local is None or local[0] != "product":
                raise UsageError(f"unknown ID {identifier!r}: not a product of this service")
            wanted[local[1]] = identifier
        found = await self.products.content_types(wanted)
        for product_id, identifier in wanted.items():
            if product_id not in found:
                raise UsageError(f"unknown ID {identifier!r}: no such product here")
            if found[product_id] not in FITS_TYPES:
                raise UsageError(f"{identifier} is {found[product_id]}, not a FITS file")
