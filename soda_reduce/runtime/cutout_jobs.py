"""The SODA cutouts of an async job: one result per dataset and combination of values.

A job cuts the target products of its reduction, or, when it only cuts
(vo/job_request.py `JobKind`), the raw frames or the products its IDs name
(`request_targets`): each the same cutout /soda/sync makes of the same
parameters, byte for byte (the same code, and the dataset's ID in its HISTORY).

A job's SODA values multiply (SODA 1.0 section 6), so its cutouts are bounded and
interruptible:

- at most ``max_cutouts`` results and ``max_bytes`` bytes per job: `CutoutLimitExceeded`
  is raised before anything past a limit is written (the worker ends the job in ERROR);
- ``stop`` is checked before each cutout and again before each write: `cut_in_thread`
  cuts in a thread and sets it when its task is cancelled (ABORT, DELETE,
  executionDuration), so an aborted job writes at most the cutout in hand;
- a result already on disk, from an earlier attempt at the same job whose worker died,
  is kept rather than cut again: files are written whole (a temporary name of their
  own, then a rename), so a file there is complete, and a job's values never change
  once it runs.

The job document keeps four short fields per result (`ROW_FIELDS`), and never more
than `MAX_CUTOUTS_CEILING` results, so the list stays far below MongoDB's 16 MB
document limit whatever the configuration.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from soda_reduce.runtime.archive_boundary import servable
from soda_reduce.runtime.cutout import FITS_MEDIA_TYPE, Cutout, NoOverlap, cut_fits
from soda_reduce.runtime.products import ProductStore
from soda_reduce.runtime.store import Store
from soda_reduce.vo.job_request import JobKind, JobRequest
from soda_reduce.vo.soda import SodaFilter, SodaUsageError

log = logging.getLogger(__name__)

# a stored result row is ~100-350 bytes (its name holds the product's file name)
MAX_CUTOUTS_CEILING = 10_000
ROW_FIELDS = ("name", "content_type", "size", "ok")
STOP_WAIT_S = 10.0  # a cancelled cut waits this long at most for the cutout in hand
_STEP_KEY = re.compile(r"[0-9a-f]{64}\Z")
_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,200}\Z")


class CutTarget(NamedTuple):
    """One dataset a job cuts.

    ``source`` is its ID, which the cutouts' HISTORY names; ``problem``, when set, is
    why it cannot be read (each of its results is then that text); ``as_is``: with no
    filter the file itself is the result (a product, as /soda/sync serves it).
    """

    path: Path | None
    source: str
    problem: str | None = None
    as_is: bool = False


def product_id(authority: str, step_key: str, file: str) -> str:
    return f"ivo://{authority}/product?{step_key}/{file}"


def reduction_targets(
    rows: Sequence[dict[str, Any]], products: ProductStore, authority: str
) -> list[CutTarget]:
    """A reduction's target FITS products (its main products of the target task)."""
    return [
        CutTarget(
            products.step_dir(r["step_key"]) / r["file"],
            product_id(authority, r["step_key"], r["file"]),
        )
        for r in rows
        if r.get("target") and r.get("main") and r.get("content_type") == FITS_MEDIA_TYPE
    ]


async def request_targets(
    request: JobRequest, store: Store, archive_root: Path, products: ProductStore
) -> list[CutTarget]:
    """The raw frames (as archived) or products a cutout job's IDs name, in their order.

    Checked again here, not only at creation: a raw file may have left the archive (or
    become a link out of it) and a product may have been collected since.
    """
    if request.kind is JobKind.RAW_CUTOUT:
        files = {raw.file_id: raw for raw in await store.raw_files_by_id(request.ids)}
        targets = []
        for file_id in request.ids:
            raw = files.get(file_id)
            path = await asyncio.to_thread(servable, archive_root, raw.path) if raw else None
            problem = None if path else f"{file_id} is no longer in the archive"
            targets.append(CutTarget(path, file_id, problem))
        return targets
    targets = []
    for identifier in request.ids:
        key, _, name = identifier.partition("?")[2].partition("/")
        path = products.step_dir(key) / name if _STEP_KEY.match(key) and _FILE.match(name) else None
        if path is None or not await asyncio.to_thread(path.is_file):
            problem = f"{identifier} is no longer stored (its step was collected)"
            targets.append(CutTarget(None, identifier, problem))
        else:
            targets.append(CutTarget(path, identifier, as_is=True))
    return targets


@dataclass(frozen=True)
class CutoutLimits:
    """What one job may produce (Settings.max_cutouts, Settings.max_job_bytes)."""

    max_cutouts: int = 1000
    max_bytes: int = 2 * 1024**3

    @property
    def count(self) -> int:
        return max(0, min(self.max_cutouts, MAX_CUTOUTS_CEILING))


class CutoutLimitExceeded(Exception):
    """The job's cutouts would pass a limit; the message names it (clients read it)."""


class CutoutsStopped(Exception):
    """Cutting was stopped from outside (the job was aborted, deleted or ran out of time)."""


