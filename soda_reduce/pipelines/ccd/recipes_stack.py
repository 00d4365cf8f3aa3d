"""``ccd.stack``: reduced frames of one field resampled onto the first frame's WCS and co-added.

Resampling is bilinear, through ``reproject`` when it is installed and
otherwise through astropy.wcs pixel <-> world transforms and
scipy.ndimage.map_coordinates (the same result, a little slower). Frames are
scaled to the first frame's exposure time and pixel area, so the stack is in
electrons per pixel of that exposure. Rejection is against each frame's own
uncertainty around the per-pixel median (a scatter-based clip is meaningless
with the 2 to 5 frames of a typical group). Masked input pixels, and output
pixels a frame does not cover, take no part; a pixel nothing covers is masked.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from collections.abc import Sequence

import numpy as np
from astropy.io import fits
from astropy.stats import sigma_clipped_stats
from astropy.wcs import WCS, FITSFixedWarning
from astropy.wcs.utils import proj_plane_pixel_area

from soda_reduce.pipelines.ccd.recipes_io import (
    MASK_BITS,
    MEDIAN_EFFICIENCY,
    Calibration,
    History,
    exposure_time,
    read_product,
    write_image,
)
from soda_reduce.recipe.contract import RecipeCall, RecipeUsageError
from soda_reduce.recipe.products import safe_name

log = logging.getLogger("soda_reduce.recipe")


def celestial_wcs(frame: Calibration) -> WCS:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(frame.header).celestial
    if not wcs.has_celestial or wcs.naxis != 2:
        raise RecipeUsageError(f"{frame.path.name} has no celestial WCS: it cannot be aligned")
    return wcs


def have_reproject() -> bool:
    return importlib.util.find_spec("reproject") is not None


def resample(
    data: np.ndarray,
    wcs_in: WCS,
    wcs_out: WCS,
    shape_out: tuple[int, int],
    use_reproject: bool | None = None,
) -> np.ndarray:
    """Bilinear resampling of ``data`` onto the ``wcs_out`` grid; NaN where it has no data."""
    if use_reproject is None:
        use_reproject = have_reproject()
    if use_reproject:
        from reproject import reproject_interp

        out, footprint = reproject_interp(
            (data, wcs_in), wcs_out, shape_out=shape_out, order="bilinear"
        )
        out[footprint == 0] = np.nan
        return out
    from scipy.ndimage import map_coordinates

    yy, xx = np.mgrid[0 : shape_out[0], 0 : shape_out[1]]
    world = wcs_out.pixel_to_world_values(xx.astype(float), yy.astype(float))
    x_in, y_in = wcs_in.world_to_pixel_values(*world)
    return map_coordinates(data, [y_in, x_in], order=1, mode="constant", cval=np.nan)


def align(
    frame: Calibration,
    wcs_in: WCS,
    wcs_out: WCS,
    shape: tuple[int, int],
    scale: float,
    use_reproject: bool | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Data and standard deviation of one frame on the output grid, NaN where unusable."""
    bad = (frame.mask != 0) | ~np.isfinite(frame.data) | ~np.isfinite(frame.uncertainty)
    data = resample(np.where(bad, 0.0, frame.data), wcs_in, wcs_out, shape, use_reproject)
    var = resample(np.where(bad, 0.0, frame.uncertainty**2), wcs_in, wcs_out, shape, use_reproject)
    touched = resample(bad.astype(float), wcs_in, wcs_out, shape, use_reproject)
    unusable = ~np.isfinite(data) | ~(touched < 1e-6)
    data[unusable] = np.nan
    var[unusable] = np.nan
    return data * scale, np.sqrt(np.clip(var, 0.0, None)) * scale


