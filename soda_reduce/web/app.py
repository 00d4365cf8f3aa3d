"""The aiohttp application: the UWS job service, product files, and the preview pages.

Handlers stay thin: parse the request, ask the runtime, render. The VO
discovery endpoints (DataLink, VOSI, SODA sync) are added here by issue #5.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import web

from soda_reduce.pipelines import PipelineError
from soda_reduce.reduction.graph import plan_dot
from soda_reduce.reduction.plan import PlanRequestError
from soda_reduce.reduction.report import format_plan
from soda_reduce.runtime.archive_plans import ArchivePipelines, pipelines_for_ids, summarise
from soda_reduce.runtime.store import Store
from soda_reduce.web import (
    archive,
    bundles,
    datalink,
    pages,
    products,
    raw_page,
    soda_sync,
    static_calibrations,
    uws,
    vosi,
)
from soda_reduce.web.context import SERVICES, Services
from soda_reduce.web.middleware import AuthConfig, auth_middleware, error_middleware


@dataclass
class ServiceState:
    store: Store
    pipelines: ArchivePipelines
    archive: str


STATE = web.AppKey("state", ServiceState)


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
    files = await state.store.all_raw_files()
    summary, frames = await asyncio.to_thread(summarise, state.pipelines.registry, files)
    return await pages.index(request, state.pipelines, summary, frames, files, state.archive)


async def plan_handler(request: web.Request) -> web.Response:
    state = request.app[STATE]
    fmt = (_one(request, "FORMAT") or "text").lower()
    if fmt not in ("text", "json", "dot"):
        raise web.HTTPBadRequest(text=f"FORMAT must be text, json or dot, not {fmt!r}\n")
    parameters = {}
    for item in _many(request, "PARAM"):
        name, sep, value = item.partition("=")
        if not sep:
            raise web.HTTPBadRequest(text=f"PARAM must be name=value, not {item!r}\n")
        parameters[name.strip()] = value.strip()
    files = await state.store.all_raw_files()
    ids = _many(request, "ID")
    name = _one(request, "PIPELINE")
    try:
        if name:
            pipeline = state.pipelines.get(name)
        elif ids:
            pipeline = pipelines_for_ids(state.pipelines.registry, files, ids)[0]
        else:
            pipeline = state.pipelines.default
        plan = await asyncio.to_thread(
            state.pipelines.plan,
            pipeline,
            files,
            target=_one(request, "TARGET"),
            ids=ids,
            parameters=parameters,
        )
    except (PlanRequestError, KeyError, PipelineError) as exc:
        raise web.HTTPBadRequest(text=f"{exc.args[0]}\n") from None
    if fmt == "json":
        return web.Response(text=plan.to_json(indent=1), content_type="application/json")
    if fmt == "dot":
        return web.Response(text=plan_dot(plan), content_type="text/vnd.graphviz")
    return web.Response(text=format_plan(plan), content_type="text/plain")


def build_app(
    state: ServiceState,
    services: Services | None = None,
    auth: AuthConfig | None = None,
) -> web.Application:
    """The whole service; without ``services`` only the read-only preview pages."""
    middlewares = [error_middleware]
    if services is not None:
        middlewares.insert(0, auth_middleware(auth or AuthConfig()))
    app = web.Application(middlewares=middlewares)
    app[STATE] = state
    pages.setup(app)  # templates and static files: the index page uses them too
    app.router.add_get("/", index_page)
    app.router.add_get("/plan", plan_handler)
    if services is not None:
        app[SERVICES] = services
        services.events.add_listener(services.status_cache.on_event)
        for module in (uws, products, soda_sync, datalink, vosi, archive, bundles, pages, raw_page):
            module.add_routes(app)
        static_calibrations.add_routes(app)
    return app
