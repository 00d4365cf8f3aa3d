"""SODA cutouts of FITS images: a region becomes a pixel box, the WCS follows.

The region's pixels are found two ways at once: pixel centres inside it (every
centre for images up to `GRID` pixels a side, a grid beyond) and points along its
outline projected into the image, so a region smaller than a pixel, or one whose
edge only grazes a pixel, still selects the pixels it touches. The box is cut
with astropy's Cutout2D, whose shifted WCS is written back into the header; every
other image HDU of the same shape (a product's MASK, UNCERT, COVERAGE) is cut the
same way. A polygon keeps its bounding box and masks the pixels outside it: NaN
in floating-point data (integer images become float32 or float64 for that), the
nodata bit in a mask extension that declares one (``16=nodata`` in a COMMENT).

TIME, BAND and POL on a 2-D image select or reject the whole image: its exposure
interval, its filter passband, and Stokes I (an unpolarised image) must overlap
the request. A dataset without the information a filter needs is a usage error;
a request outside the data is `NoOverlap` (HTTP 204 in sync, an error result in
async).

A file without a 2-D image but with a 1-D spectrum table (the kast SPECTRUM_1D
product) is cut along its rows by BAND instead (`runtime.cutout_spectrum`): the
spectrum's one position is inside a region or not, TIME and POL as for images.
"""

from __future__ import annotations

import io
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.nddata import Cutout2D
from astropy.utils.exceptions import AstropyWarning
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales

from soda_reduce.runtime import cutout_spectrum as spectra
from soda_reduce.vo.coverage import celestial_wcs, exposure_interval, filter_band
from soda_reduce.vo.regions import Polygon, Region, separation
from soda_reduce.vo.soda import SodaFilter, SodaUsageError

GRID = 512  # pixel centres tested per axis at most; the outline covers what lies between
ROWS_PER_CHUNK = 1 << 20  # pixels whose sky position is computed at once when masking
FITS_MEDIA_TYPE = "application/fits"
_DROP = re.compile(
    r"(SIMPLE|XTENSION|BITPIX|NAXIS\d*|EXTEND|PCOUNT|GCOUNT|BZERO|BSCALE|CHECKSUM|DATASUM|"
    r"Z[A-Z0-9_]*|TFIELDS|TTYPE\d+|TFORM\d+)\Z"
)
_NODATA_BIT = re.compile(r"\b(\d+)\s*=\s*nodata\b", re.IGNORECASE)


@dataclass(frozen=True)
class NoOverlap:
    """The request selects nothing of this dataset."""

    reason: str


@dataclass
class Cutout:
    hdul: fits.HDUList
    box: tuple[int, int, int, int] | None  # x0, x1, y0, y1 (0-based, inclusive); None: whole

    def to_bytes(self) -> bytes:
        out = io.BytesIO()
        self.hdul.writeto(out, output_verify="silentfix")
        return out.getvalue()


def cut_fits(path: Path, flt: SodaFilter, *, source: str = "") -> Cutout | NoOverlap:
    """The cutout of the first 2-D image of ``path``, else of its 1-D spectrum table;
    SodaUsageError if it cannot apply."""
    with fits.open(path, memmap=False) as hdul:
        index = next(
            (
                n
                for n, h in enumerate(hdul)
                if h.is_image and h.data is not None and h.data.ndim == 2
            ),
            None,
        )
        if index is None:
            table = spectra.spectrum_index(hdul)
            if table is None:
                raise SodaUsageError(f"{path.name} holds no 2-D image or 1-D spectrum to cut")
            return _cut_spectrum(hdul, table, flt, path.name, source or path.name)
        header = _merged_header(hdul, index)
        shape = hdul[index].data.shape
        reason = _non_spatial(flt, header, path.name)
        if reason is not None:
            return reason
        box, samples = None, None
        if flt.region is not None:
            wcs = celestial_wcs(header)
            if wcs is None:
                raise SodaUsageError(
                    f"{path.name} has no celestial WCS: POS, CIRCLE and POLYGON cannot apply"
                )
            found = region_box(flt.region, wcs, shape)
            if found is None:
                return NoOverlap(f"{flt.region.soda()} does not overlap {path.name}")
            box, samples = found
        planes = [(header, hdul[index].data)] + [
            (_clean(h.header), h.data)
            for h in hdul[index + 1 :]
            if h.is_image and h.data is not None and h.data.shape == shape
        ]
        out = [_cut_plane(hdr, data, box) for hdr, data in planes]
    if isinstance(flt.region, Polygon) and box is not None:
        keep = region_mask(flt.region, celestial_wcs(out[0][0]), out[0][1].shape, samples, box)
        out = [_mask_outside(hdr, data, keep, n == 0) for n, (hdr, data) in enumerate(out)]
    history = f"SODA cutout of {source or path.name}: {flt.describe()}"
    hdus: list[fits.PrimaryHDU | fits.ImageHDU] = []
    for n, (hdr, data) in enumerate(out):
        if n == 0:
            hdr.add_history(history[:2000])
            if box is not None:
                hdr.add_history(f"pixels [{box[0]}:{box[1]}, {box[2]}:{box[3]}] (0-based x, y)")
            hdus.append(fits.PrimaryHDU(data, hdr))
        else:
            hdus.append(fits.ImageHDU(data, hdr))
    return Cutout(fits.HDUList(hdus), box)


