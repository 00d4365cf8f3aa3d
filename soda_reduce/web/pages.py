"""HTML pages for people: the caller's jobs, a job's live progress (the archive's landing
page is web/landing.py, a raw file's page web/raw_page.py).

The pages sit beside the VO endpoints and use the same identity and rules (web/middleware.py,
``context.job_of``): a person lists only their own jobs (an anonymous person: those of their
session), someone else's job is a 404 here as in UWS, and an anonymous job's page is shown to
whoever has its URL, without the buttons unless they may change it. Everything is
rendered by Jinja2 with autoescape on; values never go into HTML by hand.

The job page updates itself without reloading: a small script polls
``/jobs/{id}/status.json`` (a few hundred bytes) and, only when its signature changes, swaps
in ``/jobs/{id}/panel`` (the same template the page embeds), so there is one rendering of a
job, not one in HTML and another in JavaScript. Run, abort and delete go to the UWS endpoints.

The job list and the job page tell jobs and products apart the way an astronomer does
(raw files, object, setup, target; step, task, group keys), built by web/job_rows.py and
web/job_view.py; a product's own page is web/product_page.py. URLs: web/page_urls.py.

The "reduce this" form of a raw-file page posts to ``POST /jobs``, which creates the job
through the job service exactly as ``POST /soda/async`` does, then lands the browser on the
job page rather than on the UWS XML document.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web

from soda_reduce.runtime.jobs import JobRecord
from soda_reduce.runtime.product_view import step_manifests
from soda_reduce.runtime.products import LOG_NAME
from soda_reduce.vo.dali import DaliError
from soda_reduce.vo.uws import ACTIVE, FINAL, Phase, format_time
from soda_reduce.web.bundles import KINDS, bundle_url
from soda_reduce.web.context import (
    ASYNC_PATH,
    PRODUCTS_PATH,
    SERVICES,
    Services,
    check_creation_rate,
    job_of,
    may_change,
    owner_of,
    owns_nothing_yet,
    params_of,
    public_owner,
)
from soda_reduce.web.job_rows import age_text, job_list_page, parse_cursor, progress
from soda_reduce.web.job_view import JobView, stored_plan
from soda_reduce.web.page_urls import datalink_url, raw_page_url
from soda_reduce.web.products import public_text

HERE = Path(__file__).parent
POLL_MS = 1000  # the job page's polling interval while the job is active
SUMMARY_KEYWORDS = ("OBJECT", "DATE-OBS", "EXPTIME", "FILTER", "IMAGETYP", "INSTRUME", "TELESCOP")


# ----------------------------------------------------------------- set-up and helpers


def setup(app: web.Application) -> None:
    """Templates and static files; done for every app (the index page needs them too)."""
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["time"] = lambda value: format_time(value) if value else ""
    env.filters["size"] = human_size
    env.filters["ago"] = lambda value: age_text(value, datetime.now(UTC)) if value else ""
    app.router.add_get("/static/{name}", static_file, name="static")


STATIC_FILES = {p.name: p for p in (HERE / "static").iterdir() if p.is_file()}


async def static_file(request: web.Request) -> web.StreamResponse:
    """The pages' own CSS and scripts, by name from a fixed list (an unknown name is a
    404 in the pages' format, which aiohttp's static route cannot give)."""
    path = STATIC_FILES.get(request.match_info["name"])
    if path is None:
        raise web.HTTPNotFound(text="no such file")
    return web.FileResponse(path, headers={"Cache-Control": "public, max-age=3600"})


def human_size(n: int | None) -> str:
    if n is None:
        return ""
    size, units = float(n), ["B", "kB", "MB", "GB", "TB"]
    while size >= 1000 and len(units) > 1:
        size, units = size / 1000, units[1:]
    return f"{n} B" if units[0] == "B" else f"{size:.1f} {units[0]}"


def root_url(request: web.Request) -> str:
    """Prefix of every link: the configured public URL, else host-relative paths."""
    services = request.app.get(SERVICES)
    return services.base_url.rstrip("/") if services and services.base_url else ""


def render(request: web.Request, template: str, status: int = 200, **context: Any):
    services = request.app.get(SERVICES)
    context.setdefault("title", "soda-reduce")
    base = {
        "root": root_url(request),
        "owner": public_owner(owner_of(request)) if services else None,
        "services": services is not None,
    }
    response = aiohttp_jinja2.render_template(template, request, base | context, status=status)
    response.headers["Cache-Control"] = "no-store"
    return response


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def html_errors(handler: Handler) -> Handler:
    """DALI errors raised under a page become an HTML page with the same status."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except DaliError as exc:
            return render(
                request, "error.html", exc.http_status, title="Error", message=exc.message
            )

    return wrapped


