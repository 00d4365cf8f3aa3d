"""The sky seen by the demo camera: star catalogues, pointings, WCS, PSF, airmass.

Stars live in sky coordinates (one fixed catalogue per field) and are projected
through each frame's own WCS, so frames of a field taken with different
pointings or binnings agree on the sky and WCS-aligned stacking really works.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from soda_reduce.pipelines.ccd.demo_model import CAMERA
from soda_reduce.pipelines.ccd.demo_plan import FIELDS, SITE_LAT, SITE_LONG, Field

TAG_CATALOGUE = 31
ROTATION_DEG = 0.35  # the camera is not perfectly aligned with north
# Sky brightness in e-/s per unbinned pixel (dark site, 0.6 m, 0.6"/px).
SKY_RATE = {"V": 8.0, "R": 12.0}
STAR_DENSITY = 1.0 / 1000.0  # stars per unbinned pixel (field area)
MOFFAT_BETA = 3.0


@dataclass(frozen=True)
class Catalogue:
    """Stars of one field: positions in degrees, fluxes in e-/s for this camera."""

    field: Field
    ra: np.ndarray
    dec: np.ndarray
    flux: dict[str, np.ndarray]

    def to_dict(self) -> dict:
        return {
            "name": self.field.name,
            "ra": self.field.ra,
            "dec": self.field.dec,
            "stars": [
                {
                    "ra": round(float(r), 7),
                    "dec": round(float(d), 7),
                    "flux_V": round(float(v), 3),
                    "flux_R": round(float(rr), 3),
                }
                for r, d, v, rr in zip(
                    self.ra, self.dec, self.flux["V"], self.flux["R"], strict=True
                )
            ],
        }


def catalogue(seed: int, field: Field, size: int) -> Catalogue:
    """A random but fixed star field covering every pointing of this field.

    Two bright stars are placed near the centre so every frame has some
    saturated cores; the rest follow a power-law brightness distribution.
    """
    rng = np.random.default_rng([seed, TAG_CATALOGUE, FIELDS.index(field)])
    fov = size * CAMERA.pixel_scale / 3600.0  # degrees
    half = 0.75 * fov + 3 * pointing_sigma(size) / 3600.0
    count = int(rng.poisson(STAR_DENSITY * (2 * half / fov * size) ** 2))
    dy = rng.uniform(-half, half, count)
    dx = rng.uniform(-half, half, count)
    # Cumulative counts N(>F) ~ F^-0.6 between 20 and 20000 e-/s.
    u = rng.uniform(0, 1, count)
    fmin, fmax, slope = 20.0, 2.0e4, 0.6
    flux_v = fmin * (1 - u * (1 - (fmax / fmin) ** -slope)) ** (-1 / slope)
    # Two bright stars, one each side of the centre and well apart (> 0.2 field).
    bright_dx = np.array([-1.0, 1.0]) * rng.uniform(0.1, 0.22, 2) * fov
    bright_dy = rng.uniform(-0.2, 0.2, 2) * fov
    dx, dy = np.concatenate([dx, bright_dx]), np.concatenate([dy, bright_dy])
    flux_v = np.concatenate([flux_v, rng.uniform(3.0e4, 8.0e4, 2)])
    colour = rng.uniform(0.2, 0.9, flux_v.size)  # V-R
    cosd = math.cos(math.radians(field.dec))
    return Catalogue(
        field,
        field.ra + dx / cosd,
        field.dec + dy,
        {"V": flux_v, "R": flux_v * 10 ** (0.4 * colour)},
    )


def pointing_sigma(size: int) -> float:
    """Pointing scatter in arcsec: ~10" but never more than 5% of the field."""
    return min(10.0, 0.05 * size * CAMERA.pixel_scale)


def wcs_cards(
    field: Field, binning: int, size: int, rng: np.random.Generator
) -> list[tuple[str, object, str]]:
    """TAN WCS of one pointing: field centre plus a random offset, CD matrix with rotation."""
    n = size // binning
    sigma = pointing_sigma(size) / 3600.0
    dra, ddec = rng.normal(0.0, sigma, 2)
    crval1 = round(field.ra + dra / math.cos(math.radians(field.dec)), 7)
    crval2 = round(field.dec + ddec, 7)
    scale = CAMERA.pixel_scale * binning / 3600.0
    th = math.radians(ROTATION_DEG)
    cd = [
        [-scale * math.cos(th), -scale * math.sin(th)],
        [-scale * math.sin(th), scale * math.cos(th)],
    ]
    return [
        ("WCSAXES", 2, "number of WCS axes"),
        ("CTYPE1", "RA---TAN", "gnomonic projection"),
        ("CTYPE2", "DEC--TAN", "gnomonic projection"),
        ("CUNIT1", "deg", ""),
        ("CUNIT2", "deg", ""),
        ("CRPIX1", (n + 1) / 2.0, "reference pixel"),
        ("CRPIX2", (n + 1) / 2.0, "reference pixel"),
        ("CRVAL1", crval1, "[deg] RA at reference pixel"),
        ("CRVAL2", crval2, "[deg] Dec at reference pixel"),
        ("CD1_1", float(f"{cd[0][0]:.10e}"), ""),
        ("CD1_2", float(f"{cd[0][1]:.10e}"), ""),
        ("CD2_1", float(f"{cd[1][0]:.10e}"), ""),
        ("CD2_2", float(f"{cd[1][1]:.10e}"), ""),
        ("RADESYS", "ICRS", ""),
        ("EQUINOX", 2000.0, ""),
    ]