def cutout_bytes(path: Path, flt: SodaFilter, *, source: str = "") -> bytes | NoOverlap:
    result = cut_fits(path, flt, source=source)
    return result if isinstance(result, NoOverlap) else result.to_bytes()


def _merged_header(hdul: fits.HDUList, index: int) -> fits.Header:
    """The image header; a data-less primary's keywords first when the image is an extension."""
    image = _clean(hdul[index].header)
    if index == 0:
        return image
    header = fits.Header()
    for card in _clean(hdul[0].header).cards:
        if card.keyword in ("HISTORY", "COMMENT", "") or card.keyword not in image:
            header.append(card)
    for card in image.cards:
        if card.keyword != "EXTNAME":
            header.append(card)
    return header


def _cut_spectrum(
    hdul: fits.HDUList, index: int, flt: SodaFilter, name: str, source: str
) -> Cutout | NoOverlap:
    """A spectrum table: TIME and POL as for images, the region on its position, BAND on
    its rows; the kept rows in a copy of the file (docs/soda.md, "Spectra")."""
    primary = spectra.primary_header(hdul)
    reason = _non_spatial(flt, spectra.time_header(primary), name, band=False)
    if reason is not None:
        return reason
    if flt.region is not None:
        ra, dec = spectra.position(primary, name)
        if not spectra.contains(flt.region, ra, dec):
            return NoOverlap(f"{flt.region.soda()} does not contain {name} (at {ra} {dec})")
    hdu = hdul[index]
    wavelength = spectra.wavelengths(hdu)
    keep = np.ones(wavelength.size, dtype=bool)
    history = [f"SODA cutout of {source}: {flt.describe()}"]
    if flt.band is not None:
        metres, unit = spectra.metres_per_unit(hdu, name)
        keep = spectra.band_rows(wavelength, metres, flt.band)
        if not keep.any():
            finite = wavelength[np.isfinite(wavelength)]
            held = f"{finite.min():g}-{finite.max():g} {unit}" if finite.size else "no wavelength"
            return NoOverlap(f"BAND {flt.band} m does not overlap the spectrum of {name} ({held})")
        history.append(f"{int(keep.sum())} of {keep.size} rows kept: wavelength in BAND")
    if not keep.any():
        return NoOverlap(f"the spectrum table of {name} has no rows")
    return Cutout(spectra.cut_rows(primary, hdu, keep, history), None)


def _non_spatial(
    flt: SodaFilter, header: fits.Header, name: str, *, band: bool = True
) -> NoOverlap | None:
    """TIME, BAND and POL keep the whole 2-D image or none of it (``band=False``: a spectrum,
    whose rows BAND cuts)."""
    if flt.time is not None:
        when = exposure_interval(header)
        if when is None:
            raise SodaUsageError(f"TIME: {name} has no exposure time (MJD-OBS or DATE-OBS)")
        if not flt.time.overlaps(when):
            return NoOverlap(f"TIME {flt.time} does not overlap the exposure ({when} MJD)")
    if band and flt.band is not None:
        passband = filter_band(header)
        if passband is None:
            raise SodaUsageError(f"BAND: the filter of {name} ({header.get('FILTER')}) is unknown")
        if not flt.band.overlaps(passband):
            return NoOverlap(f"BAND {flt.band} does not overlap the filter passband ({passband} m)")
    if flt.pol and "I" not in flt.pol:
        return NoOverlap(f"POL {' '.join(flt.pol)}: {name} is unpolarised (Stokes I only)")
    return None


def _pixel_scale(wcs: WCS) -> float:
    """The smallest pixel side in degrees."""
    return float(np.min(proj_plane_pixel_scales(wcs.celestial)))