# ----------------------------------------------------------------- job list


@html_errors
async def jobs_page(request: web.Request) -> web.Response:
    """The caller's jobs, newest first, a page at a time (web/job_rows.py)."""
    services = request.app[SERVICES]
    root = root_url(request)
    cursor = parse_cursor(request.query)
    page = await job_list_page(services, owner_of(request), cursor, root)
    return render(
        request,
        "jobs.html",
        title="Your jobs",
        jobs=page.rows,
        older=f"{root}/jobs?{page.next.query()}" if page.next else None,
        paged=cursor is not None,
    )


@html_errors
async def submit_job(request: web.Request) -> web.Response:
    """The raw-file page's form: create and run the job, then show its page (303)."""
    services = request.app[SERVICES]
    # other sites' forms are refused by the auth middleware (web/middleware.py)
    pairs = [(k, v.strip()) for k, v in await params_of(request) if v.strip()]
    if not any(k.upper() == "PHASE" for k, _ in pairs):
        pairs.append(("PHASE", "RUN"))
    job_request = await services.jobs.parse(pairs)
    check_creation_rate(request)
    job = await services.jobs.create(
        owner_of(request), job_request, new_owner=owns_nothing_yet(request)
    )
    raise web.HTTPSeeOther(f"{root_url(request)}/jobs/{job.job_id}")


# ----------------------------------------------------------------- one job


async def _job(request: web.Request) -> JobRecord:
    """The owner's job; an anonymous one for anyone with its URL (to look at only)."""
    return await job_of(request)


def _signature(job: JobRecord) -> str:
    """Changes whenever anything the panel shows changes."""
    material = [
        job.phase.value,
        job.progress,
        [(s.get("job_id"), s.get("status"), s.get("attempts")) for s in job.steps],
        len(job.results),
        bool(job.error),
    ]
    return hashlib.sha256(json.dumps(material, default=str).encode()).hexdigest()[:16]


def _existing_logs(services: Services, keys: list[str]) -> set[str]:
    return {k for k in keys if (services.products.step_dir(k) / LOG_NAME).is_file()}


def _step_files(services: Services, keys: list[str]) -> tuple[set[str], dict[str, Any]]:
    """Which steps have a log, and their manifests: file reads, for a thread."""
    return _existing_logs(services, keys), step_manifests(services.products, keys)


async def requested_raw_files(request: web.Request, job: JobRecord) -> list[dict[str, Any]]:
    """The raw files the job names, linked to their pages and DataLink (one lookup)."""
    services = request.app[SERVICES]
    root = root_url(request)
    ids = list(job.request.ids)
    found = {r.file_id: r for r in await services.jobs.store.raw_files_by_id(ids)} if ids else {}
    rows = []
    for file_id in ids:
        raw = found.get(file_id)
        rows.append(
            {
                "id": file_id,
                "path": raw.path if raw else file_id.rsplit("?", 1)[-1],
                "url": raw_page_url(root, raw.path) if raw else None,
                "object": str(raw.header.get("OBJECT") or "") if raw else "",
                "datalink": datalink_url(root, file_id),
            }
        )
    return rows


