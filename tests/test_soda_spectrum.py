"""SODA on 1-D spectra (the kast SPECTRUM_1D product): BAND cuts rows, regions test the
spectrum's position; the cut itself, then /soda/sync and async jobs through the real app."""

from __future__ import annotations

import asyncio
import io
import math
from pathlib import Path

import numpy as np
import pytest
import requests
from astropy import units as u
from astropy.io import fits
from lxml import etree

from soda_reduce.pipelines.kast.spectrum import CATEGORY, write_spectrum
from soda_reduce.recipe.contract import Recipe, RecipeCall, RecipeInput
from soda_reduce.runtime.cutout import Cutout, NoOverlap, cut_fits, cutout_bytes
from soda_reduce.runtime.cutout_jobs import cut_products
from soda_reduce.runtime.products import ProductStore
from soda_reduce.runtime.step_cache import DONE
from soda_reduce.runtime.store import Store
from soda_reduce.vo.soda import SodaFilter, SodaUsageError, parse_soda
from tests.support.uws_harness import UWS, Harness, uws_service

HREF = "{http://www.w3.org/1999/xlink}href"
RA, DEC = 159.903, 43.1026  # Feige 34
MJD, EXPTIME = 57162.196, 600.0
WAVE = np.arange(3400.0, 5500.5, 1.0)  # Angstrom, one row per pixel: 2101 rows
FIRST_GOOD = 3420.0  # PypeIt masks the blue end: TDMIN1 is the first good wavelength
BAD = 4321.0  # one masked pixel inside


def _spec1d(path: Path) -> Path:
    """A minimal PypeIt spec1d with what write_spectrum reads (two objects, zero padding)."""
    primary = fits.Header()
    primary.update(
        {
            "TARGET": "Feige 34",
            "RA": RA,
            "DEC": DEC,
            "DATE-OBS": "2015-05-20T04:42:14.400",
            "MJD": MJD,
            "EXPTIME": EXPTIME,
            "AIRMASS": 1.05,
            "INSTRUME": "Shane Kast Blue",
        }
    )
    pad = np.zeros(7)  # PypeIt pads rows it did not extract with zero wavelength
    wave = np.concatenate([WAVE, pad])
    flux = np.concatenate([1000.0 + 100.0 * np.sin(WAVE / 50.0), pad])
    sigma = np.concatenate([np.full(WAVE.size, 20.0), pad])
    good = np.concatenate([(WAVE >= FIRST_GOOD) & (WAVE != BAD), np.zeros(7, bool)])

    def obj(name: str, scale: float) -> fits.BinTableHDU:
        columns = [
            fits.Column("OPT_WAVE", "D", array=wave),
            fits.Column("OPT_COUNTS", "D", array=flux * scale),
            fits.Column("OPT_COUNTS_SIG", "D", array=sigma),
            fits.Column("OPT_MASK", "L", array=good),
        ]
        return fits.BinTableHDU.from_columns(columns, name=name)

    hdul = fits.HDUList(
        [
            fits.PrimaryHDU(header=primary),
            obj("SPAT0300-SLIT0500-DET01", 0.05),
            obj("SPAT0512-SLIT0500-DET01", 1.0),
        ]
    )
    hdul.writeto(path)
    return path


def _write_kast(out: Path, spec1d: Path, *, file_id: str | None = None, key: str = "") -> Path:
    """The kast product as the recipe writes it (the real writer, manifest included)."""
    recipe = Recipe("kast.science", "1", CATEGORY, "unused:run", ())
    frame = RecipeInput("SCIENCE", Path("b100.fits.gz"), file_id=file_id)
    call = RecipeCall(recipe, (frame,), {}, out, step_key=key)
    write_spectrum(call, spec1d, frame)
    call.write_manifest()
    return out / call.products[0].file


