"""DataLink 1.1 at /datalink, raw files and raw previews, through the whole in-process stack.

One service for the module (tests/support/uws_harness.py: real store, worker, recipes on the
small demo archive) with one reduction completed up front, so products exist. Checked:

- the links of a raw file, a product, several IDs and an unknown ID, cell by cell;
- MAXREC (whole IDs only, OVERFLOW), RESPONSEFORMAT, POST and case-insensitive names;
- STILTS ``votlint`` and ``datalinklint`` on every kind of response;
- pyvo, the client astronomers use: ``DatalinkResults.from_result_url``, ``iter_procs`` /
  ``get_first_proc``, a reduction started from a raw file's #proc descriptor exactly as a
  portal would and driven to COMPLETED with ``AsyncTAPJob``, and a SODA ``processed()``
  cutout through a product's sync descriptor.

pyvo blocks on HTTP while the server runs on this test's event loop, so every pyvo call runs
in a thread (``asyncio.to_thread``) under a timeout. Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import io
import re
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import pytest
import requests
from astropy.io import fits
from astropy.io.votable import parse
from astropy.wcs import WCS
from lxml import etree

from soda_reduce.pipelines import get_cascade
from soda_reduce.reduction.organisation import classify_all
from soda_reduce.reduction.planner import plan_reduction
from soda_reduce.runtime.store import EmbeddedMongo, Store
from soda_reduce.vo.datalink import COLUMNS, DATALINK_MEDIA_TYPE, LINKS_STANDARD_ID
from tests.support.tools import stilts as _stilts
from tests.support.uws_harness import Harness, uws_service
from tests.test_uws_clients import NO_NETWORK, _run

T = TypeVar("T")
VOT = {"v": "http://www.ivoa.net/xml/VOTable/v1.3"}
AUTHORITY = "example.org"  # Settings' default, the harness's


@dataclass
class Service:
    h: Harness
    raw_id: str  # the science frame reduced up front
    product_id: str  # its REDUCED_SCIENCE
    product: dict[str, Any]  # the job's result row for it

    @property
    def base(self) -> str:
        return self.h.base

    async def get(self, query: str, status: int = 200) -> bytes:
        response = await self.h.client.get(f"/datalink?{query}")
        body = await response.read()
        assert response.status == status, body.decode(errors="replace")
        return body

    async def links(self, *ids: str, extra: str = "") -> bytes:
        query = "&".join(f"ID={quote(i, safe='')}" for i in ids)
        return await self.get(query + extra)


@pytest.fixture(scope="module")
async def svc(
    mongo: EmbeddedMongo, demo_archive: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Service]:
    db = Store.connect(mongo.url, f"test_{uuid.uuid4().hex[:12]}")
    await db.ensure_indexes()
    try:
        async with uws_service(db, demo_archive, tmp_path_factory.mktemp("datalink")) as h:
            job_id = await h.create({"ID": h.complete_id, "PHASE": "RUN"})
            doc = await h.wait_final(job_id)
            assert doc.findtext("{*}phase") == "COMPLETED", etree.tostring(doc).decode()
            record = await h.runtime.service.jobs.get(job_id, any_owner=True)
            row = next(r for r in record.results if r["category"] == "REDUCED_SCIENCE")
            pid = f"ivo://{AUTHORITY}/product?{row['step_key']}/{row['file']}"
            yield Service(h, h.complete_id, pid, row)
    finally:
        await db.drop()
        await db.close()


def table(body: bytes) -> list[dict[str, Any]]:
    """The links as dicts (masked cells None), after checking the results RESOURCE."""
    votable = parse(io.BytesIO(body), verify="exception")
    resource = votable.resources[0]
    assert resource.type == "results"
    infos = {i.name: i.value for i in resource.infos}
    assert infos["standardID"] == LINKS_STANDARD_ID
    links = resource.tables[0]
    assert [f.name for f in links.fields] == [c.name for c in COLUMNS]
    rows = []
    for record in links.array:
        rows.append(
            {
                name: (None if record.mask[name] else _plain(record[name]))
                for name in links.array.dtype.names
            }
        )
    return rows


def _plain(value: Any) -> Any:
    """A Python value; an empty char cell is VOTable's null (astropy reads it as "")."""
    value = value.item() if hasattr(value, "item") else value
    return None if value == "" else value


def status(body: bytes) -> str:
    root = etree.fromstring(body)
    return root.find("v:RESOURCE[@type='results']/v:INFO[@name='QUERY_STATUS']", VOT).get("value")


def descriptors(body: bytes) -> dict[str, etree._Element]:
    root = etree.fromstring(body)
    found = root.findall("v:RESOURCE[@type='meta'][@utype='adhoc:service']", VOT)
    return {r.get("ID"): r for r in found}


def param_value(resource: etree._Element, name: str) -> str:
    return resource.find(f"v:PARAM[@name='{name}']", VOT).get("value")


def inputs(resource: etree._Element) -> dict[str, etree._Element]:
    group = resource.find("v:GROUP[@name='inputParams']", VOT)
    return {p.get("name"): p for p in group.findall("v:PARAM", VOT)}


def by_semantics(rows: list[dict[str, Any]], semantics: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["semantics"] == semantics]


async def in_thread(fn: Callable[[], T], timeout: float = 60) -> T:
    return await asyncio.wait_for(asyncio.to_thread(fn), timeout)


def session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False  # never a proxy from the environment: loopback only
    return s


