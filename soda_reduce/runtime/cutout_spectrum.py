"""SODA on 1-D spectra: a FITS binary table with a WAVELENGTH column, cut by BAND to rows.

The kast pipeline's SPECTRUM_1D product (``pipelines/kast/spectrum.py``) is a data-less
primary HDU (OBJECT, RA, DEC, DATE-OBS, MJD, EXPTIME, provenance) and a ``SPECTRUM``
table, one row per pixel: WAVELENGTH (Angstrom), FLUX, ERROR, MASK (0 = good), with
TDMIN1/TDMAX1 the good wavelength range. Such a table has no image axes, so the cut is
along its rows: BAND keeps the rows whose wavelength lies in the interval, converted from
the column's TUNIT (any length astropy.units parses: Angstrom, nm, um, m). The table keeps
its columns, units and header; TDMINn/TDMAXn are recomputed from the kept rows.

A spectrum is taken at one position (RA, DEC of the primary header), so a region selects
all of it or nothing. `runtime.cutout` decides the order (TIME and POL as for images,
then the region, then BAND) and turns an empty selection into NoOverlap.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
from astropy import units as u
from astropy.coordinates import Angle
from astropy.io import fits

from soda_reduce.vo.regions import Interval, Region
from soda_reduce.vo.soda import SodaUsageError

WAVELENGTH = "WAVELENGTH"
GOOD_MASK = "MASK"  # 0 = good, as the kast product writes it
# relative slack on BAND limits: 4.5e-7 m still selects the row at 4500 Angstrom whatever
# the float rounding of the unit conversion (1e-12 is far below any pixel's width)
SLACK = 1e-12
_LIMITS = re.compile(r"TD(MIN|MAX)(\d+)\Z")


def spectrum_index(hdul: fits.HDUList) -> int | None:
    """The first binary table with a scalar WAVELENGTH column (a 1-D spectrum), if any."""
    for n, hdu in enumerate(hdul):
        if isinstance(hdu, fits.BinTableHDU) and _wavelength_column(hdu) is not None:
            return n
    return None


def _wavelength_column(hdu: fits.BinTableHDU) -> int | None:
    """0-based index of the WAVELENGTH column (case-insensitive), one number per row."""
    for n, column in enumerate(hdu.columns):
        if column.name.upper() == WAVELENGTH and column.format.repeat == 1 and not column.dim:
            return n
    return None


def primary_header(hdul: fits.HDUList) -> fits.Header:
    """The primary header to copy into the cutout, without stale checksums."""
    header = hdul[0].header.copy()
    for key in ("CHECKSUM", "DATASUM"):
        header.remove(key, ignore_missing=True)
    return header


def time_header(header: fits.Header) -> fits.Header:
    """The header TIME reads: PypeIt's ``MJD`` (the exposure start) as MJD-OBS when the
    standard keywords are missing, since its DATE-OBS may be a bare date."""
    if "MJD-OBS" in header or "MJD-BEG" in header or "MJD" not in header:
        return header
    copy = header.copy()
    copy["MJD-OBS"] = header["MJD"]
    return copy


def position(header: fits.Header, name: str) -> tuple[float, float]:
    """RA and DEC of the spectrum in degrees (sexagesimal strings: RA in hours)."""
    try:
        ra, dec = header["RA"], header["DEC"]
        if isinstance(ra, str) and ":" in ra:
            ra = Angle(ra, unit=u.hourangle).deg
        if isinstance(dec, str) and ":" in dec:
            dec = Angle(dec, unit=u.deg).deg
        lon, lat = float(ra), float(dec)
    except (KeyError, TypeError, ValueError):
        raise SodaUsageError(
            f"{name} has no RA/DEC position: POS, CIRCLE and POLYGON cannot apply"
        ) from None
    if not (math.isfinite(lon) and math.isfinite(lat) and -90.0 <= lat <= 90.0):
        raise SodaUsageError(f"{name}: RA/DEC ({ra}, {dec}) is not a position on the sky")
    return lon % 360.0, lat


def contains(region: Region, lon: float, lat: float) -> bool:
    return bool(np.asarray(region.contains(np.array([lon]), np.array([lat]))).all())


def metres_per_unit(hdu: fits.BinTableHDU, name: str) -> tuple[float, str]:
    """Metres per unit of the WAVELENGTH column and the unit's name; UsageError if not a
    length (BAND cannot apply to wavelengths in unknown units)."""
    column = hdu.columns[_wavelength_column(hdu)]
    text = (column.unit or "").strip()
    try:
        factor = float(u.Unit(text, parse_strict="raise").to(u.m))
    except (ValueError, u.UnitsError):
        factor = math.nan
    if not (text and math.isfinite(factor) and factor > 0):
        raise SodaUsageError(
            f"BAND: the {column.name} column of {name} has unit {text!r}, not a length"
        )
    return factor, text


def band_rows(wavelength: np.ndarray, metres: float, band: Interval) -> np.ndarray:
    """Rows whose wavelength (in units of ``metres``) lies in the closed interval ``band``."""
    low = band.low * (1 - SLACK) if band.low > 0 else band.low * (1 + SLACK)
    high = band.high * (1 + SLACK) if band.high > 0 else band.high * (1 - SLACK)
    values = np.asarray(wavelength, dtype=float) * metres
    with np.errstate(invalid="ignore"):
        return (values >= low) & (values <= high)  # NaN wavelengths are never selected


def wavelengths(hdu: fits.BinTableHDU) -> np.ndarray:
    """The WAVELENGTH column as floats, in its own unit (empty for a table without rows)."""
    if hdu.data is None:
        return np.zeros(0)
    return np.asarray(hdu.data.field(_wavelength_column(hdu)), dtype=float)


def cut_rows(
    primary: fits.Header, hdu: fits.BinTableHDU, keep: np.ndarray, history: Sequence[str]
) -> fits.HDUList:
    """The primary header (plus ``history``) and the table reduced to the ``keep`` rows."""
    header = hdu.header.copy()
    data = hdu.data[keep]
    table = fits.BinTableHDU(data=data, header=header)
    _update_limits(table)
    primary = primary.copy()
    for line in history:
        primary.add_history(line[:2000])
    return fits.HDUList([fits.PrimaryHDU(header=primary), table])


def _update_limits(table: fits.BinTableHDU) -> None:
    """TDMINn/TDMAXn of the kept rows. The wavelength column's, like the kast writer's, span
    the good rows (MASK 0) when the table has a MASK and any good row is kept."""
    wave = _wavelength_column(table)
    names = [c.name.upper() for c in table.columns]
    good = None
    if GOOD_MASK in names:
        good = np.asarray(table.data.field(names.index(GOOD_MASK))) == 0
    for key in list(table.header.keys()):
        match = _LIMITS.match(key)
        if match is None or not 1 <= int(match.group(2)) <= len(names):
            continue
        column = int(match.group(2)) - 1
        raw = np.asarray(table.data.field(column))
        values = raw.astype(float)
        if column == wave and good is not None and (good & np.isfinite(values)).any():
            values = values[good]
        values = values[np.isfinite(values)]
        if values.size == 0:
            del table.header[key]
            continue
        value = values.min() if match.group(1) == "MIN" else values.max()
        table.header[key] = int(value) if np.issubdtype(raw.dtype, np.integer) else float(value)
