"""Zip bundles of a finished job, as PAWS offers them: GET /soda/async/{job_id}/bundles/{kind}.

Three kinds, three URLs (clean to link from a page, and each gets its own file name):

- ``reduced.zip``: the target products of the job (what was asked for), no previews;
- ``reduced-raw.zip``: the same plus every raw file the plan read (calibrations included);
- ``all.zip``: every product of every step (masters, previews), each step's ``recipe.log``
  and ``products.json`` (its QC values), and the raw inputs.

Each bundle is one folder named after the job, with a ``bundle.json`` listing the members and
their IVOA identifiers. The zip is written while it is sent: zipfile writes into a sink that is
drained after every chunk, so memory stays at one chunk whatever the size (the archive uses
data descriptors, as every streamed zip must; unzip, Python, 7-Zip and libarchive read them).
FITS and PNG are stored as they are (deflate buys little on them and costs CPU); logs and
JSON are deflated. Logs are redacted on the way (runtime/public_text.py: no server paths) and
raw files are checked against the archive boundary (runtime/archive_boundary.py) when bundled.

The URL lives under the job, so the owner rules of UWS apply: someone else's job is a 404.
"""

from __future__ import annotations

import asyncio
import json
import logging
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from aiohttp import web

from soda_reduce.runtime.archive_boundary import inside, servable
from soda_reduce.runtime.jobs import JobRecord, utcnow
from soda_reduce.runtime.products import LOG_NAME, MANIFEST
from soda_reduce.runtime.public_text import PublicText
from soda_reduce.vo.dali import NotFoundError
from soda_reduce.vo.uws import Phase, format_time
from soda_reduce.web.context import ASYNC_PATH, SERVICES, Services, job_of, product_id
from soda_reduce.web.products import public_text

log = logging.getLogger(__name__)
KINDS = {
    "reduced": "the target products",
    "reduced-raw": "the target products and the raw files they were made from",
    "all": "every product of every step, logs, previews and the raw files",
}
CHUNK = 256 * 1024
DEFLATED_SUFFIXES = (".log", ".json", ".txt")
PREVIEW = "PREVIEW"


@dataclass(frozen=True)
class Member:
    """One file of a bundle: where it comes from and its name in the zip."""

    name: str
    path: Path
    size: int
    kind: str  # product | raw | log | manifest
    mtime: float | None = None
    id: str | None = None
    category: str = ""
    task: str = ""


def bundle_url(base: str, job_id: str, kind: str) -> str:
    return f"{base}{ASYNC_PATH}/{job_id}/bundles/{kind}.zip"


def bundle_filename(job_id: str, kind: str) -> str:
    return f"soda-reduce-{job_id}-{kind}.zip"


def plan_raw_inputs(plan: dict[str, Any] | None) -> list[tuple[str, str]]:
    """(file id, archive-relative path) of the raw inputs of the plan's runnable steps."""
    if not plan:
        return []
    wanted = {j for d in plan.get("datasets", []) if d.get("complete") for j in d.get("jobs", [])}
    seen: dict[str, str] = {}
    for job in plan.get("jobs", []):
        if job.get("job_id") not in wanted:
            continue
        for item in job.get("inputs", []):
            if item.get("file_id") and item.get("path") and item["file_id"] not in seen:
                seen[item["file_id"]] = item["path"]
    return sorted(seen.items(), key=lambda pair: pair[1])


def _inside(root: Path, relative: str) -> Path | None:
    """The real path of ``root/relative`` if it stays in ``root``, links followed (a plan is
    data: never trust its paths)."""
    return inside(root, relative)


def _disambiguate(names: list[str], keys: list[str]) -> list[str]:
    """Keep plain file names unless two steps made the same one; then prefix the step key."""
    counts = Counter(names)
    return [n if counts[n] == 1 else f"{k[:12]}-{n}" for n, k in zip(names, keys, strict=True)]


def collect_members(services: Services, job: JobRecord, kind: str) -> list[Member]:
    """The files of a bundle, in zip order; NotFoundError if one has gone (blocking: stats)."""
    root = job.job_id
    products = services.products
    members: list[Member] = []
    missing: list[str] = []

    def add(name: str, path: Path, kind_: str, **extra: Any) -> None:
        try:
            stat = path.stat()
        except OSError:
            missing.append(name)
            return
        members.append(Member(f"{root}/{name}", path, stat.st_size, kind_, stat.st_mtime, **extra))

    def add_product(name: str, row: dict[str, Any]) -> None:
        add(
            name,
            products.step_dir(row["step_key"]) / row["file"],
            "product",
            id=product_id(services.authority, row["step_key"], row["file"]),
            category=row.get("category", ""),
            task=row.get("task", ""),
        )

    rows = job.results
    if kind in ("reduced", "reduced-raw"):
        rows = [r for r in rows if r.get("target") and r.get("category") != PREVIEW]
        names = _disambiguate([r["file"] for r in rows], [r["step_key"] for r in rows])
        for row, name in zip(rows, names, strict=True):
            add_product(f"reduced/{name}", row)
    else:
        steps: dict[str, str] = {}
        for row in rows:
            folder = f"steps/{row.get('task', 'step')}-{row['step_key'][:12]}"
            steps.setdefault(row["step_key"], folder)
            add_product(f"{folder}/{row['file']}", row)
        for key, folder in steps.items():
            for name, what in ((LOG_NAME, "log"), (MANIFEST, "manifest")):
                path = products.step_dir(key) / name
                if path.is_file():
                    add(
                        f"{folder}/{name}", path, what, id=product_id(services.authority, key, name)
                    )
    if kind in ("reduced-raw", "all"):
        archive = services.archive_root
        if archive is None:
            raise NotFoundError("this service has no archive root: raw files cannot be bundled")
        for file_id, relative in plan_raw_inputs(job.plan):
            path = servable(archive, relative)  # FITS, inside the archive, links followed
            if path is None:
                missing.append(relative)
                continue
            add(f"raw/{relative}", path, "raw", id=file_id)
    if missing:
        raise NotFoundError(
            f"{len(missing)} file(s) of this bundle are gone (e.g. {missing[0]}): "
            "the step cache may have collected them; run the job again"
        )
    public = public_text(services)
    return [replace(m, size=public.size(m.path)) if m.kind == "log" else m for m in members]