# ----------------------------------------------------------------------------- raw files


async def test_raw_file_links(svc: Service, demo_archive: Path) -> None:
    body = await svc.links(svc.raw_id)
    rows = table(body)
    assert status(body) == "OK"
    assert {r["ID"] for r in rows} == {svc.raw_id}
    assert {r["semantics"] for r in rows} == {
        "#this",
        "#preview",
        "#proc",
        "#cutout",
        "#calibration",
    }
    for row in rows:  # exactly one of access_url, service_def, error_message
        assert sum(row[k] is not None for k in ("access_url", "service_def", "error_message")) == 1

    (this,) = by_semantics(rows, "#this")
    path = svc.raw_id.split("?", 1)[1]
    assert this["access_url"] == f"{svc.base}/archive/files/{path}"
    assert this["content_type"] == "application/fits"
    assert this["content_qualifier"] == "#image"
    assert this["content_length"] == (demo_archive / path).stat().st_size
    response = await svc.h.client.get(this["access_url"].removeprefix(svc.base))
    assert response.status == 200 and response.content_type == "application/fits"
    assert await response.read() == (demo_archive / path).read_bytes()

    (preview,) = by_semantics(rows, "#preview")
    response = await svc.h.client.get(preview["access_url"].removeprefix(svc.base))
    assert response.status == 200 and response.content_type == "image/png"
    png = await response.read()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    again = table(await svc.links(svc.raw_id))  # now cached: its size is known
    assert by_semantics(again, "#preview")[0]["content_length"] == len(png)

    calibrations = by_semantics(rows, "#calibration")
    assert {r["local_semantics"] for r in calibrations} >= {"BIAS", "FLAT"}
    for row in calibrations:
        assert row["quality_level"] in (0, 1, 2), row
        assert f"quality level {row['quality_level']}" in row["description"]
        assert row["access_url"].startswith(f"{svc.base}/archive/files/")
        assert (demo_archive / row["access_url"].split("/archive/files/", 1)[1]).is_file()
    # the calibrations are the planner's: the same files its plan for this frame reads
    files = await svc.h.runtime.service.raw_files()
    plan = plan_reduction(get_cascade("ccd"), files, ids=[svc.raw_id])
    planned = {i.path for j in plan.jobs for i in j.inputs if i.path and i.file_id != svc.raw_id}
    assert {r["access_url"].split("/archive/files/", 1)[1] for r in calibrations} == planned


def options(param: etree._Element) -> list[str]:
    return [o.get("value") for o in param.iterfind("v:VALUES/v:OPTION", VOT)]


async def test_raw_file_reduce_descriptor(svc: Service) -> None:
    """Only ID is given (from the row); TARGET and recipe parameters are the user's, empty,
    their defaults in the descriptions and among the options (DataLink 1.1 4.1)."""
    body = await svc.links(svc.raw_id)
    (proc,) = by_semantics(table(body), "#proc")
    resource = descriptors(body)[proc["service_def"]]
    assert param_value(resource, "standardID") == "ivo://ivoa.net/std/SODA#async-1.0"
    assert param_value(resource, "accessURL") == f"{svc.base}/soda/async"
    params = inputs(resource)
    assert params["ID"].get("ref") == "ID" and params["ID"].get("value") == ""
    links_id = etree.fromstring(body).find("v:RESOURCE/v:TABLE/v:FIELD[@name='ID']", VOT)
    assert links_id.get("ID") == "ID"  # the FIELD the ref names
    fixed = [n for n, p in params.items() if p.get("value")]
    assert fixed == []  # nothing else is imposed on the user
    target = params["TARGET"]
    assert options(target) == ["science", "stack", "raw"]
    assert "default science" in target.findtext("v:DESCRIPTION", namespaces=VOT)
    combine = params["flat.combine"]
    assert options(combine) == ["median", "average"]
    assert "default median" in combine.findtext("v:DESCRIPTION", namespaces=VOT)
    clip = params["bias.sigma_clip"]
    assert clip.get("datatype") == "double" and clip.get("value") == ""
    assert clip.find("v:VALUES/v:MIN", VOT).get("value") == "1.0"
    assert "default 3.0" in clip.findtext("v:DESCRIPTION", namespaces=VOT)
    use_dark = params["use_dark"]
    assert use_dark.get("datatype") == "boolean" and options(use_dark) == ["T", "F"]
    assert "default T" in use_dark.findtext("v:DESCRIPTION", namespaces=VOT)
    # SODA parameters: user-specified (value ""), with UCDs, units and limits from the WCS
    expected = {
        "POS": (None, "pos.outline;obs"),
        "CIRCLE": ("deg", "pos.outline;obs"),
        "POLYGON": ("deg", "pos.outline;obs"),
        "BAND": ("m", "em.wl;stat.interval"),
        "TIME": ("d", "time.interval;obs.exposure"),
        "POL": (None, "meta.code;phys.polarization"),
    }
    for name, (unit, ucd) in expected.items():
        assert params[name].get("value") == "", name
        assert params[name].get("unit") == unit and params[name].get("ucd") == ucd, name
    circle = [float(v) for v in params["CIRCLE"].find("v:VALUES/v:MAX", VOT).get("value").split()]
    raw = (await svc.h.runtime.store.raw_files_by_id([svc.raw_id]))[0]
    assert circle[0] == pytest.approx(float(raw.header["CRVAL1"]), abs=0.02)
    assert circle[1] == pytest.approx(float(raw.header["CRVAL2"]), abs=0.02)
    time_min = float(params["TIME"].find("v:VALUES/v:MIN", VOT).get("value"))
    assert 60000 < time_min < 70000  # an MJD


