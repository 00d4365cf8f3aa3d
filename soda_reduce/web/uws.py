"""UWS 1.1 handlers for the SODA async job list at /soda/async.

Each handler: parse (vo) -> act (runtime JobService) -> render (vo). Errors are
DALI errors raised anywhere below and rendered once by the middleware in
``web.errors``. The owner comes from ``web.middleware``; who may read or change a job is
``context.job_of`` (someone else's job is a 404, an anonymous job readable by its URL).
"""

from __future__ import annotations

import asyncio
import time
from contextlib import suppress

from aiohttp import web

from soda_reduce.runtime.jobs import JobRecord
from soda_reduce.vo.dali import (
    VOTABLE_MEDIA_TYPE,
    NotFoundError,
    UsageError,
    case_insensitive_params,
    single,
)
from soda_reduce.vo.job_request import JobRequest
from soda_reduce.vo.results import PRODUCTS_MEDIA_TYPE, render_products_votable
from soda_reduce.vo.uws import (
    ACTIVE,
    XML_MEDIA_TYPE,
    ErrorSummary,
    JobRef,
    JobSummary,
    Parameter,
    Phase,
    Result,
    format_time,
    parse_job_list_filters,
    parse_phase_filter,
    parse_wait,
    render_error_summary,
    render_job,
    render_job_list,
    render_parameters,
    render_results,
)
from soda_reduce.web.context import (
    ASYNC_PATH,
    BASE_OVERRIDE,
    SERVICES,
    base_url,
    check_creation_rate,
    job_info_elements,
    job_of,
    job_request_of,
    job_url,
    owner_of,
    owns_nothing_yet,
    params_of,
    product_rows,
    public_owner,
)
from soda_reduce.web.status_cache import BASE_PLACEHOLDER

SAFETY_POLL_S = 5.0  # WAIT re-reads the job this often when events may be lost
RELIABLE_POLL_S = 20.0  # ... and this often while they cannot (2,000 WAITs: 100 reads/s)


def _xml(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type=XML_MEDIA_TYPE, charset="utf-8")


def _text(value: str) -> web.Response:
    return web.Response(text=value, content_type="text/plain")


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


async def _job(request: web.Request) -> JobRecord:
    return await job_of(request)  # the owner's; an anonymous job's URL also lets anyone read


def has_results(job: JobRecord) -> bool:
    """COMPLETED jobs, and ABORTED ones whose worker registered the products of the steps
    that had finished (the job's own ``results``): those are as good as any other."""
    return job.phase == Phase.COMPLETED or (job.phase == Phase.ABORTED and bool(job.results))


def results_of(request: web.Request, job: JobRecord) -> list[Result]:
    """The products table first (id "result", as pyvo looks for), products, logs, cutouts."""
    if not has_results(job):
        return []
    url = job_url(request, job.job_id)
    # SODA cutouts (web/soda_sync.py serves them): one per dataset and combination of values
    cutouts = [
        Result(
            f"cutout-{n}",
            f"{url}/results/{item['name']}",
            item.get("content_type"),
            item.get("size"),
        )
        for n, item in enumerate(job.doc.get("cutouts") or [], start=1)
    ]
    if job.request.kind.cuts_only:  # raw frames as archived or products, cut: nothing else
        return cutouts
    rows = product_rows(request, job)
    results = [
        Result("result", f"{url}/results/result", "application/x-votable+xml", None),
    ]
    logs: set[str] = set()
    for n, row in enumerate((r for r in rows if r.main), start=1):
        results.append(Result(f"product-{n}", row.access_url, row.content_type, row.size))
    for row in rows:
        if row.step_key not in logs:
            logs.add(row.step_key)
            base = row.access_url.rsplit("/", 1)[0]
            results.append(Result(f"log-{len(logs)}", f"{base}/recipe.log", "text/plain"))
    results += cutouts
    # download bundles, as PAWS offers them (web/bundles.py streams them)
    for kind in ("reduced", "reduced-raw", "all"):
        results.append(Result(f"bundle-{kind}", f"{url}/bundles/{kind}.zip", "application/zip"))
    return results


def summary_of(request: web.Request, job: JobRecord) -> JobSummary:
    error = None
    if job.error:
        error = ErrorSummary(job.error.message, job.error.kind, has_detail=True)
    return JobSummary(
        job_id=job.job_id,
        phase=job.phase,
        creation_time=job.creation_time,
        run_id=job.run_id,
        owner_id=public_owner(job.owner),
        quote=job.doc.get("quote"),
        start_time=job.start_time,
        end_time=job.end_time,
        execution_duration=job.execution_duration,
        destruction=job.destruction,
        parameters=[Parameter(n, v) for n, v in job.parameters],
        results=results_of(request, job),
        error_summary=error,
        job_info=job_info_elements(request, job),
    )


