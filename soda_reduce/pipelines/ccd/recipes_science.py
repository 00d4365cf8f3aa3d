"""``ccd.science``: one raw frame to electrons, with its uncertainty and bad-pixel mask.

    reduced = (raw - bias - dark_rate * t) * gain / flat              [electron]
    sigma^2 = [(raw - bias) * gain + RN^2 + gain^2 (s_bias^2 + t^2 s_dark^2)] / flat^2
              + reduced^2 (s_flat / flat)^2

The Poisson term is the charge collected (sky, stars and dark current), the
calibration terms are the masters' own standard errors: ccdproc and astropy's
NDData arithmetic propagate them through each step. The raw frame's WCS and
header are kept, so the product can be stacked and catalogued.
"""

from __future__ import annotations

import logging

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.nddata import CCDData, StdDevUncertainty
from astropy.stats import sigma_clipped_stats

from soda_reduce.pipelines.ccd.recipes_io import (
    LAYOUT,
    MASK_BITS,
    History,
    header_float,
    read_product,
    read_raw,
    same_shape,
    write_image,
)
from soda_reduce.recipe.contract import (
    RecipeCall,
    RecipeFailure,
    RecipeUsageError,
)
from soda_reduce.recipe.products import safe_name

log = logging.getLogger("soda_reduce.recipe")

SOURCE_SIGMA = 5.0  # pixels this far above the sky in a 3x3 median are sources: not searched
RAW_SUFFIXES = (".fits.gz", ".fit.gz", ".fts.gz", ".fits.fz", ".fz", ".fits", ".fit", ".fts")


def science(call: RecipeCall) -> None:
    import ccdproc

    history = History()
    raw_input = call.one("SCIENCE")
    frame = read_raw(raw_input.path)
    bias = read_product(call.one("MASTER_BIAS").path)
    flat = read_product(call.one("MASTER_FLAT").path)
    dark_input = call.maybe("MASTER_DARK")
    dark = read_product(dark_input.path) if dark_input else None
    for name, cal in (("MASTER_BIAS", bias), ("MASTER_FLAT", flat), ("MASTER_DARK", dark)):
        if cal is not None:
            same_shape(name, frame.data, cal.data)
    ny, nx = frame.data.shape
    t = frame.exptime
    log.info("read SCIENCE %s: %dx%d pixels, %s s", frame.path.name, nx, ny, t)
    if dark is not None and (t is None or t < 0):
        raise RecipeUsageError(f"SCIENCE {frame.path.name} has no exposure time to scale the dark")
    gain = frame.gain
    if not gain or gain <= 0:
        log.warning("no GAIN in the header of %s: assuming 1 e-/ADU", frame.path.name)
        gain = 1.0
    read_noise = noise_in_electrons(frame.read_noise, bias.header, gain)

    saturated = frame.data >= frame.saturate if frame.saturate else np.zeros((ny, nx), bool)
    data = CCDData(frame.data, unit="adu")
    data = ccdproc.subtract_bias(data, bias.ccd("adu"), add_keyword=False)
    history("subtracted MASTER_BIAS (median %.2f ADU)", np.median(bias.data))
    # Noise of what the detector collected, now that the bias is gone, plus the bias's own.
    collected = np.clip(data.data, 0.0, None) * gain
    variance = (collected + read_noise**2) / gain**2 + data.uncertainty.array**2
    data.uncertainty = StdDevUncertainty(np.sqrt(variance))
    history("uncertainty: Poisson of the collected charge + read noise %.2f e-", read_noise)
    if dark is not None:
        assert t is not None
        data = ccdproc.subtract_dark(
            data,
            dark.ccd("adu"),  # the counts of 1 s: the master dark is a rate
            dark_exposure=1.0 * u.s,
            data_exposure=t * u.s,
            scale=True,
            add_keyword=False,
        )
        history("subtracted MASTER_DARK x %.1f s (median %.2f ADU)", t, np.median(dark.data) * t)
    data = ccdproc.gain_correct(data, gain * u.electron / u.adu, add_keyword=False)
    history("converted to electrons with GAIN %.4g e-/ADU", gain)
    bad_flat = ~np.isfinite(flat.data) | (flat.data <= 0)
    flat_ccd = flat.ccd(u.dimensionless_unscaled)
    flat_ccd.mask = bad_flat
    data = ccdproc.flat_correct(data, flat_ccd, norm_value=1.0, add_keyword=False)
    history(
        "divided by MASTER_FLAT (%s = 1, %d non-positive pixels masked)",
        flat.header.get("FLATNORM", "median"),
        int(bad_flat.sum()),
    )

    cosmic = np.zeros((ny, nx), bool)
    if call.params["cosmic_rays"]:
        sigma = call.params["cr_sigma"]
        cosmic = clean_cosmic_rays(data, saturated | bad_flat, read_noise, sigma)
        history(
            "L.A.Cosmic (astroscrappy) at %.1f sigma outside sources: %d pixels cleaned, masked",
            call.params["cr_sigma"],
            int(cosmic.sum()),
        )
    mask = (
        saturated * MASK_BITS["SATURATED"]
        + cosmic * MASK_BITS["COSMIC"]
        + bad_flat * MASK_BITS["BADFLAT"]
    ).astype(np.uint8)
    if dark is not None:
        mask |= dark.mask & MASK_BITS["HOT"]
    values = np.asarray(data.data, dtype=np.float64)
    error = np.asarray(data.uncertainty.array, dtype=np.float64)
    mask[~np.isfinite(values) | ~np.isfinite(error)] |= MASK_BITS["BADFLAT"]
    good = mask == 0
    if not good.any():
        raise RecipeFailure("every pixel is masked")
    sky, _, noise = sigma_clipped_stats(values[good], sigma=3.0, maxiters=5)
    qc: dict[str, float | int] = {
        "SKY_MEDIAN": float(sky),
        "SKY_NOISE": float(noise),
        "SKY_ERROR": float(np.median(error[good])),
        "NCOSMIC": int(cosmic.sum()),
        "NSATURATED": int(saturated.sum()),
        "MASKED_FRACTION": float(1.0 - good.mean()),
    }
    history(
        "sky %.1f e-, noise %.2f e- (expected %.2f); %d saturated, %.2f%% masked",
        sky,
        noise,
        qc["SKY_ERROR"],
        int(saturated.sum()),
        100 * qc["MASKED_FRACTION"],
    )

    header = frame.header.copy()
    for key in ("SATURATE", "SATLEVEL", *LAYOUT):
        header.remove(key, ignore_missing=True, remove_all=True)
    header["GAIN"] = (1.0, f"[e-/ADU] data are electrons (raw gain {gain:.4g})")
    header["RDNOISE"] = (read_noise, "[e-] readout noise")
    name = f"{raw_stem(frame.path.name)}_reduced.fits"
    write_image(
        call,
        name,
        "REDUCED_SCIENCE",
        values,
        header,
        "electron",
        uncertainty=error,
        mask=mask,
        history=history.lines,
        qc=qc,
    )


