"""The UWS 1.1 job service over HTTP, whole stack, real recipes on a demo archive."""

from __future__ import annotations

import asyncio
import io
import os
import time
from pathlib import Path

import pytest
from astropy.io.votable import parse
from lxml import etree

from soda_reduce.runtime.store import Store
from soda_reduce.web.middleware import AuthConfig
from tests.support.schemas import OfflineResolver
from tests.support.uws_harness import UWS, Harness, uws_service
from tests.test_vo_uws import SCHEMA_DIR

SHARED = SCHEMA_DIR / "UWS-v1.1.xsd"
_SCHEMA: list[etree.XMLSchema] = []


@pytest.fixture
async def svc(store: Store, demo_archive: Path, tmp_path: Path):
    auth = AuthConfig(trusted_header="X-Remote-User", tokens={"t0ken": "bob"})
    async with uws_service(store, demo_archive, tmp_path, auth=auth) as harness:
        yield harness


def _uws_schema() -> etree.XMLSchema | None:
    """The UWS 1.1 XSD when ../shared is there (CI on a clean clone may not have it)."""
    if not SHARED.exists():
        if os.environ.get("CI"):  # validating nothing under CI would be a silent pass
            pytest.fail(f"UWS 1.1 XSD not found at {SHARED}")
        return None
    if not _SCHEMA:
        parser = etree.XMLParser(no_network=True, resolve_entities=False)
        parser.resolvers.add(OfflineResolver())
        _SCHEMA.append(etree.XMLSchema(etree.parse(str(SHARED), parser)))
    return _SCHEMA[0]


def _text(doc: etree._Element, path: str) -> str | None:
    return doc.findtext(path, namespaces=UWS)


async def test_create_pending_job_document(svc: Harness) -> None:
    job_id = await svc.create({"id": svc.complete_id, "runid": "r1", "flat.combine": "median"})
    doc = await svc.job(job_id)
    assert doc.get("version") == "1.1"
    assert _text(doc, "uws:phase") == "PENDING"
    assert _text(doc, "uws:runId") == "r1"
    params = {p.get("id"): p.text for p in doc.iterfind("uws:parameters/uws:parameter", UWS)}
    assert params == {"ID": svc.complete_id, "flat.combine": "median"}
    names = [etree.QName(child).localname for child in doc]
    assert names[:4] == ["jobId", "runId", "ownerId", "phase"]
    schema = _uws_schema()
    if schema is not None:
        schema.assertValid(doc)
    response = await svc.client.get(f"/soda/async/{job_id}/phase")
    assert response.content_type == "text/plain"
    assert await response.text() == "PENDING"
    for sub in ("executionduration", "destruction", "quote", "owner"):
        response = await svc.client.get(f"/soda/async/{job_id}/{sub}")
        assert response.status == 200 and response.content_type == "text/plain"
    assert int(await (await svc.client.get(f"/soda/async/{job_id}/executionduration")).text())


