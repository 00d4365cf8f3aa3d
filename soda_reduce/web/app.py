"""The aiohttp application: the UWS job service, product files, and the preview pages.

Handlers stay thin: parse the request, ask the runtime, render. Every route is
added here, each module with its own ``add_routes``.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from soda_reduce.config import Settings
from soda_reduce.pipelines import PipelineError
from soda_reduce.reduction.graph import plan_dot
from soda_reduce.reduction.index_model import RawFile
from soda_reduce.reduction.plan import PlanRequestError
from soda_reduce.reduction.report import format_plan
from soda_reduce.runtime.archive_plans import ArchivePipelines, pipelines_for_ids
from soda_reduce.runtime.public_text import PublicText
from soda_reduce.runtime.store import Store
from soda_reduce.web import (
    archive,
    bundles,
    datalink,
    landing,
    oai,
    pages,
    product_page,
    products,
    raw_page,
    soda_sync,
    static_calibrations,
    uws,
    vosi,
)
from soda_reduce.web.context import SERVICES, Services
from soda_reduce.web.landing import IndexView
from soda_reduce.web.middleware import AuthConfig, auth_middleware, error_middleware


@dataclass
class ServiceState:
    store: Store
    pipelines: ArchivePipelines
    archive: str


STATE = web.AppKey("state", ServiceState)
INDEX_VIEW = web.AppKey("index_view", IndexView)
PLAN_MAX_IDS = 100
PLAN_MAX_PARAMS = 50
PLAN_MAX_VALUE = 1024  # bytes, any parameter value


def _one(request: web.Request, name: str) -> str | None:
    """A single-valued parameter, name case-insensitive (as IVOA parameters are)."""
    values = [v for k, v in request.query.items() if k.lower() == name.lower()]
    if len(values) > 1:
        raise web.HTTPBadRequest(text=f"parameter {name} given {len(values)} times\n")
    return values[0] if values else None


def _many(request: web.Request, name: str) -> list[str]:
    return [v for k, v in request.query.items() if k.lower() == name.lower()]


async def index_page(request: web.Request) -> web.Response:
    state = request.app[STATE]
    content = await request.app[INDEX_VIEW].landing()  # one version read while unchanged
    return landing.render_index(request, state.pipelines, content, state.archive)


def _bounded(request: web.Request) -> None:
    """/plan is public and plans in proportion to its request: refuse oversized ones."""
    counts = Counter(k.upper() for k, _ in request.query.items())
    if counts["ID"] > PLAN_MAX_IDS:
        raise web.HTTPBadRequest(text=f"at most {PLAN_MAX_IDS} ID values, not {counts['ID']}\n")
    if counts["PARAM"] > PLAN_MAX_PARAMS:
        raise web.HTTPBadRequest(
            text=f"at most {PLAN_MAX_PARAMS} PARAM values, not {counts['PARAM']}\n"
        )
    for name, value in request.query.items():
        if len(value.encode()) > PLAN_MAX_VALUE:
            raise web.HTTPBadRequest(text=f"{name[:40]}: values are limited to 1 KiB\n")


def _plan_document(
    pipelines: ArchivePipelines,
    store: Store,
    files: list[RawFile] | None,
    name: str | None,
    ids: list[str],
    target: str | None,
    parameters: dict[str, str],
    fmt: str,
) -> tuple[str, str]:
    """(body, content type) of a plan, run in a thread. With IDs the store is asked for
    their candidates only (``files`` holds just those files); without, the whole index
    in ``files`` is planned (in proportion to the archive)."""
    if name:
        pipeline = pipelines.get(name)
    elif ids:
        pipeline = pipelines_for_ids(pipelines.registry, files or [], ids)[0]
    else:
        pipeline = pipelines.default
    if ids:
        plan = pipelines.plan_indexed(
            pipeline, store, target=target, ids=ids, parameters=parameters
        )
    else:
        plan = pipelines.plan(pipeline, files or [], target=target, parameters=parameters)
    if fmt == "json":
        return plan.to_json(indent=1), "application/json"
    if fmt == "dot":
        return plan_dot(plan), "text/vnd.graphviz"
    return format_plan(plan), "text/plain"


async def plan_handler(request: web.Request) -> web.Response:
    state = request.app[STATE]
    _bounded(request)
    fmt = (_one(request, "FORMAT") or "text").lower()
    if fmt not in ("text", "json", "dot"):
        raise web.HTTPBadRequest(text=f"FORMAT must be text, json or dot, not {fmt!r}\n")
    parameters = {}
    for item in _many(request, "PARAM"):
        name, sep, value = item.partition("=")
        if not sep:
            raise web.HTTPBadRequest(text=f"PARAM must be name=value, not {item!r}\n")
        parameters[name.strip()] = value.strip()
    ids, name, target = _many(request, "ID"), _one(request, "PIPELINE"), _one(request, "TARGET")
    if ids:  # looked up by ID; the planner asks the store for the rest
        files = await state.store.raw_files_by_id(ids)
    else:  # the whole archive: cached while the index is unchanged
        files = await request.app[INDEX_VIEW].files()
    try:
        body, content_type = await asyncio.to_thread(
            _plan_document, state.pipelines, state.store, files, name, ids, target, parameters, fmt
        )
    except (PlanRequestError, KeyError, PipelineError) as exc:
        raise web.HTTPBadRequest(text=f"{exc.args[0]}\n") from None
    return web.Response(text=body, content_type=content_type)


def _index_view(state: ServiceState, services: Services | None) -> IndexView:
    """The index behind / and /plan; with the job service, its cached list is shared."""
    if services is None:
        return IndexView(state.store, state.pipelines, PublicText.of(archive=state.archive))
    public = products.public_text(services)
    return IndexView(state.store, state.pipelines, public, services.jobs.raw_files)


def server_options(settings: Settings) -> dict[str, Any]:
    """What the HTTP server holds for a client: a connection that has not sent a whole
    request within ``idle_timeout_s`` is closed (unfinished headers included), and
    request lines and header fields are bounded (long enough for a GET of a request
    at the service's own parameter limits)."""
    return {
        "keepalive_timeout": settings.idle_timeout_s,
        "max_line_size": 72 * 1024,
        "max_field_size": 16 * 1024,
        "max_headers": 100,
    }


def build_app(
    state: ServiceState,
    services: Services | None = None,
    auth: AuthConfig | None = None,
) -> web.Application:
    """The whole service; without ``services`` only the read-only preview pages."""
    middlewares = [error_middleware]
    if services is not None:
        middlewares.insert(0, auth_middleware(auth or AuthConfig()))
    max_body = services.settings.max_request_bytes if services and services.settings else None
    app = web.Application(middlewares=middlewares, client_max_size=max_body or 256 * 1024)
    app[STATE] = state
    app[INDEX_VIEW] = _index_view(state, services)
    pages.setup(app)  # templates and static files: the index page uses them too
    app.router.add_get("/", index_page)
    app.router.add_get("/plan", plan_handler)
    if services is not None:
        app[SERVICES] = services
        services.events.add_listener(services.status_cache.on_event)
        for module in (uws, products, soda_sync, datalink, vosi, archive, bundles, pages, raw_page):
            module.add_routes(app)
        product_page.add_routes(app)  # /products/{key}/{file}/page: an HTML page
        static_calibrations.add_routes(app)
        oai.add_routes(app)  # /oai: OAI-PMH, when the service is its own publishing registry
    return app
