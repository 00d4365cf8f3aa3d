"""The raw-file page: what the archive knows of one raw file, and a "reduce this" form.

The reduction view (targets, calibrations the planner would pick with their quality level,
recipe parameters) is the one DataLink's #proc and #calibration rows show
(runtime/datalinks.raw_reduction), so the page and VO clients never disagree.

The page also lists what was already made from the file: registered products whose step
read it, found through the ``input_file`` index of ``products`` (`ProductRecords.made_from`),
at most `MADE_LIMIT`, and says "already reduced" when the default target's step used it as
its main input.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web

from soda_reduce.reduction.cascade import Param
from soda_reduce.reduction.index_model import RawFile
from soda_reduce.reduction.plan import LEVEL_WORDS
from soda_reduce.reduction.tasks import Cascade
from soda_reduce.runtime.archive_boundary import inside
from soda_reduce.runtime.datalinks import raw_reduction
from soda_reduce.vo.dali import NotFoundError
from soda_reduce.web.context import SERVICES, Services
from soda_reduce.web.datalink import FILES_PATH, RAW_PREVIEWS_PATH
from soda_reduce.web.page_urls import product_page_url
from soda_reduce.web.pages import SUMMARY_KEYWORDS, html_errors, render, root_url
from soda_reduce.web.products import public_text

MADE_LIMIT = 100  # products listed as made from one raw file


@html_errors
async def raw_page(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    ids = [v for k, v in request.query.items() if k.upper() == "ID"]
    path = request.match_info.get("path")
    if path is not None:
        ids = [f"ivo://{services.authority}/raw?{path}"]
    if len(ids) != 1:
        raise NotFoundError("name one raw file: /raw/PATH or /raw?ID=...")
    found = await services.jobs.store.raw_files_by_id(ids)
    if not found:
        raise NotFoundError(f"no raw file {ids[0]!r} in this archive")
    raw = found[0]
    archive = services.archive_root
    if archive is not None and await asyncio.to_thread(inside, archive, raw.path) is None:
        raise NotFoundError(f"no raw file {ids[0]!r} in this archive")  # a link leaving it
    if raw.problem or raw.claim:  # recorded before problems were redacted at index time
        public = public_text(services)
        raw = replace(
            raw,
            problem=public(raw.problem) if raw.problem else raw.problem,
            claim=public(raw.claim) if raw.claim else raw.claim,
        )
    pipeline = services.jobs.pipelines.of(raw)
    cascade = pipeline.cascade if pipeline is not None else services.jobs.cascade
    # the same view of the file as DataLink's #proc and #calibration rows (asks the store)
    reduction = await asyncio.to_thread(
        raw_reduction, services.jobs.pipelines, services.jobs.store, raw
    )
    frame = services.jobs.pipelines.frame(raw)
    root = root_url(request)
    target = reduction.default_target or ""
    made, more_made = await made_from(services, raw.file_id, root)
    return render(
        request,
        "raw.html",
        title=raw.path,
        raw=raw,
        frame=frame,
        summary=[(k, raw.header[k]) for k in SUMMARY_KEYWORDS if k in raw.header],
        derived=sorted((k, v) for k, v in frame.derived.items() if v is not None),
        header=list(raw.header.items()),
        reduction=reduction,
        calibrations=[
            {
                "path": c.raw.path,
                "url": "/raw/" + quote(c.raw.path),
                "category": c.category,
                "task": c.task,
                "used_by": c.used_by,
                "level": c.level,
                "level_text": LEVEL_WORDS.get(c.level, "") if c.level is not None else "",
            }
            for c in reduction.calibrations
        ],
        groups=_parameter_groups(cascade, reduction.parameters),
        datalink_url=f"{root}/datalink?ID={quote(raw.file_id, safe='')}",
        plan_url=f"{root}/plan?" + urlencode({"ID": raw.file_id, "TARGET": target}),
        file_url=f"{root}{FILES_PATH}/{quote(raw.path)}",
        preview_url=raw_preview_url(root, raw),
        made=made,
        more_made=more_made,
        reduced=[m for m in made if m["main"] and m["role"] == "main" and m["task"] == target],
    )


async def made_from(
    services: Services, file_id: str, root: str
) -> tuple[list[dict[str, Any]], bool]:
    """Products made from the file and still stored, main uses first, no previews; and
    whether more were registered than `MADE_LIMIT`."""
    docs = await services.jobs.product_records.made_from(file_id, MADE_LIMIT + 1)
    more, docs = len(docs) > MADE_LIMIT, docs[:MADE_LIMIT]
    keys = {d["step_key"] for d in docs if d.get("step_key")}
    stored = await asyncio.to_thread(lambda: {k for k in keys if services.products.has(k)})
    rows = [
        {
            "file": d["file"],
            "category": d.get("category", ""),
            "task": d.get("task", ""),
            "role": d.get("role", ""),
            "main": bool(d.get("main")),
            "step_key": d["step_key"],
            "url": product_page_url(root, d["step_key"], d["file"]),
        }
        for d in docs
        if d.get("step_key") in stored and d.get("category") != "PREVIEW"
    ]
    rows.sort(key=lambda r: (r["role"] != "main", not r["main"], r["task"], r["file"]))
    return rows, more


def _parameter_groups(
    cascade: Cascade, parameters: Sequence[tuple[str, Param]]
) -> list[dict[str, Any]]:
    """Form fields grouped by task (``task.param``), workflow parameters last."""
    descriptions = {t.name: t.description for t in cascade.tasks}
    groups: dict[str, list[dict[str, Any]]] = {}
    for name, param in parameters:
        group = name.split(".", 1)[0] if "." in name else "workflow"
        groups.setdefault(group, []).append(_field(name, param))
    ordered = sorted(groups.items(), key=lambda item: item[0] == "workflow")
    return [
        {"name": name, "description": descriptions.get(name, ""), "fields": fields}
        for name, fields in ordered
    ]


def _field(name: str, param: Param) -> dict[str, Any]:
    """One form input; empty means the default (the form handler drops empty values)."""
    if param.type == "bool":
        kind, options = "select", ["true", "false"]
    elif param.choices:
        kind, options = "select", [str(c) for c in param.choices]
    elif param.type in ("int", "float"):
        kind, options = "number", []
    else:
        kind, options = "text", []
    default = param.default
    return {
        "name": name,
        "kind": kind,
        "options": options,
        "default": str(default).lower() if isinstance(default, bool) else str(default),
        "description": param.description,
        "min": param.minimum,
        "max": param.maximum,
        "step": "1" if param.type == "int" else "any",
    }


def raw_preview_url(root: str, raw: RawFile) -> str | None:
    """The PNG that DataLink's #preview of a raw image points at (web/datalink.py draws it)."""
    naxis = raw.header.get("NAXIS")
    image = (isinstance(naxis, int) and naxis >= 2) or raw.path.lower().endswith(".fz")
    if raw.problem or not image:
        return None
    return f"{root}{RAW_PREVIEWS_PATH}/{quote(raw.path)}.png"


def add_routes(app: web.Application) -> None:
    app.router.add_get("/raw", raw_page)
    app.router.add_get("/raw/{path:.+}", raw_page)