async def test_run_at_creation_completes_with_products(svc: Harness) -> None:
    job_id = await svc.create({"ID": svc.complete_id, "PHASE": "RUN", "flat.combine": "average"})
    doc = await svc.wait_final(job_id)
    assert _text(doc, "uws:phase") == "COMPLETED", etree.tostring(doc).decode()
    assert _text(doc, "uws:quote")
    results = {r.get("id"): r for r in doc.iterfind("uws:results/uws:result", UWS)}
    href = "{http://www.w3.org/1999/xlink}href"
    assert results["result"].get(href).endswith(f"/soda/async/{job_id}/results/result")
    assert all(r.get(href).startswith("http://") for r in results.values())
    bundle = results["bundle-reduced"].get(href)
    zipped = await svc.client.get(bundle.split(svc.base, 1)[1])
    assert zipped.status == 200 and (await zipped.read())[:2] == b"PK"
    info = doc.find("uws:jobInfo", UWS)
    assert info is not None and len(info)
    schema = _uws_schema()
    if schema is not None:
        schema.assertValid(doc)
    # the products table: one row per product, the target's reduced frame among them
    table = await svc.client.get(f"/soda/async/{job_id}/results/result")
    assert table.status == 200
    votable = parse(io.BytesIO(await table.read())).get_first_table().to_table()
    assert len(votable) >= 3
    assert "REDUCED_SCIENCE" in set(votable["category"])
    # a product file, with range requests
    product = results["product-1"].get(href)
    path = product.split(str(svc.client.make_url("")).rstrip("/"), 1)[1]
    whole = await svc.client.get(path)
    assert whole.status == 200 and whole.headers.get("ETag")
    assert whole.content_type == "application/fits"
    data = await whole.read()
    part = await svc.client.get(path, headers={"Range": "bytes=0-79"})
    assert part.status == 206 and await part.read() == data[:80]
    log = next(r for i, r in results.items() if i.startswith("log-")).get(href)
    log_response = await svc.client.get(log.split(svc.base, 1)[1])
    assert log_response.status == 200 and log_response.content_type == "text/plain"


async def test_incomplete_plan_goes_to_error_with_reason(svc: Harness) -> None:
    # the demo archive is generated with frames missing calibrations on purpose
    assert svc.incomplete_id is not None, (
        "the demo archive has no science frame missing calibrations"
    )
    job_id = await svc.create({"ID": svc.incomplete_id, "PHASE": "RUN"})
    doc = await svc.wait_final(job_id, 30)
    assert _text(doc, "uws:phase") == "ERROR"
    message = _text(doc, "uws:errorSummary/uws:message")
    assert message and "cannot be reduced" in message
    error = await svc.client.get(f"/soda/async/{job_id}/error")
    assert error.status == 200 and b"cannot be reduced" in await error.read()


async def test_bad_values_are_refused_with_dali_errors(svc: Harness) -> None:
    cases = [
        {"ID": svc.complete_id, "TARGET": "nope"},
        {"ID": "ivo://nowhere/raw?missing.fits"},
        [("ID", svc.complete_id), ("RUNID", "a"), ("RUNID", "b")],
        {"ID": svc.complete_id, "EXECUTIONDURATION": "soon"},
        {"ID": svc.complete_id, "DESTRUCTION": "tomorrow"},
        {"ID": svc.complete_id, "flat.nosuch": "1"},
        {"ID": svc.complete_id, "flat.combine": "mode"},
        {"ID": svc.complete_id, "PHASE": "ABORT"},
    ]
    for data in cases:
        response = await svc.client.post("/soda/async", data=data, allow_redirects=False)
        assert response.status == 400, (data, await response.text())
        assert "votable" in response.content_type
        assert b'name="QUERY_STATUS" value="ERROR"' in await response.read()
    listing = etree.fromstring(await (await svc.client.get("/soda/async")).read())
    assert not listing.findall("uws:jobref", UWS)  # nothing was created


async def test_unknown_job_is_404_and_illegal_change_403(svc: Harness) -> None:
    for path in ("/soda/async/nosuchjob", "/soda/async/nosuchjob/phase"):
        response = await svc.client.get(path)
        assert response.status == 404
    job_id = await svc.create({"ID": svc.complete_id, "PHASE": "RUN"})
    await svc.wait_final(job_id)
    response = await svc.client.post(
        f"/soda/async/{job_id}/parameters", data={"TARGET": "bias"}, allow_redirects=False
    )
    assert response.status == 403
    response = await svc.client.post(
        f"/soda/async/{job_id}/phase", data={"PHASE": "ABORT"}, allow_redirects=False
    )
    assert response.status == 403
    response = await svc.client.post(
        f"/soda/async/{job_id}/phase", data={"PHASE": "SUSPEND"}, allow_redirects=False
    )
    assert response.status == 400