@pytest.fixture(scope="module")
def kast(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kast")
    (root / "out").mkdir()
    return _write_kast(root / "out", _spec1d(root / "spec1d_b100.fits"))


def _filter(*pairs: tuple[str, str]) -> SodaFilter:
    return parse_soda(list(pairs), sync=True).filters()[0]


def _cut(path: Path, *pairs: tuple[str, str]) -> fits.HDUList:
    result = cut_fits(path, _filter(*pairs), source="ivo://example.org/product?k/f.fits")
    assert isinstance(result, Cutout), result
    hdul = fits.open(io.BytesIO(result.to_bytes()))
    hdul.verify("exception")  # a valid FITS file, as written
    return hdul


def _rows(path: Path) -> fits.FITS_rec:
    with fits.open(path) as hdul:
        return hdul["SPECTRUM"].data.copy()


def test_the_fixture_is_the_kast_product_shape(kast: Path) -> None:
    with fits.open(kast) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "SPECTRUM"]
        assert hdul[0].data is None and hdul[0].header["PROCATG"] == CATEGORY
        table = hdul["SPECTRUM"]
        assert table.columns.names == ["WAVELENGTH", "FLUX", "ERROR", "MASK"]
        assert table.columns.units[:3] == ["Angstrom", "count", "count"]
        assert len(table.data) == WAVE.size  # the zero padding is gone
        assert (table.header["TDMIN1"], table.header["TDMAX1"]) == (FIRST_GOOD, 5500.0)
        # the brighter object was chosen
        assert np.median(table.data["FLUX"]) > 500


def test_band_keeps_the_rows_in_the_interval(kast: Path) -> None:
    source = _rows(kast)
    with fits.open(kast) as original:
        primary = original[0].header
        table_header = original["SPECTRUM"].header
        table_units = original["SPECTRUM"].columns.units
    cut = _cut(kast, ("BAND", "4.0e-7 4.5e-7"))
    assert [h.name for h in cut] == ["PRIMARY", "SPECTRUM"] and cut[0].data is None
    rows = cut["SPECTRUM"].data
    wanted = (source["WAVELENGTH"] >= 4000) & (source["WAVELENGTH"] <= 4500)
    # both limits included although 4500 Angstrom is 4.500000000000001e-07 m in floats
    assert rows["WAVELENGTH"].min() == 4000.0 and rows["WAVELENGTH"].max() == 4500.0
    assert len(rows) == wanted.sum() == 501
    for name in source.names:
        assert np.array_equal(rows[name], source[name][wanted]), name
    assert cut["SPECTRUM"].columns.units == table_units
    assert table_units[0] == "Angstrom"
    assert [c.format for c in cut["SPECTRUM"].columns] == ["D", "D", "D", "B"]
    assert rows["MASK"][rows["WAVELENGTH"] == BAD].tolist() == [1]
    assert (cut["SPECTRUM"].header["TDMIN1"], cut["SPECTRUM"].header["TDMAX1"]) == (4000, 4500)
    assert cut["SPECTRUM"].header["EXTNAME"] == table_header["EXTNAME"]
    # the primary header is the product's, plus what was cut
    out = cut[0].header
    for card in primary.cards:
        if card.keyword not in ("HISTORY", "CHECKSUM", "DATASUM"):
            assert out[card.keyword] == card.value, card.keyword
    history = "\n".join(str(h) for h in out["HISTORY"])
    assert "SODA cutout of ivo://example.org/product?k/f.fits: BAND 4e-07 4.5e-07" in history
    assert f"501 of {WAVE.size} rows kept" in history
    assert len(out["HISTORY"]) == len(primary["HISTORY"]) + 2


def test_tdmin_follows_the_good_rows(kast: Path) -> None:
    cut = _cut(kast, ("BAND", "3.0e-7 3.5e-7"))
    header = cut["SPECTRUM"].header
    assert cut["SPECTRUM"].data["WAVELENGTH"].min() == 3400.0  # masked rows are kept
    assert (header["TDMIN1"], header["TDMAX1"]) == (FIRST_GOOD, 3500.0)