def cut_products(
    out_dir: Path,
    targets: Sequence[CutTarget | tuple[Path, str]],
    filters: Sequence[SodaFilter],
    *,
    limits: CutoutLimits | None = None,
    stop: threading.Event | None = None,
) -> list[dict[str, Any]]:
    """One result per (target, filter): a FITS cutout, or a text/plain document starting
    with a SODA error label when that combination selects nothing or cannot apply.

    ``targets``: `CutTarget`s, or (file, source label) pairs. Returns the rows for the
    job document (`ROW_FIELDS`), in order: result N is ``cutout-N-<stem>.fits`` or
    ``.txt``.
    """
    targets = [t if isinstance(t, CutTarget) else CutTarget(*t) for t in targets]
    limits = limits or CutoutLimits()
    total = len(targets) * len(filters)
    if total > limits.count:
        raise CutoutLimitExceeded(
            f"{total} cutouts requested ({len(targets)} products x {len(filters)} combinations "
            f"of SODA values): a job may make at most {limits.count} (SODA_REDUCE_MAX_CUTOUTS)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    written = 0
    for target in targets:
        stem = _stem(target)
        for flt in filters:
            _check(stop)
            n = len(rows) + 1
            row = _done_before(out_dir, n, stem)
            body = b""
            if row is None:
                name, body, media = _cut_one(target, flt, n, stem)
                row = {"name": name, "content_type": media, "size": len(body)}
                row["ok"] = media == FITS_MEDIA_TYPE
            if written + row["size"] > limits.max_bytes:
                raise CutoutLimitExceeded(
                    f"the cutouts of this job pass {_bytes(limits.max_bytes)} at cutout {n} of "
                    f"{total}: a job may write at most that (SODA_REDUCE_MAX_JOB_BYTES)"
                )
            if body:
                _check(stop)
                _write(out_dir / row["name"], body)
            written += row["size"]
            rows.append(row)
    return rows


async def cut_in_thread(
    out_dir: Path,
    targets: Sequence[CutTarget],
    filters: Sequence[SodaFilter],
    limits: CutoutLimits,
) -> list[dict[str, Any]]:
    """`cut_products` off the event loop; cancelling stops it before its next cutout.

    On cancellation it waits (`STOP_WAIT_S` at most) for the cutout in hand, so the
    caller knows nothing more is written once it returns.
    """
    stop = threading.Event()
    task = asyncio.ensure_future(
        asyncio.to_thread(cut_products, out_dir, targets, filters, limits=limits, stop=stop)
    )
    task.add_done_callback(_retrieve)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        stop.set()
        await asyncio.wait({task}, timeout=STOP_WAIT_S)
        if not task.done():
            log.warning("cutting in %s still busy %.0f s after its stop", out_dir, STOP_WAIT_S)
        raise


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Read a cancelled cut's exception (CutoutsStopped): nobody awaits it any more."""
    if not task.cancelled():
        task.exception()


def _check(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise CutoutsStopped("cutting stopped")


def _done_before(out_dir: Path, n: int, stem: str) -> dict[str, Any] | None:
    """Result N as an earlier attempt at this job wrote it, if it did."""
    for suffix, media in ((".fits", FITS_MEDIA_TYPE), (".txt", "text/plain")):
        name = f"cutout-{n}-{stem}{suffix}"
        try:
            size = (out_dir / name).stat().st_size
        except FileNotFoundError:
            continue
        return {"name": name, "content_type": media, "size": size, "ok": suffix == ".fits"}
    return None


def _stem(target: CutTarget) -> str:
    name = target.path.name if target.path is not None else target.source.rsplit("/", 1)[-1]
    stem = re.sub(r"[^A-Za-z0-9._+-]", "_", name.split(".")[0])[:100]
    return stem.lstrip("._+-") or "image"


def _cut_one(target: CutTarget, flt: SodaFilter, n: int, stem: str) -> tuple[str, bytes, str]:
    """(file name, body, media type) of result N."""
    path, source = target.path, target.source
    if target.problem is not None or path is None:
        return f"cutout-{n}-{stem}.txt", f"UsageError: {target.problem}\n".encode(), "text/plain"
    if flt.empty and target.as_is:  # the product itself, as /soda/sync serves it
        return f"cutout-{n}-{stem}.fits", path.read_bytes(), FITS_MEDIA_TYPE
    try:
        result: Cutout | NoOverlap | str = cut_fits(path, flt, source=source)
    except SodaUsageError as exc:
        result = f"UsageError: {exc.message}\n"
    except Exception as exc:  # a broken product must not lose the job's other results
        log.exception("cutout of %s (%s) failed", source, flt.describe())
        result = f"Error: cutout failed: {type(exc).__name__}: {exc}\n"
    if isinstance(result, NoOverlap):
        result = f"UsageError: no overlap: {result.reason}\n"
    if isinstance(result, Cutout):
        return f"cutout-{n}-{stem}.fits", result.to_bytes(), FITS_MEDIA_TYPE
    return f"cutout-{n}-{stem}.txt", result.encode(), "text/plain"


def _write(target: Path, body: bytes) -> None:
    """Whole or not at all; a temporary name of its own, should two workers write it."""
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        partial.write_bytes(body)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:g} {unit}"
    return f"{n} bytes"
