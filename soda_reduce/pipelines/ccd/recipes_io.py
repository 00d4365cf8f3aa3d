"""Reading raw frames and calibration products, combining frames, writing images.

Raw frames follow the header conventions of docs/pipelines/ccd.md: exposure
time in EXPTIME, EXPOSURE or EXPOSURE_TIME; unsigned 16-bit data through BZERO;
plain, gzipped (``.fits.gz``) or tile-compressed (``.fz``, image in extension 1).
Products are CCDData images with 'UNCERT' (standard deviation) and 'MASK'
extensions, so every later step can propagate the errors of the earlier ones.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.nddata import CCDData, StdDevUncertainty
from astropy.stats import mad_std, sigma_clipped_stats

from soda_reduce.recipe.contract import RecipeCall, RecipeFailure, RecipeUsageError
from soda_reduce.recipe.products import write_fits

log = logging.getLogger("soda_reduce.recipe")

EXPOSURE_KEYS = ("EXPTIME", "EXPOSURE", "EXPOSURE_TIME")
# Keywords of the data layout (rewritten by astropy) and of one raw exposure only.
LAYOUT = {"SIMPLE", "XTENSION", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "EXTEND"}
LAYOUT |= {"BZERO", "BSCALE", "PCOUNT", "GCOUNT", "BUNIT", "CHECKSUM", "DATASUM", "EXTNAME"}
LAYOUT |= {"ZIMAGE", "ZBITPIX", "ZNAXIS", "ZNAXIS1", "ZNAXIS2", "ZTILE1", "ZTILE2", "ZCMPTYPE"}
MEDIAN_EFFICIENCY = 1.2533  # sqrt(pi/2): a median is noisier than a mean of the same frames
MASK_BITS = {"SATURATED": 1, "COSMIC": 2, "BADFLAT": 4, "HOT": 8, "NODATA": 16}
MEM_LIMIT = 512e6  # bytes: ccdproc.combine works in tiles above this


@dataclass
class Frame:
    """A raw frame in ADU (float64) with its merged header."""

    data: np.ndarray
    header: fits.Header
    path: Path
    saturate: float | None

    @property
    def exptime(self) -> float | None:
        return exposure_time(self.header)

    @property
    def gain(self) -> float | None:
        return header_float(self.header, "GAIN", "EGAIN")

    @property
    def read_noise(self) -> float | None:
        return header_float(self.header, "RDNOISE", "READNOIS", "RON")


@dataclass
class Calibration:
    """A master calibration (or reduced frame): data, standard deviation, mask, header."""

    data: np.ndarray
    uncertainty: np.ndarray
    mask: np.ndarray  # uint8 bits, MASK_BITS
    header: fits.Header
    path: Path

    def ccd(self, unit: str | u.Unit) -> CCDData:
        return CCDData(
            self.data,
            unit=unit,
            uncertainty=StdDevUncertainty(self.uncertainty),
            meta=self.header,
        )


def exposure_time(header: fits.Header) -> float | None:
    return header_float(header, *EXPOSURE_KEYS)


def header_float(header: fits.Header, *keys: str) -> float | None:
    for key in keys:
        value = header.get(key)
        if value is None or isinstance(value, bool):
            continue
        try:
            return float(value)
        except (TypeError, ValueError):
            continue
    return None


def read_raw(path: Path) -> Frame:
    """The first image HDU with data, in ADU, with the primary header merged underneath."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", fits.verify.VerifyWarning)
            with fits.open(path, memmap=False) as hdul:
                image = next(
                    (h for h in hdul if h.is_image and h.data is not None and h.data.ndim == 2),
                    None,
                )
                if image is None:
                    raise RecipeUsageError(f"{path.name}: no 2-D image in any HDU")
                unsigned = image.data.dtype == np.uint16  # BITPIX=16 with BZERO=32768
                data = np.asarray(image.data, dtype=np.float64)
                header = fits.Header()
                if image is not hdul[0]:
                    header.extend(_clean(hdul[0].header), update=True)
                header.extend(_clean(image.header), update=True)
    except RecipeUsageError:
        raise
    except (OSError, ValueError, TypeError, IndexError) as exc:
        raise RecipeUsageError(f"{path.name}: not a readable FITS image ({exc})") from None
    saturate = header_float(header, "SATURATE", "SATLEVEL")
    if saturate is None and unsigned:
        saturate = 65535.0
    return Frame(data, header, path, saturate)


def read_product(path: Path) -> Calibration:
    """A product of an earlier step: primary image plus optional 'UNCERT' and 'MASK'."""
    try:
        with fits.open(path, memmap=False) as hdul:
            data = np.asarray(hdul[0].data, dtype=np.float64)
            if data.ndim != 2:
                raise RecipeUsageError(f"{path.name}: primary HDU is not a 2-D image")
            names = [h.name for h in hdul]
            uncert = (
                np.asarray(hdul["UNCERT"].data, dtype=np.float64)
                if "UNCERT" in names
                else np.zeros_like(data)
            )
            mask = (
                np.asarray(hdul["MASK"].data, dtype=np.uint8)
                if "MASK" in names
                else np.zeros(data.shape, np.uint8)
            )
            header = hdul[0].header.copy()
    except RecipeUsageError:
        raise
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise RecipeUsageError(f"{path.name}: not a readable product ({exc})") from None
    return Calibration(data, uncert, mask, header, path)