async def test_raw_file_cutout_descriptor(svc: Service) -> None:
    """#cutout: SODA sync on the frame as archived, TARGET fixed to raw."""
    body = await svc.links(svc.raw_id)
    (cutout,) = by_semantics(table(body), "#cutout")
    assert cutout["content_type"] == "application/fits"
    resource = descriptors(body)[cutout["service_def"]]
    assert param_value(resource, "standardID") == "ivo://ivoa.net/std/SODA#sync-1.0"
    assert param_value(resource, "accessURL") == f"{svc.base}/soda/sync"
    params = inputs(resource)
    assert params["ID"].get("ref") == "ID"
    assert {n: p.get("value") for n, p in params.items() if p.get("value")} == {"TARGET": "raw"}
    assert params["CIRCLE"].find("v:VALUES/v:MAX", VOT) is not None
    example = param_value(resource, "exampleURL")
    assert "TARGET=raw" in example and "CIRCLE=" in example
    response = await svc.h.client.get(example.removeprefix(svc.base))
    assert response.status == 200, await response.text()
    header = fits.getheader(io.BytesIO(await response.read()))
    raw = (await svc.h.runtime.store.raw_files_by_id([svc.raw_id]))[0]
    assert 0 < header["NAXIS1"] < raw.header["NAXIS1"]  # a cutout of the raw frame itself
    assert "PROCATG" not in header


# ----------------------------------------------------------------------------- products


async def test_product_links(svc: Service) -> None:
    body = await svc.links(svc.product_id)
    rows = table(body)
    key, name = svc.product["step_key"], svc.product["file"]
    assert {r["semantics"] for r in rows} == {
        "#this",
        "#preview",
        "#progenitor",
        "#calibration",
        "#auxiliary",
        "#cutout",
    }
    (this,) = by_semantics(rows, "#this")
    assert this["access_url"] == f"{svc.base}/products/{key}/{name}"
    assert this["content_type"] == "application/fits"
    assert this["content_length"] == svc.product["size"]
    assert this["content_qualifier"] == "#image"
    (preview,) = by_semantics(rows, "#preview")
    assert preview["content_type"] == "image/png"
    response = await svc.h.client.get(preview["access_url"].removeprefix(svc.base))
    assert response.status == 200 and (await response.read()).startswith(b"\x89PNG")

    (progenitor,) = by_semantics(rows, "#progenitor")
    assert progenitor["access_url"] == f"{svc.base}/archive/files/{svc.raw_id.split('?', 1)[1]}"
    every = by_semantics(rows, "#calibration")
    calibrations = {r["local_semantics"]: r for r in every if "/products/" in r["access_url"]}
    assert set(calibrations) == {"MASTER_BIAS", "MASTER_DARK", "MASTER_FLAT"}
    # and the raw frames behind those master calibrations, from the upstream manifests
    behind = [r for r in every if "/archive/files/" in r["access_url"]]
    assert {r["local_semantics"] for r in behind} == {"BIAS", "DARK", "FLAT"}
    assert len(behind) >= 9 and len({r["access_url"] for r in behind}) == len(behind)
    for row in calibrations.values():
        assert row["access_url"].startswith(f"{svc.base}/products/")
        response = await svc.h.client.get(row["access_url"].removeprefix(svc.base))
        assert response.status == 200
        header = fits.getheader(io.BytesIO(await response.read()))
        assert header["PROCATG"] == row["local_semantics"]
    auxiliary = {r["content_type"]: r for r in by_semantics(rows, "#auxiliary")}
    assert set(auxiliary) == {"text/plain", "application/json"}
    response = await svc.h.client.get(auxiliary["application/json"]["access_url"][len(svc.base) :])
    manifest = await response.json()
    assert any(p.get("qc") for p in manifest["products"])

    (cutout,) = by_semantics(rows, "#cutout")
    resource = descriptors(body)[cutout["service_def"]]
    assert param_value(resource, "standardID") == "ivo://ivoa.net/std/SODA#sync-1.0"
    assert param_value(resource, "accessURL") == f"{svc.base}/soda/sync"
    params = inputs(resource)
    assert params["ID"].get("ref") == "ID" and params["ID"].get("value") == ""
    assert params["CIRCLE"].find("v:VALUES/v:MAX", VOT) is not None
    assert "TARGET" not in params
    assert [n for n, p in params.items() if p.get("value")] == []
    # DataLink 1.1 exampleURL: a real call, a cutout of the central part
    example = param_value(resource, "exampleURL")
    assert example.startswith(f"{svc.base}/soda/sync?ID=") and "CIRCLE=" in example
    response = await svc.h.client.get(example.removeprefix(svc.base))
    assert response.status == 200, await response.text()
    assert (await response.read()).startswith(b"SIMPLE  =")


