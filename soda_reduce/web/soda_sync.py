"""SODA 1.0 synchronous cutouts at /soda/sync, and the files of async cutout results.

A request means here what it means on /soda/async (vo/job_request.py `JobKind`):

- a product ID (``ivo://AUTH/product?STEPKEY/FILE``): the cutout of that product, or
  without filters the product file itself; TARGET is a usage error;
- a raw ID with ``TARGET=raw``: the cutout of the raw frame as archived, or without
  filters the whole frame as plain FITS;
- a raw ID otherwise: that frame reduced to TARGET (the pipeline's default target for
  the frame when absent) with its recipe parameters, and the cutout of the product.

POS / CIRCLE / POLYGON, BAND, TIME and POL filter as in `runtime.cutout`.

Reducing in sync: the reduction is planned and answered here only when every step
of the plan is already in the step cache (its ``steps`` document is done and its
products are on disk): then the answer is a file read plus a cutout, fast enough
for a synchronous request. If any step would have to run, the answer is a
UsageError naming /soda/async (and ``TARGET=raw`` for the frame as archived): a
reduction takes minutes, longer than HTTP clients and proxies wait, and a job can
be followed, aborted and retried. docs/soda.md says the same for clients.

Errors follow SODA 1.0 section 5.2: text/plain starting with a label (``UsageError:``,
``MultiValuedParamNotSupported:``, ...). No overlap is 204 with no body.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path

from aiohttp import web

from soda_reduce.pipelines import Pipeline
from soda_reduce.reduction.plan import PlanRequestError
from soda_reduce.runtime.archive_boundary import servable
from soda_reduce.runtime.cutout import FITS_MEDIA_TYPE, NoOverlap, cutout_bytes, cutouts_dir
from soda_reduce.runtime.job_checks import ReductionRequest
from soda_reduce.runtime.products import ProductError
from soda_reduce.runtime.store import StoreUnavailable, is_outage
from soda_reduce.vo.dali import DaliError, NotFoundError, UsageError
from soda_reduce.vo.job_request import RAW_TARGET, JobKind, JobRequest, check_pairs
from soda_reduce.vo.soda import (
    MultiValuedParamNotSupported,
    SodaUsageError,
    error_document,
    parse_soda,
)
from soda_reduce.web.context import (
    ASYNC_PATH,
    SERVICES,
    Services,
    job_of,
    params_of,
    product_id,
)

log = logging.getLogger(__name__)

SYNC_PATH = "/soda/sync"
FITS_TYPES = frozenset({FITS_MEDIA_TYPE, "image/fits"})
_IVOID = re.compile(r"ivo://([^/?#]+)/(product|raw)\?(.+)\Z")
_STEP_KEY = re.compile(r"[0-9a-f]{64}")
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,200}")


@dataclass(frozen=True)
class Dataset:
    id: str
    path: Path
    kind: str  # product | raw


def _text(status: int, body: str) -> web.Response:
    return web.Response(status=status, text=body, content_type="text/plain")


async def soda_sync(request: web.Request) -> web.StreamResponse:
    error: DaliError
    try:
        return await _sync(request)
    except DaliError as exc:
        error = exc
    except Exception as exc:
        if not is_outage(exc):
            log.exception("%s %s failed", request.method, request.path_qs[:300])
            return _text(*error_document(RuntimeError()))
        log.warning("%s %s: %.200r", request.method, request.path, exc)
        error = StoreUnavailable()
    response = _text(*error_document(error))
    retry = getattr(error, "retry_after", None)
    if retry is not None:
        response.headers["Retry-After"] = str(max(1, int(retry)))
    return response


async def _sync(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    pairs = check_pairs(await params_of(request), services.jobs.request_limits)
    soda = await asyncio.to_thread(parse_soda, pairs, sync=True)
    for name in ("TARGET", "RESPONSEFORMAT"):
        count = sum(1 for n, v in pairs if n.upper() == name and v.strip())
        if count > 1:
            raise MultiValuedParamNotSupported(f"{name} given {count} times: /soda/sync takes one")
    formats = [v.strip() for n, v in pairs if n.upper() == "RESPONSEFORMAT" and v.strip()]
    if formats and formats[0].lower() not in {"fits", *FITS_TYPES}:
        raise SodaUsageError(f"RESPONSEFORMAT {formats[0]!r}: only application/fits is offered")
    if not soda.ids:
        raise SodaUsageError("ID is required: the identifier of one product or raw file")
    job_request = replace(await services.jobs.parse(pairs), ids=soda.ids[:1])
    dataset = await _resolve(services, soda.ids[0])
    if job_request.kind is JobKind.REDUCTION:
        dataset = await _reduced(services, job_request, dataset)
    flt = soda.filters()[0]
    if flt.empty and dataset.kind == "product":
        return _fits_file(dataset.path)
    result = await asyncio.to_thread(cutout_bytes, dataset.path, flt, source=dataset.id)
    if isinstance(result, NoOverlap):
        return web.Response(status=204)
    stem = dataset.path.name.split(".")[0]
    return web.Response(
        body=result,
        content_type=FITS_MEDIA_TYPE,
        headers={"Content-Disposition": f'inline; filename="{stem}_cutout.fits"'},
    )


def _fits_file(path: Path) -> web.StreamResponse:
    response = web.FileResponse(path)
    response.content_type = FITS_MEDIA_TYPE
    return response


async def _resolve(services: Services, identifier: str) -> Dataset:
    """The file of a product or raw ID; NotFoundError (404, UsageError label) if unknown."""
    match = _IVOID.match(identifier)
    if match is None or match.group(1).lower() != services.authority.lower():
        raise NotFoundError(f"unknown ID {identifier!r}: not a dataset of this service")
    if match.group(2) == "product":
        key, _, name = match.group(3).partition("/")
        if not (_STEP_KEY.fullmatch(key) and _FILE_NAME.fullmatch(name)):
            raise NotFoundError(f"unknown ID {identifier!r}: malformed product identifier")
        return await _product(services, identifier, key, name)
    found = await services.jobs.store.raw_files_by_id([identifier])
    if not found or services.archive_root is None:
        raise NotFoundError(f"unknown ID {identifier!r}: not a raw file of this archive")
    raw = found[0]
    if raw.problem:
        raise SodaUsageError(f"{raw.path} cannot be read: {raw.problem}")
    path = await asyncio.to_thread(servable, services.archive_root, raw.path)
    if path is None:  # gone, not FITS, or a link out of the archive
        raise NotFoundError(f"{raw.path} is indexed but no longer in the archive")
    return Dataset(identifier, path, "raw")


async def _product(services: Services, identifier: str, key: str, name: str) -> Dataset:
    path = services.products.step_dir(key) / name
    if not path.is_file():
        raise NotFoundError(f"unknown ID {identifier!r}: no such product (it may be collected)")
    try:
        manifest = await asyncio.to_thread(services.products.manifest, key)
    except ProductError:
        manifest = {}
    item = next((p for p in manifest.get("products", []) if p.get("file") == name), {})
    if item.get("content_type", FITS_MEDIA_TYPE) not in FITS_TYPES:
        raise SodaUsageError(f"{name} is {item.get('content_type')}, not a FITS image")
    return Dataset(identifier, path, "product")


async def _reduced(services: Services, job_request: JobRequest, raw: Dataset) -> Dataset:
    """The product of reducing ``raw`` as the request asks, if every step is cached."""
    hint = f"; or add TARGET={RAW_TARGET} for the raw frame as archived"
    try:
        reduction, pipeline = await services.jobs.checked_request(job_request)
        return await _cached_reduction(services, reduction, raw, pipeline)
    except UsageError as exc:
        if job_request.target is not None:
            raise SodaUsageError(exc.message) from None
        raise SodaUsageError(exc.message + hint) from None  # no TARGET: they may want the raw


async def _cached_reduction(
    services: Services, request: ReductionRequest, raw: Dataset, pipeline: Pipeline
) -> Dataset:
    """The target product of reducing ``raw``, if every step is cached; else UsageError."""
    try:  # asks the store for this frame's candidates only
        plan = await services.jobs.plan_ids(pipeline, [raw.id], request.target, request.parameters)
    except PlanRequestError as exc:
        raise SodaUsageError(str(exc)) from None
    if not plan.complete:
        reasons = "; ".join(r for d in plan.datasets for r in d.reasons) or "nothing to reduce"
        raise SodaUsageError(f"{raw.id} cannot be reduced to {plan.target}: {reasons}")
    keys = [j.step_key for j in plan.runnable_jobs() if j.step_key]
    done = await services.jobs.finished_steps.done(keys)
    missing = [k for k in keys if k not in done or not services.products.has(k)]
    if missing:
        raise SodaUsageError(
            f"reducing this file to {plan.target} needs {len(missing)} of {len(keys)} steps "
            f"that have not run yet: /soda/sync only answers from cached steps; submit the "
            f"same parameters to {ASYNC_PATH} (PHASE=RUN) and ask again when it completes"
        )
    dataset = plan.datasets[0]
    key = plan.job(dataset.target_job).step_key
    assert key is not None
    manifest = await asyncio.to_thread(services.products.manifest, key)
    mains = [p for p in manifest.get("products", []) if p.get("main")]
    mains.sort(key=lambda p: raw.id not in p.get("serves", ()))  # the one for this file first
    for item in mains:
        if item.get("content_type") in FITS_TYPES:
            return Dataset(
                product_id(services.authority, key, item["file"]),
                services.products.step_dir(key) / item["file"],
                "product",
            )
    raise SodaUsageError(f"the {plan.target} step made no FITS image to cut")


# ------------------------------------------------------------------ async cutout results


async def get_cutout_result(request: web.Request) -> web.StreamResponse:
    """A cutout result of an async job (readable as the job itself is)."""
    services = request.app[SERVICES]
    job = await job_of(request)  # the owner's, or an anonymous job by its URL
    name = request.match_info["name"]
    item = next((c for c in job.doc.get("cutouts") or [] if c.get("name") == name), None)
    path = cutouts_dir(services.products.root, job.job_id) / name
    if item is None or not _FILE_NAME.fullmatch(name) or not path.is_file():
        raise NotFoundError(f"job {job.job_id} has no result {name!r}")
    response = web.FileResponse(path)
    response.content_type = item.get("content_type", "application/octet-stream")
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_get(SYNC_PATH, soda_sync)
    app.router.add_post(SYNC_PATH, soda_sync)
    # after uws's /results/result route, which therefore keeps that name
    app.router.add_get(ASYNC_PATH + "/{job_id}/results/{name}", get_cutout_result)
