"""What DataLink says about an ID: a raw file's reduction, a product's inputs and header.

The web layer turns these facts into {links} rows and service descriptors; nothing here
knows a URL. A raw file is seen through the planner (which tasks can reduce it, which
calibrations the planner would pick, at which quality level); a product through its
``products`` document (the worker records the step's inputs there), its step's manifest,
and, for products registered before inputs were recorded, the provenance keywords its
FITS header carries (PROVn / PROVCn, docs/recipes.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from astropy.io import fits

from soda_reduce.reduction.cascade import Param
from soda_reduce.reduction.index_model import RawFile
from soda_reduce.reduction.plan import PlanJob, PlanRequestError, ReductionPlan
from soda_reduce.reduction.tasks import Task
from soda_reduce.runtime.archive_plans import ArchivePipelines
from soda_reduce.runtime.job_checks import default_target, reducing_tasks
from soda_reduce.runtime.product_records import ProductRecords
from soda_reduce.runtime.products import LOG_NAME, ProductError, ProductStore
from soda_reduce.runtime.store import Store

STEP_KEY = re.compile(r"[0-9a-f]{64}\Z")
FITS_TYPE = "application/fits"
_ROLE = re.compile(r"\((main|associated|static)\)")


# ----------------------------------------------------------------------------- raw files


@dataclass(frozen=True)
class PickedCalibration:
    """A raw calibration file the planner chose, and how well it matched."""

    raw: RawFile
    category: str
    task: str  # the task that reduces it (e.g. bias)
    used_by: str  # the task whose association picked it (e.g. science)
    level: int | None


@dataclass(frozen=True)
class RawReduction:
    """How a raw file would be reduced: targets, plan, calibrations, parameters."""

    category: str | None
    targets: tuple[str, ...]  # tasks whose main input is frames of this category
    default_target: str | None
    plan: ReductionPlan | None
    problem: str | None  # why it cannot be reduced (None: the default plan is complete)
    calibrations: tuple[PickedCalibration, ...]
    parameters: tuple[tuple[str, Param], ...]  # request name (task.param or workflow) -> spec
    pipeline: str | None = None  # the pipeline that claims the file
    types: tuple[str, ...] = ()  # every type of the frame


def _closure(tasks: Sequence[Task]) -> set[str]:
    names: set[str] = set()
    stack = list(tasks)
    while stack:
        item = stack.pop()
        if item.name not in names:
            names.add(item.name)
            stack.extend(item.upstream())
    return names


def raw_reduction(pipelines: ArchivePipelines, store: Store, raw: RawFile) -> RawReduction:
    """Plan ``raw`` for its default target with the pipeline that claims it, asking the
    store for its candidates only; synchronous (the store's synchronous client) and
    CPU-bound: call it in a thread."""
    pipeline = pipelines.of(raw)
    if pipeline is None:
        why = raw.problem or raw.claim or "no pipeline claims it"
        return RawReduction(None, (), None, None, why, (), ())
    cascade = pipeline.cascade
    frame = pipelines.frame(raw)  # its stored classification
    category = frame.category
    targets = reducing_tasks(cascade, [frame])
    names = tuple(t.name for t in targets)
    needed = _closure(targets)
    parameters = [
        (f"{t.name}.{p.name}", p) for t in cascade.tasks if t.name in needed for p in t.parameters
    ]
    if targets:
        parameters += [(p.name, p) for p in cascade.workflow_params]
    default = default_target(cascade, [frame])  # what a request without TARGET reduces to
    facts = {"pipeline": pipeline.name, "types": frame.categories}
    if raw.problem or default is None:
        why = raw.problem or (
            f"a {category} frame, which no task reduces"
            if category
            else "not classified: no task reduces it"
        )
        return RawReduction(category, names, default, None, why, (), tuple(parameters), **facts)
    source = pipelines.source(pipeline, store)
    try:
        plan = pipelines.plan_from(pipeline, source, target=default, ids=[raw.file_id])
    except PlanRequestError as exc:
        return RawReduction(
            category, names, default, None, str(exc), (), tuple(parameters), **facts
        )
    problem = None
    if not plan.complete:
        reasons = [r for d in plan.datasets for r in d.reasons] or ["nothing to reduce"]
        problem = "; ".join(dict.fromkeys(reasons))
    inputs = [i.file_id for j in plan.jobs for i in j.inputs if i.file_id]
    by_id = {fid: f.raw for fid, f in source.by_ids(inputs).items()}  # read while planning
    picked = tuple(picked_calibrations(plan, raw.file_id, by_id))
    return RawReduction(category, names, default, plan, problem, picked, tuple(parameters), **facts)


def picked_calibrations(
    plan: ReductionPlan, file_id: str, files: Mapping[str, RawFile]
) -> list[PickedCalibration]:
    """Raw calibration files behind the reduction of ``file_id``, nearest association first.

    Walks from the dataset's target job through matched associations: a chosen job stands
    for the raw frames it combines, a chosen raw file for itself. A file reached twice
    keeps the level of the association nearest to the target.
    """
    dataset = next((d for d in plan.datasets if file_id in d.main_inputs), None)
    if dataset is None:
        return []
    jobs = {j.job_id: j for j in plan.jobs}
    found: dict[str, PickedCalibration] = {}
    queue: list[PlanJob] = [jobs[dataset.target_job]]
    visited: set[str] = set()
    while queue:
        job = queue.pop(0)
        if job.job_id in visited:
            continue
        visited.add(job.job_id)
        queue.extend(jobs[i.job] for i in job.inputs if i.job in jobs and i.role == "main")
        for assoc in job.associations:
            if assoc.status != "matched":
                continue
            for choice in assoc.chosen:
                upstream = jobs.get(choice)
                if upstream is None:
                    _add(found, files, choice, assoc.category, job.task, job.task, assoc.level)
                    continue
                queue.append(upstream)
                for item in upstream.inputs:
                    if item.file_id and item.role == "main":
                        _add(
                            found,
                            files,
                            item.file_id,
                            item.category,
                            upstream.task,
                            job.task,
                            assoc.level,
                        )
    found.pop(file_id, None)
    return list(found.values())


def _add(
    found: dict[str, PickedCalibration],
    files: Mapping[str, RawFile],
    file_id: str,
    category: str,
    task: str,
    used_by: str,
    level: int | None,
) -> None:
    raw = files.get(file_id)
    if raw is not None and file_id not in found:
        found[file_id] = PickedCalibration(raw, category, task, used_by, level)


# ----------------------------------------------------------------------------- products


@dataclass(frozen=True)
class StepInput:
    category: str
    role: str  # main | associated | static
    file_id: str | None = None
    step_key: str | None = None


@dataclass(frozen=True)
class StepFile:
    """One file of a step directory, as its manifest lists it."""

    step_key: str
    file: str
    category: str
    content_type: str
    size: int | None
    main: bool = False
    preview_of: str | None = None
    auxiliary: bool = False
    serves: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProductFacts:
    product: StepFile
    task: str
    stored: bool  # the file is still on disk (the sweeper may have collected it)
    step_files: tuple[StepFile, ...]  # every product of the step, this one included
    inputs: tuple[StepInput, ...]
    upstream: dict[str, tuple[StepFile, ...]]  # step key -> that step's products
    header: fits.Header | None  # the image header, for the cutout limits
    has_log: bool
    behind: tuple[StepInput, ...] = ()  # raw and static files the upstream steps used


MAX_UPSTREAM_STEPS = 200  # a cascade is a few steps deep; a bound, not a limit in practice


def files_behind(products: ProductStore, inputs: Sequence[StepInput]) -> tuple[StepInput, ...]:
    """The raw frames and static files behind a product's upstream steps, from their
    manifests: the biases behind the master bias, the arc template behind the wavelength
    solution. DataLink lists them as #calibration beside the direct inputs."""
    direct = {i.file_id for i in inputs if i.file_id}
    queue = [i.step_key for i in inputs if i.step_key and STEP_KEY.match(i.step_key)]
    seen: set[str] = set()
    found: dict[str, StepInput] = {}
    while queue and len(seen) < MAX_UPSTREAM_STEPS:
        key = queue.pop(0)
        if key in seen:
            continue
        seen.add(key)
        try:
            manifest = products.manifest(key)
        except ProductError:
            continue
        for entry in manifest.get("inputs", []):
            file_id, step = entry.get("file_id"), entry.get("step_key")
            if file_id and file_id not in direct and file_id not in found:
                found[file_id] = StepInput(str(entry.get("category", "")), "associated", file_id)
            elif step and STEP_KEY.match(str(step)):
                queue.append(str(step))
    return tuple(found.values())


def _step_files(products: ProductStore, key: str) -> tuple[StepFile, ...]:
    try:
        manifest = products.manifest(key)
    except ProductError:
        return ()
    out = []
    for item in manifest.get("products", []):
        path = products.step_dir(key) / item["file"]
        out.append(
            StepFile(
                key,
                item["file"],
                str(item.get("category", "")),
                item.get("content_type") or "application/octet-stream",
                path.stat().st_size if path.is_file() else None,
                bool(item.get("main")),
                item.get("preview_of"),
                bool(item.get("auxiliary")),
                tuple(item.get("serves") or ()),
            )
        )
    return tuple(out)


def image_header(path: Path) -> fits.Header | None:
    """The header of the first HDU holding an image of 2 or more axes (None if none)."""
    try:
        with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
            for hdu in hdul:
                if hdu.is_image and int(hdu.header.get("NAXIS", 0)) >= 2:
                    return hdu.header.copy()
    except (OSError, ValueError):
        return None
    return None


def provenance_inputs(header: Mapping[str, Any]) -> tuple[StepInput, ...]:
    """Inputs from the PROVn / PROVCn keywords.

    The role is in the card comment when it fitted; otherwise it follows from the order
    the planner gives inputs in: main inputs first (one category), then the others.
    """
    found = []
    count = header.get("NPROV")
    main_category: str | None = None
    for n in range(1, int(count) + 1 if isinstance(count, int) else 0):
        ref = header.get(f"PROV{n}")
        if not isinstance(ref, str):
            continue
        category = str(header.get(f"PROVC{n}", ""))
        main_category = category if main_category is None else main_category
        comment = header.comments[f"PROV{n}"] if isinstance(header, fits.Header) else ""
        match = _ROLE.search(comment)
        role = match.group(1) if match else ("main" if category == main_category else "associated")
        if STEP_KEY.match(ref):
            found.append(StepInput(category, role, step_key=ref))
        else:
            found.append(StepInput(category, role, file_id=ref))
    return tuple(found)


def _facts(
    products: ProductStore, key: str, file: str, doc: Mapping[str, Any] | None
) -> ProductFacts | None:
    step_files = _step_files(products, key)
    item = next((f for f in step_files if f.file == file), None)
    if item is None and doc is None:
        return None
    if item is None:
        assert doc is not None
        item = StepFile(
            key,
            file,
            str(doc.get("category", "")),
            doc.get("content_type") or "application/octet-stream",
            doc.get("size"),
            bool(doc.get("main")),
        )
    path = products.step_dir(key) / file
    stored = path.is_file()
    header = image_header(path) if stored and item.content_type == FITS_TYPE else None
    if doc is not None and doc.get("inputs") is not None:
        inputs = tuple(
            StepInput(
                str(i.get("category", "")),
                str(i.get("role", "main")),
                i.get("file_id"),
                i.get("step_key"),
            )
            for i in doc["inputs"]
        )
    else:  # registered before inputs were recorded: the FITS provenance says the same
        main_fits = next(
            (f for f in step_files if f.content_type == FITS_TYPE and f.main),
            next((f for f in step_files if f.content_type == FITS_TYPE), None),
        )
        source = None
        if main_fits is not None:  # provenance is in the primary header (docs/recipes.md)
            with contextlib.suppress(OSError, ValueError, IndexError):
                source = fits.getheader(products.step_dir(key) / main_fits.file, 0)
        inputs = provenance_inputs(source) if source is not None else ()
    upstream = {
        i.step_key: _step_files(products, i.step_key)
        for i in inputs
        if i.step_key and STEP_KEY.match(i.step_key)
    }
    task = str(doc.get("task", "")) if doc else ""
    has_log = (products.step_dir(key) / LOG_NAME).is_file()
    behind = files_behind(products, inputs)
    return ProductFacts(item, task, stored, step_files, inputs, upstream, header, has_log, behind)


async def product_facts(
    store: Store, products: ProductStore, step_key: str, file: str
) -> ProductFacts | None:
    """Everything about one product, or None if no step made such a file."""
    doc = await ProductRecords(store).get(f"{step_key}/{file}")
    return await asyncio.to_thread(_facts, products, step_key, file, doc)