async def test_product_without_recorded_inputs_uses_fits_provenance(svc: Service) -> None:
    """Products registered before the worker recorded inputs: PROVn keywords say the same."""
    before = table(await svc.links(svc.product_id))
    products = svc.h.runtime.store.products
    key = f"{svc.product['step_key']}/{svc.product['file']}"
    doc = await products.find_one({"product_id": key})
    await products.update_one({"product_id": key}, {"$unset": {"inputs": ""}})
    try:
        after = table(await svc.links(svc.product_id))
    finally:
        await products.update_one({"product_id": key}, {"$set": {"inputs": doc["inputs"]}})
    pick = lambda rows: sorted(  # noqa: E731
        (r["semantics"], r["access_url"]) for r in rows if r["semantics"] != "#cutout"
    )
    assert pick(after) == pick(before)


async def test_unknown_and_several_ids(svc: Service) -> None:
    unknown = f"ivo://{AUTHORITY}/raw?no/such/file.fits"
    body = await svc.links(unknown)
    (row,) = table(body)
    assert row["ID"] == unknown and row["semantics"] == "#this"
    assert row["error_message"].startswith("NotFoundFault: ")
    assert all(row[k] is None for k in row if k not in ("ID", "semantics", "error_message"))
    assert status(body) == "OK"

    ids = [svc.raw_id, unknown, svc.product_id, f"ivo://elsewhere.org/product?{'a' * 64}/x.fits"]
    body = await svc.links(*ids)
    rows = table(body)
    order = [r["ID"] for r in rows]
    assert list(dict.fromkeys(order)) == ids  # every ID, in order, rows consecutive
    # every service_def names a descriptor of this document, and each descriptor is used
    assert {r["service_def"] for r in rows if r["service_def"]} == set(descriptors(body))


async def test_maxrec_keeps_whole_ids(svc: Service) -> None:
    n_raw = len(table(await svc.links(svc.raw_id)))
    n_product = len(table(await svc.links(svc.product_id)))
    both = (svc.raw_id, svc.product_id)

    body = await svc.links(*both, extra=f"&MAXREC={n_raw + n_product}")
    assert status(body) == "OK" and len(table(body)) == n_raw + n_product
    body = await svc.links(*both, extra=f"&MAXREC={n_raw + n_product - 1}")
    rows = table(body)
    assert status(body) == "OVERFLOW"
    assert {r["ID"] for r in rows} == {svc.raw_id} and len(rows) == n_raw
    assert set(descriptors(body)) == {r["service_def"] for r in rows if r["service_def"]}
    body = await svc.links(*both, extra="&maxrec=1")  # not even the first ID fits
    assert status(body) == "OVERFLOW" and table(body) == []
    body = await svc.links(*both, extra="&MAXREC=0")
    assert status(body) == "OVERFLOW" and table(body) == []
    body = await svc.get("MAXREC=0")  # no ID: an empty table, nothing left out
    assert status(body) == "OK" and table(body) == []
    await svc.get("ID=x&MAXREC=-1", status=400)
    await svc.get("ID=x&MAXREC=ten", status=400)


async def test_responseformat_post_and_names(svc: Service) -> None:
    client = svc.h.client
    for value, media in (
        (None, DATALINK_MEDIA_TYPE),
        ("votable", DATALINK_MEDIA_TYPE),
        ("application/x-votable+xml", "application/x-votable+xml"),
        ("application/x-votable+xml;content=datalink", DATALINK_MEDIA_TYPE),
        ("application/x-votable+xml; serialization=TABLEDATA", "application/x-votable+xml"),
        ("text/xml", "text/xml"),
    ):
        params = (
            {"ID": svc.raw_id} if value is None else {"ID": svc.raw_id, "responseformat": value}
        )
        response = await client.get("/datalink", params=params)
        assert response.status == 200, value
        assert response.headers["Content-Type"] == media, value
        assert len(table(await response.read())) > 3
    for bad in ("csv", "application/json", "text/html"):
        response = await client.get("/datalink", params={"ID": svc.raw_id, "RESPONSEFORMAT": bad})
        assert response.status == 400, bad
        body = await response.read()
        assert status(body) == "ERROR" and b"RESPONSEFORMAT" in body
    # POST form, lower-case names, several ID values
    response = await client.post("/datalink", data=[("id", svc.raw_id), ("Id", svc.product_id)])
    assert response.status == 200
    assert {r["ID"] for r in table(await response.read())} == {svc.raw_id, svc.product_id}
    response = await client.get("/datalink", params=[("RESPONSEFORMAT", "votable")] * 2)
    assert response.status == 400  # a single-valued parameter given twice


# ----------------------------------------------------------------------------- files


async def test_archive_files_only_serves_indexed_files(svc: Service, demo_archive: Path) -> None:
    client = svc.h.client
    path = svc.raw_id.split("?", 1)[1]
    response = await client.get(f"/archive/files/{path}", headers={"Range": "bytes=0-79"})
    assert response.status == 206
    assert (await response.read()).startswith(b"SIMPLE  =")
    assert (demo_archive / "_truth").is_dir()  # on disk, never indexed
    truth = next(p for p in (demo_archive / "_truth").rglob("*") if p.is_file())
    rel = truth.relative_to(demo_archive).as_posix()
    for bad in (
        rel,
        f"2024-01-04/../{rel}",
        "2024-01-04/%2e%2e/%2e%2e/etc/passwd",
        "..%2f..%2fetc%2fpasswd",
        "%2Fetc%2Fpasswd",
        f"{path}/../../{rel}",
        "no/such.fits",
    ):
        for prefix in ("/archive/files/", "/previews/raw/"):
            suffix = ".png" if prefix == "/previews/raw/" else ""
            response = await client.get(prefix + bad + suffix)
            assert response.status == 404, (prefix, bad, response.status)
            assert b"SIMPLE" not in await response.read()