@pytest.mark.parametrize(
    ("band", "low", "high"),
    [
        ("-Inf 4.0e-7", 3400.0, 4000.0),
        ("5.0e-7 +Inf", 5000.0, 5500.0),
        ("-Inf +Inf", 3400.0, 5500.0),
        ("4.2e-7 4.2e-7", 4200.0, 4200.0),  # a zero-width interval still selects its pixel
        ("1e-9 3.4e-7", 3400.0, 3400.0),  # the first row only
    ],
)
def test_open_and_degenerate_intervals(kast: Path, band: str, low: float, high: float) -> None:
    rows = _cut(kast, ("BAND", band))["SPECTRUM"].data
    assert (rows["WAVELENGTH"].min(), rows["WAVELENGTH"].max()) == (low, high)
    assert len(rows) == int(high - low) + 1


def _with_unit(kast: Path, tmp_path: Path, unit: str, per_angstrom: float) -> Path:
    """The kast product with its WAVELENGTH column written in another unit."""
    with fits.open(kast) as hdul:
        table = hdul["SPECTRUM"]
        columns = [
            fits.Column(c.name, c.format, unit=c.unit, array=table.data[c.name])
            for c in table.columns
        ]
        columns[0] = fits.Column(
            "WAVELENGTH", "D", unit=unit, array=table.data["WAVELENGTH"] * per_angstrom
        )
        new = fits.BinTableHDU.from_columns(columns, header=table.header, name="SPECTRUM")
        new.header["TDMIN1"] = table.header["TDMIN1"] * per_angstrom
        new.header["TDMAX1"] = table.header["TDMAX1"] * per_angstrom
        path = tmp_path / f"spectrum_{unit.replace(' ', '')}.fits"
        fits.HDUList([fits.PrimaryHDU(header=hdul[0].header), new]).writeto(path)
    return path


@pytest.mark.parametrize(
    ("unit", "per_angstrom"), [("nm", 0.1), ("um", 1e-4), ("m", 1e-10), ("AA", 1.0)]
)
def test_wavelength_units(kast: Path, tmp_path: Path, unit: str, per_angstrom: float) -> None:
    path = _with_unit(kast, tmp_path, unit, per_angstrom)
    angstrom = _cut(kast, ("BAND", "4.0e-7 4.5e-7"))["SPECTRUM"]
    other = _cut(path, ("BAND", "4.0e-7 4.5e-7"))["SPECTRUM"]
    assert other.columns["WAVELENGTH"].unit == unit
    assert np.array_equal(other.data["FLUX"], angstrom.data["FLUX"])
    assert len(other.data) == 501
    assert math.isclose(other.header["TDMAX1"], 4500.0 * per_angstrom, rel_tol=1e-12)


@pytest.mark.parametrize("unit", ["", "count", "Hz"])
def test_band_needs_a_length_unit(kast: Path, tmp_path: Path, unit: str) -> None:
    path = _with_unit(kast, tmp_path, unit or "count", 1.0)
    if not unit:  # no TUNIT at all
        with fits.open(path, mode="update") as hdul:
            del hdul["SPECTRUM"].header["TUNIT1"]
    with pytest.raises(SodaUsageError, match="not a length"):
        cut_fits(path, _filter(("BAND", "4.0e-7 4.5e-7")))
    # a region does not need the unit
    assert isinstance(cut_fits(path, _filter(("CIRCLE", f"{RA} {DEC} 0.01"))), Cutout)


def test_no_overlap(kast: Path) -> None:
    result = cutout_bytes(kast, _filter(("BAND", "6e-7 7e-7")))
    assert isinstance(result, NoOverlap)
    assert "BAND 6e-07 7e-07 m does not overlap" in result.reason
    assert "3400-5500 Angstrom" in result.reason
    between = cut_fits(kast, _filter(("BAND", "4.2001e-7 4.2009e-7")))  # between two pixels
    assert isinstance(between, NoOverlap)