def noise_in_electrons(header_value: float | None, bias_header: fits.Header, gain: float) -> float:
    """RDNOISE of the raw frame, else the read noise measured by the master bias."""
    if header_value is not None and header_value > 0:
        return header_value
    measured = header_float(bias_header, "QC READ_NOISE_ADU")
    if measured:
        log.info("no RDNOISE in the header: using MASTER_BIAS's %.3f ADU", measured)
        return measured * gain
    raise RecipeUsageError("no RDNOISE in the header and no read noise measured in MASTER_BIAS")


def clean_cosmic_rays(
    data: CCDData, known_bad: np.ndarray, read_noise: float, sigma: float
) -> np.ndarray:
    """Replace cosmic-ray pixels in ``data`` (electrons) in place; return where they were.

    L.A.Cosmic seeds false detections in the wings of bright stars, where its
    fine-structure image passes through zero, and grows them into the core.
    Sources are therefore kept out of the search: pixels whose 3x3 median
    stands 5 sigma above the sky (a cosmic-ray track of 1-4 pixels never
    survives a 3x3 median; a star does), grown by one pixel. The true median
    (``sepmed=False``) is used rather than the separable approximation.
    Measured on the demo data (9 frames): 31 of 38 true hits found, false
    detections down from 107 to 19 pixels; a ray on a star is not looked for.
    """
    import ccdproc
    from scipy.ndimage import binary_dilation, median_filter

    finite = np.isfinite(data.data)
    skip = known_bad | ~finite
    values = np.where(finite, data.data, 0.0)
    sky, _, noise = sigma_clipped_stats(values[~skip], sigma=3.0, maxiters=5)
    sources = binary_dilation(median_filter(values, size=3) > sky + SOURCE_SIGMA * noise)
    work = CCDData(values, unit="electron", mask=skip | sources)
    cleaned = ccdproc.cosmicray_lacosmic(
        work,
        sigclip=sigma,
        gain=1.0,
        readnoise=read_noise,
        satlevel=np.inf,  # saturated pixels are already in the mask
        sepmed=False,
        gain_apply=False,
    )
    cosmic = np.asarray(cleaned.mask, bool) & ~(skip | sources)
    data.data[cosmic] = cleaned.data[cosmic]
    return cosmic


def raw_stem(name: str) -> str:
    lowered = name.lower()
    for suffix in RAW_SUFFIXES:
        if lowered.endswith(suffix):
            return safe_name(name[: -len(suffix)])
    return safe_name(name)