# ----------------------------------------------------------------------------- STILTS


async def test_stilts_votlint_and_datalinklint(svc: Service, tmp_path: Path) -> None:
    stilts = _stilts()
    unknown = f"ivo://{AUTHORITY}/raw?missing.fits"
    bias_rows = [r for r in table(await svc.links(svc.raw_id)) if r["local_semantics"] == "BIAS"]
    bias = f"ivo://{AUTHORITY}/raw?{bias_rows[0]['access_url'].split('/archive/files/', 1)[1]}"
    bias_body = await svc.links(bias)
    (proc,) = by_semantics(table(bias_body), "#proc")  # a bias frame is reduced by task bias
    target = inputs(descriptors(bias_body)[proc["service_def"]])["TARGET"]
    assert target.get("value") == "" and options(target) == ["bias", "raw"]
    assert "default bias" in target.findtext("v:DESCRIPTION", namespaces=VOT)
    documents = {
        "calibration-frame": bias_body,
        "raw": await svc.links(svc.raw_id),
        "product": await svc.links(svc.product_id),
        "several": await svc.links(svc.raw_id, unknown, svc.product_id),
        "unknown": await svc.links(unknown),
        "overflow": await svc.links(svc.raw_id, svc.product_id, extra="&MAXREC=3"),
    }
    reports: dict[str, str] = {}
    for name, body in documents.items():
        path = tmp_path / f"{name}.vot"
        path.write_bytes(body)
        code, report = await in_thread(
            lambda p=path: _run([stilts, *NO_NETWORK, "votlint", f"votable={p}"], 120), 180
        )
        assert code == 0 and report.strip() == "", f"votlint {name}:\n{report}"
        code, report = await in_thread(
            lambda p=path: _run([stilts, *NO_NETWORK, "datalinklint", str(p)], 120), 180
        )
        totals = re.search(r"Totals: Errors: (\d+); Warnings: (\d+)", report)
        assert code == 0 and totals is not None, f"datalinklint {name}:\n{report}"
        assert totals.group(1) == "0", f"datalinklint {name}:\n{report}"
        assert totals.group(2) == "0", f"datalinklint {name}:\n{report}"
        reports[name] = report
    # how datalinklint sees each descriptor's parameters: FIXED (sent unchanged), ROW (from
    # the row: ID) and USER; only the raw cutout's TARGET=raw is fixed
    roles = {name: parameter_roles(reports[name]) for name in ("raw", "product")}
    (reduce_id,) = [d for d in roles["raw"] if d.startswith("reduce-")]
    (raw_cut,) = [d for d in roles["raw"] if d.startswith("cutout-")]
    (product_cut,) = roles["product"]
    assert roles["raw"][reduce_id]["FIXED"] == [] and roles["raw"][reduce_id]["ROW"] == ["ID"]
    assert {"TARGET", "flat.combine", "use_dark", "CIRCLE"} <= set(roles["raw"][reduce_id]["USER"])
    assert roles["raw"][raw_cut]["FIXED"] == ["TARGET"] and roles["raw"][raw_cut]["ROW"] == ["ID"]
    assert roles["product"][product_cut]["FIXED"] == []
    assert roles["product"][product_cut]["ROW"] == ["ID"]
    # a control: both tools do report a broken links table
    broken = re.sub(rb"<TD>#this</TD>", b"<TD>this</TD>", documents["raw"], count=1)
    broken = re.sub(rb"(<TD>)\d+(</TD>)", rb"\1ten\2", broken, count=1)
    path = tmp_path / "broken.vot"
    path.write_bytes(broken)
    _, report = await in_thread(lambda: _run([stilts, "votlint", f"votable={path}"], 120), 180)
    assert "ten" in report, report
    _, report = await in_thread(lambda: _run([stilts, "datalinklint", str(path)], 120), 180)
    assert not re.search(r"Totals: Errors: 0;", report), report


_DESCRIPTOR_LINE = re.compile(r"^I-SDDO-\d+ Service descriptor (\S+), \d+ input params", re.M)
_ROLE_LINE = re.compile(r"^I-SDPR-\d+ (FIXED|ROW|USER) parameter count (\d+)(?: \[(.*)\])?$")


def parameter_roles(report: str) -> dict[str, dict[str, list[str]]]:
    """datalinklint's I-SDPR reports: descriptor -> FIXED/ROW/USER -> parameter names."""
    roles: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for line in report.splitlines():
        described = _DESCRIPTOR_LINE.match(line)
        if described:
            current = roles.setdefault(described.group(1), {})
            continue
        role = _ROLE_LINE.match(line)
        if role and current is not None:
            names = [n.strip() for n in (role.group(3) or "").split(",") if n.strip()]
            assert len(names) == int(role.group(2)), line
            current[role.group(1)] = names
    assert roles and all(set(r) == {"FIXED", "ROW", "USER"} for r in roles.values()), report
    return roles


# ----------------------------------------------------------------------------- errors


