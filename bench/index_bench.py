"""Benchmark: indexing archives of real FITS files against the I/O floor and astropy.

Writes two archives with ``soda_reduce.pipelines.ccd.scale_archive`` (four instruments,
DATASUM and CHECKSUM in every file unless ``--no-datasum``): ``--small`` files of 8x8
pixels and ``--frames`` frames of 512x512 pixels. For each archive, in one run:

  (1) the floor: every file's header blocks read as raw bytes (open, pread up to END);
  (2) ``astropy.io.fits.getheader`` of every file (the baseline people know);
  (3) the indexer (``index_archive`` with the installed pipelines' claims, as every
      command runs it) into a fresh embedded SecantusDB, for each ``--checksum`` mode;
  (4) re-indexing after ``--changed`` of the files were rewritten (header corrected,
      new mtime), same mode;
  and where the time of (3) goes, measured apart (one thread each): walking the archive,
  reading + parsing + checksums (``index_file``), the pipelines' claims and classification
  (``Annotator.annotate``), the store's bulk writes alone (``Store.upsert_raw_files``).

Goals: (3)/(1) <= 5, (3)/(2) <= 0.25, (4)/(3) <= 0.05. Runs are warm (the page cache
holds the archive; every step reads it once before) unless ``--cold``, which drops the
page cache (root only) before each timed step. The machine's 2 cores are shared with
other work: the load average is printed with the figures.

    .venv/bin/python bench/index_bench.py --small 100000 --frames 5000
    .venv/bin/python bench/index_bench.py --small 20000 --frames 1000 --checksum fast
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from soda_reduce.pipelines import registry
from soda_reduce.pipelines.ccd import scale_archive
from soda_reduce.reduction.overrides import Overrides
from soda_reduce.runtime import indexer
from soda_reduce.runtime.claims import Annotator
from soda_reduce.runtime.store import EmbeddedMongo, Store

GOALS = {"(3)/(1)": 5.0, "(3)/(2)": 0.25, "(4)/(3)": 0.05}
AUTHORITY = "bench.example"
CARD, BLOCK, END = 80, 2880, b"END     "


@dataclass
class Figures:
    """Seconds per step of one archive, in the order measured."""

    archive: str
    files: int
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# -- (1) and (2) -----------------------------------------------------------------------


def read_header_blocks(paths: Sequence[Path]) -> int:
    """The floor: each file's header blocks as bytes, up to the block holding END."""
    total = 0
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            offset, scanned = 0, 0
            buf = os.pread(fd, 4 * BLOCK, 0)
            while True:
                found = -1
                for i in range(scanned, len(buf) - CARD + 1, CARD):
                    if buf.startswith(END, i):
                        found = i
                        break
                if found >= 0 or len(buf) <= offset:
                    break
                scanned, offset = len(buf), len(buf)
                buf += os.pread(fd, 4 * BLOCK, offset)
            total += len(buf)
        finally:
            os.close(fd)
    return total


def astropy_headers(paths: Sequence[Path]) -> None:
    from astropy.io import fits

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in paths:
            fits.getheader(path)


# -- (3) and (4) -----------------------------------------------------------------------


def annotator() -> Annotator:
    return Annotator(registry(), Overrides())


