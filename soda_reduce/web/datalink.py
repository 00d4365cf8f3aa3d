"""DataLink 1.1 at /datalink (the raw files and previews its links point at: web/raw_files.py).

GET or POST /datalink?ID=...: one group of consecutive rows per ID (DataLink 3.2):

- a raw file (``ivo://{authority}/raw?{path}``): #this (the FITS file, served from
  /archive/files/), #preview (a PNG drawn on first request, /previews/raw/), #proc (a SODA
  async descriptor that reduces it: TARGET and recipe parameters for the user, their
  defaults in the descriptions and choices in VALUES, cutout parameters with limits from
  its WCS), #cutout (a SODA sync descriptor, TARGET fixed to raw: a cutout of the frame
  as archived), #calibration (the raw calibrations the planner would pick, with the
  association's quality level);
- a product (``ivo://{authority}/product?{step_key}/{file}``): #this, #preview,
  #progenitor (the step's main inputs), #calibration (the master calibrations, i.e. the
  products of upstream steps, or raw calibrations), #auxiliary (recipe log, manifest with
  the QC parameters), #cutout (a SODA sync descriptor, for images);
- anything else: one NotFoundFault row.

Every descriptor takes its ID from the row (``ref`` to the ID column), so a client that
picks the document's first SODA sync descriptor (pyvo's ``processed()``) cuts the dataset
of the row it holds.

MAXREC counts rows, but the rows of one ID are never split: the table stops before the
first ID whose rows do not all fit, with QUERY_STATUS=OVERFLOW.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from urllib.parse import quote

from aiohttp import web

from soda_reduce.reduction.cascade import Param
from soda_reduce.reduction.index_model import RAW_RESOURCE, RawFile
from soda_reduce.reduction.plan import LEVEL_WORDS
from soda_reduce.runtime.datalinks import (
    STEP_KEY,
    ProductFacts,
    StepFile,
    StepInput,
    product_facts,
    raw_reduction,
)
from soda_reduce.runtime.previews import raw_preview_path
from soda_reduce.runtime.products import LOG_NAME, MANIFEST
from soda_reduce.vo.datalink import ID_FIELD, Link, local_id, parse_links_request, render_links
from soda_reduce.vo.descriptors import (
    InputParam,
    ServiceDescriptor,
    cutout_descriptor,
    raw_target_param,
    reduce_descriptor,
)
from soda_reduce.web import raw_files
from soda_reduce.web.context import (
    ASYNC_PATH,
    SERVICES,
    Services,
    base_url,
    params_of,
    product_url,
)
from soda_reduce.web.products import FILE_NAME
from soda_reduce.web.raw_files import FILES_PATH, RAW_PREVIEWS_PATH, raw_content_type
from soda_reduce.web.static_calibrations import static_url

__all__ = ["DATALINK_PATH", "FILES_PATH", "RAW_PREVIEWS_PATH", "add_routes", "links_handler"]

DATALINK_PATH = "/datalink"
SYNC_PATH = "/soda/sync"
PRODUCT_RESOURCE = "product"
FITS_TYPE = "application/fits"
IMAGE = "#image"  # product-type vocabulary (DataLink 1.1 3.2.9: relative to its base URI)
_VOTABLE_TYPES = {"bool": "boolean", "int": "long", "float": "double", "str": "char"}
CUTOUT_TEXT = (
    "(SODA sync): POS, CIRCLE or POLYGON on the sky, BAND, TIME, POL; the result keeps a "
    "correct WCS"
)


def _is_image(raw: RawFile) -> bool:
    naxis = raw.header.get("NAXIS")
    return (isinstance(naxis, int) and naxis >= 2) or raw.path.lower().endswith(".fz")


class _Builder:
    """The links of one request's IDs; descriptors are numbered across the document."""

    def __init__(self, request: web.Request) -> None:
        self.services: Services = request.app[SERVICES]
        self.root = base_url(request)
        self.request = request
        self.count = 0
        self.files: dict[str, RawFile | None] = {}  # looked up by ID, once per request

    async def raw_files(self, ids: Sequence[str]) -> dict[str, RawFile]:
        """The raw files with these IDs (one indexed lookup for those not seen yet)."""
        wanted = [i for i in dict.fromkeys(ids) if i not in self.files]
        if wanted:
            found = {
                raw.file_id: raw for raw in await self.services.jobs.store.raw_files_by_id(wanted)
            }
            self.files.update((i, found.get(i)) for i in wanted)
        return {i: raw for i in ids if (raw := self.files.get(i)) is not None}

    async def links(self, identifier: str) -> tuple[list[Link], list[ServiceDescriptor]]:
        local = local_id(identifier, self.services.authority)
        if local is not None and local[0] == RAW_RESOURCE:
            raw = (await self.raw_files([identifier])).get(identifier)
            if raw is not None:
                return await self.raw_links(identifier, raw)
        if local is not None and local[0] == PRODUCT_RESOURCE:
            key, _, name = local[1].partition("/")
            if STEP_KEY.match(key) and FILE_NAME.fullmatch(name):
                facts = await product_facts(
                    self.services.jobs.store, self.services.products, key, name
                )
                if facts is not None:
                    return await self.product_links(identifier, facts)
        message = f"{identifier} is neither a raw file of this archive nor a product here"
        return [Link.error(identifier, "NotFoundFault", message)], []

    # ------------------------------------------------------------------ raw files

    async def raw_links(
        self, identifier: str, raw: RawFile
    ) -> tuple[list[Link], list[ServiceDescriptor]]:
        red = await asyncio.to_thread(
            raw_reduction, self.services.jobs.pipelines, self.services.jobs.store, raw
        )
        links = [
            self.raw_link(
                identifier,
                "#this",
                raw,
                f"Raw {red.category or 'unclassified'} frame {raw.path}",
                "raw",
            )
        ]
        if _is_image(raw):
            cached = raw_preview_path(self.services.products.root, raw)
            links.append(
                Link(
                    identifier,
                    "#preview",
                    f"PNG preview of {raw.path} (zscale, north up)",
                    access_url=f"{self.root}{RAW_PREVIEWS_PATH}/{quote(raw.path)}.png",
                    content_type="image/png",
                    content_length=cached.stat().st_size if cached.is_file() else None,
                    local_semantics="preview",
                )
            )
        descriptors = []
        if red.problem is None:
            self.count += 1
            descriptors.append(
                reduce_descriptor(
                    f"reduce-{self.count}",
                    f"{self.root}{ASYNC_PATH}",
                    id_ref=ID_FIELD,
                    targets=red.targets,
                    default_target=red.default_target or "",
                    recipe=[_recipe_param(name, spec) for name, spec in red.parameters],
                    header=raw.header,
                    what=f"{raw.path} with the {red.pipeline} pipeline",
                )
            )
            others = [t for t in red.targets if t != red.default_target]
            links.append(
                Link(
                    identifier,
                    "#proc",
                    f"Reduce this frame on demand (SODA async): TARGET {red.default_target}"
                    + (f" (or {', '.join(others)})" if others else "")
                    + " by default",
                    service_def=descriptors[0].xml_id,
                    content_type="text/xml",
                    local_semantics="reduce",
                )
            )
        elif red.targets:
            message = f"{raw.path} cannot be reduced: {red.problem}"
            links.append(Link.error(identifier, "FatalFault", message, semantics="#proc"))
        if _is_image(raw):
            self.count += 1
            cutout = cutout_descriptor(
                f"cutout-{self.count}",
                f"{self.root}{SYNC_PATH}",
                identifier,
                id_ref=ID_FIELD,
                header=raw.header,
                what=f"the raw frame {raw.path} as archived",
                fixed=(raw_target_param(),),
            )
            descriptors.append(cutout)
            links.append(
                Link(
                    identifier,
                    "#cutout",
                    f"Cut out part of this frame as archived {CUTOUT_TEXT}",
                    service_def=cutout.xml_id,
                    content_type=FITS_TYPE,
                    content_qualifier=IMAGE,
                    local_semantics="cutout",
                )
            )
        for pick in red.calibrations:
            how = (
                f"{pick.category} frame {pick.raw.path}, reduced by {pick.task} for {pick.used_by}"
            )
            if pick.level is not None:
                how += f"; quality level {pick.level} ({LEVEL_WORDS.get(pick.level, '?')})"
            link = self.raw_link(identifier, "#calibration", pick.raw, how, pick.category)
            links.append(replace(link, quality_level=pick.level))
        return links, descriptors

    def raw_link(
        self, identifier: str, semantics: str, raw: RawFile, description: str, kind: str | None
    ) -> Link:
        return Link(
            identifier,
            semantics,
            description,
            access_url=f"{self.root}{FILES_PATH}/{quote(raw.path)}",
            content_type=raw_content_type(raw.path),
            content_length=raw.size,
            content_qualifier=IMAGE if _is_image(raw) else None,
            local_semantics=kind,
        )

    # ------------------------------------------------------------------ products

    async def product_links(
        self, identifier: str, facts: ProductFacts
    ) -> tuple[list[Link], list[ServiceDescriptor]]:
        item = facts.product
        if not facts.stored:
            message = f"{item.file} of step {item.step_key[:12]} is no longer stored"
            return [Link.error(identifier, "NotFoundFault", message + "; run the job again")], []
        made_by = f" made by {facts.task}" if facts.task else ""
        links = [
            self.step_link(identifier, "#this", item, f"{item.category}{made_by}", facts),
        ]
        preview = next((f for f in facts.step_files if f.preview_of == item.file), None)
        if preview is not None:
            links.append(
                self.step_link(identifier, "#preview", preview, f"PNG preview of {item.file}")
            )
        await self.raw_files([i.file_id for i in (*facts.inputs, *facts.behind) if i.file_id])
        for step_input in facts.inputs:
            semantics = "#progenitor" if step_input.role == "main" else "#calibration"
            links.extend(await self.input_links(identifier, semantics, step_input, facts))
        for step_input in facts.behind:  # what the upstream steps were made from
            links.extend(await self.input_links(identifier, "#calibration", step_input, facts))
        for other in facts.step_files:  # what the same step made beside it: QA plots, spectra
            if other.file == item.file or other.preview_of is not None:
                continue
            kind = "auxiliary file" if other.auxiliary else "product of the same step"
            links.append(
                self.step_link(identifier, "#auxiliary", other, f"{other.category}: {kind}")
            )
        directory = self.services.products.step_dir(item.step_key)
        if facts.has_log:
            links.append(
                Link(
                    identifier,
                    "#auxiliary",
                    "Log of the recipe run that made this product",
                    access_url=product_url(self.request, item.step_key, LOG_NAME),
                    content_type="text/plain",
                    content_length=(directory / LOG_NAME).stat().st_size,
                    local_semantics="log",
                )
            )
        manifest = directory / MANIFEST
        if manifest.is_file():
            links.append(
                Link(
                    identifier,
                    "#auxiliary",
                    "The step's manifest: its products with their QC parameters (JSON)",
                    access_url=product_url(self.request, item.step_key, MANIFEST),
                    content_type="application/json",
                    content_length=manifest.stat().st_size,
                    local_semantics="qc",
                )
            )
        if facts.header is None:
            return links, []
        self.count += 1
        descriptor = cutout_descriptor(
            f"cutout-{self.count}",
            f"{self.root}{SYNC_PATH}",
            identifier,
            id_ref=ID_FIELD,
            header=facts.header,
            what=f"{item.category} {item.file}",
        )
        links.append(
            Link(
                identifier,
                "#cutout",
                f"Cut out part of this image {CUTOUT_TEXT}",
                service_def=descriptor.xml_id,
                content_type=FITS_TYPE,
                content_qualifier=IMAGE,
                local_semantics="cutout",
            )
        )
        return links, [descriptor]

    def step_link(
        self,
        identifier: str,
        semantics: str,
        item: StepFile,
        description: str,
        facts: ProductFacts | None = None,
    ) -> Link:
        image = item.content_type == FITS_TYPE and (facts is None or facts.header is not None)
        return Link(
            identifier,
            semantics,
            description,
            access_url=product_url(self.request, item.step_key, item.file),
            content_type=item.content_type,
            content_length=item.size,
            content_qualifier=IMAGE if image else None,
            local_semantics=item.category or None,
        )

    async def input_links(
        self, identifier: str, semantics: str, step_input: StepInput, facts: ProductFacts
    ) -> list[Link]:
        url = static_url(self.root, step_input.file_id or "")
        if url is not None:  # a static calibration: an arc template, a mask...
            reference = step_input.file_id or ""
            name = reference.rsplit("/", 1)[-1]
            pipeline = reference.split(":", 1)[-1].split("/", 1)[0]
            origin = (
                f"shipped with the {pipeline} pipeline"
                if reference.startswith("pipeline:")
                else "from the operator's static library"
            )
            return [
                Link(
                    identifier,
                    "#calibration",
                    f"Static calibration {step_input.category} {name} ({origin})",
                    access_url=url,
                    content_type=raw_content_type(name),
                    local_semantics=step_input.category,
                )
            ]
        if step_input.file_id is not None:
            raw = (await self.raw_files([step_input.file_id])).get(step_input.file_id)
            if raw is None:
                message = f"{step_input.file_id} is no longer in the archive index"
                return [Link.error(identifier, "NotFoundFault", message, semantics=semantics)]
            description = f"Raw {step_input.category} frame {raw.path}"
            return [self.raw_link(identifier, semantics, raw, description, step_input.category)]
        step_files = facts.upstream.get(step_input.step_key or "", ())
        wanted = [f for f in step_files if f.category.upper() == step_input.category.upper()]
        if not wanted:
            key = (step_input.step_key or "?")[:12]
            message = f"the {step_input.category} of step {key} is no longer stored"
            return [Link.error(identifier, "NotFoundFault", message, semantics=semantics)]
        return [
            self.step_link(identifier, semantics, f, f"{f.category} from step {f.step_key[:12]}")
            for f in wanted
        ]


