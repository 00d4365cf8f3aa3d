"""SODA over HTTP: /soda/sync cutouts of raw files and products, async cutout results."""

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


async def test_sync_raw_cutouts_and_errors(svc: Harness) -> None:
    header = _raw_header(svc, svc.complete_id)
    ra, dec = _sky(header, 20.0, 30.0)
    circle = f"{ra} {dec} {4 / 3600}"
    hdul = await _fits(
        await svc.client.get("/soda/sync", params={"ID": svc.complete_id, "CIRCLE": circle})
    )
    cut = hdul[0].header
    assert hdul[0].data.shape[0] < 20 and hdul[0].data.shape[1] < 20
    x0, y0 = -cut["LTV1"], -cut["LTV2"]
    assert float(separation(ra, dec, *_sky(cut, 20.0 - x0, 30.0 - y0))) < 1e-9
    # POST form, lower-case names, the same cutout
    posted = await _fits(
        await svc.client.post("/soda/sync", data={"id": svc.complete_id, "circle": circle})
    )
    assert (posted[0].data == hdul[0].data).all()
    # no overlap: 204 without a body
    far = await svc.client.get(
        "/soda/sync", params={"ID": svc.complete_id, "CIRCLE": f"{(ra + 90) % 360} {dec} 0.01"}
    )
    assert far.status == 204 and await far.read() == b""
    nopol = await svc.client.get("/soda/sync", params={"ID": svc.complete_id, "POL": "V"})
    assert nopol.status == 204
    # bad values: 400 text/plain with SODA's labels
    bad = [
        ({"ID": svc.complete_id, "CIRCLE": "12 34"}, 400, "UsageError"),
        ({"ID": svc.complete_id, "POS": "BOX 1 2 3 4"}, 400, "UsageError"),
        ({"ID": svc.complete_id, "TIME": "2 1"}, 400, "UsageError"),
        ({"CIRCLE": circle}, 400, "UsageError"),
        ({"ID": "ivo://example.org/raw?nope.fits", "CIRCLE": circle}, 404, "UsageError"),
        ({"ID": svc.complete_id, "RESPONSEFORMAT": "image/png"}, 400, "UsageError"),
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
        await svc.client.get("/soda/sync", params={"ID": bias, "CIRCLE": circle}), 400, "UsageError"
    )
    assert "WCS" in text
    # pyvo's SODA query (as processed() sends it), over a real socket
    fetched = await asyncio.wait_for(
        asyncio.to_thread(_pyvo_soda, svc.base, svc.complete_id, (ra, dec, 4 / 3600)), 60
    )
    assert fits.open(io.BytesIO(fetched))[0].data.tolist() == hdul[0].data.tolist()
    message = await asyncio.wait_for(
        asyncio.to_thread(_pyvo_soda, svc.base, svc.complete_id, (ra, dec, 0.01), POL="Z"), 60
    )
    assert "UsageError: POL: unknown state" in message
    # a raw frame without filters: the whole image as plain FITS
    whole = await _fits(await svc.client.get("/soda/sync", params={"ID": svc.complete_id}))
    assert whole[0].data.shape == (header["NAXIS2"], header["NAXIS1"])


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
    params = {"ID": svc.complete_id, "TARGET": "science", "CIRCLE": circles[0]}
    text = await _soda_error(await svc.client.get("/soda/sync", params=params), 400, "UsageError")
    assert "/soda/async" in text
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
    # every step is cached now: the same reduction is answered synchronously
    synced = await _fits(await svc.client.get("/soda/sync", params=params))
    first = fits.open(
        io.BytesIO(
            await (
                await svc.client.get(cutouts[0].get(HREF).split(svc.base, 1)[1], headers=owner)
            ).read()
        )
    )
    assert (synced[0].data == first[0].data).all()
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