def wcs_from_cards(cards: list[tuple[str, object, str]]) -> WCS:
    return WCS(fits.Header(cards))


def moffat_image(
    shape: tuple[int, int],
    x: np.ndarray,
    y: np.ndarray,
    flux: np.ndarray,
    fwhm_px: float,
) -> np.ndarray:
    """Sum of Moffat stars (total electrons ``flux``) at 0-based pixel positions x, y.

    Each star is drawn on a stamp big enough that the cut wing is below ~0.5 e-.
    """
    ny, nx = shape
    img = np.zeros(shape)
    beta = MOFFAT_BETA
    alpha = fwhm_px / (2.0 * math.sqrt(2 ** (1 / beta) - 1))
    norm = (beta - 1) / (math.pi * alpha**2)
    for xs, ys, f in zip(x, y, flux, strict=True):
        reach = alpha * (f * norm / 0.5) ** (1 / (2 * beta))
        r = int(min(max(3 * fwhm_px, reach), max(nx, ny)))
        x0, x1 = max(0, int(xs) - r), min(nx, int(xs) + r + 2)
        y0, y1 = max(0, int(ys) - r), min(ny, int(ys) + r + 2)
        if x0 >= x1 or y0 >= y1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        rr2 = ((xx - xs) ** 2 + (yy - ys) ** 2) / alpha**2
        img[y0:y1, x0:x1] += f * norm * (1 + rr2) ** (-beta)
    return img


def star_signal(
    cat: Catalogue,
    wcs: WCS,
    shape: tuple[int, int],
    filt: str,
    exptime: float,
    fwhm_arcsec: float,
    binning: int,
) -> np.ndarray:
    """Electrons from the stars of ``cat`` in one frame, placed through its WCS."""
    x, y = wcs.wcs_world2pix(cat.ra, cat.dec, 0)
    fwhm_px = fwhm_arcsec / (CAMERA.pixel_scale * binning)
    ny, nx = shape
    margin = 50 * fwhm_px
    keep = (x > -margin) & (x < nx + margin) & (y > -margin) & (y < ny + margin)
    return moffat_image(shape, x[keep], y[keep], cat.flux[filt][keep] * exptime, fwhm_px)


def sky_signal(filt: str, binning: int, exptime: float) -> float:
    return SKY_RATE[filt] * binning**2 * exptime


def mjd(moment: datetime) -> float:
    """Modified Julian Date of an aware UTC datetime."""
    delta = moment.replace(tzinfo=None) - datetime(1858, 11, 17)
    return delta.days + (delta.seconds + delta.microseconds / 1e6) / 86400.0


def airmass(field: Field, moment: datetime) -> float:
    """Plane-parallel airmass (sec z) from the local sidereal time; good enough above 15 deg."""
    days = mjd(moment) - 51544.5
    gmst = (280.46061837 + 360.98564736629 * days) % 360.0
    ha = math.radians(gmst + SITE_LONG - field.ra)
    lat, dec = math.radians(SITE_LAT), math.radians(field.dec)
    sin_alt = math.sin(lat) * math.sin(dec) + math.cos(lat) * math.cos(dec) * math.cos(ha)
    return round(1.0 / max(sin_alt, 0.05), 4)


def sexagesimal(value: float, hours: bool) -> str:
    """'08 51 18.0' / '+11 48 00' as MaxIm DL writes OBJCTRA / OBJCTDEC."""
    if hours:
        tenths = round(value / 15.0 * 36000) % (24 * 36000)
        h, rest = divmod(tenths, 36000)
        m, t = divmod(rest, 600)
        return f"{h:02d} {m:02d} {t // 10:02d}.{t % 10}"
    secs = round(abs(value) * 3600)
    d, rest = divmod(secs, 3600)
    m, s = divmod(rest, 60)
    return f"{'-' if value < 0 else '+'}{d:02d} {m:02d} {s:02d}"