async def test_parameters_change_while_pending(svc: Harness) -> None:
    job_id = await svc.create({"ID": svc.complete_id})
    response = await svc.client.post(
        f"/soda/async/{job_id}/parameters",
        data={"target": "bias", "RUNID": "again"},
        allow_redirects=False,
    )
    assert response.status == 303, await response.text()
    doc = await svc.job(job_id)
    params = {p.get("id"): p.text for p in doc.iterfind("uws:parameters/uws:parameter", UWS)}
    assert params["TARGET"] == "bias"
    assert _text(doc, "uws:runId") == "again"
    response = await svc.client.post(
        f"/soda/async/{job_id}/executionduration",
        data={"EXECUTIONDURATION": "120"},
        allow_redirects=False,
    )
    assert response.status == 303
    assert await (await svc.client.get(f"/soda/async/{job_id}/executionduration")).text() == "120"
    response = await svc.client.post(
        f"/soda/async/{job_id}/destruction",
        data={"DESTRUCTION": "2099-01-01T00:00:00Z"},
        allow_redirects=False,
    )
    assert response.status == 303  # later than allowed: clamped to the maximum
    destruction = await (await svc.client.get(f"/soda/async/{job_id}/destruction")).text()
    assert destruction.startswith("20") and not destruction.startswith("2099")


async def test_wait_returns_when_phase_changes(svc: Harness) -> None:
    job_id = await svc.create({"ID": svc.complete_id})
    started = time.monotonic()
    waiting = asyncio.create_task(svc.job(job_id, "?WAIT=25&PHASE=PENDING"))
    await asyncio.sleep(0.5)
    assert not waiting.done()  # it really blocks
    await svc.client.post(f"/soda/async/{job_id}/phase", data={"PHASE": "RUN"})
    doc = await asyncio.wait_for(waiting, 20)
    assert _text(doc, "uws:phase") != "PENDING"
    assert time.monotonic() - started < 20  # returned on the change, not at WAIT's end
    # a final job does not block
    await svc.wait_final(job_id)
    started = time.monotonic()
    await svc.job(job_id, "?WAIT=20")
    assert time.monotonic() - started < 5
    # WAIT with a PHASE the job is not in returns at once
    other = await svc.create({"ID": svc.complete_id})
    started = time.monotonic()
    await svc.job(other, "?WAIT=20&PHASE=EXECUTING")
    assert time.monotonic() - started < 5
    bad = await svc.client.get(f"/soda/async/{other}?WAIT=soon")
    assert bad.status == 400


async def test_job_list_filters_and_delete(svc: Harness) -> None:
    pending = [await svc.create({"ID": svc.complete_id, "RUNID": f"n{i}"}) for i in range(3)]
    done = await svc.create({"ID": svc.complete_id, "PHASE": "RUN"})
    await svc.wait_final(done)

    async def listed(query: str) -> list[str]:
        response = await svc.client.get("/soda/async" + query)
        assert response.status == 200
        doc = etree.fromstring(await response.read())
        schema = _uws_schema()
        if schema is not None:
            schema.assertValid(doc)
        return [ref.get("id") for ref in doc.iterfind("uws:jobref", UWS)]

    assert set(await listed("")) == {*pending, done}
    assert set(await listed("?PHASE=PENDING")) == set(pending)
    assert set(await listed("?phase=PENDING&PHASE=COMPLETED")) == {*pending, done}
    assert await listed("?LAST=1") == [done]
    assert len(await listed("?PHASE=PENDING&LAST=2")) == 2
    assert await listed("?AFTER=2999-01-01T00:00:00Z") == []
    assert (await svc.client.get("/soda/async?PHASE=NOPE")).status == 400
    assert (await svc.client.get("/soda/async?LAST=0")).status == 400
    # DELETE and ACTION=DELETE answer 303 to a cheap job list
    response = await svc.client.delete(f"/soda/async/{pending[0]}", allow_redirects=False)
    assert response.status == 303 and "/soda/async" in response.headers["Location"]
    response = await svc.client.post(
        f"/soda/async/{pending[1]}", data={"ACTION": "DELETE"}, allow_redirects=False
    )
    assert response.status == 303
    assert (await svc.client.get(f"/soda/async/{pending[0]}")).status == 404
    assert set(await listed("")) == {pending[2], done}
    assert (await svc.client.delete(f"/soda/async/{pending[0]}")).status == 404


