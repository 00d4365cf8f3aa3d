"""The TOYCAM recipe functions: what runs in ``python -m soda_reduce.recipe toycam.RECIPE``.

A recipe function receives a ``RecipeCall`` (its inputs by category, its typed
parameters, its OUTDIR), writes files into ``call.out`` and records each one;
``soda_reduce.recipe.products.write_fits`` stamps provenance into a FITS
product, records it and adds its PNG preview. Raising ``RecipeUsageError``
means "bad inputs, never retry" (exit 2), ``RecipeFailure`` "processing
failed" (exit 1); the contract writes products.json after the function returns.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from astropy.io import fits

from soda_reduce.recipe.contract import RecipeCall, RecipeFailure, RecipeUsageError
from soda_reduce.recipe.products import write_fits

log = logging.getLogger("soda_reduce.recipe")  # the step log: stdout/stderr of the recipe

MAD_TO_SIGMA = 1.4826


def read_frame(path: Path) -> tuple[np.ndarray, fits.Header]:
    """The primary image as float32 (BZERO applied) and its header without scaling keywords."""
    with fits.open(path) as hdul:
        data = hdul[0].data
        if data is None or data.ndim != 2:
            raise RecipeUsageError(f"{path.name}: no 2-D image in the primary HDU")
        header = hdul[0].header.copy()
    for key in ("BZERO", "BSCALE"):
        header.remove(key, ignore_missing=True)
    return np.asarray(data, dtype=np.float32), header


def robust_sigma(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(MAD_TO_SIGMA * np.median(np.abs(finite - np.median(finite))))


def master_dark(call: RecipeCall) -> None:
    """Median (or mean) of the darks, pixel by pixel; hot pixels counted for QC."""
    darks = call.of("DARK")
    frames = [read_frame(item.path) for item in darks]
    shapes = {data.shape for data, _ in frames}
    if len(shapes) != 1:
        raise RecipeUsageError(f"darks of different sizes: {sorted(shapes)}")
    exptimes = sorted({float(header["EXPTIME"]) for _, header in frames})
    if len(exptimes) != 1:
        raise RecipeUsageError(f"darks of different exposure times: {exptimes}")
    stack = np.stack([data for data, _ in frames])
    combine = np.median if call.params["combine"] == "median" else np.mean
    master = combine(stack, axis=0).astype(np.float32)
    level = float(np.median(master))
    noise = robust_sigma(stack[0] - stack[1]) / np.sqrt(2.0)  # one frame's noise, pattern removed
    hot = int(np.count_nonzero(master > level + 5.0 * noise))
    log.info(
        "%d darks of %g s combined by %s: level %.2f ADU, noise %.2f ADU, %d hot pixels",
        len(frames),
        exptimes[0],
        call.params["combine"],
        level,
        noise,
        hot,
    )
    header = fits.Header()
    for key in ("INSTRUME", "DETECTOR", "EXPTIME", "DATE-OBS"):
        if key in frames[0][1]:
            header[key] = frames[0][1][key]
    header["BUNIT"] = "adu"
    qc = {"NFRAMES": len(frames), "DARK_LEVEL": level, "DARK_NOISE": noise, "HOT_PIXELS": hot}
    history = [f"{call.params['combine']} of {len(frames)} darks of {exptimes[0]:g} s"]
    write_fits(
        call,
        "master_dark.fits",
        fits.HDUList([fits.PrimaryHDU(master, header)]),
        "MASTER_DARK",
        history,
        qc,
        main=True,
    )


def read_bad_columns(path: Path) -> list[int]:
    """1-based column numbers, one a line; ``#`` starts a comment."""
    columns = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        if not text.isdigit() or int(text) < 1:
            raise RecipeUsageError(f"{path.name} line {number}: not a column number: {text!r}")
        columns.append(int(text))
    return columns


def science(call: RecipeCall) -> None:
    """Raw frame minus the master dark of its exposure time; dead columns set to NaN."""
    raw = call.one("SCIENCE")
    data, header = read_frame(raw.path)
    dark, dark_header = read_frame(call.one("MASTER_DARK").path)
    if dark.shape != data.shape:
        raise RecipeUsageError(f"master dark {dark.shape} and frame {data.shape} differ in size")
    if not np.isclose(float(header["EXPTIME"]), float(dark_header["EXPTIME"]), rtol=1e-3):
        raise RecipeUsageError(
            f"master dark of {dark_header['EXPTIME']} s for a frame of {header['EXPTIME']} s"
        )
    reduced = data - dark
    bad = [c for c in read_bad_columns(call.one("BAD_COLUMNS").path) if c <= data.shape[1]]
    reduced[:, [c - 1 for c in bad]] = np.nan
    sky = float(np.nanmedian(reduced))
    noise = robust_sigma(reduced)
    if not np.isfinite(sky):
        raise RecipeFailure("no valid pixel left after blanking the dead columns")
    log.info("sky %.2f ADU, noise %.2f ADU, %d dead column(s) blanked", sky, noise, len(bad))
    header["BUNIT"] = "adu"
    qc = {"SKY_MEDIAN": sky, "SKY_NOISE": noise, "BAD_COLUMNS": len(bad)}
    stem = raw.path.name.split(".")[0]
    history = [f"minus the master dark; columns {bad} blanked"]
    write_fits(
        call,
        f"{stem}_reduced.fits",
        fits.HDUList([fits.PrimaryHDU(reduced, header)]),
        "REDUCED_SCIENCE",
        history,
        qc,
        main=True,
    )
    # a product that is not FITS: write it into OUTDIR, then record it
    stats = call.out / f"{stem}_sky.txt"
    stats.write_text(f"sky_median_adu {sky:.3f}\nsky_noise_adu {noise:.3f}\n")
    call.add_product(stats.name, "SKY_STATISTICS", "text/plain", auxiliary=True)