def test_regions_on_the_spectrum_position(kast: Path) -> None:
    whole = _rows(kast)
    inside = [
        ("CIRCLE", f"{RA + 0.001} {DEC} 0.01"),
        ("POS", f"CIRCLE {RA} {DEC} 0.001"),
        ("POS", f"RANGE {RA - 0.1} {RA + 0.1} {DEC - 0.1} {DEC + 0.1}"),
        ("POLYGON", f"{RA - 0.1} {DEC - 0.1} {RA + 0.1} {DEC - 0.1} {RA} {DEC + 0.1}"),
    ]
    for pair in inside:
        rows = _cut(kast, pair)["SPECTRUM"].data
        assert np.array_equal(rows, whole), pair
    both = _cut(kast, inside[0], ("BAND", "4.0e-7 4.5e-7"))["SPECTRUM"].data
    assert len(both) == 501
    outside = [
        ("CIRCLE", f"{RA + 0.02} {DEC} 0.01"),
        ("POS", f"RANGE {RA + 0.1} {RA + 0.2} -90 90"),
        ("POLYGON", f"{RA + 1} {DEC} {RA + 2} {DEC} {RA + 1.5} {DEC + 1}"),
    ]
    for pair in outside:
        result = cut_fits(kast, _filter(pair, ("BAND", "4.0e-7 4.5e-7")))
        assert isinstance(result, NoOverlap), pair
        assert "does not contain" in result.reason


def test_region_needs_a_position(kast: Path, tmp_path: Path) -> None:
    path = tmp_path / "nopos.fits"
    with fits.open(kast) as hdul:
        del hdul[0].header["RA"]
        hdul.writeto(path)
    with pytest.raises(SodaUsageError, match="no RA/DEC"):
        cut_fits(path, _filter(("CIRCLE", f"{RA} {DEC} 0.01")))
    assert isinstance(cut_fits(path, _filter(("BAND", "4e-7 5e-7"))), Cutout)


def test_time_and_pol_as_for_images(kast: Path, tmp_path: Path) -> None:
    during = _cut(kast, ("TIME", f"{MJD + 0.001} {MJD + 0.002}"))["SPECTRUM"].data
    assert len(during) == WAVE.size
    later = cut_fits(kast, _filter(("TIME", f"{MJD + 0.01} {MJD + 0.02}")))  # after 600 s
    assert isinstance(later, NoOverlap) and "TIME" in later.reason
    assert len(_cut(kast, ("POL", "I"), ("BAND", "4e-7 4.5e-7"))["SPECTRUM"].data) == 501
    assert isinstance(cut_fits(kast, _filter(("POL", "V"))), NoOverlap)
    # PypeIt's MJD gives the start when DATE-OBS is only a date (midnight)
    dated = tmp_path / "dated.fits"
    with fits.open(kast) as hdul:
        hdul[0].header["DATE-OBS"] = "2015-05-20"
        hdul.writeto(dated)
    assert isinstance(cut_fits(dated, _filter(("TIME", f"{MJD + 0.001} {MJD + 0.002}"))), Cutout)
    # without time keywords TIME cannot apply, as for an image
    path = tmp_path / "notime.fits"
    with fits.open(kast) as hdul:
        for key in ("MJD", "DATE-OBS"):
            del hdul[0].header[key]
        hdul.writeto(path)
    with pytest.raises(SodaUsageError, match="no exposure time"):
        cut_fits(path, _filter(("TIME", f"{MJD} {MJD + 1}")))


def test_other_tables_are_still_refused(tmp_path: Path) -> None:
    path = tmp_path / "table.fits"
    table = fits.BinTableHDU.from_columns([fits.Column("X", "D", array=np.arange(3.0))])
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(path)
    with pytest.raises(SodaUsageError, match="no 2-D image or 1-D spectrum"):
        cut_fits(path, _filter(("BAND", "4e-7 5e-7")))