def drop_caches() -> None:
    """Empty the page cache (root only), so the next step reads from the disk."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("1\n")


# What a scan waits for besides reading: the store's bulk writes, and the indexer's passes
# over what is stored (claims and classification again); timed where they exist.
STORE_PHASES = (
    (Store, "upsert_raw_files"),
    (indexer, "_annotate_all"),
    (indexer, "_reclassify_stale"),
    (Store, "save_raw_listing"),
)


class PhaseTimer:
    """Sums the time spent in some coroutine functions while in use (wrapped, then restored)."""

    def __init__(self, targets: Sequence[tuple[Any, str]]) -> None:
        self.targets = [(owner, name) for owner, name in targets if hasattr(owner, name)]
        self.seconds: dict[str, float] = {}
        self._saved: list[tuple[Any, str, Any]] = []

    def __enter__(self) -> PhaseTimer:
        for owner, name in self.targets:
            real = getattr(owner, name)
            self._saved.append((owner, name, real))
            setattr(owner, name, self._timed(name, real))
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, name, real in self._saved:
            setattr(owner, name, real)

    def _timed(self, name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        async def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await real(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

        return timed


@dataclass
class ArchiveBench:
    """The steps on one archive; ``cold`` drops the page cache before each timed step."""

    archive: scale_archive.ScaleArchive
    fig: Figures
    cold: bool
    mode: str = "full"

    def timed(self, name: str, fn: Callable[[], object]) -> None:
        if self.cold:
            drop_caches()
        t0 = time.perf_counter()
        fn()
        self.fig.seconds[name] = time.perf_counter() - t0

    async def index(self, store: Store, name: str) -> indexer.IndexReport:
        """One scan, timed, with the time spent in its phases (indented rows)."""
        if self.cold:
            drop_caches()
        claims = annotator()  # built before the clock starts: the pipelines' imports
        with PhaseTimer(STORE_PHASES) as phases:
            t0 = time.perf_counter()
            report = await indexer.index_archive(
                store, self.archive.root, AUTHORITY, self.mode, annotator=claims
            )
            self.fig.seconds[name] = time.perf_counter() - t0
        for phase, seconds in phases.seconds.items():
            self.fig.seconds[f"  {name[:3]} {self.mode}: {phase}"] = seconds
        return report

    async def full_and_changed(self, store_dir: Path, mode: str, changed: list) -> None:
        """(3) a full index into a fresh store, then (4) after rewriting ``changed``."""
        self.mode = mode
        async with EmbeddedMongo(store_dir) as mongo:
            store = Store.connect(mongo.url, "index_bench")
            try:
                await store.ensure_indexes()
                report = await self.index(store, f"(3) index, checksum {mode}")
                assert report.added == self.fig.files and not report.problems, report.summary()
                rewritten = scale_archive.rewrite(self.archive, changed)
                report = await self.index(store, f"(4) re-index {len(rewritten)} changed, {mode}")
                assert report.updated == len(rewritten), report.summary()
            finally:
                await store.drop()
                await store.close()

    async def breakdown(self, store_dir: Path, mode: str) -> None:
        """Where (3) goes: walk, read + parse + checksum (one thread, no store), writes."""
        root, seconds = self.archive.root, self.fig.seconds
        t0 = time.perf_counter()
        walk = indexer.walk_archive(root)
        seconds["  walk the archive"] = time.perf_counter() - t0
        batch = list(walk.files.items())
        t0 = time.perf_counter()
        read = [indexer.index_file(root, rel, stat, AUTHORITY, mode) for rel, stat in batch]
        seconds[f"  index_file: read, parse, checksum {mode}"] = time.perf_counter() - t0
        annotate = annotator().annotate  # the pipelines imported already, by the first step
        t0 = time.perf_counter()
        files = [annotate(raw) for raw in read]
        seconds["  annotate: claims, classification"] = time.perf_counter() - t0
        async with EmbeddedMongo(store_dir) as mongo:
            store = Store.connect(mongo.url, "index_bench")
            try:
                await store.ensure_indexes()
                t0 = time.perf_counter()
                for i in range(0, len(files), 1000):
                    await store.upsert_raw_files(files[i : i + 1000])
                seconds["  store writes alone (upsert_raw_files)"] = time.perf_counter() - t0
            finally:
                await store.drop()
                await store.close()


async def bench_archive(
    name: str, count: int, shape: tuple[int, int], args: argparse.Namespace, work: Path
) -> Figures:
    made = scale_archive.write_archive(work / name, count, shape, datasum=not args.no_datasum)
    fig = Figures(f"{name} ({shape[0]}x{shape[1]})", count)
    fig.notes.append(
        f"wrote {count} files, {made.bytes_written / 1e6:.0f} MB, in {made.seconds:.1f} s"
    )
    bench = ArchiveBench(made, fig, args.cold)
    paths = [spec.path for spec in made.files]
    read_header_blocks(paths)  # warm the page cache for everyone alike (unless --cold)
    bench.timed("(1) header blocks as raw bytes", lambda: read_header_blocks(paths))
    bench.timed("(2) astropy getheader", lambda: astropy_headers(paths))
    rng = random.Random(3)
    for mode in args.checksum:
        changed = rng.sample(made.files, max(1, round(count * args.changed)))
        await bench.full_and_changed(work / f"mongo-{name}-{mode}", mode, changed)
    if args.breakdown:
        await bench.breakdown(work / f"mongo-{name}-parts", args.checksum[0])
    return fig


def verdicts(fig: Figures) -> list[tuple[str, float, float | None]]:
    """(ratio name, value, goal) for every mode measured."""
    floor = fig.seconds["(1) header blocks as raw bytes"]
    astropy = fig.seconds["(2) astropy getheader"]
    rows: list[tuple[str, float, float | None]] = []
    for name, seconds in fig.seconds.items():
        if name.startswith("(3)"):
            mode = name.rsplit(" ", 1)[-1]
            rows.append((f"(3)/(1) {mode}", seconds / floor, GOALS["(3)/(1)"]))
            rows.append((f"(3)/(2) {mode}", seconds / astropy, GOALS["(3)/(2)"]))
            full = seconds
        elif name.startswith("(4)"):
            rows.append((f"(4)/(3) {name.rsplit(' ', 1)[-1]}", seconds / full, GOALS["(4)/(3)"]))
    return rows


def print_figures(fig: Figures, cold: bool) -> None:
    print(f"\n{fig.archive}: {fig.files} files, {'cold' if cold else 'warm'} page cache")
    for note in fig.notes:
        print(f"  {note}")
    print(f"{'step':<46}{'seconds':>9}{'us/file':>9}{'files/s':>10}")
    for name, seconds in fig.seconds.items():
        rate = fig.files / seconds if seconds else 0.0
        print(f"{name:<46}{seconds:>9.3f}{seconds / fig.files * 1e6:>9.1f}{rate:>10.0f}")
    print(f"\n{'ratio':<16}{'value':>8}{'goal':>8}")
    for name, value, goal in verdicts(fig):
        verdict = "" if goal is None else ("PASS" if value <= goal else "MISS")
        print(f"{name:<16}{value:>8.3f}{goal:>8.2f}  {verdict}")


async def run(args: argparse.Namespace) -> list[Figures]:
    work = Path(tempfile.mkdtemp(prefix="index_bench_", dir=args.workdir))
    figures = []
    try:
        for name, count, shape in (
            ("small", args.small, (8, 8)),
            ("frames", args.frames, (512, 512)),
        ):
            if count:
                figures.append(await bench_archive(name, count, shape, args, work))
                shutil.rmtree(work / name, ignore_errors=True)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return figures


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=20_000, help="files of 8x8 pixels")
    parser.add_argument("--frames", type=int, default=1_000, help="frames of 512x512 pixels")
    parser.add_argument("--changed", type=float, default=0.01, help="fraction rewritten for (4)")
    parser.add_argument(
        "--checksum", nargs="+", choices=indexer.CHECKSUM_MODES, default=["full", "fast"]
    )
    parser.add_argument("--no-datasum", action="store_true", help="files without DATASUM")
    parser.add_argument("--breakdown", action="store_true", help="time the parts of (3)")
    parser.add_argument("--cold", action="store_true", help="drop the page cache (root)")
    parser.add_argument("--keep", action="store_true", help="keep the archives and stores")
    parser.add_argument("--workdir", type=Path, default=None, help="where the temp dir goes")
    args = parser.parse_args(argv)
    load = os.getloadavg()
    figures = asyncio.run(run(args))
    print(f"\nload average at start {load[0]:.2f} (2 cores, shared with other work)")
    for fig in figures:
        print_figures(fig, args.cold)


if __name__ == "__main__":
    main()
