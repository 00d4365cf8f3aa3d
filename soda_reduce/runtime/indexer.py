"""The indexer: keeps the ``raw_files`` collection in step with the archive on disk.

A scan walks the archive, compares each file's (size, mtime_ns) with the
index's listing (see ``Store.raw_listing``), reads only new or changed files
(headers in worker threads, in batches, while the previous batch is written)
and forgets files that are gone. A file that
cannot be read is indexed anyway, with its problem and an empty header, so it
is listed for the archive's curators and never stops a scan.

Directories whose name starts with ``.`` or ``_`` are skipped: they hold
things that are not raw data (``_truth/`` answers for tests, ``_static/``,
``.git``, hidden caches).

Symbolic links are followed while they stay inside the archive; a FITS file or a
directory whose link resolves outside the root is neither indexed nor walked, and
the report lists it as a problem (runtime/archive_boundary.py).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import time
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from soda_reduce.config import Settings
from soda_reduce.pipelines import registry
from soda_reduce.reduction.fits_checksums import datasum_checksum, verify_datasums
from soda_reduce.reduction.fits_headers import (
    FITS_SUFFIXES,
    HeaderRead,
    is_fits_name,
    read_header,
)
from soda_reduce.reduction.index_model import RawFile, raw_file_id
from soda_reduce.reduction.overrides import Overrides
from soda_reduce.runtime.archive_boundary import OUTSIDE, outside
from soda_reduce.runtime.claims import Annotator, annotator_for, reannotate_all, reclassify_stale
from soda_reduce.runtime.public_text import PublicText
from soda_reduce.runtime.store import RawFileState, Store
from soda_reduce.runtime.store.store import VERSION_STEPS

CHECKSUM_MODES = ("full", "fast")
# Files per worker-thread call, each one store write: a write costs a few round trips, and
# the loop thread waits for the GIL at each while a reader parses (bench/index_bench.py).
READ_BATCH = 1000
READS_IN_FLIGHT = 2  # batches being read while one is written

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class IndexReport:
    """What a scan changed, every file in the index that has a problem, and what it could not see.

    Files under an ``unreadable`` directory are kept in the index as they were:
    a transient error must not make the index forget them. ``problems`` also holds the
    links that resolve outside the archive (``outside``), which are not indexed.
    """

    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)
    duration: float = 0.0
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    outside: list[tuple[str, str]] = field(default_factory=list)
    reclassified: int = 0  # stored files classified again (rules, claims or overrides changed)

    @property
    def total(self) -> int:
        """Files on disk after the scan, all indexed."""
        return self.added + self.updated + self.unchanged

    def summary(self) -> str:
        text = (
            f"{self.total} files indexed ({self.added} added, {self.updated} updated, "
            f"{self.removed} removed, {self.unchanged} unchanged), "
            f"{len(self.problems)} with problems, in {self.duration:.2f} s"
        )
        if self.reclassified:
            text += f"; {self.reclassified} re-classified from their stored headers"
        if self.unreadable:
            text += f"; {len(self.unreadable)} directories could not be listed"
        return text


@dataclass
class ArchiveWalk:
    """The FITS files found under the root, the directories that could not be listed, and the
    links (FITS files or directories, a directory ending in ``/``) that leave the root."""

    files: dict[str, tuple[int, int]] = field(default_factory=dict)
    unreadable: dict[str, str] = field(default_factory=dict)
    outside: dict[str, str] = field(default_factory=dict)

    def hidden_by_error(self, rel: str) -> bool:
        return any(rel.startswith(prefix) for prefix in self.unreadable)


async def index_archive(
    store: Store,
    archive_root: Path,
    authority: str,
    checksum_mode: str = "full",
    progress: Progress | None = None,
    *,
    force: bool = False,
    annotator: Annotator | None = None,
    verify: bool = False,
) -> IndexReport:
    """Bring the index up to date with ``archive_root``; ``force`` re-reads every file.

    Raises NotADirectoryError when the root is missing (an unmounted archive
    must not empty the index). Stored checksums are not told apart by mode:
    after changing ``checksum_mode``, scan once with ``force=True``. In ``full``
    mode the data of a file identified by its DATASUM cards is summed when its
    size or mtime changed, and for every file read with ``verify``.
    """
    if checksum_mode not in CHECKSUM_MODES:
        raise ValueError(f"checksum_mode must be one of {CHECKSUM_MODES}, not {checksum_mode!r}")
    started = time.perf_counter()
    if annotator is None:  # the installed pipelines claim files; no operator overrides
        annotator = Annotator(registry(), Overrides())
    root = Path(archive_root).resolve()
    if not root.is_dir():
        raise NotADirectoryError(f"archive root {root} is not a directory")
    walk, listing = await asyncio.gather(
        asyncio.to_thread(walk_archive, root), store.raw_listing(exact=force)
    )
    on_disk, indexed = walk.files, listing.files
    to_read: list[tuple[str, tuple[int, int]]] = []
    changed: set[str] = set()  # new versions of indexed files: their DATASUMs are checked
    for rel, stat in on_disk.items():
        known = indexed.get(rel)
        if known is not None and (known.size, known.mtime_ns) != stat:
            changed.add(rel)
        if force or known is None or rel in changed:
            to_read.append((rel, stat))
    if verify:
        changed = {rel for rel, _ in to_read}
    kept = {rel for rel in indexed if rel not in on_disk and walk.hidden_by_error(rel)}
    gone = [rel for rel in indexed if rel not in on_disk and rel not in kept]

    states, writes = await _read_and_store(
        store, root, to_read, authority, checksum_mode, progress, annotator, changed
    )
    # files kept from before the scan were annotated with an older fingerprint, maybe;
    # when every indexed file was just read (a first scan), none needs reading back
    kept_before = any(rel not in states for rel in indexed if rel in on_disk or rel in kept)
    reannotated, annotate_writes = await reannotate_all(
        store, annotator, skip=set(states), stored_others=kept_before
    )
    reclassified, reclassify_writes = await reclassify_stale(store, annotator)
    writes += annotate_writes + reclassify_writes
    if gone:
        await store.delete_raw_files(gone)
        writes += 1
    after = {rel: state for rel, state in indexed.items() if rel in on_disk or rel in kept}
    after |= states
    if writes or not listing.cached:
        await store.save_raw_listing(after, listing.version + writes * VERSION_STEPS)

    updated = sum(1 for rel, _ in to_read if rel in indexed)
    problems = [(rel, s.problem) for rel, s in after.items() if s.problem is not None]
    return IndexReport(
        added=len(to_read) - updated,
        updated=updated,
        removed=len(gone),
        unchanged=len(on_disk) - len(to_read),
        problems=sorted(problems + list(walk.outside.items())),
        duration=time.perf_counter() - started,
        unreadable=sorted(walk.unreadable.items()),
        outside=sorted(walk.outside.items()),
        reclassified=reannotated + reclassified,
    )


def walk_archive(root: Path) -> ArchiveWalk:
    """Every FITS file under root with (size, mtime_ns), by relative posix path, sorted.

    Symbolic links are followed while they resolve inside the root (those that do not are
    recorded in ``outside``); a directory reached twice (a link loop) is walked once.
    """
    walk = ArchiveWalk()
    seen: set[tuple[int, int]] = set()
    real_root = Path(root).resolve()

    def visit(directory: str, prefix: str) -> None:
        try:
            st = os.stat(directory)
            if (st.st_dev, st.st_ino) in seen:
                return
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            walk.unreadable[prefix] = f"cannot list directory: {exc.strerror or exc}"
            return
        for entry in entries:
            name = entry.name
            try:
                if entry.is_symlink() and outside(real_root, entry.path):
                    if entry.is_dir() and name[0] not in "._":
                        walk.outside[f"{prefix}{name}/"] = OUTSIDE
                    elif is_fits_name(name):
                        walk.outside[prefix + name] = OUTSIDE
                    continue
                if entry.is_dir():
                    if name[0] not in "._":
                        visit(entry.path, f"{prefix}{name}/")
                elif is_fits_name(name) and entry.is_file():
                    st = entry.stat()
                    walk.files[prefix + name] = (st.st_size, st.st_mtime_ns)
            except OSError:
                continue  # vanished or dangling link

    visit(str(root), "")
    return walk


async def _read_and_store(
    store: Store,
    root: Path,
    to_read: Sequence[tuple[str, tuple[int, int]]],
    authority: str,
    checksum_mode: str,
    progress: Progress | None,
    annotator: Annotator | None = None,
    verify: Container[str] = frozenset(),
) -> tuple[dict[str, RawFileState], int]:
    """Read batches in worker threads, a few ahead of the bulk write of the previous one.

    Returns the state of every file read and how many store writes were made.
    """
    states: dict[str, RawFileState] = {}
    writes = 0
    total, done = len(to_read), 0
    if progress:
        progress(0, total)
    batches = [to_read[i : i + READ_BATCH] for i in range(0, total, READ_BATCH)]
    pending: list[asyncio.Task[list[RawFile]]] = []
    next_batch = 0
    try:
        while next_batch < len(batches) or pending:
            while next_batch < len(batches) and len(pending) < READS_IN_FLIGHT:
                batch = batches[next_batch]
                pending.append(
                    asyncio.create_task(
                        asyncio.to_thread(
                            read_batch, root, batch, authority, checksum_mode, annotator, verify
                        )
                    )
                )
                next_batch += 1
            files = await pending.pop(0)
            await store.upsert_raw_files(files)
            writes += 1
            for raw in files:
                states[raw.path] = RawFileState(raw.size, raw.mtime_ns, raw.problem)
            done += len(files)
            if progress:
                progress(done, total)
    finally:
        for task in pending:
            task.cancel()
    return states, writes


def read_batch(
    root: Path,
    batch: Sequence[tuple[str, tuple[int, int]]],
    authority: str,
    checksum_mode: str,
    annotator: Annotator | None = None,
    verify: Container[str] = frozenset(),
) -> list[RawFile]:
    """Index records of ``batch`` (relative path, (size, mtime_ns)); those in ``verify``
    have their data checked against their DATASUM cards."""
    files = [
        index_file(root, rel, stat, authority, checksum_mode, rel in verify) for rel, stat in batch
    ]
    return [annotator.annotate(raw) for raw in files] if annotator is not None else files


def index_file(
    root: Path,
    rel: str,
    stat: tuple[int, int],
    authority: str,
    checksum_mode: str,
    verify: bool = False,
) -> RawFile:
    """One file's index record; problems are recorded, never raised."""
    size, mtime_ns = stat
    path = os.path.join(root, rel)
    read = read_header(path, layout=checksum_mode == "full")  # fast: the primary header only
    header_checksum = hashlib.sha256(read.header_bytes).hexdigest() if read.header_bytes else ""
    checksum, problem = content_checksum(path, read, stat, checksum_mode, verify, header_checksum)
    if problem is not None:  # shown to anyone: "$ARCHIVE/night/x.fits", not the mount point
        problem = _public(root)(problem)
    return RawFile(
        file_id=raw_file_id(rel, authority),
        path=rel,
        header=read.header,
        checksum=checksum,
        header_checksum=header_checksum,
        size=size,
        mtime_ns=mtime_ns,
        problem=problem,
    )