def _recipe_param(name: str, spec: Param) -> InputParam:
    """A recipe or workflow parameter for the user: empty, its default in the description
    (and among the options when it has choices), its limits in VALUES.

    A number is declared ``double`` with ``arraysize="*"``: pyvo (1.10) fails on a scalar
    double PARAM whose value is empty, which astropy reads as None; a variable-length
    array leaves the value empty for it and still tells a client the parameter is numeric.
    """
    datatype = _VOTABLE_TYPES.get(spec.type, "char")
    default = spec.default
    if spec.type == "bool":
        shown = "T" if default else "F"
        options: tuple[tuple[str, str], ...] = (("T", "T"), ("F", "F"))
    else:
        shown = "" if default is None else str(default)
        options = tuple((str(c), str(c)) for c in spec.choices)
    described = spec.description.rstrip(". ") if spec.description else name
    return InputParam(
        name,
        datatype=datatype,
        arraysize="*" if spec.type == "float" else None,
        description=f"{described}; default {shown} when left empty",
        minimum=spec.minimum,
        maximum=spec.maximum,
        options=options,
    )


# ----------------------------------------------------------------------------- handlers


async def links_handler(request: web.Request) -> web.Response:
    """GET/POST /datalink: whole IDs while they fit in MAXREC rows (OVERFLOW after)."""
    wanted = parse_links_request(await params_of(request))
    builder = _Builder(request)
    rows: list[Link] = []
    descriptors: list[ServiceDescriptor] = []
    overflow = wanted.dropped_ids > 0
    for identifier in wanted.ids:
        links, described = await builder.links(identifier)
        if len(rows) + len(links) > wanted.maxrec:
            overflow = True
            break
        rows.extend(links)
        descriptors.extend(described)
    body = render_links(rows, descriptors, overflow=overflow)
    return web.Response(body=body, headers={"Content-Type": wanted.media_type})


def add_routes(app: web.Application) -> None:
    app.router.add_get(DATALINK_PATH, links_handler)
    app.router.add_post(DATALINK_PATH, links_handler)
    raw_files.add_routes(app)  # the files and previews the links point at
