"""Master calibrations of the ``ccd`` pipeline: bias, dark (a rate), flat (normalised).

Each master carries its standard error per pixel in 'UNCERT' (the scatter of
the combined frames / sqrt(n), plus the error of the calibrations it was
corrected with), so that the science recipe's uncertainty is honest about the
calibrations and not only about the science frame's own noise.
"""

from __future__ import annotations

import logging

import numpy as np

from soda_reduce.pipelines.ccd.recipes_io import (
    MASK_BITS,
    Calibration,
    Frame,
    History,
    combine,
    product_header,
    read_noise_adu,
    read_product,
    read_raw,
    robust_std,
    same_shape,
    write_image,
)
from soda_reduce.recipe.contract import (
    RecipeCall,
    RecipeFailure,
    RecipeUsageError,
)

log = logging.getLogger("soda_reduce.recipe")

HOT_SIGMA = 5.0  # a pixel is hot when its dark rate is this many sigma above the median


def read_frames_and_bias(call: RecipeCall, category: str) -> tuple[list[Frame], Calibration]:
    """The raw frames of ``category`` and the master bias they are corrected with."""
    frames = read_frames(call, category)
    bias = read_product(call.one("MASTER_BIAS").path)
    same_shape("MASTER_BIAS", frames[0].data, bias.data)
    return frames, bias


def read_frames(call: RecipeCall, category: str) -> list[Frame]:
    frames = [read_raw(item.path) for item in call.of(category)]
    for frame in frames[1:]:
        same_shape(f"{category} {frame.path.name}", frames[0].data, frame.data)
    ny, nx = frames[0].data.shape
    log.info("read %d %s frame(s) of %dx%d pixels", len(frames), category, nx, ny)
    return frames


def master_bias(call: RecipeCall) -> None:
    history = History()
    frames = read_frames(call, "BIAS")
    method, sigma = call.params["combine"], call.params["sigma_clip"]
    data, error = combine([f.data for f in frames], method, sigma)
    history("combined %d BIAS frames: %s, clipped at %.1f sigma", len(frames), method, sigma)
    qc: dict[str, float | int] = {
        "NFRAMES": len(frames),
        "BIAS_LEVEL": float(np.median(data)),
        "BIAS_ERROR": float(np.median(error)),
    }
    gain = frames[0].gain
    if len(frames) >= 2:
        noise = read_noise_adu(frames[0].data, frames[1].data)
        qc["READ_NOISE_ADU"] = noise
        if gain:
            qc["READ_NOISE_E"] = noise * gain
        history(
            "read noise from (frame 1 - frame 2) / sqrt 2: %.3f ADU%s",
            noise,
            f" = {noise * gain:.3f} e- at gain {gain}" if gain else "",
        )
    history("bias level (median) %.3f ADU", qc["BIAS_LEVEL"])
    header = product_header(frames[0].header, "MASTER_BIAS")
    header["EXPTIME"] = (0.0, "[s] a bias")
    header["NCOMBINE"] = (len(frames), "frames combined")
    write_image(
        call,
        "master_bias.fits",
        "MASTER_BIAS",
        data,
        header,
        "adu",
        uncertainty=error,
        history=history.lines,
        qc=qc,
    )


def master_dark(call: RecipeCall) -> None:
    history = History()
    frames, bias = read_frames_and_bias(call, "DARK")
    rates = []
    for frame in frames:
        t = frame.exptime
        if t is None or t <= 0:
            raise RecipeUsageError(f"DARK {frame.path.name} has no positive exposure time")
        rates.append((frame.data - bias.data) / t)
    times = [f.exptime or 0.0 for f in frames]
    history(
        "subtracted MASTER_BIAS (level %.2f ADU), divided by exposure time", np.median(bias.data)
    )
    method, sigma = call.params["combine"], call.params["sigma_clip"]
    data, error = combine(rates, method, sigma)
    # The master bias error is in every frame alike: combining does not reduce it.
    mean_t = float(np.mean(times))
    error = np.hypot(error, bias.uncertainty / mean_t)
    history(
        "combined %d DARK rates (%.1f-%.1f s): %s, clipped at %.1f sigma",
        len(frames),
        min(times),
        max(times),
        method,
        sigma,
    )
    level = float(np.median(data))
    spread = robust_std(data)
    hot = data > level + HOT_SIGMA * spread
    mask = np.where(hot, MASK_BITS["HOT"], 0).astype(np.uint8)
    gain = frames[0].gain
    qc: dict[str, float | int] = {
        "NFRAMES": len(frames),
        "DARK_RATE": level,
        "HOT_PIXELS": int(hot.sum()),
        "EXPTIME_MEAN": mean_t,
    }
    if gain:
        qc["DARK_RATE_E"] = level * gain
    history(
        "dark rate (median) %.5f ADU/s; %d hot pixels above %.4f ADU/s (%.0f sigma)",
        level,
        int(hot.sum()),
        level + HOT_SIGMA * spread,
        HOT_SIGMA,
    )
    header = product_header(frames[0].header, "MASTER_DARK")
    header["EXPTIME"] = (1.0, "[s] data are a rate: ADU per second")
    header["DARKRATE"] = (True, "data are ADU/s: scale by the exposure time")
    header["DARKTIME"] = (mean_t, "[s] mean exposure time of the input darks")
    header["NCOMBINE"] = (len(frames), "frames combined")
    write_image(
        call,
        "master_dark.fits",
        "MASTER_DARK",
        data,
        header,
        "adu / s",
        uncertainty=error,
        mask=mask,
        history=history.lines,
        qc=qc,
    )


