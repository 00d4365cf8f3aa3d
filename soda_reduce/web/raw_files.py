"""The indexed raw files and their PNG previews, as DataLink's links point at them.

GET /archive/files/{path}: the file as it is stored; GET /previews/raw/{path}.png: its
preview, drawn on first request. Only indexed files inside the archive are served (the
boundary is checked again at each request: a link can be planted after a scan).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from soda_reduce.reduction.fits_headers import GZIP_SUFFIXES
from soda_reduce.reduction.index_model import RawFile, raw_file_id
from soda_reduce.runtime.archive_boundary import servable
from soda_reduce.runtime.previews import PreviewError, raw_preview
from soda_reduce.vo.dali import NotFoundError
from soda_reduce.web.context import SERVICES

FILES_PATH = "/archive/files"
RAW_PREVIEWS_PATH = "/previews/raw"
FITS_TYPE = "application/fits"


def raw_content_type(path: str) -> str:
    """Gzipped FITS is served as it is stored (gzip); the rest is FITS (tile-compressed too)."""
    return "application/gzip" if path.lower().endswith(GZIP_SUFFIXES) else FITS_TYPE


async def _indexed(request: web.Request, path: str) -> RawFile:
    """The indexed raw file at ``path``; 404 for anything else, ``..`` and hidden files too."""
    services = request.app[SERVICES]
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise NotFoundError("no such raw file")
    found = await services.jobs.store.raw_files_by_id([raw_file_id(path, services.authority)])
    if not found or services.archive_root is None:
        raise NotFoundError("no such raw file in the archive index")
    return found[0]


async def raw_file(request: web.Request) -> web.StreamResponse:
    """GET /archive/files/{path}: an indexed raw file as it is stored (ETag, ranges)."""
    raw = await _indexed(request, request.match_info["path"])
    root = request.app[SERVICES].archive_root
    assert root is not None
    path = await asyncio.to_thread(servable, root, raw.path)  # no link out of the archive
    if path is None:
        raise NotFoundError(f"{raw.path} is indexed but no longer in the archive")
    response = web.FileResponse(path)
    response.content_type = raw_content_type(raw.path)
    return response


async def raw_preview_handler(request: web.Request) -> web.StreamResponse:
    """GET /previews/raw/{path}.png: the raw file's PNG, drawn on first request."""
    name = request.match_info["path"]
    if not name.endswith(".png"):
        raise NotFoundError("no such preview")
    raw = await _indexed(request, name[: -len(".png")])
    services = request.app[SERVICES]
    assert services.archive_root is not None
    if await asyncio.to_thread(servable, services.archive_root, raw.path) is None:
        raise NotFoundError(f"{raw.path} is indexed but no longer in the archive")
    try:
        png = await asyncio.to_thread(
            raw_preview, services.products.root, Path(services.archive_root), raw
        )
    except PreviewError as exc:
        raise NotFoundError(f"no preview: {exc}") from None
    response = web.FileResponse(png)
    response.content_type = "image/png"
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_get(FILES_PATH + "/{path:.+}", raw_file)
    app.router.add_get(RAW_PREVIEWS_PATH + "/{path:.+}", raw_preview_handler)