def manifest_bytes(job: JobRecord, kind: str, members: Iterable[Member]) -> bytes:
    """``bundle.json``: what the bundle holds, with identifiers for provenance."""
    doc = {
        "job_id": job.job_id,
        "run_id": job.run_id,
        "content": kind,
        "description": KINDS[kind],
        "created": format_time(utcnow()),
        "members": [
            {
                "name": m.name,
                "id": m.id,
                "kind": m.kind,
                "category": m.category or None,
                "task": m.task or None,
                "size": m.size,
            }
            for m in members
        ],
    }
    return json.dumps(doc, indent=1).encode()


class _Sink:
    """A write-only stream that zipfile writes into and the handler drains after each chunk.

    No ``tell``/``seek``: zipfile then treats it as unseekable and writes data descriptors.
    """

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


def _zip_info(name: str, mtime: float | None, size: int) -> zipfile.ZipInfo:
    when = datetime.fromtimestamp(mtime) if mtime is not None else datetime.now()
    stamp = max(when.timetuple()[:6], (1980, 1, 1, 0, 0, 0))
    info = zipfile.ZipInfo(name, date_time=stamp)
    info.file_size = size  # decides zip64 before the data is written
    info.external_attr = 0o644 << 16
    if name.endswith(DEFLATED_SUFFIXES):
        info.compress_type = zipfile.ZIP_DEFLATED
    return info


def _reader(member: Member, source: BinaryIO, public: PublicText) -> Callable[[], bytes]:
    """The next chunk of a member, b"" at its end; logs come redacted."""
    if member.kind != "log":
        return lambda: source.read(CHUNK)
    pieces = public.stream(source, CHUNK)
    return lambda: next(pieces, b"")


async def _write_zip(
    response: web.StreamResponse,
    job: JobRecord,
    kind: str,
    members: list[Member],
    public: PublicText,
):
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", allowZip64=True) as archive:  # type: ignore[arg-type]
        manifest = manifest_bytes(job, kind, members)
        with archive.open(_zip_info(f"{job.job_id}/bundle.json", None, len(manifest)), "w") as out:
            out.write(manifest)
        for member in members:
            source: BinaryIO = await asyncio.to_thread(member.path.open, "rb")
            read = _reader(member, source, public)
            try:
                info = _zip_info(member.name, member.mtime, member.size)
                with archive.open(info, "w") as out:
                    await response.write(sink.take())
                    while chunk := await asyncio.to_thread(read):
                        if info.compress_type == zipfile.ZIP_STORED:
                            out.write(chunk)
                        else:
                            await asyncio.to_thread(out.write, chunk)
                        await response.write(sink.take())
            finally:
                await asyncio.to_thread(source.close)
        await response.write(sink.take())
    await response.write(sink.take())  # the central directory, written by close()


async def get_bundle(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    kind = request.match_info["kind"]
    if kind not in KINDS:
        raise NotFoundError(f"no bundle {kind!r}: choose one of {', '.join(KINDS)}")
    job = await job_of(request)  # the owner's, or an anonymous job by its URL
    if not (job.phase == Phase.COMPLETED or (job.phase == Phase.ABORTED and job.results)):
        # no products (yet): a resource that does not exist, 404 as DALI wants
        raise NotFoundError(f"no bundle: the job is {job.phase.value}")
    members = await asyncio.to_thread(collect_members, services, job, kind)
    response = web.StreamResponse(
        headers={
            "Content-Type": "application/zip",
            "Content-Disposition": f'attachment; filename="{bundle_filename(job.job_id, kind)}"',
            "Cache-Control": "private, no-cache",
        }
    )
    await response.prepare(request)
    try:
        if request.method != "HEAD":
            await _write_zip(response, job, kind, members, public_text(services))
        await response.write_eof()
    except ConnectionResetError:  # the client went away: nothing to answer, nothing broken
        log.info("bundle %s of job %s: the client closed the connection", kind, job.job_id)
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_get(ASYNC_PATH + "/{job_id}/bundles/{kind}.zip", get_bundle)