# ----------------------------------------------------------------- job list


async def job_list(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    try:
        phases, after, last = parse_job_list_filters(request.query.items())
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    rows = await services.jobs.jobs.list(owner_of(request), phases, after, last)
    root = base_url(request)
    refs = [
        JobRef(
            id=row["job_id"],
            phase=Phase(row["phase"]),
            href=f"{root}{ASYNC_PATH}/{row['job_id']}",
            run_id=row.get("run_id"),
            owner_id=public_owner(row.get("owner")),
            creation_time=row.get("creation_time"),
        )
        for row in rows
    ]
    return _xml(render_job_list(refs))


async def create_job(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    job_request, _ = await job_request_of(request)
    check_creation_rate(request)
    job = await services.jobs.create(
        owner_of(request), job_request, new_owner=owns_nothing_yet(request)
    )
    return _see_other(job_url(request, job.job_id))


# ----------------------------------------------------------------- one job


async def get_job(request: web.Request) -> web.Response:
    started = time.monotonic()  # a WAIT's cap counts from here, store reads included
    services = request.app[SERVICES]
    query = case_insensitive_params(request.query.items())
    wait, expected = single(query, "WAIT"), single(query, "PHASE")
    cache = services.status_cache
    if wait is None and cache.enabled and services.events.reliable:
        root = base_url(request)  # checked before anything is read
        key = (request.match_info["job_id"], owner_of(request))
        body = cache.get(key)
        if body is None:
            generation = cache.generation(key[0])
            job = await _job(request)
            request[BASE_OVERRIDE] = BASE_PLACEHOLDER
            try:
                body = render_job(summary_of(request, job))
            finally:
                del request[BASE_OVERRIDE]
            cache.put(key, generation, body)
        return _xml(body.replace(BASE_PLACEHOLDER.encode(), root.encode()))
    job = await _job(request)
    if wait is not None:
        try:
            seconds = parse_wait(wait)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        try:
            expected_phase = None if expected is None else parse_phase_filter(expected)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        cap = services.wait_cap_s
        limit = cap if seconds < 0 else min(float(seconds), cap)
        job = await _wait(request, job, expected_phase, limit - (time.monotonic() - started))
    return _xml(render_job(summary_of(request, job)))


async def _wait(
    request: web.Request, job: JobRecord, expected: Phase | None, limit: float
) -> JobRecord:
    """Block while the job is active (and in ``expected``), up to ``limit`` seconds.

    Returns as soon as an event says the job changed; the store is re-read now and
    then in case an event was lost.
    """
    services = request.app[SERVICES]
    limit = max(0.0, limit)
    deadline = time.monotonic() + limit
    start_phase = job.phase
    job_id, owner = job.job_id, job.owner  # the caller may read it (checked by _job)
    del job  # a waiting request holds a phase, not a whole job document
    phases = services.jobs.jobs
    with suppress(TimeoutError):
        async with asyncio.timeout(limit), services.events.watch(job_id) as watch:
            # read after registering: no change can slip between
            phase = await phases.phase(job_id, owner)
            while phase in ACTIVE and (expected is None or phase == expected):
                if phase != start_phase:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0 or services.stopping:
                    break
                poll = RELIABLE_POLL_S if services.events.reliable else SAFETY_POLL_S
                event = await watch.wait(min(remaining, poll))
                phase = await phases.phase(job_id, owner)
                if event is not None and event.get("shutdown"):
                    break
    return await _job(request)


def _after_delete(request: web.Request) -> web.Response:
    """303 to the job list (UWS 1.1 2.2.3.2): the caller's jobs, windowed and capped at
    `MAX_LIST` rows like every list (runtime/job_lists.py), so the landing stays cheap."""
    return _see_other(f"{base_url(request)}{ASYNC_PATH}")


async def post_job(request: web.Request) -> web.Response:
    """POST to the job: ACTION=DELETE (UWS 1.1 2.2.3.1), PHASE=RUN|ABORT (as to {job}/phase,
    which uws-client and others send here), and parameters to change while PENDING."""
    services = request.app[SERVICES]
    pairs = await params_of(request)
    job = await _job(request)
    action = single(case_insensitive_params(pairs), "ACTION")
    if action is not None:
        if action.strip().upper() != "DELETE":
            raise UsageError("ACTION must be DELETE")
        await services.jobs.delete(job.job_id, job.owner)
        return _after_delete(request)
    if not pairs:
        raise UsageError("POST to a job needs ACTION=DELETE, PHASE or parameters to change")
    phase = [(n, v) for n, v in pairs if n.upper() == "PHASE"]
    others = [(n, v) for n, v in pairs if n.upper() != "PHASE"]
    target = None
    if phase:
        target = (await job_request_of(request, phase))[0].phase  # RUN or ABORT, once
    if others:  # a PENDING job only (403 after), before it runs
        change, _ = await job_request_of(request, others)
        job = await services.jobs.set_parameters(job, change, [n for n, _ in others])
    if target is not None:
        await services.jobs.change_phase(job, target)
    return _see_other(job_url(request, job.job_id))


async def delete_job(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    job = await _job(request)  # the caller may change it: deleted as its owner's
    await services.jobs.delete(job.job_id, job.owner)
    return _after_delete(request)


async def get_phase(request: web.Request) -> web.Response:
    return _text((await _job(request)).phase.value)


async def _control(request: web.Request, name: str) -> JobRequest:
    """The request of a POST to one of a job's control resources: ``name`` once."""
    pairs = await params_of(request)
    if sum(1 for n, _ in pairs if n.upper() == name) != 1:
        raise UsageError(f"{name} must be given exactly once")
    parsed, _ = await job_request_of(request, [(n, v) for n, v in pairs if n.upper() == name])
    return parsed


async def post_phase(request: web.Request) -> web.Response:
    target = (await _control(request, "PHASE")).phase
    job = await _job(request)
    assert target is not None
    await request.app[SERVICES].jobs.change_phase(job, target)
    return _see_other(job_url(request, job.job_id))


async def get_execution_duration(request: web.Request) -> web.Response:
    return _text(str((await _job(request)).execution_duration))


async def post_execution_duration(request: web.Request) -> web.Response:
    seconds = (await _control(request, "EXECUTIONDURATION")).execution_duration
    job = await _job(request)
    assert seconds is not None
    await request.app[SERVICES].jobs.set_execution_duration(job, seconds)
    return _see_other(job_url(request, job.job_id))


async def get_destruction(request: web.Request) -> web.Response:
    job = await _job(request)
    return _text(format_time(job.destruction) if job.destruction else "")


async def post_destruction(request: web.Request) -> web.Response:
    when = (await _control(request, "DESTRUCTION")).destruction
    job = await _job(request)
    assert when is not None
    await request.app[SERVICES].jobs.set_destruction(job, when)
    return _see_other(job_url(request, job.job_id))


async def get_error(request: web.Request) -> web.Response:
    job = await _job(request)
    if not job.error:  # DALI: a resource that does not exist (yet) is a 404
        raise NotFoundError(f"the job has no error (phase {job.phase.value})")
    body = render_error_summary(ErrorSummary(job.error.message, job.error.kind))
    return web.Response(body=body, content_type=VOTABLE_MEDIA_TYPE)


async def get_quote(request: web.Request) -> web.Response:
    quote = (await _job(request)).doc.get("quote")
    return _text(format_time(quote) if quote else "")


async def get_owner(request: web.Request) -> web.Response:
    return _text(public_owner((await _job(request)).owner) or "")


async def get_results(request: web.Request) -> web.Response:
    job = await _job(request)
    return _xml(render_results(results_of(request, job)))


async def get_parameters(request: web.Request) -> web.Response:
    job = await _job(request)
    return _xml(render_parameters(Parameter(n, v) for n, v in job.parameters))


async def post_parameters(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    job = await _job(request)
    change, pairs = await job_request_of(request)
    await services.jobs.set_parameters(job, change, [n for n, _ in pairs])
    return _see_other(job_url(request, job.job_id))


async def get_products_table(request: web.Request) -> web.Response:
    job = await _job(request)
    if not has_results(job):
        raise NotFoundError(f"no results: the job is {job.phase.value}")
    rows = product_rows(request, job)
    body = await asyncio.to_thread(render_products_votable, rows, job_id=job.job_id)
    return web.Response(body=body, content_type=PRODUCTS_MEDIA_TYPE)


def add_routes(app: web.Application) -> None:
    r = app.router
    for path in (ASYNC_PATH, ASYNC_PATH + "/"):  # the trailing slash serves the same list
        r.add_get(path, job_list)
        r.add_post(path, create_job)
    job = ASYNC_PATH + "/{job_id}"
    r.add_get(job, get_job)
    r.add_post(job, post_job)
    r.add_delete(job, delete_job)
    r.add_get(job + "/phase", get_phase)
    r.add_post(job + "/phase", post_phase)
    r.add_get(job + "/executionduration", get_execution_duration)
    r.add_post(job + "/executionduration", post_execution_duration)
    r.add_get(job + "/destruction", get_destruction)
    r.add_post(job + "/destruction", post_destruction)
    r.add_get(job + "/error", get_error)
    r.add_get(job + "/quote", get_quote)
    r.add_get(job + "/owner", get_owner)
    r.add_get(job + "/results", get_results)
    r.add_get(job + "/results/result", get_products_table)
    r.add_get(job + "/parameters", get_parameters)
    r.add_post(job + "/parameters", post_parameters)