def test_async_results_of_a_spectrum(kast: Path, tmp_path: Path) -> None:
    request = parse_soda([("BAND", "4.0e-7 4.5e-7"), ("BAND", "6e-7 7e-7")], sync=False)
    rows = cut_products(tmp_path, [(kast, "k/spectrum.fits")], request.filters())
    assert [(r["ok"], r["content_type"]) for r in rows] == [
        (True, "application/fits"),
        (False, "text/plain"),
    ]
    with fits.open(tmp_path / rows[0]["name"]) as hdul:
        assert len(hdul["SPECTRUM"].data) == 501
    assert (tmp_path / rows[1]["name"]).read_text().startswith("UsageError: no overlap: BAND")


# ------------------------------------------------------------------ through the service


@pytest.fixture
async def svc(store: Store, demo_archive: Path, tmp_path: Path):
    async with uws_service(store, demo_archive, tmp_path) as harness:
        yield harness


async def _cached_spectrum_reduction(svc: Harness, spec1d: Path) -> tuple[str, Path]:
    """Every step of reducing ``svc.complete_id`` to its target, in the step cache, the
    target step's product being a kast spectrum (so async jobs reach the cutouts at once).
    Returns the product's IVOA ID and file."""
    service = svc.runtime.service
    request, pipeline = await service.checked_request(
        await service.parse([("ID", svc.complete_id)])
    )
    plan = await asyncio.to_thread(
        service.pipelines.plan,
        pipeline,
        await service.raw_files(),
        target=request.target,
        ids=request.ids,
        parameters=request.parameters,
    )
    assert plan.complete
    target = plan.job(plan.datasets[0].target_job).step_key
    products: ProductStore = svc.runtime.products
    path = None
    for job in plan.runnable_jobs():
        key = job.step_key
        assert key is not None
        work = products.new_workdir(key, 1)
        if key == target:
            path = _write_kast(work / "out", spec1d, file_id=svc.complete_id, key=key).name
        else:
            (work / "out" / "products.json").write_text('{"products": []}')
        products.commit(key, work)
        await svc.runtime.store.steps.insert_one(
            {"step_key": key, "state": DONE, "task": job.task, "job_id": job.job_id}
        )
    assert path is not None
    return f"ivo://example.org/product?{target}/{path}", products.step_dir(target) / path


async def _spectrum(response) -> fits.FITS_rec:
    assert response.status == 200, await response.text()
    assert response.content_type == "application/fits"
    with fits.open(io.BytesIO(await response.read())) as hdul:
        hdul.verify("exception")
        return hdul["SPECTRUM"].data.copy()


def _pyvo_band(base: str, dataset: str) -> bytes:
    """pyvo's SodaQuery with BAND given in Angstrom (it sends metres)."""
    from pyvo.dal.adhoc import SodaQuery

    with requests.Session() as session:
        session.trust_env = False  # loopback only, whatever proxy the environment names
        query = SodaQuery(
            f"{base}/soda/sync", band=[4000, 4500] * u.AA, ID=dataset, session=session
        )
        stream = query.execute_stream()
        query.raise_if_error()
        return stream.read()