async def test_owners_see_only_their_jobs(svc: Harness) -> None:
    alice = {"X-Remote-User": "alice"}
    job_id = await svc.create({"ID": svc.complete_id}, headers=alice)
    assert (await svc.client.get(f"/soda/async/{job_id}", headers=alice)).status == 200
    owner = await svc.client.get(f"/soda/async/{job_id}/owner", headers=alice)
    assert await owner.text() == "alice"
    for headers in ({}, {"X-Remote-User": "mallory"}, {"Authorization": "Bearer t0ken"}):
        assert (await svc.client.get(f"/soda/async/{job_id}", headers=headers)).status == 404
        response = await svc.client.delete(f"/soda/async/{job_id}", headers=headers)
        assert response.status == 404
        doc = etree.fromstring(await (await svc.client.get("/soda/async", headers=headers)).read())
        assert job_id not in [r.get("id") for r in doc.iterfind("uws:jobref", UWS)]
    bob = await svc.create({"ID": svc.complete_id}, headers={"Authorization": "Bearer t0ken"})
    doc = await svc.job(bob, headers={"Authorization": "Bearer t0ken"})
    assert _text(doc, "uws:ownerId") == "bob"
    bad = await svc.client.get("/soda/async", headers={"Authorization": "Bearer wrong"})
    assert bad.status == 401


async def test_abort_stops_a_running_plan(svc: Harness) -> None:
    job_id = await svc.create({"ID": svc.complete_id, "science.cosmic_rays": "true"})
    await svc.client.post(f"/soda/async/{job_id}/phase", data={"PHASE": "RUN"})
    doc = await svc.job(job_id, "?WAIT=20&PHASE=QUEUED")
    # a fresh product store: every step of the plan has to run, which takes seconds
    assert _text(doc, "uws:phase") == "EXECUTING"
    response = await svc.client.post(
        f"/soda/async/{job_id}/phase", data={"PHASE": "ABORT"}, allow_redirects=False
    )
    assert response.status == 303
    doc = await svc.wait_final(job_id, 20)
    assert _text(doc, "uws:phase") == "ABORTED"
    assert _text(doc, "uws:errorSummary/uws:message")
    await asyncio.sleep(1.0)
    doc = await svc.job(job_id)
    assert _text(doc, "uws:phase") == "ABORTED"  # the worker did not overwrite it
    progress = doc.find(".//{*}progress")
    assert progress is not None and int(progress.get("done")) < int(progress.get("total"))


async def test_execution_duration_is_enforced(svc: Harness) -> None:
    job_id = await svc.create({"ID": svc.complete_id, "EXECUTIONDURATION": "1", "PHASE": "RUN"})
    doc = await svc.wait_final(job_id, 60)
    # a fresh product store: nothing is cached, the plan takes several seconds
    assert _text(doc, "uws:phase") == "ABORTED"
    assert "executionDuration" in (_text(doc, "uws:errorSummary/uws:message") or "")


async def test_shutdown_answers_blocked_waits(svc: Harness) -> None:
    from soda_reduce.web.context import SERVICES

    job_id = await svc.create({"ID": svc.complete_id})
    waiting = asyncio.create_task(svc.job(job_id, "?WAIT=25"))
    await asyncio.sleep(0.5)
    assert not waiting.done()
    started = time.monotonic()
    svc.client.app[SERVICES].stop_waits()
    doc = await asyncio.wait_for(waiting, 10)
    assert _text(doc, "uws:phase") == "PENDING"
    assert time.monotonic() - started < 5
    started = time.monotonic()
    await svc.job(job_id, "?WAIT=25")  # no longer blocks at all
    assert time.monotonic() - started < 5
