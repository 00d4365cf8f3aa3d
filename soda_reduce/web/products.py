"""Product files: /products/{step_key}/{file}.

Products are content-addressed by step key (a sha256 nobody can guess), and a
step's products are shared by every job that needed the step, so the URL is
the capability. aiohttp's FileResponse gives ETag, Last-Modified and HTTP
range requests; the content type comes from the step's manifest.
"""

from __future__ import annotations

import asyncio
import re

from aiohttp import web

from soda_reduce.runtime.products import LOG_NAME, MANIFEST, ProductError
from soda_reduce.vo.dali import NotFoundError
from soda_reduce.web.context import PRODUCTS_PATH, SERVICES

STEP_KEY = re.compile(r"[0-9a-f]{64}")
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,200}")


async def get_product(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    key, name = request.match_info["step_key"], request.match_info["file"]
    if not STEP_KEY.fullmatch(key) or not FILE_NAME.fullmatch(name):
        raise NotFoundError("no such product")
    path = services.products.step_dir(key) / name
    if not path.is_file():
        raise NotFoundError("no such product (it may have been collected: run the job again)")
    content_type = "text/plain" if name == LOG_NAME else None
    if name == MANIFEST:
        content_type = "application/json"
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


def add_routes(app: web.Application) -> None:
    app.router.add_get(PRODUCTS_PATH + "/{step_key}/{file}", get_product)
