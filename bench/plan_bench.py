"""Benchmark: indexing (and, later, planning) an archive of N raw frames.

Writes N header-only FITS files with a CCD camera's headers into a temporary
directory and times, in one run:

  (e) the I/O floor: reading each file's header blocks as raw bytes;
  (a) bare ``astropy.io.fits.getheader`` of every file (the baseline);
  (b) building the index in a fresh store (embedded SecantusDB);
  (c) re-indexing after 1 % of the files were rewritten (new mtime);
  (d) planning every science frame of the index (target ``science``, ccd cascade).

Goals: (b)/(a) <= 0.5 and (c)/(a) <= 0.1.

    .venv/bin/python bench/plan_bench.py --files 20000
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
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from astropy.io import fits

from soda_reduce.pipelines import get_cascade
from soda_reduce.reduction.fits_headers import FIRST_READ, _read_blocks
from soda_reduce.reduction.index_model import RawFile
from soda_reduce.reduction.planner import plan_reduction
from soda_reduce.runtime.indexer import index_archive
from soda_reduce.runtime.store import EmbeddedMongo, Store

GOALS = {"(b)/(a)": 0.5, "(c)/(a)": 0.1}
FILTERS = ["B", "V", "R", "I", "Ha"]
OBJECTS = ["M31", "M42", "NGC 891", "M51", "SA 98", "NGC 7000"]


# -- (d) planning: the lead fills this in ---------------------------------


def time_planning(store_files: Sequence[RawFile]) -> float | None:
    """Seconds to plan every science frame of the index (target ``science``, ccd cascade)."""
    cascade = get_cascade("ccd")
    start = time.perf_counter()
    plan = plan_reduction(cascade, store_files, target="science")
    elapsed = time.perf_counter() - start
    complete = sum(1 for d in plan.datasets if d.complete)
    print(
        f"  planned {len(plan.datasets)} science datasets ({complete} complete), "
        f"{len(plan.jobs)} jobs",
        file=sys.stderr,
    )
    return elapsed


# -- synthetic archive -----------------------------------------------------


def card(key: str, value: object, comment: str = "") -> str:
    if isinstance(value, bool):
        text = f"{'T' if value else 'F':>20}"
    elif isinstance(value, str):
        text = "'" + value.replace("'", "''").ljust(8) + "'"
        text = f"{text:<20}"
    elif isinstance(value, float):
        text = f"{value!r:>20}".upper()
    else:
        text = f"{value:>20}"
    image = f"{key:<8}= {text}" + (f" / {comment}" if comment else "")
    return image[:80].ljust(80)


def frame_header(rng: random.Random, night: datetime, index: int, extra: str = "") -> bytes:
    kind = rng.choices(["bias", "dark", "flat", "object"], weights=[2, 1, 2, 5])[0]
    binning = rng.choice([1, 1, 1, 2])
    when = night + timedelta(hours=18 + 12 * rng.random())
    exptime = {"bias": 0.0, "dark": 300.0, "flat": round(rng.uniform(1, 30), 2)}.get(
        kind, rng.choice([60.0, 120.0, 300.0, 600.0])
    )
    filt = "" if kind in ("bias", "dark") else rng.choice(FILTERS)
    cards = [
        card("SIMPLE", True, "conforms to FITS standard"),
        card("BITPIX", 16, "array data type"),
        card("NAXIS", 0, "header-only benchmark frame"),
        card("EXTEND", True),
        card("ORIGIN", "Example Observatory"),
        card("TELESCOP", "EO 1.0m", "telescope"),
        card("INSTRUME", "SBIG STX-16803", "camera"),
        card("OBSERVER", rng.choice(["A. Smith", "B. O'Neil", "C. Wu"])),
        card("OBJECT", "" if kind != "object" else rng.choice(OBJECTS)),
        card("IMAGETYP", {"object": "Light Frame"}.get(kind, kind.title() + " Frame")),
        card("FILTER", filt, "filter name"),
        card("DATE-OBS", when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3], "UTC start"),
        card("DATE", (when + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S"), "file written"),
        card("MJD-OBS", (when - datetime(1858, 11, 17, tzinfo=UTC)).total_seconds() / 86400),
        card("EXPTIME", exptime, "[s] exposure"),
        card("EXPOSURE", exptime, "[s] exposure"),
        card("DARKTIME", exptime, "[s] dark current time"),
        card("XBINNING", binning),
        card("YBINNING", binning),
        card("CCDSUM", f"{binning} {binning}"),
        card("XORGSUBF", 0),
        card("YORGSUBF", 0),
        card("CCD-TEMP", round(-25 + rng.gauss(0, 0.2), 3), "[C] sensor temperature"),
        card("SET-TEMP", -25.0, "[C] set point"),
        card("EGAIN", 1.27, "[e-/ADU]"),
        card("RDNOISE", 9.3, "[e-]"),
        card("READOUTM", "Normal"),
        card("BSCALE", 1),
        card("BZERO", 32768),
        card("RA", round(rng.uniform(0, 360), 5), "[deg]"),
        card("DEC", round(rng.uniform(-30, 80), 5), "[deg]"),
        card("EQUINOX", 2000.0),
        card("AIRMASS", round(rng.uniform(1, 2.5), 4)),
        card("FOCUSPOS", rng.randint(4000, 6000)),
        card("SITELAT", "+31 57 12"),
        card("SITELONG", "-111 35 48"),
        card("PIERSIDE", rng.choice(["EAST", "WEST"])),
        card("SWCREATE", "MaxIm DL Version 6.40"),
        card("FRAMENO", index),
    ]
    if extra:
        cards.append(card("REWORKED", extra))
    cards += [
        "COMMENT   FITS (Flexible Image Transport System) format is defined in 'Astronomy".ljust(
            80
        ),
        "HISTORY  written by plan_bench".ljust(80),
        "END".ljust(80),
    ]
    text = "".join(cards)
    return text.ljust(-(-len(text) // 2880) * 2880).encode("ascii")


def write_archive(root: Path, n: int, seed: int = 1) -> list[Path]:
    rng = random.Random(seed)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    paths = []
    for i in range(n):
        night = start + timedelta(days=i // 200)
        directory = root / night.strftime("%Y-%m-%d")
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"frame_{i:06d}.fits"
        path.write_bytes(frame_header(rng, night, i))
        paths.append(path)
    (root / "_truth").mkdir(exist_ok=True)  # skipped by the indexer
    return paths


def rewrite(paths: Sequence[Path], seed: int = 2) -> None:
    rng = random.Random(seed)
    for i, path in enumerate(paths):
        before = path.stat().st_mtime_ns
        night = datetime(2024, 1, 1, tzinfo=UTC)
        path.write_bytes(frame_header(rng, night, i, extra="rewritten"))
        os.utime(path, ns=(before + 1_000_000_000, before + 1_000_000_000))


# -- timings ---------------------------------------------------------------


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def read_raw_headers(paths: Sequence[Path]) -> None:
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            _read_blocks(f, f.read(FIRST_READ))


def astropy_headers(paths: Sequence[Path]) -> None:
    for path in paths:
        fits.getheader(path)


async def run(n: int, changed_fraction: float, checksum: str, keep: bool, workdir: Path | None):
    base = Path(tempfile.mkdtemp(prefix="plan_bench_", dir=workdir))
    archive, figures = base / "archive", {}
    try:
        t0 = time.perf_counter()
        paths = write_archive(archive, n)
        print(f"wrote {n} files in {time.perf_counter() - t0:.1f} s under {archive}")
        read_raw_headers(paths)  # warm the page cache for everyone alike
        figures["(e) raw header bytes"] = timed(lambda: read_raw_headers(paths))
        figures["(a) astropy getheader"] = timed(lambda: astropy_headers(paths))

        async with EmbeddedMongo(base / "mongo") as mongo:
            store = Store.connect(mongo.url, "plan_bench")
            await store.ensure_indexes()
            t0 = time.perf_counter()
            report = await index_archive(store, archive, "bench.example", checksum)
            figures["(b) index, fresh store"] = time.perf_counter() - t0
            assert report.added == n and not report.problems, report.summary()

            changed = random.Random(3).sample(paths, max(1, round(n * changed_fraction)))
            rewrite(changed)
            t0 = time.perf_counter()
            report = await index_archive(store, archive, "bench.example", checksum)
            figures[f"(c) re-index, {len(changed)} changed"] = time.perf_counter() - t0
            assert report.updated == len(changed), report.summary()

            t0 = time.perf_counter()
            files = await store.all_raw_files()
            figures["(f) load index from store"] = time.perf_counter() - t0
            planning = time_planning(files)
            if planning is not None:
                figures["(d) planning"] = planning
            await store.close()
    finally:
        if keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    print_table(n, checksum, figures)


def print_table(n: int, checksum: str, figures: dict[str, float]) -> None:
    print(f"\n{n} files, checksum mode {checksum!r}")
    print(f"{'step':<34}{'seconds':>10}{'us/file':>10}")
    for name, seconds in figures.items():
        print(f"{name:<34}{seconds:>10.3f}{seconds / n * 1e6:>10.1f}")
    by_tag = {name.split()[0]: s for name, s in figures.items()}
    print(f"\n{'ratio':<12}{'value':>8}{'goal':>8}")
    for a, b in (("(b)", "(a)"), ("(c)", "(a)"), ("(b)", "(e)"), ("(d)", "(a)")):
        if a in by_tag and b in by_tag:
            key = f"{a}/{b}"
            goal = GOALS.get(key)
            verdict = (
                "" if goal is None else ("  ok" if by_tag[a] / by_tag[b] <= goal else "  MISSED")
            )
            goal_text = f"{goal:>8.2f}" if goal is not None else f"{'':>8}"
            print(f"{key:<12}{by_tag[a] / by_tag[b]:>8.2f}{goal_text}{verdict}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--changed", type=float, default=0.01, help="fraction rewritten for (c)")
    parser.add_argument("--checksum", choices=["full", "fast"], default="full")
    parser.add_argument("--keep", action="store_true", help="keep the archive and store")
    parser.add_argument("--workdir", type=Path, default=None, help="where the temp dir goes")
    args = parser.parse_args(argv)
    asyncio.run(run(args.files, args.changed, args.checksum, args.keep, args.workdir))


if __name__ == "__main__":
    main()
