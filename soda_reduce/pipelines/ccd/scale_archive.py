"""An archive at scale, written fast: real FITS files of several instruments for benchmarks.

The demo archive (``demo.py``) is small and physically modelled; measuring the indexer at
archive scale needs 10^5 files written in a minute or two. These are real FITS files
(headers, then data, padded to 2880-byte blocks) of four instruments with the header
conventions met in archives (``scale_instruments``: the demo camera's MaxIm-style cards,
an observatory CCD, a Kast-like spectrograph, an ESO-style imager of ``HIERARCH`` cards
with the odd CONTINUE long string). Every HDU states ``DATASUM`` and ``CHECKSUM`` as an
archive's ingest writes them (``datasum=False`` leaves them out). Frames of one night
share their static cards; each file's header is formatted once and written with its data
by one ``os.writev``.

    .venv/bin/python -m soda_reduce.pipelines.ccd.scale_archive DIR --small 100000 --frames 5000
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from soda_reduce.pipelines.ccd.scale_instruments import STYLES, Cards, FileSpec, card, structural
from soda_reduce.reduction.fits_checksums import encode_checksum, ones_complement_sum

BLOCK = 2880
FILES_PER_NIGHT = 250  # per instrument
KINDS = ("bias", "dark", "flat", "arc", "science")
KIND_WEIGHTS = (0.2, 0.1, 0.2, 0.1, 0.4)


@dataclass
class ScaleArchive:
    """What was written: every file's spec, bytes on disk, seconds spent."""

    root: Path
    files: list[FileSpec]
    bytes_written: int = 0
    seconds: float = 0.0
    seed: int = 1
    datasum: bool = True


# -- one file ---------------------------------------------------------------------