def master_flat(call: RecipeCall) -> None:
    history = History()
    frames, bias = read_frames_and_bias(call, "FLAT")
    dark_input = call.maybe("MASTER_DARK")
    dark = read_product(dark_input.path) if dark_input else None
    if dark is not None:
        same_shape("MASTER_DARK", frames[0].data, dark.data)
    statistic = np.median if call.params["normalise"] == "median" else np.mean
    normalised, levels = [], []
    for frame in frames:
        counts = frame.data - bias.data
        if dark is not None:
            t = frame.exptime
            if t is None or t < 0:
                raise RecipeUsageError(f"FLAT {frame.path.name} has no exposure time")
            counts = counts - dark.data * t
        level = float(statistic(counts[np.isfinite(counts)]))
        if not level > 0:
            raise RecipeFailure(f"FLAT {frame.path.name} has level {level:.1f} ADU: not a flat")
        levels.append(level)
        normalised.append(counts / level)
    history(
        "subtracted MASTER_BIAS%s; each flat divided by its %s (%.1f-%.1f ADU)",
        " and MASTER_DARK scaled to each exposure time" if dark is not None else "",
        call.params["normalise"],
        min(levels),
        max(levels),
    )
    method, sigma = call.params["combine"], call.params["sigma_clip"]
    data, error = combine(normalised, method, sigma)
    mean_level = float(np.mean(levels))
    error = np.hypot(error, bias.uncertainty / mean_level)
    good = np.isfinite(data) & (data > 0)
    final = float(statistic(data[good]))
    data, error = data / final, error / final
    history(
        "combined %d FLAT frames: %s, clipped at %.1f sigma; scaled so that its %s is 1",
        len(frames),
        method,
        sigma,
        call.params["normalise"],
    )
    mask = np.where(good, 0, MASK_BITS["BADFLAT"]).astype(np.uint8)
    qc: dict[str, float | int] = {
        "NFRAMES": len(frames),
        "FLAT_LEVEL": float(np.median(levels)),
        "FLAT_MIN": float(data[good].min()),
        "FLAT_MAX": float(data[good].max()),
        "FLAT_ERROR": float(np.median(error[good])),
        "VIGNETTING": vignetting(data),
        "BAD_PIXELS": int((~good).sum()),
    }
    history(
        "flat range %.4f-%.4f, corner/centre %.4f, %d non-positive pixels",
        qc["FLAT_MIN"],
        qc["FLAT_MAX"],
        qc["VIGNETTING"],
        qc["BAD_PIXELS"],
    )
    header = product_header(frames[0].header, "MASTER_FLAT")
    header["NCOMBINE"] = (len(frames), "frames combined")
    header["FLATNORM"] = (call.params["normalise"], "statistic scaled to 1")
    write_image(
        call,
        "master_flat.fits",
        "MASTER_FLAT",
        data,
        header,
        "",
        uncertainty=error,
        mask=mask,
        history=history.lines,
        qc=qc,
    )


def vignetting(flat: np.ndarray) -> float:
    """Median of the four corner boxes over the median of the central box (1/8 of a side)."""
    ny, nx = flat.shape
    by, bx = max(1, ny // 8), max(1, nx // 8)
    cy, cx = ny // 2, nx // 2
    centre = flat[cy - by // 2 : cy + by // 2 + 1, cx - bx // 2 : cx + bx // 2 + 1]
    corners = [flat[:by, :bx], flat[:by, -bx:], flat[-by:, :bx], flat[-by:, -bx:]]
    corner = np.mean([np.nanmedian(c) for c in corners])
    return float(corner / np.nanmedian(centre))