async def job_context(request: web.Request, job: JobRecord) -> dict[str, Any]:
    services = request.app[SERVICES]
    root = root_url(request)
    plan = stored_plan(job)
    keys = [s["step_key"] for s in job.steps if s.get("step_key")]
    if plan is not None:
        keys += [j.step_key for j in plan.jobs if j.step_key and j.step_key not in keys]
    logs, manifests = await asyncio.to_thread(_step_files, services, keys)
    view = JobView(job, plan, manifests, root, services.authority)
    public = public_text(services)  # stored redacted; again here, in case of older jobs
    steps = [
        {
            "id": s.get("job_id", ""),
            "task": s.get("task", ""),
            "label": s.get("label") or "",
            "status": s.get("status", ""),
            "attempts": int(s.get("attempts") or 0),
            "error": public(s["error"]) if s.get("error") else "",
            "log": f"{root}{PRODUCTS_PATH}/{s['step_key']}/{LOG_NAME}"
            if s.get("step_key") in logs
            else None,
        }
        for s in job.steps
    ]
    completed = job.phase == Phase.COMPLETED
    products = view.products() if completed else []
    uws = f"{root}{ASYNC_PATH}/{job.job_id}"
    mine = may_change(job, owner_of(request))
    return {
        "job": job,
        "phase": job.phase.value,
        "final": job.phase in FINAL,
        # offered to whoever may change the job (others may hold its URL to look at it)
        "can_change": mine,
        "can_run": mine and job.phase in (Phase.PENDING, Phase.HELD),
        "can_abort": mine and job.phase in (*ACTIVE, Phase.HELD, Phase.SUSPENDED),
        "target": (job.plan or {}).get("target") or ", ".join(job.parameter("TARGET")),
        "progress": progress(job.progress),
        "steps": steps,
        "error": public(job.error.message) if job.error else None,
        "datasets": view.datasets(),
        "provenance": view.provenance(),
        "logs": {k: f"{root}{PRODUCTS_PATH}/{k}/{LOG_NAME}" for k in logs},
        "products": [p for p in products if not p["preview"]],
        "previews": [p for p in products if p["preview"]],
        "bundles": [
            {"kind": kind, "text": text, "url": bundle_url(root, job.job_id, kind)}
            for kind, text in KINDS.items()
        ]
        if completed
        else [],
        "uws_url": uws,
        "signature": _signature(job),
        "status_url": f"{root}/jobs/{job.job_id}/status.json",
        "panel_url": f"{root}/jobs/{job.job_id}/panel",
        "poll_ms": POLL_MS,
    }


@html_errors
async def job_page(request: web.Request) -> web.Response:
    job = await _job(request)
    context = await job_context(request, job)
    raw_files = await requested_raw_files(request, job)
    return render(request, "job.html", title=f"Job {job.job_id}", raw_files=raw_files, **context)


@html_errors
async def job_panel(request: web.Request) -> web.Response:
    job = await _job(request)
    return render(request, "job_panel.html", **await job_context(request, job))


async def job_status(request: web.Request) -> web.Response:
    """What the job page polls; small, and usable by scripts as well."""
    job = await _job(request)
    body = {
        "job_id": job.job_id,
        "phase": job.phase.value,
        "final": job.phase in FINAL,
        "progress": progress(job.progress),
        "steps": [
            {"id": s.get("job_id"), "task": s.get("task"), "status": s.get("status")}
            for s in job.steps
        ],
        "error": job.error.message if job.error else None,
        "signature": _signature(job),
        "uws": f"{root_url(request)}{ASYNC_PATH}/{job.job_id}",
    }
    return web.json_response(body, headers={"Cache-Control": "no-store"})


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/jobs", jobs_page)
    r.add_post("/jobs", submit_job)
    r.add_get("/jobs/{job_id}", job_page)
    r.add_get("/jobs/{job_id}/panel", job_panel)
    r.add_get("/jobs/{job_id}/status.json", job_status)
