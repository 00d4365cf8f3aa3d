"""SODA over HTTP: /soda/sync and /soda/async are one operation.

The same parameters mean the same on both routes (docs/soda.md): ``TARGET=raw`` cuts the
raw frame as archived, a product ID cuts the product, a raw ID alone is that frame reduced
to the pipeline's default target, and each gives the same bytes on both (sync answering a
reduction only from the step cache).
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest
import requests
from astropy.io import fits
from astropy.wcs import WCS
from lxml import etree

from soda_reduce.runtime.store import Store
from soda_reduce.vo.regions import separation
from soda_reduce.web.middleware import AuthConfig
from tests.support.uws_harness import UWS, Harness, uws_service

HREF = "{http://www.w3.org/1999/xlink}href"
pytestmark = pytest.mark.filterwarnings("ignore::astropy.wcs.FITSFixedWarning")


@pytest.fixture
async def svc(store: Store, demo_archive: Path, tmp_path: Path):
    auth = AuthConfig(trusted_header="X-Remote-User")
    async with uws_service(store, demo_archive, tmp_path, auth=auth) as harness:
        yield harness


def _raw_header(svc: Harness, raw_id: str) -> fits.Header:
    path = svc.archive / raw_id.split("?", 1)[1]
    with fits.open(path) as hdul:
        return next(h.header for h in hdul if h.data is not None)


def _sky(header: fits.Header, x: float, y: float) -> tuple[float, float]:
    ra, dec = WCS(header).pixel_to_world_values(x, y)
    return float(ra), float(dec)


def _pyvo_soda(
    base: str, dataset: str, circle: tuple[float, float, float], **extra: str
) -> bytes | str:
    """The body pyvo gets, or the message of the error pyvo raises."""
    from pyvo.dal import DALServiceError
    from pyvo.dal.adhoc import SodaQuery

    with requests.Session() as session:
        session.trust_env = False  # loopback only, whatever proxy the environment names
        query = SodaQuery(f"{base}/soda/sync", circle=circle, ID=dataset, session=session, **extra)
        stream = query.execute_stream()
        try:
            query.raise_if_error()
        except DALServiceError as exc:
            return str(exc)
        return stream.read()


async def _fits(response) -> fits.HDUList:
    assert response.status == 200, await response.text()
    assert response.content_type == "application/fits"
    return fits.open(io.BytesIO(await response.read()))


async def _soda_error(response, status: int, label: str) -> str:
    text = await response.text()
    assert response.status == status, text
    assert response.content_type == "text/plain"
    assert text.startswith(f"{label}: "), text
    return text


RAW = {"TARGET": "raw"}  # the raw frame as archived, no reduction


async def test_sync_raw_cutouts_and_errors(svc: Harness) -> None:
    header = _raw_header(svc, svc.complete_id)
    ra, dec = _sky(header, 20.0, 30.0)
    circle = f"{ra} {dec} {4 / 3600}"
    hdul = await _fits(
        await svc.client.get("/soda/sync", params={"ID": svc.complete_id, "CIRCLE": circle, **RAW})
    )
    cut = hdul[0].header
    assert hdul[0].data.shape[0] < 20 and hdul[0].data.shape[1] < 20
    x0, y0 = -cut["LTV1"], -cut["LTV2"]
    assert float(separation(ra, dec, *_sky(cut, 20.0 - x0, 30.0 - y0))) < 1e-9
    # POST form, lower-case names, the same cutout
    posted = await _fits(
        await svc.client.post(
            "/soda/sync", data={"id": svc.complete_id, "circle": circle, "target": "RAW"}
        )
    )
    assert (posted[0].data == hdul[0].data).all()
    # without TARGET a raw ID means its reduction, answered only once cached
    text = await _soda_error(
        await svc.client.get("/soda/sync", params={"ID": svc.complete_id, "CIRCLE": circle}),
        400,
        "UsageError",
    )
    assert "/soda/async" in text and "TARGET=raw" in text
    # no overlap: 204 without a body
    far = await svc.client.get(
        "/soda/sync",
        params={"ID": svc.complete_id, "CIRCLE": f"{(ra + 90) % 360} {dec} 0.01", **RAW},
    )
    assert far.status == 204 and await far.read() == b""
    nopol = await svc.client.get("/soda/sync", params={"ID": svc.complete_id, "POL": "V", **RAW})
    assert nopol.status == 204
    # bad values: 400 text/plain with SODA's labels
    bad = [
        ({"ID": svc.complete_id, "CIRCLE": "12 34"}, 400, "UsageError"),
        ({"ID": svc.complete_id, "POS": "BOX 1 2 3 4"}, 400, "UsageError"),
        ({"ID": svc.complete_id, "TIME": "2 1"}, 400, "UsageError"),
        ({"CIRCLE": circle}, 400, "UsageError"),
        ({"ID": "ivo://example.org/raw?nope.fits", "CIRCLE": circle}, 404, "UsageError"),
        ({"ID": svc.complete_id, "RESPONSEFORMAT": "image/png"}, 400, "UsageError"),
        ({"ID": svc.complete_id, "flat.combine": "average", **RAW}, 400, "UsageError"),
        ({"ID": svc.complete_id, "TARGET": "nosuchtask"}, 400, "UsageError"),
        (
            [("ID", svc.complete_id), *RAW.items(), *RAW.items()],
            400,
            "MultiValuedParamNotSupported",
        ),
        (
            [("ID", svc.complete_id), ("CIRCLE", circle), ("CIRCLE", circle)],
            400,
            "MultiValuedParamNotSupported",
        ),
        ([("ID", svc.complete_id), ("ID", svc.complete_id)], 400, "MultiValuedParamNotSupported"),
        (
            [("ID", svc.complete_id), ("CIRCLE", circle), ("POS", f"CIRCLE {circle}")],
            400,
            "MultiValuedParamNotSupported",
        ),
    ]
    for params, status, label in bad:
        await _soda_error(await svc.client.get("/soda/sync", params=params), status, label)
    # a calibration frame has no WCS: a spatial cutout cannot apply
    files = await svc.runtime.store.all_raw_files()
    bias = next(f.file_id for f in files if "bias" in f.path)
    text = await _soda_error(
        await svc.client.get("/soda/sync", params={"ID": bias, "CIRCLE": circle, **RAW}),
        400,
        "UsageError",
    )
    assert "WCS" in text
    # pyvo's SODA query (as processed() sends it), over a real socket
    fetched = await asyncio.wait_for(
        asyncio.to_thread(_pyvo_soda, svc.base, svc.complete_id, (ra, dec, 4 / 3600), **RAW), 60
    )
    assert fits.open(io.BytesIO(fetched))[0].data.tolist() == hdul[0].data.tolist()
    message = await asyncio.wait_for(
        asyncio.to_thread(_pyvo_soda, svc.base, svc.complete_id, (ra, dec, 0.01), POL="Z", **RAW),
        60,
    )
    assert "UsageError: POL: unknown state" in message
    # a raw frame without filters: the whole image as plain FITS
    whole = await _fits(await svc.client.get("/soda/sync", params={"ID": svc.complete_id, **RAW}))
    assert whole[0].data.shape == (header["NAXIS2"], header["NAXIS1"])


async def _async_bodies(
    svc: Harness, pairs: list[tuple[str, str]], owner: dict[str, str] | None = None
) -> tuple[list[str], list[bytes]]:
    """An async job of these parameters run to COMPLETED: its result ids and cutout bodies
    (and its page for people answers)."""
    job_id = await svc.create([*pairs, ("PHASE", "RUN")], headers=owner)
    doc = await svc.wait_final(job_id)
    assert doc.findtext("uws:phase", namespaces=UWS) == "COMPLETED", etree.tostring(doc).decode()
    results = list(doc.iterfind("uws:results/uws:result", UWS))
    bodies = []
    for result in results:
        if result.get("id").startswith("cutout-"):
            response = await svc.client.get(result.get(HREF).removeprefix(svc.base), headers=owner)
            assert response.status == 200
            bodies.append(await response.read())
    page = await svc.client.get(f"/jobs/{job_id}", headers=owner)
    assert page.status == 200 and "COMPLETED" in await page.text()
    return [r.get("id") for r in results], bodies


async def _sync_body(svc: Harness, pairs: list[tuple[str, str]]) -> bytes:
    response = await svc.client.get("/soda/sync", params=pairs)
    assert response.status == 200, await response.text()
    return await response.read()


async def test_raw_frames_as_archived_are_the_same_cut_on_sync_and_async(svc: Harness) -> None:
    header = _raw_header(svc, svc.complete_id)
    ra, dec = _sky(header, 20.0, 30.0)
    ra2, dec2 = _sky(header, 41.0, 9.0)
    pairs = [("ID", svc.complete_id), ("TARGET", "raw")]
    circles = [("CIRCLE", f"{ra} {dec} {4 / 3600}"), ("CIRCLE", f"{ra2} {dec2} {3 / 3600}")]
    ids, bodies = await _async_bodies(svc, [*pairs, *circles])
    # a job that only cuts lists its cutouts, nothing of a reduction
    assert ids == ["cutout-1", "cutout-2"]
    for circle, body in zip(circles, bodies, strict=True):
        assert body == await _sync_body(svc, [*pairs, circle])
        cut = fits.open(io.BytesIO(body))[0]
        assert cut.data.shape[0] < header["NAXIS2"] and cut.data.shape[1] < header["NAXIS1"]
    # without filters: the whole frame as plain FITS, on both
    _, (whole,) = await _async_bodies(svc, pairs)
    assert whole == await _sync_body(svc, pairs)
    assert fits.open(io.BytesIO(whole))[0].data.shape == (header["NAXIS2"], header["NAXIS1"])
    # what a raw cutout refuses, at creation, as /soda/sync does
    for bad, fragment in (
        ([*pairs, ("flat.combine", "average")], "recipe parameters"),
        ([("ID", "ivo://example.org/raw?no/such.fits"), ("TARGET", "raw")], "unknown ID"),
        ([("TARGET", "raw")], "ID is required"),
    ):
        response = await svc.client.post("/soda/async", data=bad, allow_redirects=False)
        assert response.status == 400, await response.text()
        assert fragment in await response.text()


async def test_async_cutouts_and_cached_sync_reduction(svc: Harness) -> None:
    header = _raw_header(svc, svc.complete_id)
    ra, dec = _sky(header, 20.0, 30.0)
    ra2, dec2 = _sky(header, 45.0, 12.0)
    circles = [
        f"{ra} {dec} {4 / 3600}",
        f"{ra2} {dec2} {3 / 3600}",
        f"{(ra + 90) % 360} {dec} 0.01",
    ]
    # nothing is cached yet: sync refuses the reduction and points to async
    params = {"ID": svc.complete_id, "CIRCLE": circles[0]}
    text = await _soda_error(await svc.client.get("/soda/sync", params=params), 400, "UsageError")
    assert "/soda/async" in text and "TARGET=raw" in text
    owner: dict[str, str] = {}  # anonymous: the harness waits without an identity
    job_id = await svc.create(
        [("ID", svc.complete_id), ("PHASE", "RUN"), *(("CIRCLE", c) for c in circles)],
        headers=owner,
    )
    doc = await svc.wait_final(job_id)
    phase = doc.findtext("uws:phase", namespaces=UWS)
    assert phase == "COMPLETED", etree.tostring(doc).decode()
    results = {r.get("id"): r for r in doc.iterfind("uws:results/uws:result", UWS)}
    cutouts = [results[f"cutout-{n}"] for n in (1, 2, 3)]
    assert "cutout-4" not in results  # one target product x three circles
    bodies = []
    for result, (x, y) in zip(cutouts[:2], [(20.0, 30.0), (45.0, 12.0)], strict=True):
        href = result.get(HREF)
        assert href.startswith(f"{svc.base}/soda/async/{job_id}/results/")
        assert result.get("mime-type") == "application/fits"
        hdul = await _fits(await svc.client.get(href.split(svc.base, 1)[1], headers=owner))
        cut = hdul[0].header
        assert [h.name for h in hdul] == ["PRIMARY", "MASK", "UNCERT"]
        assert cut["PROCATG"] == "REDUCED_SCIENCE"
        sky = _sky(cut, x + cut["LTV1"], y + cut["LTV2"])
        assert float(separation(*_sky(header, x, y), *sky)) < 1e-9
        bodies.append(hdul[0].data.shape)
    assert bodies[0] != bodies[1]
    miss = await svc.client.get(cutouts[2].get(HREF).split(svc.base, 1)[1], headers=owner)
    assert cutouts[2].get("mime-type") == "text/plain"
    assert (await miss.text()).startswith("UsageError: no overlap")
    # results are read as the job is: an anonymous job's by whoever holds the URL,
    # an authenticated owner's by that owner only (tests/test_isolation.py)
    other = await svc.client.get(
        cutouts[0].get(HREF).split(svc.base, 1)[1], headers={"X-Remote-User": "eve"}
    )
    assert other.status == 200
    # the products table still answers at results/result
    table = await svc.client.get(f"/soda/async/{job_id}/results/result", headers=owner)
    assert table.status == 200 and "votable" in table.content_type
    # every step is cached now: the same reduction is answered synchronously, byte for byte
    response = await svc.client.get(cutouts[0].get(HREF).split(svc.base, 1)[1], headers=owner)
    first_body = await response.read()
    synced_body = await _sync_body(svc, list(params.items()))
    assert synced_body == first_body
    explicit = await _sync_body(svc, [*params.items(), ("TARGET", "science")])  # the default
    assert explicit == first_body
    synced = fits.open(io.BytesIO(synced_body))
    first = fits.open(io.BytesIO(first_body))
    assert "ivo://example.org/product?" in str(synced[0].header["HISTORY"])
    # the product itself by its ID: a cutout, and the whole file without filters
    job = await svc.runtime.service.jobs.get(job_id, any_owner=True)
    target = next(
        r for r in job.results if r["target"] and r["main"] and r["file"].endswith(".fits")
    )
    product_id = f"ivo://example.org/product?{target['step_key']}/{target['file']}"
    product = await _fits(
        await svc.client.get("/soda/sync", params={"ID": product_id, "CIRCLE": circles[0]})
    )
    assert (product[0].data == first[0].data).all()
    whole = await svc.client.get("/soda/sync", params={"ID": product_id})
    on_disk = (svc.runtime.products.step_dir(target["step_key"]) / target["file"]).read_bytes()
    assert whole.status == 200 and await whole.read() == on_disk
    png = next(r for r in job.results if r["content_type"] == "image/png")
    await _soda_error(
        await svc.client.get(
            "/soda/sync",
            params={"ID": f"ivo://example.org/product?{png['step_key']}/{png['file']}"},
        ),
        400,
        "UsageError",
    )
    await _soda_error(
        await svc.client.get("/soda/sync", params={"ID": product_id, "TARGET": "science"}),
        400,
        "UsageError",
    )
    # async takes product IDs too: a job that cuts them, the same bytes as sync
    product_pairs = [("ID", product_id), ("CIRCLE", circles[1])]
    ids, (cut,) = await _async_bodies(svc, product_pairs, owner)
    assert ids == ["cutout-1"]
    assert cut == await _sync_body(svc, product_pairs)
    _, (itself,) = await _async_bodies(svc, [("ID", product_id)], owner)
    assert itself == on_disk  # no filter: the product as it is, as sync serves it
    for bad, fragment in (
        ([("ID", product_id), ("TARGET", "science")], "TARGET"),
        ([("ID", product_id), ("TARGET", "raw")], "TARGET"),
        ([("ID", product_id), ("flat.combine", "average")], "recipe parameters"),
        ([("ID", product_id), ("ID", svc.complete_id)], "product IDs and raw IDs"),
        ([("ID", f"ivo://example.org/product?{'0' * 64}/x.fits")], "unknown ID"),
        ([("ID", f"ivo://example.org/product?{png['step_key']}/{png['file']}")], "not a FITS"),
    ):
        response = await svc.client.post("/soda/async", data=bad, allow_redirects=False)
        assert response.status == 400, await response.text()
        assert fragment in await response.text(), bad


async def test_async_job_refuses_malformed_soda_parameters(svc: Harness) -> None:
    for name, value in [("CIRCLE", "1 2"), ("POLYGON", "1 1 2 2"), ("BAND", "x y"), ("POL", "Z")]:
        response = await svc.client.post(
            "/soda/async", data={"ID": svc.complete_id, name: value}, allow_redirects=False
        )
        assert response.status == 400, (name, await response.text())
        assert name in await response.text()
    job_id = await svc.create({"ID": svc.complete_id, "CIRCLE": "10 20 0.1", "POL": "I"})
    doc = await svc.job(job_id)
    params = {p.get("id"): p.text for p in doc.iterfind("uws:parameters/uws:parameter", UWS)}
    assert params["CIRCLE"] == "10 20 0.1" and params["POL"] == "I"
