"""SODA 1.0 parameters (parsing, errors, descriptor metadata) and FITS cutouts."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from soda_reduce.runtime.cutout import Cutout, NoOverlap, cut_fits, cutout_bytes
from soda_reduce.runtime.cutout_jobs import cut_products
from soda_reduce.vo.coverage import exposure_interval, filter_band
from soda_reduce.vo.dali import NotFoundError, TransientError, UsageError
from soda_reduce.vo.regions import Circle, Polygon, Range, separation
from soda_reduce.vo.soda import (
    ERROR_LABELS,
    SODA_PARAMETERS,
    MultiValuedParamNotSupported,
    SodaFilter,
    SodaUsageError,
    error_document,
    format_limit,
    param_limits_from_wcs,
    parse_soda,
)

# the tests' own WCS(header) calls: astropy notes it derived DATE-OBS from MJD-OBS
pytestmark = pytest.mark.filterwarnings("ignore::astropy.wcs.FITSFixedWarning")

RA0, DEC0 = 150.0, 2.0
SCALE = 1.0 / 3600.0  # 1 arcsec pixels
NX, NY = 200, 150


def _header(*, wcs: bool = True, **extra) -> fits.Header:
    header = fits.Header()
    if wcs:
        th = math.radians(12.0)  # rotated, so box and sky axes differ
        header.update(
            {
                "CTYPE1": "RA---TAN",
                "CTYPE2": "DEC--TAN",
                "CRPIX1": 90.5,
                "CRPIX2": 70.5,
                "CRVAL1": RA0,
                "CRVAL2": DEC0,
                "CD1_1": -SCALE * math.cos(th),
                "CD1_2": SCALE * math.sin(th),
                "CD2_1": SCALE * math.sin(th),
                "CD2_2": SCALE * math.cos(th),
                "CUNIT1": "deg",
                "CUNIT2": "deg",
                "RADESYS": "ICRS",
            }
        )
    header.update({"MJD-OBS": 60000.5, "EXPTIME": 600.0, "FILTER": "V", **extra})
    return header


def _image(tmp_path: Path, *, integer: bool = False, **kw) -> Path:
    """A product-like file: primary image, MASK (declares a nodata bit) and UNCERT."""
    y, x = np.mgrid[0:NY, 0:NX]
    data = (x + 1000 * y).astype(np.int32 if integer else np.float32)
    mask = fits.ImageHDU(np.zeros((NY, NX), np.uint8), name="MASK")
    mask.header["COMMENT"] = "bad pixel bits: 1=saturated, 16=nodata"
    uncert = fits.ImageHDU(np.ones((NY, NX), np.float32), name="UNCERT")
    path = tmp_path / ("int.fits" if integer else "image.fits")
    fits.HDUList([fits.PrimaryHDU(data, _header(**kw)), mask, uncert]).writeto(path)
    return path


def _filter(**params: str) -> SodaFilter:
    return parse_soda(list(params.items()), sync=True).filters()[0]


def _world(x: float, y: float) -> tuple[float, float]:
    ra, dec = WCS(_header()).pixel_to_world_values(x, y)
    return float(ra), float(dec)


# ------------------------------------------------------------------ parsing


def test_parse_shapes_and_intervals() -> None:
    req = parse_soda(
        [
            ("id", "ivo://x/raw?a.fits"),
            ("Circle", "12 34 0.5"),
            ("POS", "RANGE 10 20 -5 +Inf"),
            ("pos", "polygon 12 34 14 34 14 36 12 36"),
            ("BAND", "-Inf 5e-7"),
            ("TIME", "55100.0 +Inf"),
            ("POL", "i"),
            ("POL", "Q"),
            ("RUNID", "ignored"),
            ("POLYGON", ""),  # unset descriptor parameter
        ],
        sync=False,
    )
    assert req.ids == ("ivo://x/raw?a.fits",)
    assert req.regions[0] == Range(10, 20, -5, math.inf)
    assert req.regions[1] == Polygon(((12, 34), (14, 34), (14, 36), (12, 36)))
    assert req.regions[2] == Circle(12, 34, 0.5)
    assert req.bands[0].low == -math.inf and req.bands[0].high == 5e-7
    assert req.times[0].high == math.inf
    assert req.pol == ("I", "Q")
    assert len(req.filters()) == 3 and all(f.pol == ("I", "Q") for f in req.filters())
    assert "RANGE 10 20 -5 +Inf" in req.filters()[0].describe()


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("CIRCLE", "12 34", "3 numbers"),
        ("CIRCLE", "12 34 0", "radius"),
        ("CIRCLE", "12 95 1", "latitude"),
        ("CIRCLE", "400 0 1", "longitude"),
        ("CIRCLE", "12 34 NaN", "not a number"),
        ("CIRCLE", "1_2 34 1", "not a number"),
        ("CIRCLE", "12 34 +Inf", "not a number"),
        ("POLYGON", "12 34 14 34 14", "even count"),
        ("POLYGON", "12 34 14 34", "at least 6"),
        ("POLYGON", "10 10 12 12 12 10 10 12", "cross"),
        ("POLYGON", "10 0 11 0 12 0", "no area"),
        ("POLYGON", "0 0 90 0 180 0 270 0", "hemisphere"),
        ("POS", "BOX 1 2 3 4", "unknown shape"),
        ("POS", "RANGE 10 20 5 -5", "lower then upper"),
        ("POS", "RANGE 10 20 5", "4 numbers"),
        ("BAND", "6e-7 5e-7", "above the upper"),
        ("BAND", "5e-7", "2 numbers"),
        ("TIME", "abc 1", "not a number"),
        ("POL", "X", "unknown state"),
    ],
)
def test_parse_errors(name: str, value: str, fragment: str) -> None:
    with pytest.raises(SodaUsageError) as info:
        parse_soda([(name, value)], sync=False)
    assert fragment in info.value.message
    assert info.value.message.startswith(name if name != "POS" else "POS")
    status, text = error_document(info.value)
    assert status == 400 and text.startswith("UsageError: ")


def test_sync_multiplicity() -> None:
    with pytest.raises(MultiValuedParamNotSupported):
        parse_soda([("CIRCLE", "1 2 3"), ("CIRCLE", "1 2 4")], sync=True)
    with pytest.raises(MultiValuedParamNotSupported):
        parse_soda([("CIRCLE", "1 2 3"), ("POLYGON", "1 1 2 1 2 2")], sync=True)
    with pytest.raises(MultiValuedParamNotSupported) as info:
        parse_soda([("ID", "a"), ("id", "b")], sync=True)
    assert error_document(info.value)[1].startswith("MultiValuedParamNotSupported: ID")
    # POL is multi-valued even in sync (SODA 1.0 3.3.7); async takes everything
    assert parse_soda([("POL", "I"), ("POL", "V")], sync=True).pol == ("I", "V")
    req = parse_soda(
        [("CIRCLE", "1 2 3"), ("CIRCLE", "1 2 4"), ("BAND", "1 2"), ("BAND", "3 4")], sync=False
    )
    assert len(req.filters()) == 4  # every combination of values (SODA 1.0 section 6)


def test_error_labels_for_every_dali_error() -> None:
    cases = [
        (UsageError("bad"), 400, "UsageError: bad"),
        (NotFoundError("gone"), 404, "UsageError: gone"),
        (TransientError("later"), 503, "ServiceUnavailable: later"),
        (RuntimeError("x"), 500, "Error: "),
    ]
    for exc, status, start in cases:
        code, text = error_document(exc)
        assert code == status and text.startswith(start)
        assert text.split(":", 1)[0] in ERROR_LABELS


def test_parameter_metadata_follows_soda_three_factor_semantics() -> None:
    table = {p.name: (p.ucd, p.unit, p.datatype, p.arraysize, p.xtype) for p in SODA_PARAMETERS}
    assert table == {
        "ID": ("meta.ref.url;meta.curation", None, "char", "*", None),
        "POS": ("pos.outline;obs", None, "char", "*", None),
        "CIRCLE": ("pos.outline;obs", "deg", "double", "3", "circle"),
        "POLYGON": ("pos.outline;obs", "deg", "double", "*", "polygon"),
        "BAND": ("em.wl;stat.interval", "m", "double", "2", "interval"),
        "TIME": ("time.interval;obs.exposure", "d", "double", "2", "interval"),
        "POL": ("meta.code;phys.polarization", None, "char", "*", None),
    }
    assert all(p.description for p in SODA_PARAMETERS)


# ------------------------------------------------------------------ geometry


def test_polygon_either_winding_is_the_small_region() -> None:
    ccw = Polygon(((10, 10), (12, 10), (12, 12), (10, 12)))
    cw = Polygon(tuple(reversed(ccw.vertices)))
    lon = np.array([11.0, 13.0, 11.0, 191.0])
    lat = np.array([11.0, 11.0, 9.9, -11.0])  # inside, east, south, antipode
    assert ccw.contains(lon, lat).tolist() == [True, False, False, False]
    assert cw.contains(lon, lat).tolist() == ccw.contains(lon, lat).tolist()


def test_range_wraps_through_zero_and_circle_outline_is_on_the_circle() -> None:
    wrap = Range(350, 10, -1, 1)
    assert wrap.contains(np.array([355.0, 5.0, 180.0]), np.zeros(3)).tolist() == [True, True, False]
    circle = Circle(359.99, 60.0, 0.5)
    lon, lat = circle.outline(0.01)
    dist = separation(circle.lon, circle.lat, lon[:-1], lat[:-1])
    assert np.allclose(dist, 0.5, atol=1e-9) and lon.size > 100


# ------------------------------------------------------------------ cutouts


def test_circle_cutout_keeps_a_correct_wcs(tmp_path: Path) -> None:
    path = _image(tmp_path)
    ra, dec = _world(60.3, 80.7)
    radius = 10 * SCALE
    result = cut_fits(path, _filter(CIRCLE=f"{ra} {dec} {radius}"), source="ivo://t/product?x")
    assert isinstance(result, Cutout) and result.box is not None
    x0, x1, y0, y1 = result.box
    hdul = fits.open(io.BytesIO(result.to_bytes()))
    assert [h.name for h in hdul] == ["PRIMARY", "MASK", "UNCERT"]
    data = hdul[0].data
    assert data.shape == (y1 - y0 + 1, x1 - x0 + 1) == hdul[1].data.shape == hdul[2].data.shape
    assert data[0, 0] == x0 + 1000 * y0 and data[-1, -1] == x1 + 1000 * y1
    # the sky at the cutout's centre is the sky at the same pixel of the original
    cx, cy = (x1 - x0) / 2, (y1 - y0) / 2
    cut_sky = WCS(hdul[0].header).pixel_to_world_values(cx, cy)
    orig_sky = WCS(_header()).pixel_to_world_values(x0 + cx, y0 + cy)
    assert float(separation(*cut_sky, *orig_sky)) < 1e-9
    assert (
        float(separation(ra, dec, *WCS(hdul[0].header).pixel_to_world_values(60.3 - x0, 80.7 - y0)))
        < 1e-9
    )
    # every pixel whose centre is in the circle is in the box, and the box is tight
    yy, xx = np.mgrid[0:NY, 0:NX]
    lon, lat = WCS(_header()).pixel_to_world_values(xx, yy)
    inside = separation(ra, dec, lon, lat) <= radius
    assert xx[inside].min() >= x0 and xx[inside].max() <= x1
    assert yy[inside].min() >= y0 and yy[inside].max() <= y1
    assert x1 - x0 <= 22 and y1 - y0 <= 22
    assert "SODA cutout of ivo://t/product?x: CIRCLE" in str(hdul[0].header["HISTORY"])
    assert hdul[0].header["LTV1"] == -x0


def test_tiny_and_partial_regions(tmp_path: Path) -> None:
    path = _image(tmp_path)
    ra, dec = _world(120.2, 33.9)
    tiny = cut_fits(path, _filter(CIRCLE=f"{ra} {dec} {0.05 * SCALE}"))
    assert isinstance(tiny, Cutout) and tiny.box == (120, 120, 34, 34)
    assert tiny.hdul[0].data.tolist() == [[120 + 1000 * 34]]
    ra, dec = _world(2.0, 3.0)  # near a corner: the box is clipped to the image
    edge = cut_fits(path, _filter(CIRCLE=f"{ra} {dec} {8 * SCALE}"))
    assert isinstance(edge, Cutout) and edge.box[0] == 0 and edge.box[2] == 0
    whole = cut_fits(path, _filter(POS="RANGE 0 360 -90 90"))
    assert isinstance(whole, Cutout) and whole.box == (0, NX - 1, 0, NY - 1)


def test_polygon_masks_outside_pixels(tmp_path: Path) -> None:
    path = _image(tmp_path)
    corners = [_world(40, 40), _world(90, 45), _world(60, 100)]
    value = " ".join(f"{a} {b}" for a, b in corners)
    result = cut_fits(path, _filter(POLYGON=value))
    assert isinstance(result, Cutout) and result.box is not None
    x0, x1, y0, y1 = result.box
    assert 38 <= x0 <= 40 and 90 <= x1 <= 92 and 38 <= y0 <= 40 and 100 <= y1 <= 102
    data, mask, uncert = (h.data for h in result.hdul)
    cut_wcs = WCS(result.hdul[0].header)
    yy, xx = np.mgrid[0 : data.shape[0], 0 : data.shape[1]]
    lon, lat = cut_wcs.pixel_to_world_values(xx, yy)
    inside = Polygon(tuple(corners)).contains(lon, lat)
    assert np.all(np.isfinite(data[inside]))
    assert np.all(data[inside] == (xx + x0 + 1000 * (yy + y0))[inside])
    masked = ~np.isfinite(data)
    assert masked.sum() > 0.3 * data.size  # a triangle leaves much of its box out
    assert not np.any(masked & inside)
    assert np.all(mask[masked] & 16) and not np.any(mask[~masked])
    assert np.array_equal(np.isnan(uncert), masked)
    # integer images become floating point so the outside can be NaN
    ints = cut_fits(_image(tmp_path, integer=True), _filter(POLYGON=value))
    assert isinstance(ints, Cutout) and ints.hdul[0].data.dtype.kind == "f"
    assert np.array_equal(np.isnan(ints.hdul[0].data), masked)


def test_no_overlap_and_inapplicable_filters(tmp_path: Path) -> None:
    path = _image(tmp_path)
    assert isinstance(cut_fits(path, _filter(CIRCLE=f"{RA0 + 1} {DEC0} 0.01")), NoOverlap)
    assert isinstance(cut_fits(path, _filter(POS="RANGE 10 20 -5 5")), NoOverlap)
    assert isinstance(cutout_bytes(path, _filter(POS="RANGE 10 20 -5 5")), NoOverlap)
    no_wcs = tmp_path / "nowcs.fits"
    fits.PrimaryHDU(np.zeros((10, 10), np.float32), _header(wcs=False)).writeto(no_wcs)
    with pytest.raises(SodaUsageError, match="no celestial WCS"):
        cut_fits(no_wcs, _filter(CIRCLE=f"{RA0} {DEC0} 0.01"))


def test_time_band_and_pol_select_whole_images(tmp_path: Path) -> None:
    path = _image(tmp_path)
    assert exposure_interval(_header()).high == pytest.approx(60000.5 + 600 / 86400)
    assert filter_band(_header()).low == pytest.approx(5.07e-7)
    for params in ({"TIME": "60000.505 60001"}, {"BAND": "5.5e-7 5.6e-7"}, {"POL": "I"}):
        kept = cut_fits(path, _filter(**params))
        assert isinstance(kept, Cutout) and kept.box is None
        assert kept.hdul[0].data.shape == (NY, NX)
    for params in ({"TIME": "60000.6 60001"}, {"BAND": "7e-7 8e-7"}, {"POL": "Q"}):
        assert isinstance(cut_fits(path, _filter(**params)), NoOverlap), params
    both = cut_fits(path, _filter(TIME="-Inf +Inf", CIRCLE=f"{RA0} {DEC0} {5 * SCALE}"))
    assert isinstance(both, Cutout) and both.box is not None
    other = tmp_path / "other.fits"
    header = _header(FILTER="X7")
    del header["MJD-OBS"]
    fits.PrimaryHDU(np.zeros((10, 10), np.float32), header).writeto(other)
    with pytest.raises(SodaUsageError, match="TIME"):
        cut_fits(other, _filter(TIME="1 2"))
    with pytest.raises(SodaUsageError, match="BAND"):
        cut_fits(other, _filter(BAND="1 2"))


def test_raw_tile_compressed_frame(demo_archive: Path) -> None:
    raw = next(demo_archive.rglob("*.fits.fz"))
    with fits.open(raw) as hdul:
        header, original = hdul[1].header, hdul[1].data.copy()
    ra, dec = WCS(header).pixel_to_world_values(30, 20)
    result = cut_fits(raw, _filter(CIRCLE=f"{ra} {dec} {3 / 3600}"))
    assert isinstance(result, Cutout) and result.box is not None
    x0, x1, y0, y1 = result.box
    out = fits.open(io.BytesIO(result.to_bytes()))
    assert len(out) == 1 and out[0].data.dtype == np.uint16
    assert np.array_equal(out[0].data, original[y0 : y1 + 1, x0 : x1 + 1])
    sky = WCS(out[0].header).pixel_to_world_values(30 - x0, 20 - y0)
    assert float(separation(ra, dec, *sky)) < 1e-9
    assert out[0].header["OBJECT"] == header["OBJECT"]


def test_param_limits_from_header_and_index_dict(tmp_path: Path) -> None:
    header = _header(NAXIS=2, NAXIS1=NX, NAXIS2=NY)
    limits = param_limits_from_wcs(header)
    assert set(limits) == {"CIRCLE", "POLYGON", "TIME", "BAND"}
    assert limits == param_limits_from_wcs(dict(header))  # RawFile.header works the same
    _, (cra, cdec, radius) = limits["CIRCLE"]
    wcs = WCS(header)
    corners = wcs.pixel_to_world_values(
        [-0.5, NX - 0.5, NX - 0.5, -0.5], [-0.5, -0.5, NY - 0.5, NY - 0.5]
    )
    assert np.all(separation(cra, cdec, *corners) <= radius)
    assert radius < 1.01 * math.hypot(NX, NY) / 2 * SCALE
    _, flat = limits["POLYGON"]
    polygon = Polygon(tuple(zip(flat[::2], flat[1::2], strict=True)))
    centre = wcs.pixel_to_world_values((NX - 1) / 2, (NY - 1) / 2)
    assert polygon.contains(*(np.array([v]) for v in centre)).tolist() == [True]
    assert limits["TIME"] == pytest.approx((60000.5, 60000.5 + 600 / 86400))
    assert limits["BAND"] == (5.07e-7, 5.95e-7)
    assert format_limit(limits["BAND"][0]) == "5.07e-07"
    assert format_limit((1.5, 2.0, 0.25)) == "1.5 2 0.25"
    assert param_limits_from_wcs({"FILTER": "B"}) == {"BAND": (3.98e-7, 4.92e-7)}


def test_cut_products_one_result_per_combination(tmp_path: Path) -> None:
    path = _image(tmp_path)
    filters = parse_soda(
        [("CIRCLE", f"{RA0} {DEC0} {5 * SCALE}"), ("CIRCLE", f"{RA0 + 1} {DEC0} 0.001")],
        sync=False,
    ).filters()
    rows = cut_products(tmp_path / "out", [(path, "k/image.fits")], filters)
    assert [r["ok"] for r in rows] == [True, False]
    assert rows[0]["name"].endswith(".fits") and rows[0]["content_type"] == "application/fits"
    text = (tmp_path / "out" / rows[1]["name"]).read_text()
    assert text.startswith("UsageError: no overlap")
    assert rows[1]["content_type"] == "text/plain" and rows[1]["size"] == len(text)
    assert fits.getdata(tmp_path / "out" / rows[0]["name"]).shape[0] <= 13
