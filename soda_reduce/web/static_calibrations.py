"""Static calibration files (arc templates, masks): /calibrations/{scheme}/{pipeline}/{file}.

DataLink lists the static calibrations a product was made with as
``#calibration`` rows; these are their URLs. ``pipeline`` files ship inside a
pipeline package, ``static`` files are the operator's library. The reference
is resolved by the pipeline registry, which never lets a name leave its folder.
"""

from __future__ import annotations

from urllib.parse import quote

from aiohttp import web

from soda_reduce.reduction.static import PIPELINE_SCHEME, STATIC_SCHEME
from soda_reduce.vo.dali import NotFoundError
from soda_reduce.web.context import SERVICES

STATIC_PATH = "/calibrations"
SCHEMES = {"pipeline": PIPELINE_SCHEME, "static": STATIC_SCHEME}


def static_url(root: str, reference: str) -> str | None:
    """The URL of ``pipeline:NAME/FILE`` or ``static:NAME/FILE``; None for anything else."""
    for word, scheme in SCHEMES.items():
        if reference.startswith(scheme):
            return f"{root}{STATIC_PATH}/{word}/{quote(reference[len(scheme) :])}"
    return None


async def get_static(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    scheme = SCHEMES.get(request.match_info["scheme"])
    reference = f"{scheme}{request.match_info['pipeline']}/{request.match_info['file']}"
    pipelines = services.jobs.pipelines
    try:
        if scheme is None:
            raise ValueError("unknown scheme")
        path = pipelines.registry.static_path(reference, pipelines.static_root)
    except (KeyError, ValueError):
        raise NotFoundError("no such static calibration") from None
    content_type = "application/fits" if path.name.endswith((".fits", ".fits.gz")) else None
    return web.FileResponse(path, headers={"Content-Type": content_type} if content_type else None)


def add_routes(app: web.Application) -> None:
    app.router.add_get(STATIC_PATH + "/{scheme}/{pipeline}/{file}", get_static)
