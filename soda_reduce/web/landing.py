"""The landing page (``/``) and the view of the header index that it and ``/plan`` share.

Summarising the archive means classifying every file with its pipeline's cascade: time and
memory in proportion to the archive. ``IndexView`` does it once per index version (the
indexer bumps ``Store.raw_files_version`` on every write), in a worker thread, so a request
costs one read of that version while nothing changes; concurrent requests after a change wait
for one load instead of each loading the whole index. What the page shows is kept small and
bounded (the first ``FILE_LIST_LIMIT`` rows per category, counts, problems), and redacted:
anonymous visitors see the archive's name, never the server's paths.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web

from soda_reduce.reduction.index_model import RawFile
from soda_reduce.reduction.organisation import Frame
from soda_reduce.runtime.archive_plans import ArchivePipelines, summarise
from soda_reduce.runtime.public_text import PublicText
from soda_reduce.runtime.store import Store
from soda_reduce.web.pages import render

FILE_LIST_LIMIT = 300  # raw files listed on / (the VOTable at /archive/raw has them all)
PROBLEM_LIST_LIMIT = 300  # unreadable files listed on / (`soda-reduce index` lists them all)
ALL = ""  # the key of the unfiltered file list

Loader = Callable[[], Awaitable[list[RawFile]]]


@dataclass(frozen=True)
class Landing:
    """Everything the landing page shows that depends on the index: small, whatever its size."""

    total: int
    unclaimed: int
    per_pipeline: dict[str, tuple[int, int]]  # pipeline -> (claimed, classified)
    counts: list[tuple[tuple[str, str], int]]  # ((pipeline, type), files), sorted
    problems: list[tuple[str, str]]  # (path, why), the first PROBLEM_LIST_LIMIT
    more_problems: int
    rows: dict[str, list[dict[str, Any]]]  # type (ALL: every file) -> first rows, by path
    listed: dict[str, int] = field(default_factory=dict)  # type -> how many files
    refused: list[tuple[str, str]] = field(default_factory=list)  # (pipeline, why), redacted


def summarise_landing(
    pipelines: ArchivePipelines, files: Sequence[RawFile], public: PublicText
) -> Landing:
    """The landing page's content (CPU in proportion to the archive: run it in a thread)."""
    summary, frames = summarise(pipelines.registry, files)
    rows = [(_category(f), f) for items in frames.values() for f in items]
    rows += [("unclaimed", pipelines.frame(raw)) for raw in files if not raw.pipeline]
    rows.sort(key=lambda item: item[1].raw.path)
    counts = Counter((f.raw.pipeline or "-", name) for name, f in rows)
    shown: dict[str, list[dict[str, Any]]] = {ALL: []}
    listed: Counter[str] = Counter()
    for name, frame in rows:
        listed[name] += 1
        for key in (ALL, name):
            chosen = shown.setdefault(key, [])
            if len(chosen) < FILE_LIST_LIMIT:
                chosen.append(_file_row(frame))
    listed[ALL] = len(rows)
    problems = sorted((raw.path, public(raw.problem)) for raw in files if raw.problem)
    return Landing(
        total=len(files),
        unclaimed=len(summary.unclaimed),
        per_pipeline={n: (c.claimed, c.classified) for n, c in summary.per_pipeline.items()},
        counts=sorted(counts.items()),
        problems=problems[:PROBLEM_LIST_LIMIT],
        more_problems=max(0, len(problems) - PROBLEM_LIST_LIMIT),
        rows=shown,
        listed=dict(listed),
        # a refused plug-in's reason may quote a file of it (a SyntaxError's path)
        refused=[(name, public(why)) for name, why in sorted(pipelines.registry.refused.items())],
    )


def _category(frame: Frame) -> str:
    return frame.category or ("unreadable" if frame.raw.problem else "unclassified")


def _file_row(frame: Frame) -> dict[str, Any]:
    kinds = ",".join(frame.categories) if frame.categories else _category(frame)
    if frame.overridden or frame.calib_groups is not None:
        kinds += " (override)"
    if not frame.raw.pipeline and not frame.raw.problem:
        kinds = "unclaimed"
    return {
        "path": frame.raw.path,
        "url": "/raw/" + quote(frame.raw.path),
        "pipeline": frame.raw.pipeline or "",
        "category": kinds,
        "night": frame.night or "",
        "object": frame.raw.header.get("OBJECT") or "",
    }


class IndexView:
    """The header index as ``/`` and ``/plan`` use it: loaded and summarised once per version.

    ``load`` returns the whole index; given JobService's (which keeps one list per version)
    the pages share that list instead of holding a second copy.
    """

    def __init__(
        self,
        store: Store,
        pipelines: ArchivePipelines,
        public: PublicText,
        load: Loader | None = None,
    ) -> None:
        self.store = store
        self.pipelines = pipelines
        self.public = public
        self._load = load or store.all_raw_files
        self._files: tuple[int, list[RawFile]] | None = None
        self._landing: tuple[list[RawFile], Landing] | None = None
        self._loading = asyncio.Lock()
        self._summarising = asyncio.Lock()

    async def files(self) -> list[RawFile]:
        """Every indexed file; one version read when the index has not changed."""
        version = await self.store.raw_files_version()
        if self._files is not None and self._files[0] == version:
            return self._files[1]
        async with self._loading:  # one load per change, however many requests wait
            if self._files is None or self._files[0] != version:
                self._files = (version, await self._load())
            return self._files[1]

    async def landing(self) -> Landing:
        files = await self.files()
        if self._landing is not None and self._landing[0] is files:
            return self._landing[1]
        async with self._summarising:
            if self._landing is None or self._landing[0] is not files:
                landing = await asyncio.to_thread(
                    summarise_landing, self.pipelines, files, self.public
                )
                self._landing = (files, landing)
            return self._landing[1]


def render_index(
    request: web.Request, pipelines: ArchivePipelines, landing: Landing, archive: str
) -> web.Response:
    """The archive summary, per pipeline: bounded work, whatever the archive's size."""
    category = request.query.get("category")
    key = ALL if category is None else category
    registry = pipelines.registry
    return render(
        request,
        "index.html",
        archive=Path(archive).name,  # the name only: no server path in public
        pipelines=[
            {
                "name": p.name,
                "version": p.version,
                "description": p.description,
                "instruments": p.instruments,
                "claimed": landing.per_pipeline.get(p.name, (0, 0))[0],
                "classified": landing.per_pipeline.get(p.name, (0, 0))[1],
                "targets": [t.name for t in p.cascade.tasks] + list(p.cascade.meta_targets),
                "default_target": p.cascade.default_target,
            }
            for p in registry.pipelines.values()
        ],
        refused=landing.refused,
        unclaimed=landing.unclaimed,
        total=landing.total,
        counts=landing.counts,
        problems=landing.problems,
        more_problems=landing.more_problems,
        category=category,
        files=landing.rows.get(key, []),
        more=max(0, landing.listed.get(key, 0) - FILE_LIST_LIMIT),
    )