def co_add(
    cube: np.ndarray, errors: np.ndarray, method: str, sigma: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Combine aligned frames (NaN = no data): (image, standard deviation, frames used)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels
        centre = np.nanmedian(cube, axis=0)
        keep = np.abs(cube - centre) <= sigma * errors
        # With two frames both sit equally far from their median: never reject everything.
        nothing_kept = ~keep.any(axis=0) & np.isfinite(cube).any(axis=0)
        keep |= nothing_kept & np.isfinite(cube)
        kept = np.where(keep, cube, np.nan)
        used = keep.sum(axis=0)
        sum_var = np.nansum(np.where(keep, errors**2, 0.0), axis=0)
        n = np.maximum(used, 1)
        if method == "median":
            image = np.nanmedian(kept, axis=0)
            error = np.sqrt(sum_var) / n * np.where(used > 2, MEDIAN_EFFICIENCY, 1.0)
        else:
            image = np.nanmean(kept, axis=0)
            error = np.sqrt(sum_var) / n
    image[used == 0] = np.nan
    error[used == 0] = np.nan
    return image, error, used


def stack(call: RecipeCall, use_reproject: bool | None = None) -> None:
    history = History()
    frames = [read_product(item.path) for item in call.of("REDUCED_SCIENCE")]
    reference = frames[0]
    wcs_out = celestial_wcs(reference)
    shape = reference.data.shape
    t_ref = exposure_time(reference.header)
    area_ref = proj_plane_pixel_area(wcs_out)
    if use_reproject is None:
        use_reproject = have_reproject()
    engine = "reproject" if use_reproject else "scipy map_coordinates"
    history(
        "aligning %d REDUCED_SCIENCE frames on the WCS of %s (%dx%d), bilinear (%s)",
        len(frames),
        reference.path.name,
        shape[1],
        shape[0],
        engine,
    )
    cube, errors = [], []
    for frame in frames:
        wcs_in = celestial_wcs(frame)
        t = exposure_time(frame.header)
        scale = area_ref / proj_plane_pixel_area(wcs_in)
        if t_ref and t:
            scale *= t_ref / t
        data, error = align(frame, wcs_in, wcs_out, shape, scale, use_reproject)
        cover = float(np.isfinite(data).mean())
        log.info(
            "  %s: scale %.4f, %.1f%% of the grid covered", frame.path.name, scale, 100 * cover
        )
        cube.append(data)
        errors.append(error)
    method, sigma = call.params["combine"], call.params["sigma_clip"]
    image, error, used = co_add(np.array(cube), np.array(errors), method, sigma)
    history("co-added: %s, rejected beyond %.1f sigma of the median", method, sigma)
    mask = np.where(used == 0, MASK_BITS["NODATA"], 0).astype(np.uint8)
    good = mask == 0
    sky, _, noise = sigma_clipped_stats(image[good], sigma=3.0, maxiters=5)
    qc: dict[str, float | int] = {
        "NFRAMES": len(frames),
        "DEPTH": float(np.median(used[good])) if good.any() else 0.0,
        "DEPTH_MAX": int(used.max()),
        "EXPTIME_TOTAL": float(sum(exposure_time(f.header) or 0.0 for f in frames)),
        "SKY_MEDIAN": float(sky),
        "SKY_NOISE": float(noise),
        "NO_DATA_FRACTION": float(1.0 - good.mean()),
    }
    history(
        "depth %.1f frames (median per pixel), sky %.1f e-, noise %.2f e-",
        qc["DEPTH"],
        sky,
        noise,
    )
    header = reference.header.copy()
    header["NCOMBINE"] = (len(frames), "frames stacked")
    header["TEXPTIME"] = (qc["EXPTIME_TOTAL"], "[s] total exposure time of the frames")
    coverage = fits.ImageHDU(used.astype(np.int16), name="COVERAGE")
    coverage.header["COMMENT"] = "number of frames combined in each pixel"
    target = reference.header.get("OBJECT", "field")
    name = safe_name(f"{target}_{reference.header.get('FILTER', '')}")
    write_image(
        call,
        f"{name}_stack.fits",
        "STACKED_SCIENCE",
        np.nan_to_num(image),
        header,
        "electron",
        uncertainty=np.nan_to_num(error),
        mask=mask,
        history=history.lines,
        qc=qc,
        extra_hdus=[coverage],
    )


__all__: Sequence[str] = ("align", "co_add", "resample", "stack")