class FileWriter:
    """Formats and writes files; keeps each night's static cards and the data pools."""

    def __init__(self, seed: int, datasum: bool) -> None:
        self.seed = seed
        self.datasum = datasum
        self._night_cards: dict[tuple[str, int, int], Cards] = {}
        self._pools: dict[tuple[int, int], list[np.ndarray]] = {}

    def write(self, spec: FileSpec) -> int:
        data = self.data(spec)
        head = self.header(spec, data)
        pad = b"\0" * (-len(data) % BLOCK)
        fd = os.open(spec.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            written = os.writev(fd, [head, data, pad])
        finally:
            os.close(fd)
        return written

    def data(self, spec: FileSpec) -> bytes:
        """Unsigned 16-bit pixels stored as int16 - 32768, big-endian; distinct per file."""
        pool = self._pools.get(spec.shape)
        if pool is None:
            rng = np.random.default_rng([self.seed, *spec.shape])
            levels = (1000, 1010, 5000, 21000, 1500, 1200, 900, 30000)
            pool = [
                (rng.normal(level, 9.0, spec.shape).clip(0, 65535) - 32768).astype(">i2")
                for level in levels
            ]
            self._pools[spec.shape] = pool
        pixels = pool[(spec.seq + spec.night) % len(pool)].copy()
        pixels.flat[: min(4, pixels.size)] = spec.seq % 30000, spec.night, spec.setup, 0
        return pixels.tobytes()

    def header(self, spec: FileSpec, data: bytes) -> bytes:
        """The header blocks of ``spec`` for ``data``, DATASUM and CHECKSUM computed."""
        night_of, file_of = STYLES[spec.instrument]
        key = (spec.instrument, spec.night, spec.setup)
        static = self._night_cards.get(key)
        if static is None:
            static = self._night_cards[key] = night_of(spec)
        start = datetime(2024, 1, 1, 23, tzinfo=UTC) + timedelta(
            days=spec.night, seconds=90 * spec.seq
        )
        exptime = {"bias": 0.0, "dark": 300.0, "flat": 5.0 + spec.seq % 20}.get(
            spec.kind, (60.0, 120.0, 300.0, 600.0)[spec.seq % 4]
        )
        cards = structural(spec.shape) + file_of(spec, start, exptime) + static
        if spec.revision:
            cards.append(f"HISTORY   header corrected, revision {spec.revision}".ljust(80))
        checksum_at = -1
        if self.datasum:
            datasum = ones_complement_sum(data + b"\0" * (-len(data) % 4))
            cards.append(card("DATASUM", str(datasum), "data unit checksum"))
            checksum_at = len(cards)
            cards.append(card("CHECKSUM", "0" * 16, "HDU checksum"))
        cards.append("END".ljust(80))
        text = "".join(cards)
        head = bytearray(text.ljust(-(-len(text) // BLOCK) * BLOCK).encode("ascii"))
        if checksum_at >= 0:
            total = ones_complement_sum(head, datasum)
            at = checksum_at * 80 + 11
            head[at : at + 16] = encode_checksum(total).encode("ascii")
        return bytes(head)


# -- archives ---------------------------------------------------------------------


def plan_archive(root: Path, count: int, shape: tuple[int, int], seed: int = 1) -> list[FileSpec]:
    """``count`` files spread over the instruments, a night per ``FILES_PER_NIGHT``."""
    rng = np.random.default_rng(seed)
    kinds = rng.choice(len(KINDS), size=count, p=KIND_WEIGHTS)
    setups = rng.integers(0, 8, size=count)
    names = list(STYLES)
    specs = []
    for i in range(count):
        instrument = names[i % len(names)]
        n = i // len(names)
        night, seq = divmod(n, FILES_PER_NIGHT)
        kind = KINDS[kinds[i]]
        directory = root / instrument / f"2024-{1 + night // 28 % 12:02d}-{1 + night % 28:02d}"
        name = f"{instrument.lower()}_{night:04d}_{seq:04d}_{kind}.fits"
        specs.append(
            FileSpec(directory / name, instrument, night, seq, kind, int(setups[i]), shape)
        )
    return specs


def write_archive(
    root: Path,
    count: int,
    shape: tuple[int, int] = (8, 8),
    *,
    seed: int = 1,
    datasum: bool = True,
) -> ScaleArchive:
    """Write ``count`` files of ``shape`` under ``root`` (created); returns what was written."""
    started = time.perf_counter()
    specs = plan_archive(Path(root), count, shape, seed)
    writer = FileWriter(seed, datasum)
    made: set[Path] = set()
    total = 0
    for spec in specs:
        if spec.path.parent not in made:
            spec.path.parent.mkdir(parents=True, exist_ok=True)
            made.add(spec.path.parent)
        total += writer.write(spec)
    return ScaleArchive(Path(root), specs, total, time.perf_counter() - started, seed, datasum)


def rewrite(archive: ScaleArchive, specs: Sequence[FileSpec]) -> list[FileSpec]:
    """Write ``specs`` again with a corrected header (same data), their mtime one second
    later at least; ``archive.files`` is updated."""
    writer = FileWriter(archive.seed, archive.datasum)
    done = []
    for spec in specs:
        before = spec.path.stat().st_mtime_ns
        new = replace(spec, revision=spec.revision + 1)
        writer.write(new)
        later = max(before + 1_000_000_000, spec.path.stat().st_mtime_ns)
        os.utime(new.path, ns=(later, later))
        done.append(new)
    by_path = {s.path: s for s in done}
    archive.files = [by_path.get(s.path, s) for s in archive.files]
    return done


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--small", type=int, default=10_000, help="files of 8x8 pixels")
    parser.add_argument("--frames", type=int, default=0, help="frames of 512x512 pixels")
    parser.add_argument("--no-datasum", action="store_true", help="leave DATASUM out")
    args = parser.parse_args(argv)
    for name, count, shape in (("small", args.small, (8, 8)), ("frames", args.frames, (512, 512))):
        if count:
            made = write_archive(args.root / name, count, shape, datasum=not args.no_datasum)
            print(
                f"{name}: {count} files, {made.bytes_written / 1e6:.0f} MB "
                f"in {made.seconds:.1f} s under {made.root}"
            )


if __name__ == "__main__":
    main()