def _clean(header: fits.Header) -> fits.Header:
    """A header without layout keywords, safe to copy into a product."""
    out = fits.Header()
    for card in header.cards:
        if card.keyword not in LAYOUT:
            out.append(card)
    return out


def product_header(base: fits.Header, category: str) -> fits.Header:
    """The header of a master made from raw frames like ``base``: the setup, not the exposure."""
    header = _clean(base)
    for key in (*EXPOSURE_KEYS, "IMAGETYP", "DATE-OBS", "MJD-OBS", "TIME-OBS", "UT", "OBJECT"):
        header.remove(key, ignore_missing=True, remove_all=True)
    header["IMAGETYP"] = (category, "a product, not a raw frame")
    header["DATE-OBS"] = (base.get("DATE-OBS", ""), "[UTC] start of the first input")
    if "MJD-OBS" in base:
        header["MJD-OBS"] = (base["MJD-OBS"], "[d] start of the first input")
    return header


def same_shape(what: str, reference: np.ndarray, other: np.ndarray) -> None:
    if reference.shape != other.shape:
        raise RecipeUsageError(
            f"{what} is {other.shape[1]}x{other.shape[0]} pixels, the frame is "
            f"{reference.shape[1]}x{reference.shape[0]} (different binning or camera?)"
        )


def combine(
    arrays: Sequence[np.ndarray], method: str, sigma: float
) -> tuple[np.ndarray, np.ndarray]:
    """Sigma-clipped combination (ccdproc.combine) and the standard error of each pixel.

    Clipping is around the median with the MAD-based deviation, which works for
    the 3 to 10 frames of a calibration set where a standard deviation is
    dragged by the very outlier it should reject. The error is the scatter of
    the kept values / sqrt(n), times sqrt(pi/2) for a median.
    """
    import ccdproc

    if not arrays:
        raise RecipeFailure("nothing to combine")
    ccds = [CCDData(np.asarray(a, dtype=np.float64), unit="adu") for a in arrays]
    if len(ccds) == 1:  # no scatter to measure: the frame's own noise, an upper bound
        single = ccds[0].data.copy()
        return single, np.full(single.shape, robust_std(single - np.median(single)))
    factor = MEDIAN_EFFICIENCY if method == "median" else 1.0

    def error_func(data: np.ma.MaskedArray, axis: int = 0) -> np.ndarray:
        return np.ma.std(data, axis=axis, ddof=1).filled(np.nan) * factor

    combined = ccdproc.combine(
        ccds,
        method=method,
        sigma_clip=True,
        sigma_clip_low_thresh=sigma,
        sigma_clip_high_thresh=sigma,
        sigma_clip_func=np.ma.median,
        sigma_clip_dev_func=mad_std,
        combine_uncertainty_function=error_func,
        mem_limit=MEM_LIMIT,
        dtype=np.float64,
    )
    data = np.asarray(combined.data, dtype=np.float64)
    error = np.asarray(combined.uncertainty.array, dtype=np.float64)
    bad = ~np.isfinite(error) | (error <= 0)
    if bad.any():  # a pixel left with one value: use the typical error
        error[bad] = np.nanmedian(error[~bad]) if (~bad).any() else np.nan
    return data, error


def robust_std(values: np.ndarray) -> float:
    finite = np.asarray(values)[np.isfinite(values)]
    return float(mad_std(finite)) if finite.size else float("nan")


def read_noise_adu(a: np.ndarray, b: np.ndarray) -> float:
    """Read noise from two frames of the same kind: the fixed pattern cancels in a - b.

    A clipped standard deviation, not the MAD: differences of integer ADU are
    discrete, and the MAD of a discrete distribution is biased low.
    """
    _, _, std = sigma_clipped_stats(a - b, sigma=5.0, maxiters=3)
    return float(std) / np.sqrt(2.0)


def write_image(
    call: RecipeCall,
    filename: str,
    category: str,
    data: np.ndarray,
    header: fits.Header,
    unit: str,
    *,
    uncertainty: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    history: Sequence[str] = (),
    qc: dict[str, float | int] | None = None,
    extra_hdus: Sequence[fits.ImageHDU] = (),
    main: bool = True,
) -> None:
    """A CCDData product: float32 image, 'UNCERT' and 'MASK' extensions, provenance header."""
    ccd = CCDData(
        data.astype(np.float32),
        unit=unit,
        meta=header,
        uncertainty=None
        if uncertainty is None
        else StdDevUncertainty(uncertainty.astype(np.float32)),
        mask=None if mask is None else mask != 0,
    )
    hdul = ccd.to_hdu(hdu_mask="MASK", hdu_uncertainty="UNCERT")
    if mask is not None:
        hdul["MASK"].data = mask.astype(np.uint8)  # CCDData keeps a boolean mask: keep the bits
        bits = ", ".join(f"{v}={k.lower()}" for k, v in MASK_BITS.items())
        hdul["MASK"].header["COMMENT"] = f"bad pixel bits: {bits}"
    for hdu in extra_hdus:
        hdul.append(hdu)
    write_fits(call, filename, hdul, category, history, qc, main=main)
    log.info("wrote %s (%s, %dx%d)", filename, category, data.shape[1], data.shape[0])


class History:
    """Processing stages: each is logged now and becomes a HISTORY line of the product."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, message: str, *args: object) -> None:
        text = message % args if args else message
        log.info("%s", text)
        self.lines.append(text)
