"""What a dataset covers, from its FITS header: sky footprint, exposure interval, passband.

Pure functions on an astropy Header or on the header dict the indexer keeps for a raw
file (``RawFile.header``), so DataLink can describe a raw file without opening it and
cutouts can decide whether TIME and BAND overlap an image.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS, FITSFixedWarning

from soda_reduce.vo.regions import Interval

_WCS_KEY = re.compile(
    r"(WCSAXES|CTYPE\d|CUNIT\d|CRPIX\d|CRVAL\d|CDELT\d|CROTA\d|CD\d_\d|PC\d_\d|PV\d_\d+|"
    r"LONPOLE|LATPOLE|RADESYS|RADECSYS|EQUINOX|EPOCH|NAXIS\d?|A_ORDER|B_ORDER|AP_ORDER|"
    r"BP_ORDER|A_\d_\d|B_\d_\d|AP_\d_\d|BP_\d_\d|MJD-OBS|DATE-OBS)\Z"
)
EXPOSURE_KEYS = ("EXPTIME", "EXPOSURE", "EXPOSURE_TIME", "TELAPSE")
FILTER_KEYS = ("FILTER", "FILTER1", "FILTNAM", "FILTNAME")
# Approximate half-maximum passbands in metres (Bessell 1990; Fukugita et al. 1996 for SDSS;
# 3 nm around the line for narrow-band filters of amateur and small observatories).
FILTER_BANDS: dict[str, tuple[float, float]] = {
    "U": (3.32e-7, 3.98e-7),
    "B": (3.98e-7, 4.92e-7),
    "V": (5.07e-7, 5.95e-7),
    "R": (5.89e-7, 7.27e-7),
    "I": (7.31e-7, 8.81e-7),
    "u": (3.25e-7, 3.83e-7),
    "g": (4.08e-7, 5.46e-7),
    "r": (5.54e-7, 6.92e-7),
    "i": (6.86e-7, 8.40e-7),
    "z": (8.50e-7, 9.76e-7),
    "HA": (6.533e-7, 6.593e-7),
    "OIII": (4.977e-7, 5.037e-7),
    "SII": (6.686e-7, 6.746e-7),
    "L": (4.00e-7, 7.00e-7),
    "CLEAR": (4.00e-7, 7.00e-7),
}
_FILTER_ALIASES = {"LUM": "L", "LUMINANCE": "L", "H-ALPHA": "HA", "HALPHA": "HA", "O3": "OIII"}


def _as_header(header: Mapping[str, Any]) -> fits.Header:
    """A FITS header with the WCS keywords of ``header`` (an indexed dict or a Header)."""
    if isinstance(header, fits.Header):
        return header
    cards = [(k, v) for k, v in header.items() if _WCS_KEY.match(k) and v is not None]
    return fits.Header(cards)


def celestial_wcs(header: Mapping[str, Any]) -> WCS | None:
    """The 2-D celestial WCS of an image header, or None if it has none usable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(_as_header(header), naxis=2)
    except Exception:  # astropy raises many kinds on broken WCS keywords
        return None
    if not wcs.has_celestial or wcs.celestial.naxis != 2 or wcs.wcs.lng != 0:
        return None
    return wcs


def image_shape(header: Mapping[str, Any]) -> tuple[int, int] | None:
    """(ny, nx) of a 2-D image header; ZNAXIS for tile-compressed headers."""
    for prefix in ("ZNAXIS", "NAXIS"):
        n1, n2 = header.get(f"{prefix}1"), header.get(f"{prefix}2")
        if isinstance(n1, int) and isinstance(n2, int) and n1 > 0 and n2 > 0:
            return n2, n1
    return None


def footprint(header: Mapping[str, Any]) -> list[tuple[float, float]] | None:
    """Sky positions of the image's four outer corners, in pixel order (0,0) (nx,0) ..."""
    wcs, shape = celestial_wcs(header), image_shape(header)
    if wcs is None or shape is None:
        return None
    ny, nx = shape
    x = np.array([-0.5, nx - 0.5, nx - 0.5, -0.5])
    y = np.array([-0.5, -0.5, ny - 0.5, ny - 0.5])
    lon, lat = wcs.pixel_to_world_values(x, y)
    if not (np.all(np.isfinite(lon)) and np.all(np.isfinite(lat))):
        return None
    return [(float(a) % 360.0, float(b)) for a, b in zip(lon, lat, strict=True)]


def _float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _mjd(header: Mapping[str, Any], mjd_key: str, date_key: str) -> float | None:
    mjd = _float(header.get(mjd_key))
    if mjd is not None:
        return mjd
    date = header.get(date_key)
    if isinstance(date, str) and date.strip():
        try:
            return float(Time(date.strip(), scale="utc").mjd)
        except ValueError:
            return None
    return None


def exposure_interval(header: Mapping[str, Any]) -> Interval | None:
    """[start, end] of the exposure in MJD (UTC), from the FITS time keywords.

    Start: MJD-BEG, MJD-OBS, DATE-BEG or DATE-OBS. End: MJD-END, DATE-END, else the start
    plus EXPTIME (or EXPOSURE, EXPOSURE_TIME, TELAPSE) seconds, else the start itself.
    """
    start = _mjd(header, "MJD-BEG", "DATE-BEG")
    if start is None:
        start = _mjd(header, "MJD-OBS", "DATE-OBS")
    if start is None:
        return None
    end = _mjd(header, "MJD-END", "DATE-END")
    if end is None:
        seconds = next((s for k in EXPOSURE_KEYS if (s := _float(header.get(k))) is not None), 0)
        end = start + max(seconds, 0.0) / 86400.0
    return Interval(start, max(start, end))


def filter_band(header: Mapping[str, Any]) -> Interval | None:
    """The filter's passband in metres, for the filter names of `FILTER_BANDS`."""
    for key in FILTER_KEYS:
        value = header.get(key)
        if not isinstance(value, str) or not value.strip():
            continue
        name = value.strip()
        for candidate in (name, name.upper(), _FILTER_ALIASES.get(name.upper(), "")):
            if candidate in FILTER_BANDS:
                return Interval(*FILTER_BANDS[candidate])
        return None
    return None
