"""A product's page: ``/products/{step_key}/{file}/page``, beside the file itself.

What the product is and how it was made: its FITS structure and primary header, its
preview, QC parameters, the recipe run (parameters, duration, log), its progenitors (raw
files, linked to their pages), the calibrations used (linked to their own product pages)
and the raw frames behind those, with download and DataLink links. The facts are
DataLink's (`runtime/datalinks.product_facts`), so the page and VO clients agree.

Who may see it: whoever may fetch the file (web/products.py). A step's products are
shared by every job that needed the step and named by a sha256 nobody can guess, so the
URL is the capability, as for the file. Every file read happens in a thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from soda_reduce.reduction.index_model import RawFile
from soda_reduce.runtime.datalinks import FITS_TYPE, ProductFacts, StepFile, StepInput
from soda_reduce.runtime.datalinks import product_facts as read_product_facts
from soda_reduce.runtime.product_view import FitsOutline, StepManifest, fits_outline, step_manifest
from soda_reduce.runtime.products import LOG_NAME, MANIFEST
from soda_reduce.runtime.public_text import PublicText
from soda_reduce.vo.dali import NotFoundError
from soda_reduce.web.context import PRODUCTS_PATH, SERVICES, Services, product_id
from soda_reduce.web.page_urls import (
    PRODUCT_PAGE,
    datalink_url,
    product_file_url,
    product_page_url,
    raw_page_url,
)
from soda_reduce.web.pages import html_errors, render, root_url
from soda_reduce.web.products import FILE_NAME, STEP_KEY, public_text
from soda_reduce.web.static_calibrations import static_url

MAX_LISTED = 200  # inputs, calibrations and frames behind them listed on one page


def _read(
    services: Services, step_key: str, facts: ProductFacts, public: PublicText
) -> tuple[FitsOutline | None, StepManifest | None]:
    """The header outline (FITS only) and the step's manifest: file reads, for a thread."""
    item = facts.product
    outline = None
    if facts.stored and item.content_type == FITS_TYPE:
        outline = fits_outline(services.products.step_dir(step_key) / item.file, public)
    return outline, step_manifest(services.products, step_key)


@html_errors
async def product_page(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    key, name = request.match_info["step_key"], request.match_info["file"]
    if not STEP_KEY.fullmatch(key) or not FILE_NAME.fullmatch(name):
        raise NotFoundError("no such product")
    facts = await read_product_facts(services.jobs.store, services.products, key, name)
    if facts is None:
        raise NotFoundError("no such product (it may have been collected: run the job again)")
    outline, manifest = await asyncio.to_thread(_read, services, key, facts, public_text(services))
    wanted = [i.file_id for i in (*facts.inputs, *facts.behind) if i.file_id][: 2 * MAX_LISTED]
    found = await services.jobs.store.raw_files_by_id(wanted) if wanted else []
    links = _Links(root_url(request), {r.file_id: r for r in found})
    item = facts.product
    root = links.root
    preview = next((f for f in facts.step_files if f.preview_of == item.file), None)
    if preview is None and item.content_type == "image/png" and facts.stored:
        preview = item
    listed = manifest.file(item.file) if manifest else None
    progenitors = [i for i in facts.inputs if i.role == "main"]
    calibrations = [i for i in facts.inputs if i.role != "main"]
    return render(
        request,
        "product.html",
        title=f"Product {item.file}",
        item=item,
        task=facts.task,
        stored=facts.stored,
        step_key=key,
        download_url=product_file_url(root, key, item.file),
        datalink_url=datalink_url(root, product_id(services.authority, key, item.file)),
        log_url=product_file_url(root, key, LOG_NAME) if facts.has_log else None,
        manifest_url=product_file_url(root, key, MANIFEST) if manifest else None,
        preview_url=product_file_url(root, key, preview.file) if preview else None,
        qc=list(listed.qc) if listed else [],
        manifest=manifest,
        outline=outline,
        progenitors=[links.input(i, facts) for i in progenitors[:MAX_LISTED]],
        more_progenitors=max(0, len(progenitors) - MAX_LISTED),
        calibrations=[links.input(i, facts) for i in calibrations[:MAX_LISTED]],
        behind=[links.input(i, facts) for i in facts.behind[:MAX_LISTED]],
        more_behind=max(0, len(facts.behind) - MAX_LISTED),
        siblings=[
            {"file": f.file, "category": f.category, "url": product_page_url(root, key, f.file)}
            for f in facts.step_files
            if f.file != item.file and f.preview_of is None
        ],
    )


class _Links:
    """Where each input of a product is described: a raw page, a product page, a file."""

    def __init__(self, root: str, raw_files: dict[str, RawFile]) -> None:
        self.root = root
        self.raw_files = raw_files

    def input(self, step_input: StepInput, facts: ProductFacts) -> dict[str, Any]:
        row: dict[str, Any] = {"category": step_input.category, "role": step_input.role}
        if step_input.step_key:
            files = facts.upstream.get(step_input.step_key) or ()
            made = _made_for(files, step_input.category)
            key = step_input.step_key
            row["products"] = [
                {
                    "file": f.file,
                    "category": f.category,
                    "url": product_page_url(self.root, key, f.file),
                }
                for f in made
            ]
            row["name"] = f"step {key[:12]}"
            row["url"] = None
            return row
        file_id = step_input.file_id or ""
        raw = self.raw_files.get(file_id)
        if raw is not None:
            return {
                **row,
                "name": raw.path,
                "url": raw_page_url(self.root, raw.path),
                "kind": "raw",
            }
        static = static_url(self.root, file_id)
        if static is not None:
            return {**row, "name": file_id, "url": static, "kind": "static"}
        return {**row, "name": file_id.rsplit("?", 1)[-1], "url": None, "kind": "gone"}


def _made_for(files: Sequence[StepFile], category: str) -> list[StepFile]:
    """The upstream products an input stands for: its category's, else the main ones."""
    usable = [f for f in files if f.preview_of is None]
    chosen = [f for f in usable if f.category.upper() == category.upper()]
    return chosen or [f for f in usable if f.main] or usable[:1]


def add_routes(app: web.Application) -> None:
    app.router.add_get(f"{PRODUCTS_PATH}/{{step_key}}/{{file}}/{PRODUCT_PAGE}", product_page)