def region_box(
    region: Region, wcs: WCS, shape: tuple[int, ...]
) -> tuple[tuple[int, int, int, int], tuple[np.ndarray, np.ndarray]] | None:
    """The pixel box (x0, x1, y0, y1) the region touches, with the outline's pixels (x, y)."""
    ny, nx = shape
    scale = _pixel_scale(wcs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        lon, lat = region.outline(scale / 4.0)
        x, y = wcs.world_to_pixel_values(lon, lat)
        ok = np.isfinite(x) & np.isfinite(y)
        # points behind the projection come back elsewhere on the sky: keep true ones only
        back_lon, back_lat = wcs.pixel_to_world_values(x[ok], y[ok])
        true = np.zeros_like(ok)
        true[ok] = separation(lon[ok], lat[ok], back_lon, back_lat) < scale * 0.01
        px, py = np.floor(x[true] + 0.5).astype(int), np.floor(y[true] + 0.5).astype(int)
        within = (px >= 0) & (px < nx) & (py >= 0) & (py < ny)
        px, py = px[within], py[within]
        stride = max(1, math.ceil(max(nx, ny) / GRID))
        gx = np.unique(np.append(np.arange(0, nx, stride), nx - 1))
        gy = np.unique(np.append(np.arange(0, ny, stride), ny - 1))
        grid_x, grid_y = np.meshgrid(gx, gy)
        glon, glat = wcs.pixel_to_world_values(grid_x, grid_y)
        inside = region.contains(glon, glat)
    xs = np.concatenate([px, grid_x[inside] - (stride - 1), grid_x[inside] + (stride - 1)])
    ys = np.concatenate([py, grid_y[inside] - (stride - 1), grid_y[inside] + (stride - 1)])
    if xs.size == 0:
        return None
    x0, x1 = int(max(xs.min(), 0)), int(min(xs.max(), nx - 1))
    y0, y1 = int(max(ys.min(), 0)), int(min(ys.max(), ny - 1))
    return (x0, x1, y0, y1), (px, py)


def region_mask(
    region: Region,
    wcs: WCS | None,
    shape: tuple[int, ...],
    samples: tuple[np.ndarray, np.ndarray] | None,
    box: tuple[int, int, int, int],
) -> np.ndarray:
    """Pixels of a cutout (its own ``wcs``) inside the region or crossed by its outline."""
    ny, nx = shape
    keep = np.zeros(shape, dtype=bool)
    if wcs is None:
        return ~keep
    rows = max(1, ROWS_PER_CHUNK // max(nx, 1))
    xx = np.arange(nx)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        for start in range(0, ny, rows):
            gx, gy = np.meshgrid(xx, np.arange(start, min(ny, start + rows)))
            lon, lat = wcs.pixel_to_world_values(gx, gy)
            keep[start : start + gx.shape[0]] = region.contains(lon, lat)
    if samples is not None:
        px, py = samples[0] - box[0], samples[1] - box[2]
        within = (px >= 0) & (px < nx) & (py >= 0) & (py < ny)
        keep[py[within], px[within]] = True
    return keep


def _cut_plane(
    hdr: fits.Header, data: np.ndarray, box: tuple[int, int, int, int] | None
) -> tuple[fits.Header, np.ndarray]:
    """One image cut to ``box``, its header (a copy of ours to change) with the WCS shifted."""
    if box is None:
        return hdr, np.array(data)
    x0, x1, y0, y1 = box
    wcs = celestial_wcs(hdr)
    position = ((x0 + x1) / 2.0, (y0 + y1) / 2.0)
    cut = Cutout2D(data, position, (y1 - y0 + 1, x1 - x0 + 1), wcs=wcs, mode="strict", copy=True)
    if cut.bbox_original != ((y0, y1), (x0, x1)):  # Cutout2D rounds positions: never trust blind
        raise RuntimeError(f"Cutout2D cut {cut.bbox_original}, not the box {box}")
    for key in list(hdr.keys()):
        match = re.fullmatch(r"CRPIX([12])([A-Z]?)", key)
        if match:
            hdr[key] = float(hdr[key]) - (x0 if match.group(1) == "1" else y0)
    if wcs is not None:  # the primary WCS as Cutout2D shifted it (SIP included)
        hdr["CRPIX1"], hdr["CRPIX2"] = (float(v) for v in cut.wcs.wcs.crpix)
    hdr["LTV1"] = (float(hdr.get("LTV1", 0.0)) - x0, "cutout offset: physical = image - LTV")
    hdr["LTV2"] = (float(hdr.get("LTV2", 0.0)) - y0, "cutout offset: physical = image - LTV")
    return hdr, cut.data


def _clean(header: fits.Header) -> fits.Header:
    """A copy without the keywords of the data layout (astropy writes those itself)."""
    out = fits.Header()
    for card in header.cards:
        if not _DROP.match(card.keyword):
            out.append(fits.Card.fromstring(card.image))
    return out


def _mask_outside(
    header: fits.Header, data: np.ndarray, keep: np.ndarray, primary: bool
) -> tuple[fits.Header, np.ndarray]:
    if np.issubdtype(data.dtype, np.floating):
        data = data.copy()
        data[~keep] = np.nan
        return header, data
    bit = next(
        (int(m.group(1)) for c in header.get("COMMENT", []) if (m := _NODATA_BIT.search(str(c)))),
        None,
    )
    if bit is not None:  # a mask extension: flag the outside as no data
        data = data.copy()
        data[~keep] |= np.asarray(bit, dtype=data.dtype)
        return header, data
    if not primary:  # other integer extensions (coverage, flags) stay as they are
        return header, data
    wide = np.float32 if data.dtype.itemsize <= 2 else np.float64
    values = data.astype(wide)
    blank = header.get("BLANK")
    if isinstance(blank, int):
        values[data == blank] = np.nan
        del header["BLANK"]
    values[~keep] = np.nan
    header.add_history("converted to floating point so pixels outside the POLYGON can be NaN")
    return header, values


# ------------------------------------------------------------------ async jobs


def cutouts_dir(products_root: Path, job_id: str) -> Path:
    """Where a job's cutouts live: beside the step directories, one folder per job
    (`runtime.cutout_jobs` writes them)."""
    return products_root / "cutouts" / job_id