def content_checksum(
    path: str,
    read: HeaderRead,
    stat: tuple[int, int],
    checksum_mode: str,
    verify: bool,
    header_checksum: str,
) -> tuple[str, str | None]:
    """The checksum step keys are built from, and the file's problem (docs/planning.md).

    ``fast``: header + size + mtime, no data read. ``full``: the header blocks of a file
    whose every HDU states its DATASUM (its data read and summed only with ``verify``: a
    mismatch is a problem, and the file is hashed so that no key trusts it), else the
    sha256 of its bytes (a header-only file's bytes are its header, already read).
    """
    size, mtime_ns = stat
    problem = read.problem
    if checksum_mode == "fast":
        return fast_checksum(read.header_bytes, size, mtime_ns), problem
    vouched = datasum_checksum(read, header_checksum)
    if vouched is not None and read.layout is not None:
        if not verify:
            return vouched, problem
        try:
            mismatch = verify_datasums(path, read.layout)
        except OSError as exc:
            mismatch = f"cannot read file: {exc}"
        if mismatch is None:
            return vouched, problem
        problem = f"DATASUM check failed: {mismatch}"
    elif len(read.header_bytes) == size and path.lower().endswith(FITS_SUFFIXES):
        return header_checksum or hashlib.sha256(b"").hexdigest(), problem  # "" : empty file
    try:
        return file_checksum(path), problem
    except OSError as exc:
        return "", problem or f"cannot read file: {exc}"


@functools.lru_cache(maxsize=4)
def _public(root: Path) -> PublicText:
    return PublicText.of(archive=root)


def file_checksum(path: Path | str) -> str:
    """sha256 of the file's bytes: the same bytes anywhere give the same step keys."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def fast_checksum(header_bytes: bytes, size: int, mtime_ns: int) -> str:
    """Changes whenever the file does (size or mtime) without reading pixel data."""
    digest = hashlib.sha256(header_bytes)
    digest.update(f"\0{size}\0{mtime_ns}".encode())
    return digest.hexdigest()


async def index_with_claims(
    store: Store,
    archive_root: Path,
    settings: Settings,
    progress: Progress | None = None,
) -> IndexReport:
    """The scan every command and the service run: the installed pipelines' claims and the
    operator's overrides file recorded with each file (OverridesError if it is malformed)."""
    annotator = annotator_for(registry(), settings.data_dir, settings.overrides_path)
    return await index_archive(
        store,
        archive_root,
        authority=settings.authority,
        checksum_mode=settings.checksum_mode,
        progress=progress,
        annotator=annotator,
        force=settings.verify_checksums,
        verify=settings.verify_checksums,
    )