async def test_errors_name_their_datalink_fault(svc: Service, tmp_path: Path) -> None:
    """DataLink 1.1 3.4: error_message cells and error documents start with a fault."""
    fault = re.compile(r"(NotFound|Usage|Transient|Fatal|Default)Fault(: .*)?\Z", re.S)
    unknown = f"ivo://{AUTHORITY}/product?{'0' * 64}/gone.fits"
    (row,) = table(await svc.links(unknown))
    assert row["error_message"].startswith("NotFoundFault: ") and fault.match(row["error_message"])
    client = svc.h.client
    for method, query, status_code, expected in (
        ("GET", "ID=x&MAXREC=-1", 400, "UsageFault: MAXREC"),
        ("GET", "ID=x&RESPONSEFORMAT=csv", 400, "UsageFault: RESPONSEFORMAT"),
        ("GET", "ID=%C3%A9", 400, "UsageFault: ID"),
        ("PUT", "ID=x", 405, "UsageFault: "),
    ):
        response = await client.request(method, f"/datalink?{query}")
        body = await response.read()
        assert response.status == status_code, body.decode()
        assert response.content_type == "application/x-votable+xml"
        info = etree.fromstring(body).find("v:RESOURCE/v:INFO[@name='QUERY_STATUS']", VOT)
        assert info.get("value") == "ERROR"
        assert info.text.startswith(expected) and fault.match(info.text), info.text
        path = tmp_path / "error.vot"
        path.write_bytes(body)
        code, report = await in_thread(
            lambda p=path: _run([_stilts(), *NO_NETWORK, "votlint", f"votable={p}"], 120), 180
        )
        assert code == 0 and report.strip() == "", report
    # other routes keep DALI's plain message
    response = await client.get("/archive/raw?MAXREC=-1")
    info = etree.fromstring(await response.read()).find("v:RESOURCE/v:INFO", VOT)
    assert not fault.match(info.text)


def test_fault_of_each_status() -> None:
    from soda_reduce.vo.datalink import fault_for_status, fault_message

    assert [fault_for_status(s) for s in (400, 404, 405, 413, 429, 500, 503)] == [
        "UsageFault",
        "NotFoundFault",
        "UsageFault",
        "UsageFault",
        "TransientFault",
        "FatalFault",
        "TransientFault",
    ]
    assert fault_message(400, "NotFoundFault: kept") == "NotFoundFault: kept"
    assert fault_message(400, "UsageFaultless") == "UsageFault: UsageFaultless"


# ----------------------------------------------------------------------------- pyvo


async def test_pyvo_reads_links_and_finds_the_reduce_descriptor(svc: Service) -> None:
    from pyvo.dal.adhoc import DatalinkResults

    url = f"{svc.base}/datalink?ID={quote(svc.raw_id, safe='')}"
    with session() as s:
        links = await in_thread(lambda: DatalinkResults.from_result_url(url, session=s))
    assert {r.semantics for r in links} == {
        "#this",
        "#preview",
        "#proc",
        "#cutout",
        "#calibration",
    }
    procs = list(links.iter_procs())
    assert [p.semantics for p in procs] == ["#proc", "#cutout"]
    proc = links.get_first_proc()  # "reduce this" comes first
    assert proc.service_def == procs[0].service_def
    service = {p.name: p.value for p in proc.params}
    assert service["standardID"] == "ivo://ivoa.net/std/SODA#async-1.0"
    assert proc.access_url == f"{svc.base}/soda/async"
    names = [p.name for p in proc.input_params]
    assert names[:2] == ["ID", "TARGET"] and "CIRCLE" in names
    this = next(links.bysemantics("#this", include_narrower=False))
    assert this.getdataurl() == f"{svc.base}/archive/files/{svc.raw_id.split('?', 1)[1]}"


def _another_reducible_frame(files: list[Any], taken: str) -> str:
    cascade = get_cascade("ccd")
    science = sorted(
        (f.raw for f in classify_all(cascade, files) if f.category == "SCIENCE"),
        key=lambda r: r.path,
    )
    for raw in science:
        if raw.file_id != taken and plan_reduction(cascade, files, ids=[raw.file_id]).complete:
            return raw.file_id
    return taken


