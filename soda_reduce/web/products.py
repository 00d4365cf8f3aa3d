"""Product files: /products/{step_key}/{file}.

Products are content-addressed by step key (a sha256 nobody can guess), and a
step's products are shared by every job that needed the step, so the URL is
the capability. aiohttp's FileResponse gives ETag, Last-Modified and HTTP
range requests; the content type comes from the step's manifest.

A step's ``recipe.log`` is the exception: it names the server's directories, so it is
streamed through the path redaction (runtime/public_text.py), line by line, without ranges.
"""

from __future__ import annotations

import asyncio
import functools
import re
from pathlib import Path

from aiohttp import web

from soda_reduce.runtime.products import LOG_NAME, MANIFEST, ProductError
from soda_reduce.runtime.public_text import PublicText
from soda_reduce.vo.dali import NotFoundError
from soda_reduce.web.context import PRODUCTS_PATH, SERVICES, Services

STEP_KEY = re.compile(r"[0-9a-f]{64}")
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,200}")


def public_text(services: Services) -> PublicText:
    """The redaction of this service's roots (archive, products, data directory, Python)."""
    data = services.settings.data_dir if services.settings is not None else None
    return _public_text(services.archive_root, services.products.root, data)


@functools.lru_cache(maxsize=8)
def _public_text(archive: Path | None, products: Path, data: Path | None) -> PublicText:
    return PublicText.of(archive=archive, products=products, data=data)


async def get_product(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    key, name = request.match_info["step_key"], request.match_info["file"]
    if not STEP_KEY.fullmatch(key) or not FILE_NAME.fullmatch(name):
        raise NotFoundError("no such product")
    path = services.products.step_dir(key) / name
    if not path.is_file():
        raise NotFoundError("no such product (it may have been collected: run the job again)")
    if name == LOG_NAME:
        return await send_log(request, path, public_text(services))
    content_type = "application/json" if name == MANIFEST else None
    if content_type is None:
        try:
            manifest = await asyncio.to_thread(services.products.manifest, key)
        except ProductError:
            manifest = {}
        for item in manifest.get("products", []):
            if item.get("file") == name:
                content_type = item.get("content_type")
    response = web.FileResponse(path)
    if content_type:
        response.content_type = content_type
    return response


async def send_log(request: web.Request, path: Path, public: PublicText) -> web.StreamResponse:
    """A log, redacted while it is sent: one chunk in memory at a time."""
    try:
        source = await asyncio.to_thread(path.open, "rb")
    except OSError:  # collected between the check and now
        raise NotFoundError(
            "no such product (it may have been collected: run the job again)"
        ) from None
    try:
        response = web.StreamResponse(headers={"Cache-Control": "no-cache"})
        response.content_type = "text/plain"
        response.charset = "utf-8"
        await response.prepare(request)
        if request.method != "HEAD":
            pieces = public.stream(source)
            while piece := await asyncio.to_thread(next, pieces, b""):
                await response.write(piece)
        await response.write_eof()
    except ConnectionResetError:  # the client went away: nothing to answer, nothing broken
        pass
    finally:
        await asyncio.to_thread(source.close)
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_get(PRODUCTS_PATH + "/{step_key}/{file}", get_product)
