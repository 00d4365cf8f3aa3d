"""A night of raw TOYCAM frames for the example: ``python -m soda_reduce_toycam.demo DIR``.

Three 60 s darks and two 60 s exposures of a star field, 64 x 64 pixels,
unsigned 16-bit through BZERO as most cameras write them. Every frame has the
same dark pattern (a pedestal, a gradient, hot pixels), dead columns 17 and 41
read zero, and the science frames add a flat sky of ``SKY`` ADU and a few
stars, so a correct reduction has a sky median near ``SKY``.
"""

from __future__ import annotations

import argparse
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from astropy.io import fits

SIZE = 64
SKY = 50.0  # ADU, the sky of the science frames
READ_NOISE = 4.0  # ADU
EXPTIME = 60.0
DEAD_COLUMNS = (17, 41)  # 1-based, as in static/bad_columns_toy1.txt
START = datetime(2024, 3, 2, 1, 0, 0)  # UTC: the evening of 2024-03-01 at the site


def dark_pattern(rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    pattern = 100.0 + 0.2 * xx + 0.1 * yy  # pedestal and a gradient (amplifier glow)
    hot = rng.integers(0, SIZE, size=(6, 2))
    pattern[hot[:, 0], hot[:, 1]] += 400.0
    return pattern


def stars(rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    image = np.zeros((SIZE, SIZE))
    for _ in range(4):
        y, x = rng.uniform(8, SIZE - 8, size=2)
        image += rng.uniform(300, 2000) * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.5**2))
    return image


def write_frame(path: Path, image: np.ndarray, kind: str, when: datetime, target: str) -> None:
    counts = np.clip(np.rint(image), 0, 65535).astype(np.uint16)
    counts[:, [c - 1 for c in DEAD_COLUMNS]] = 0
    hdu = fits.PrimaryHDU(counts)
    header = hdu.header
    header["INSTRUME"] = ("TOYCAM", "what the toycam pipeline claims")
    header["DETECTOR"] = ("TOY-1", "matches the static library")
    header["FRAMETYP"] = (kind, "dark or object")
    header["OBJECT"] = target
    header["EXPTIME"] = (EXPTIME, "[s]")
    header["DATE-OBS"] = when.strftime("%Y-%m-%dT%H:%M:%S")
    hdu.scale("uint16")  # BZERO = 32768, as cameras write unsigned data
    hdu.writeto(path, overwrite=True)


def write_archive(root: Path, seed: int = 1) -> list[Path]:
    """Write the frames under ``root/<night>/``; the paths written."""
    rng = np.random.default_rng(seed)
    pattern = dark_pattern(rng)
    field = stars(rng)
    night = root / "2024-03-01"
    night.mkdir(parents=True, exist_ok=True)
    written = []
    for n in range(3):
        image = pattern + rng.normal(0, READ_NOISE, pattern.shape)
        path = night / f"dark_{n + 1:03d}.fits"
        write_frame(path, image, "dark", START + timedelta(minutes=2 * n), "dark")
        written.append(path)
    for n in range(2):
        image = pattern + SKY + field + rng.normal(0, READ_NOISE, pattern.shape)
        image += rng.poisson(SKY + field) - (SKY + field)  # photon noise of sky and stars
        path = night / f"field_{n + 1:03d}.fits"
        write_frame(path, image, "object", START + timedelta(hours=1, minutes=2 * n), "TOY-FIELD")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", help="archive directory to write into")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    for path in write_archive(Path(args.dir), args.seed):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
