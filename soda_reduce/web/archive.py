"""/archive/raw: the indexed raw files as a VOTable, filtered by instrument, category, night...

Rows come from the header index through the pipeline's cascade (classification and derived
keywords), so a night, an exposure time or a binning reads the same whatever header convention
the file was written with. The rows are rebuilt only when the index changes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from soda_reduce.reduction.index_model import RawFile
from soda_reduce.reduction.organisation import Frame
from soda_reduce.runtime.archive_plans import ArchivePipelines
from soda_reduce.vo.archive_table import RawRow, parse_raw_query, raw_votable, select
from soda_reduce.vo.dali import VOTABLE_MEDIA_TYPE
from soda_reduce.web.context import SERVICES, base_url, params_of

ARCHIVE_RAW_PATH = "/archive/raw"


def _text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return str(value).strip() or None


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def raw_row(frame: Frame) -> RawRow:
    """The table's view of one frame; an unreadable file has only its ID and path."""
    raw = frame.raw
    if raw.problem is not None:
        return RawRow(raw.file_id, raw.path, *(None,) * 8)
    # DATE is derived (DATE-OBS in ISO form) by the ccd cascade; the header's own DATE keyword
    # is when the file was written, so without the derivation fall back to DATE-OBS itself.
    date_obs = frame.derived["DATE"] if "DATE" in frame.derived else raw.header.get("DATE-OBS")
    return RawRow(
        id=raw.file_id,
        path=raw.path,
        instrument=_text(frame.get("INSTRUME")),
        category=frame.category,
        object=_text(frame.get("OBJECT")),
        night=frame.night,
        date_obs=_text(date_obs),
        exptime=_number(frame.get("EXPTIME")),
        filter=_text(frame.get("FILTER")),
        binning=_text(frame.get("BINNING")),
    )


@dataclass
class _Rows:
    """The rows of the last index listing seen (JobService keeps one list per index version)."""

    files: list[RawFile] | None = None
    rows: list[RawRow] = field(default_factory=list)

    def of(self, pipelines: ArchivePipelines, files: list[RawFile]) -> list[RawRow]:
        if files is not self.files:
            frames = [pipelines.frame(raw) for raw in files]
            self.rows = sorted((raw_row(f) for f in frames), key=lambda r: r.path)
            self.files = files
        return self.rows


ROWS = web.AppKey("archive_rows", _Rows)


async def raw_files(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    query = parse_raw_query(await params_of(request))
    files = await services.jobs.raw_files()
    rows = await asyncio.to_thread(request.app[ROWS].of, services.jobs.pipelines, files)
    chosen, overflow = select(query, rows)
    root = base_url(request)
    body = await asyncio.to_thread(
        raw_votable,
        chosen,
        overflow=overflow,
        datalink_endpoint=f"{root}/datalink",
        sync_endpoint=f"{root}/soda/sync",  # the rows' frames as archived (TARGET=raw)
    )
    return web.Response(body=body, content_type=VOTABLE_MEDIA_TYPE)


def add_routes(app: web.Application) -> None:
    app[ROWS] = _Rows()
    app.router.add_get(ARCHIVE_RAW_PATH, raw_files)
    app.router.add_post(ARCHIVE_RAW_PATH, raw_files)