async def test_sync_band_on_a_spectrum_product(svc: Harness, tmp_path: Path) -> None:
    product_id, path = await _cached_spectrum_reduction(svc, _spec1d(tmp_path / "spec1d.fits"))
    band = {"ID": product_id, "BAND": "4.0e-7 4.5e-7"}
    rows = await _spectrum(await svc.client.get("/soda/sync", params=band))
    assert len(rows) == 501 and rows["WAVELENGTH"].min() == 4000.0
    assert rows["WAVELENGTH"].max() == 4500.0
    posted = await _spectrum(await svc.client.post("/soda/sync", data=band))
    assert np.array_equal(posted, rows)
    # a region around the spectrum's position, with and without BAND
    circle = f"{RA} {DEC} 0.01"
    whole = await _spectrum(await svc.client.get("/soda/sync", params={**band, "BAND": ""}))
    assert len(whole) == WAVE.size  # an empty BAND is not given: the file itself
    near = await _spectrum(
        await svc.client.get("/soda/sync", params={"ID": product_id, "CIRCLE": circle})
    )
    assert len(near) == WAVE.size
    for params in (
        {**band, "BAND": "6e-7 7e-7"},
        {**band, "CIRCLE": f"{RA + 1} {DEC} 0.01"},
        {"ID": product_id, "POL": "Q"},
    ):
        miss = await svc.client.get("/soda/sync", params=params)
        assert miss.status == 204 and await miss.read() == b"", params
    # a malformed BAND: a usage error, as for images
    bad = await svc.client.get("/soda/sync", params={**band, "BAND": "4e-7"})
    assert bad.status == 400 and (await bad.text()).startswith("UsageError: BAND")
    # pyvo over a real socket, BAND given in Angstrom
    body = await asyncio.wait_for(asyncio.to_thread(_pyvo_band, svc.base, product_id), 60)
    assert np.array_equal(fits.open(io.BytesIO(body))["SPECTRUM"].data, rows)
    # without filters the product file itself
    itself = await svc.client.get("/soda/sync", params={"ID": product_id})
    assert itself.status == 200 and await itself.read() == path.read_bytes()
    # the PNG plot beside it is still refused
    png = product_id.replace(".fits", ".png")
    assert (path.parent / path.name.replace(".fits", ".png")).is_file()
    refused = await svc.client.get("/soda/sync", params={"ID": png, "BAND": "4e-7 5e-7"})
    assert refused.status == 400 and "not a FITS image" in await refused.text()


async def test_async_band_on_a_spectrum_and_cached_sync(svc: Harness, tmp_path: Path) -> None:
    product_id, _ = await _cached_spectrum_reduction(svc, _spec1d(tmp_path / "spec1d.fits"))
    circles = [f"{RA} {DEC} 0.01", f"{RA + 1} {DEC} 0.01"]
    bands = ["4.0e-7 4.5e-7", "6e-7 7e-7"]
    job_id = await svc.create(
        [
            ("ID", svc.complete_id),
            ("PHASE", "RUN"),
            *(("CIRCLE", c) for c in circles),
            *(("BAND", b) for b in bands),
        ]
    )
    doc = await svc.wait_final(job_id)
    assert doc.findtext("uws:phase", namespaces=UWS) == "COMPLETED", etree.tostring(doc)
    results = {r.get("id"): r for r in doc.iterfind("uws:results/uws:result", UWS)}
    assert "cutout-5" not in results  # one product x two circles x two bands
    cutouts = [results[f"cutout-{n}"] for n in (1, 2, 3, 4)]
    # (inside, in band) is the only combination with data
    assert [c.get("mime-type") for c in cutouts] == ["application/fits"] + ["text/plain"] * 3
    rows = await _spectrum(await svc.client.get(cutouts[0].get(HREF).split(svc.base, 1)[1]))
    assert len(rows) == 501 and (rows["WAVELENGTH"].min(), rows["WAVELENGTH"].max()) == (
        4000.0,
        4500.0,
    )
    texts = [
        await (await svc.client.get(c.get(HREF).split(svc.base, 1)[1])).text() for c in cutouts[1:]
    ]
    assert texts[0].startswith("UsageError: no overlap: BAND 6e-07 7e-07 m")
    assert all("does not contain" in t for t in texts[1:])
    # the same reduction in sync, answered from the cache, and the product by its ID
    params = {"ID": svc.complete_id, "TARGET": "science", "BAND": bands[0]}
    synced = await _spectrum(await svc.client.get("/soda/sync", params=params))
    assert np.array_equal(synced, rows)
    direct = await _spectrum(
        await svc.client.get("/soda/sync", params={"ID": product_id, "BAND": bands[0]})
    )
    assert np.array_equal(direct, rows)