async def test_pyvo_reduction_from_the_proc_descriptor(svc: Service) -> None:
    """A portal's "reduce this": the POST is built from the descriptor alone, as pyvo does.
    Left as they are, only ID is sent and the frame is reduced to the default target; a
    TARGET picked among the options is that target."""
    from pyvo.dal import AsyncTAPJob
    from pyvo.dal.adhoc import DatalinkQuery, DatalinkResults

    frame = _another_reducible_frame(await svc.h.runtime.service.raw_files(), svc.raw_id)
    url = f"{svc.base}/datalink?ID={quote(frame, safe='')}"
    with session() as s:

        def submit(**chosen: str) -> AsyncTAPJob:
            links = DatalinkResults.from_result_url(url, session=s)
            proc = links.get_first_proc()
            resource = links.get_adhocservice_by_id(proc.service_def)
            query = DatalinkQuery.from_resource(proc, resource, session=s, **chosen)
            sent = dict(query)
            assert sent == {"ID": frame, **chosen}  # the user's choices and the row's ID
            response = s.post(query.baseurl, data=sent, allow_redirects=False, timeout=30)
            assert response.status_code == 303, response.text
            job = AsyncTAPJob(response.headers["Location"], session=s, delete=False)
            assert job.phase == "PENDING"
            return job

        job = await in_thread(submit)
        await in_thread(job.run)
        await in_thread(lambda: job.wait(timeout=60), 180)
        phase = await in_thread(lambda: job.phase)  # a property that does HTTP
        assert phase == "COMPLETED", await in_thread(lambda: str(job.errorsummary))
        result = await in_thread(job.fetch_result)
        table_ = result.to_table()
        row = next(r for r in table_ if r["category"] == "REDUCED_SCIENCE")
        # and the product it made has links of its own, back to the frame
        links = await in_thread(
            lambda: DatalinkResults.from_result_url(str(row["datalink_url"]), session=s)
        )
        stacked = await in_thread(lambda: submit(TARGET="stack"))

        def every_input_empty() -> str:
            """What a UI that sends every parameter (the user's left empty) posts."""
            links = DatalinkResults.from_result_url(url, session=s)
            resource = links.get_adhocservice_by_id(links.get_first_proc().service_def)
            names = [p.name for p in resource.groups[0].entries]
            data = [(n, frame if n == "ID" else "") for n in names]
            response = s.post(f"{svc.base}/soda/async", data=data, allow_redirects=False)
            assert response.status_code == 303, response.text
            return response.headers["Location"].rsplit("/", 1)[1]

        empty_id = await in_thread(every_input_empty)
    done = await svc.h.runtime.service.jobs.get(job.job_id, any_owner=True)
    assert done is not None and done.plan is not None and done.plan["target"] == "science"
    progenitors = [r.access_url for r in links.bysemantics("#progenitor", include_narrower=False)]
    assert progenitors == [f"{svc.base}/archive/files/{frame.split('?', 1)[1]}"]
    # the chosen target is what the job plans (not run: stacking is not this test's)
    record = await svc.h.runtime.service.jobs.get(stacked.job_id, any_owner=True)
    assert record is not None and record.request.target == "stack"
    plan = await svc.h.runtime.service.plan(record)
    assert plan.target == "stack" and {j.task for j in plan.jobs} >= {"science", "stack"}
    await svc.h.runtime.service.delete(record.job_id, record.owner)
    record = await svc.h.runtime.service.jobs.get(empty_id, any_owner=True)
    assert record is not None and record.request.target is None and record.request.recipe == ()
    assert (await svc.h.runtime.service.plan(record)).target == "science"
    await svc.h.runtime.service.delete(record.job_id, record.owner)


def _cut_checked(data: bytes, original: fits.Header, ra: float, dec: float) -> fits.Header:
    """``data`` is a FITS cutout smaller than the image of ``original``, its WCS shifted
    so (ra, dec) keeps its sky position; its image header."""
    with fits.open(io.BytesIO(data)) as hdul:
        image = next(h for h in hdul if h.is_image and h.header.get("NAXIS", 0) >= 2)
        header = image.header.copy()
    nx, ny = original["NAXIS1"], original["NAXIS2"]
    assert 0 < header["NAXIS1"] < nx and 0 < header["NAXIS2"] < ny
    x, y = (float(v) for v in WCS(header).world_to_pixel_values(ra, dec))
    assert 0 <= x < header["NAXIS1"] and 0 <= y < header["NAXIS2"]
    # the shift is the box's offset: the same sky position is the same original pixel
    x0, y0 = (float(v) for v in WCS(original).world_to_pixel_values(ra, dec))
    assert (x - header["LTV1"], y - header["LTV2"]) == pytest.approx((x0, y0), abs=1e-6)
    assert header["CRPIX1"] == pytest.approx(original["CRPIX1"] + header["LTV1"])
    return header


def _centre(header: fits.Header) -> tuple[float, float, float]:
    """A circle of 8 pixels around the centre of the image of ``header``."""
    wcs = WCS(header)
    ny, nx = header["NAXIS2"], header["NAXIS1"]
    ra, dec = (float(v) for v in wcs.pixel_to_world_values(nx / 2, ny / 2))
    return ra, dec, float(wcs.proj_plane_pixel_scales()[1].value) * 8


async def test_pyvo_soda_cutout_through_the_sync_descriptor(svc: Service) -> None:
    from pyvo.dal.adhoc import DatalinkResults

    url = f"{svc.base}/datalink?ID={quote(svc.product_id, safe='')}"
    path = svc.h.runtime.products.step_dir(svc.product["step_key"]) / svc.product["file"]
    with fits.open(path) as hdul:
        original = hdul[0].header.copy()
    ra, dec, radius = _centre(original)
    with session() as s:

        def cutout() -> bytes:
            links = DatalinkResults.from_result_url(url, session=s)
            proc = links.get_first_proc()
            assert proc.service_def.startswith("cutout") and proc.semantics == "#cutout"
            stream = proc.processed(circle=(ra, dec, radius), session=s)
            return stream.read()

        data = await in_thread(cutout, 120)
    assert _cut_checked(data, original, ra, dec)["PROCATG"] == "REDUCED_SCIENCE"


