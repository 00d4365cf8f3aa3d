"""FITS products with provenance in their headers, and their PNG previews.

Shared by every recipe, ours or wrapped: a product file must say by itself
what made it (software, recipe, version, step key, every input, parameters,
QC), because files travel without their manifest (a download, a VO client).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from soda_reduce import __version__
from soda_reduce.recipe.contract import Product, RecipeCall

FITS_TYPE = "application/fits"
PNG_TYPE = "image/png"
PREVIEW = "PREVIEW"
PREVIEW_MAX_PX = 1024
MAX_PROV = 999  # PROVC999 is the longest standard 8-character keyword

try:  # astropy logs warnings itself as well: keep one channel, the recipe's log
    from astropy import log as _astropy_log

    _astropy_log.disable_warnings_logging()
except Exception:  # someone else owns warnings.showwarning: leave it to them
    pass

_OWN = re.compile(r"(PROVC?\d+|NPROV|PROCSOFT|RECIPEV?|STEPKEY|PROCATG)\Z")
_OWN_HIERARCH = ("QC ", "PARAM ")


def clear_provenance(header: fits.Header) -> None:
    """Remove provenance, QC and HISTORY copied from an input's header (they describe it)."""
    for key in list(header.keys()):
        if _OWN.match(key) or key.startswith(_OWN_HIERARCH):
            del header[key]
    header.remove("HISTORY", ignore_missing=True, remove_all=True)


def stamp(
    header: fits.Header,
    call: RecipeCall,
    category: str,
    history: Iterable[str] = (),
    qc: Mapping[str, Any] | None = None,
) -> None:
    """Write the provenance keywords of docs/recipes.md into ``header``."""
    clear_provenance(header)
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    _set(header, "PROCSOFT", f"soda-reduce {__version__}", "software that made this file")
    _set(header, "RECIPE", call.recipe.name, "recipe that made this file")
    _set(header, "RECIPEV", call.recipe.version, "recipe version")
    _set(header, "STEPKEY", call.step_key or "none", "step key (sha256)")
    _set(header, "PROCATG", category, "product category")
    _set(header, "DATE", now, "[UTC] processing time")
    _set(header, "NPROV", len(call.inputs), "number of inputs (PROVn, PROVCn)")
    for n, item in enumerate(call.inputs[:MAX_PROV], start=1):
        _set(header, f"PROV{n}", item.ref, f"input {n} ({item.role})")
        _set(header, f"PROVC{n}", item.category, f"category of input {n}")
    for name, value in sorted(call.params.items()):
        header[f"HIERARCH PARAM {name.upper()}"] = value
    for name, value in (qc or {}).items():
        number = float(value)
        if np.isfinite(number):
            header[f"HIERARCH QC {name}"] = value if isinstance(value, int) else number
    for line in history:
        header.add_history(line)


def _set(header: fits.Header, key: str, value: Any, comment: str) -> None:
    """Set a card, dropping the comment when it would not fit (astropy warns otherwise)."""
    shown = len(repr(value)) if isinstance(value, str) else 20
    header[key] = (value, comment) if 11 + max(shown, 20) + 3 + len(comment) <= 80 else value


def write_fits(
    call: RecipeCall,
    filename: str,
    hdul: fits.HDUList,
    category: str,
    history: Sequence[str] = (),
    qc: Mapping[str, Any] | None = None,
    main: bool = False,
) -> Product:
    """Stamp, write and record a FITS product, then its PNG preview."""
    stamp(hdul[0].header, call, category, history, qc)
    path = call.out / filename
    hdul.writeto(path, overwrite=True, output_verify="silentfix")
    product = call.add_product(filename, category, FITS_TYPE, qc=qc, main=main)
    data = first_image(hdul)
    if data is not None:
        preview = Path(filename).name.split(".")[0] + ".png"
        write_preview(data, call.out / preview)
        call.add_product(preview, PREVIEW, PNG_TYPE, preview_of=filename)
    return product


def first_image(hdul: fits.HDUList) -> np.ndarray | None:
    """The data of the first HDU holding a 2-D (or deeper) image."""
    for hdu in hdul:
        if hdu.is_image and hdu.data is not None and np.ndim(hdu.data) >= 2:
            return hdu.data
    return None


def write_preview(data: np.ndarray, path: Path, max_px: int = PREVIEW_MAX_PX) -> None:
    """An 8-bit PNG scaled by zscale (IRAF's display limits), north-up as ds9 shows it.

    Large images are reduced with a plain stride first so that zscale and
    Pillow never see more than a few times the preview's pixels.
    """
    from astropy.visualization import ZScaleInterval
    from PIL import Image

    image = np.asarray(data, dtype=float)
    while image.ndim > 2:
        image = image[0]
    step = max(1, max(image.shape) // (2 * max_px))
    image = image[::step, ::step]
    finite = np.isfinite(image)
    scaled = np.zeros(image.shape)
    if finite.any():
        lo, hi = ZScaleInterval().get_limits(image[finite])
        span = hi - lo if hi > lo else 1.0
        scaled[finite] = np.clip((image[finite] - lo) / span, 0.0, 1.0)
    pixels = np.flipud(np.rint(scaled * 255.0).astype(np.uint8))  # FITS row 1 is the bottom
    picture = Image.fromarray(pixels)
    if max(picture.size) > max_px:
        picture.thumbnail((max_px, max_px), Image.Resampling.LANCZOS)
    picture.save(path, format="PNG")


def safe_name(text: str) -> str:
    """A file-name-safe version of a header value (object names have blanks and slashes)."""
    cleaned = re.sub(r"[^A-Za-z0-9._+-]+", "_", text.strip()).strip("._")
    return cleaned or "product"