async def test_pyvo_processed_on_a_raw_record(svc: Service, demo_archive: Path) -> None:
    """``record.processed(circle=...)`` on a raw frame's record, from its DataLink document
    and from the /archive/raw table: a real cutout of the frame as archived."""
    from pyvo.dal.adhoc import DatalinkResults
    from pyvo.dal.tap import TAPResults

    with fits.open(demo_archive / svc.raw_id.split("?", 1)[1]) as hdul:
        original = next(h.header for h in hdul if h.data is not None).copy()
    ra, dec, radius = _centre(original)
    url = f"{svc.base}/datalink?ID={quote(svc.raw_id, safe='')}"
    path = svc.raw_id.split("?", 1)[1]
    with session() as s:

        def from_datalink() -> bytes:
            links = DatalinkResults.from_result_url(url, session=s)
            this = next(links.bysemantics("#this", include_narrower=False))
            return this.processed(circle=(ra, dec, radius), session=s).read()

        def from_archive_table() -> bytes:
            results = TAPResults.from_result_url(
                f"{svc.base}/archive/raw?NIGHT=2024-01-04", session=s
            )
            (record,) = [r for r in results if r["path"] == path]
            return record.processed(circle=(ra, dec, radius), session=s).read()

        bodies = [await in_thread(from_datalink, 120), await in_thread(from_archive_table, 120)]
    for data in bodies:
        header = _cut_checked(data, original, ra, dec)
        assert "PROCATG" not in header  # the raw frame, not a product
        assert svc.raw_id in str(header["HISTORY"])
    assert bodies[0] == bodies[1]


# ----------------------------------------------------------------------------- pure parts


def test_link_rows_are_checked() -> None:
    from soda_reduce.vo.datalink import Link, render_links
    from soda_reduce.vo.descriptors import InputParam

    with pytest.raises(ValueError, match="exactly one"):
        Link("x", "#this", access_url="http://a", error_message="NotFoundFault: no")
    with pytest.raises(ValueError, match="exactly one"):
        Link("x", "#this")
    with pytest.raises(ValueError, match="must start with"):
        Link("x", "#this", error_message="no such thing")
    with pytest.raises(ValueError, match="must start with"):
        Link("x", "#this", error_message="UsageFault without its colon")
    with pytest.raises(ValueError, match="ref takes its value from the row"):
        InputParam("ID", ref="ID", value="fixed")
    with pytest.raises(ValueError, match="semantics"):
        Link("x", "this", access_url="http://a")
    with pytest.raises(ValueError, match="ASCII"):
        Link("x", "#this", access_url="http://a/é")
    a1, b1, a2 = (Link(i, "#this", access_url="http://a") for i in ("a", "b", "a"))
    with pytest.raises(ValueError, match="consecutive"):
        render_links([a1, b1, a2])
    with pytest.raises(ValueError, match="names no descriptor"):
        render_links([Link("a", "#proc", service_def="nowhere")])
    # a description may be any text (unicodeChar), even characters XML 1.0 cannot carry
    body = render_links([Link("a", "#this", "Ångström \x07", access_url="http://a")])
    assert table(body)[0]["description"] == "Ångström \ufffd"


def test_request_parameters() -> None:
    from soda_reduce.vo.dali import UsageError
    from soda_reduce.vo.datalink import MAX_IDS, MAX_ROWS, parse_links_request

    request = parse_links_request([("id", " a "), ("ID", "b"), ("Id", "a"), ("ID", "")])
    assert request.ids == ("a", "b") and request.maxrec == MAX_ROWS
    assert request.media_type == DATALINK_MEDIA_TYPE
    many = parse_links_request([("ID", str(n)) for n in range(MAX_IDS + 5)])
    assert len(many.ids) == MAX_IDS and many.dropped_ids == 5
    assert parse_links_request([("MAXREC", str(10 * MAX_ROWS))]).maxrec == MAX_ROWS
    for bad in ([("ID", "é")], [("MAXREC", "1.5")], [("RESPONSEFORMAT", "fits")]):
        with pytest.raises(UsageError):
            parse_links_request(bad)


def test_descriptor_params_pyvo_leaves_empty_values_out() -> None:
    """value="" stays empty for numeric arrays, so pyvo sends only the fixed parameters."""
    from pyvo.dal.adhoc import DatalinkQuery, DatalinkResults

    from soda_reduce.vo.datalink import Link, render_links
    from soda_reduce.vo.descriptors import InputParam, cutout_descriptor

    header = {
        "NAXIS": 2,
        "NAXIS1": 100,
        "NAXIS2": 80,
        "CTYPE1": "RA---TAN",
        "CTYPE2": "DEC--TAN",
        "CRPIX1": 50.5,
        "CRPIX2": 40.5,
        "CRVAL1": 150.0,
        "CRVAL2": 2.0,
        "CDELT1": -0.001,
        "CDELT2": 0.001,
        "DATE-OBS": "2024-01-05T03:12:00",
        "EXPTIME": 60.0,
        "FILTER": "R",
    }
    pid = "ivo://x/p?y"
    descriptor = cutout_descriptor(
        "cut-1", "http://h/soda/sync", pid, id_ref="ID", header=header, what="it"
    )
    assert descriptor.input_params[0] == InputParam(
        "ID",
        ref="ID",
        ucd="meta.id;meta.main",
        description="Identifier of the dataset, from the ID column of the row.",
    )
    body = render_links([Link(pid, "#proc", service_def="cut-1")], [descriptor])
    params = inputs(descriptors(body)["cut-1"])
    assert params["CIRCLE"].get("value") == "" and params["BAND"].get("value") == ""
    circle = params["CIRCLE"].find("v:VALUES/v:MAX", VOT).get("value")
    ra, dec, radius = (float(v) for v in circle.split())
    assert (ra, dec) == pytest.approx((150.0, 2.0), abs=1e-6) and 0.06 < radius < 0.07
    links = DatalinkResults(parse(io.BytesIO(body)))
    resource = links.get_adhocservice_by_id("cut-1")
    query = DatalinkQuery.from_resource(links.get_first_proc(), resource)
    assert dict(query) == {"ID": pid}
