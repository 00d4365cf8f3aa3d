"""UWS 1.1, DALI and VOSI conformance of /soda/async, through the real server.

What an IVOA reviewer and real clients found, each checked end to end (aiohttp on loopback,
the embedded store, the worker running steps as processes):

- the flows of AIP's uws-client: ``job abort`` POSTs PHASE=ABORT to the job URL (PENDING
  and EXECUTING jobs end ABORTED), ``job delete`` follows the 303 to the job list, which
  must be the list (running jobs included, the deleted one gone), as after ACTION=DELETE;
- an aborted job lists the products of the steps that had finished, and its jobInfo says
  which step was stopped (``aborted``) and which never started (``skipped``);
- resources that do not exist (yet) are 404, as DALI wants: /error of a job without error,
  /results/result and bundles before there are results;
- the VOSI resources are siblings of the SODA endpoints; capabilities declare GET and POST;
- a body that is not a form is refused (415), /soda/async/ is the job list, and every
  filter error reads the same;
- STILTS taplint's UWS, CPV and AVV stages report no error against BASE/soda.

Steps run the fake recipe (tests/support/fake_recipe.py) through the local executor:
calibrations at once, the science step for ``SCIENCE_S`` seconds, so an abort reliably
finds calibrations done and the science step running.
"""

from __future__ import annotations

import asyncio
import io
import re
import time
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
from astropy.io.votable import parse
from lxml import etree

from soda_reduce.runtime.executors.base import StepRun
from soda_reduce.runtime.store import Store
from tests.support.fakes import FakeRecipeExecutor
from tests.support.schemas import OUR_SCHEMAS
from tests.support.tools import missing, stilts
from tests.support.uws_harness import UWS, Harness, uws_service
from tests.test_uws_clients import NO_NETWORK, _run

SCIENCE_S = 60  # far longer than any test waits: the science step is only ever aborted
NS = {
    **UWS,
    "sr": "http://soda-reduce.org/xml/jobinfo/v1",
    "cap": "http://www.ivoa.net/xml/VOSICapabilities/v1.0",
}
XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
HREF = "{http://www.w3.org/1999/xlink}href"


class SlowScience(FakeRecipeExecutor):
    """Calibration steps at once, the science step for a minute."""

    def recipe_command(self, run: StepRun) -> list[str]:
        command = super().recipe_command(run)
        if run.recipe == "ccd.science":
            return ["env", f"FAKE_SLEEP={SCIENCE_S}", *command]
        return command


@pytest.fixture
async def svc(store: Store, demo_archive: Path, tmp_path: Path) -> AsyncIterator[Harness]:
    async with uws_service(
        store, demo_archive, tmp_path, executor=SlowScience(concurrency=2)
    ) as harness:
        yield harness


async def _get(h: Harness, path: str, **kw) -> tuple[int, bytes]:
    response = await h.client.get(path, **kw)
    return response.status, await response.read()


def _steps(doc: etree._Element) -> dict[str, str]:
    return {
        s.get("jobId"): s.get("status")
        for s in doc.iterfind("uws:jobInfo/sr:reduction/sr:steps/sr:step", NS)
    }


def _tasks(doc: etree._Element) -> dict[str, str]:
    return {
        s.get("jobId"): s.get("task")
        for s in doc.iterfind("uws:jobInfo/sr:reduction/sr:steps/sr:step", NS)
    }


async def _until(h: Harness, job_id: str, ready, what: str, limit_s: float = 60):
    """Poll the job document until ``ready(doc)``; bounded."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        doc = await h.job(job_id)
        if ready(doc):
            return doc
        await asyncio.sleep(0.2)
    raise AssertionError(f"job {job_id}: not {what} after {limit_s} s")


def _science_running(doc: etree._Element) -> bool:
    tasks = _tasks(doc)
    return any(tasks[j] == "science" and s == "running" for j, s in _steps(doc).items())


def _listed(body: bytes) -> dict[str, str]:
    doc = etree.fromstring(body)
    assert doc.tag == f"{{{UWS['uws']}}}jobs"
    return {
        r.get("id"): r.findtext("uws:phase", namespaces=NS) for r in doc.iterfind("uws:jobref", NS)
    }


def _dali_error(body: bytes) -> str:
    doc = etree.fromstring(body)
    (info,) = doc.iterfind(".//{*}INFO[@name='QUERY_STATUS']")
    assert info.get("value") == "ERROR"
    return info.text or ""


# ----------------------------------------------------------------------------- uws-client


async def test_abort_posted_to_the_job_url(svc: Harness) -> None:
    """uws-client's ``job abort``: POST PHASE=ABORT to {job}, PENDING then EXECUTING."""
    pending = await svc.create({"ID": svc.complete_id})
    response = await svc.client.post(
        f"/soda/async/{pending}", data={"PHASE": "ABORT"}, allow_redirects=False
    )
    assert response.status == 303 and response.headers["Location"].endswith(pending)
    doc = await svc.job(pending)
    assert doc.findtext("uws:phase", namespaces=NS) == "ABORTED"
    assert not doc.findall("uws:results/uws:result", NS)  # nothing had run
    assert (await _get(svc, f"/soda/async/{pending}/results/result"))[0] == 404

    running = await svc.create({"ID": svc.complete_id, "PHASE": "RUN"})
    doc = await _until(svc, running, _science_running, "running its science step")
    assert doc.findtext("uws:phase", namespaces=NS) == "EXECUTING"
    response = await svc.client.post(
        f"/soda/async/{running}", data={"phase": "abort"}, allow_redirects=False
    )
    assert response.status == 303, await response.text()
    assert (await svc.job(running)).findtext("uws:phase", namespaces=NS) == "ABORTED"

    # the worker records what had finished: the calibrations are the job's results
    doc = await _until(
        svc, running, lambda d: d.find("uws:results/uws:result", NS) is not None, "recorded", 20
    )
    assert doc.findtext("uws:errorSummary/uws:message", namespaces=NS)
    steps, tasks = _steps(doc), _tasks(doc)
    assert "running" not in steps.values() and "pending" not in steps.values(), steps
    assert {steps[j] for j in steps if tasks[j] == "science"} <= {"aborted", "skipped"}
    assert "aborted" in steps.values()
    done = {tasks[j] for j, s in steps.items() if s in ("done", "cached")}
    assert {"bias", "flat"} <= done, steps
    assert doc.find("uws:jobInfo/sr:reduction/sr:progress/sr:running", NS) is None
    schema = etree.XMLSchema(etree.parse(str(OUR_SCHEMAS / "soda-reduce-jobinfo-v1.xsd")))
    (reduction,) = doc.iterfind("uws:jobInfo/sr:reduction", NS)
    assert schema.validate(reduction), schema.error_log

    results = {r.get("id"): r.get(HREF) for r in doc.iterfind("uws:results/uws:result", NS)}
    assert results["result"].endswith(f"/soda/async/{running}/results/result")
    status, body = await _get(svc, f"/soda/async/{running}/results/result")
    assert status == 200
    table = parse(io.BytesIO(body)).get_first_table().to_table()
    assert {"MASTER_BIAS", "MASTER_FLAT"} <= {str(c) for c in table["category"]}
    assert "REDUCED_SCIENCE" not in {str(c) for c in table["category"]}
    status, body = await _get(svc, f"/soda/async/{running}/bundles/all.zip")
    assert status == 200
    names = zipfile.ZipFile(io.BytesIO(body)).namelist()
    assert any(n.endswith("product.txt") for n in names), names


async def test_delete_lands_on_the_job_list(svc: Harness) -> None:
    """uws-client's ``job delete`` follows the 303: the job list, running jobs included."""
    running = await svc.create({"ID": svc.complete_id, "PHASE": "RUN", "RUNID": "running"})
    await _until(svc, running, _science_running, "running its science step")
    first, second = [await svc.create({"ID": svc.complete_id}) for _ in range(2)]

    response = await svc.client.delete(f"/soda/async/{first}")  # the redirect followed
    assert response.status == 200 and response.url.path == "/soda/async"
    assert str(response.url) == f"{svc.base}/soda/async"
    listed = _listed(await response.read())
    assert first not in listed
    assert listed[running] == "EXECUTING" and listed[second] == "PENDING"

    response = await svc.client.post(f"/soda/async/{second}", data={"ACTION": "DELETE"})
    assert response.status == 200 and response.url.path == "/soda/async"
    listed = _listed(await response.read())
    assert second not in listed and running in listed
    assert (await _get(svc, f"/soda/async/{second}"))[0] == 404

    response = await svc.client.delete(f"/soda/async/{running}", allow_redirects=False)
    assert response.status == 303
    assert response.headers["Location"] == f"{svc.base}/soda/async"


# ----------------------------------------------------------------------------- DALI 404s


async def test_resources_that_do_not_exist_yet_are_404(svc: Harness) -> None:
    job = await svc.create({"ID": svc.complete_id})
    for path in ("error", "results/result", "bundles/all.zip", "bundles/reduced.zip"):
        status, body = await _get(svc, f"/soda/async/{job}/{path}")
        assert status == 404, (path, body)
        assert "PENDING" in _dali_error(body), path
    status, body = await _get(svc, f"/soda/async/{job}/results")
    assert status == 200  # the list of results exists, empty
    assert not etree.fromstring(body).findall("uws:result", NS)


# ----------------------------------------------------------------------------- VOSI


async def test_vosi_siblings_and_declared_methods(svc: Harness) -> None:
    for name in ("capabilities", "availability"):
        root = await _get(svc, f"/{name}")
        sibling = await _get(svc, f"/soda/{name}")
        assert root[0] == sibling[0] == 200
        if name == "capabilities":
            assert root[1] == sibling[1]
    doc = etree.fromstring((await _get(svc, "/soda/capabilities"))[1])
    methods, urls = {}, {}
    for cap in doc.iterfind("capability"):
        interface = cap.find("interface")
        key = cap.get("standardID") or interface.findtext("accessURL")
        methods[key] = [q.text for q in interface.iterfind("queryType")]
        urls[key] = [
            interface.findtext("accessURL"),
            *(m.text for m in interface.iterfind("mirrorURL")),
        ]
    for standard in (
        "ivo://ivoa.net/std/SODA#sync-1.0",
        "ivo://ivoa.net/std/SODA#async-1.0",
        "ivo://ivoa.net/std/UWS#rest-1.1",
        "ivo://ivoa.net/std/DataLink#links-1.1",
        f"{svc.base}/archive/raw",
    ):
        assert methods[standard] == ["GET", "POST"], standard
    for standard, name in (
        ("ivo://ivoa.net/std/VOSI#capabilities", "capabilities"),
        ("ivo://ivoa.net/std/VOSI#availability", "availability"),
    ):
        assert methods[standard] == ["GET"]
        assert urls[standard] == [f"{svc.base}/soda/{name}", f"{svc.base}/{name}"]
    # POST really works where it is declared (a UWS job list: POST creates)
    response = await svc.client.post(
        "/soda/async", data={"ID": svc.complete_id}, allow_redirects=False
    )
    assert response.status == 303


async def _taplint(h: Harness, *extra: str) -> str:
    """taplint against BASE/soda; it exits 0 either way: the summary line counts errors."""
    command = [stilts(), *NO_NETWORK, "taplint", f"tapurl={h.base}/soda", "interface=tap1.1"]
    command += ["stages=UWS CPV AVV", "report=EWISF", *extra]
    code, report = await asyncio.to_thread(_run, command, 300)
    assert code == 0, report
    totals = re.search(r"^Totals: Errors: (\d+); Warnings: (\d+)", report, re.MULTILINE)
    if totals is None:
        missing(f"taplint wrote no summary line:\n{report}")
    assert totals is not None
    assert int(totals.group(1)) == 0, report
    assert not re.search(r"^F-", report, re.MULTILINE), report  # no check failed to run
    for stage in ("CPV", "AVV"):
        found = re.search(rf"^I-{stage}-VURL-1 Validating {re.escape(h.base)}/soda/", report, re.M)
        assert found, report
    assert re.search(r"^I-UWS-CJOB-1 Created new job", report, re.MULTILINE), report
    return report


async def test_taplint_uws_capabilities_availability(svc: Harness) -> None:
    """The UWS stage with taplint's own jobs (TAP parameters only: they end in ERROR at
    RUN, "no ID given"), then capabilities and availability as siblings of BASE/soda."""
    report = await _taplint(svc)
    assert "POSTed PHASE=ABORT" in report and "POSTed ACTION=DELETE" in report, report


async def test_taplint_follows_a_real_reduction(
    store: Store, demo_archive: Path, tmp_path: Path
) -> None:
    """The same stages with jobs that reduce a frame (the real ccd recipes): taplint sees
    QUEUED/EXECUTING, then validates the COMPLETED document."""
    async with uws_service(store, demo_archive, tmp_path) as h:
        async_url = f"{h.base}/soda/async?{urlencode({'ID': h.complete_id})}"
        report = await _taplint(h, f"asyncurl={async_url}")
        assert "completed immediately" not in report, report
        assert "POSTed PHASE=RUN" in report, report


# ----------------------------------------------------------------------------- bodies, paths


async def test_a_body_that_is_not_a_form_is_refused(svc: Harness) -> None:
    body = b'{"ID": "%s", "PHASE": "RUN"}' % svc.complete_id.encode()
    json = {"Content-Type": "application/json"}
    response = await svc.client.post("/soda/async", data=body, headers=json, allow_redirects=False)
    assert response.status == 415
    assert "application/json" in _dali_error(await response.read())
    assert _listed((await _get(svc, "/soda/async"))[1]) == {}  # no empty job was made
    job = await svc.create({"ID": svc.complete_id})
    for path in (f"/soda/async/{job}/parameters", f"/soda/async/{job}/phase", f"/soda/async/{job}"):
        response = await svc.client.post(path, data=b'{"PHASE": "RUN"}', headers=json)
        assert response.status == 415, path
        assert "votable" in response.content_type
    assert (await svc.job(job)).findtext("uws:phase", namespaces=NS) == "PENDING"
    response = await svc.client.post("/soda/sync", data=b"{}", headers=json)
    assert response.status == 415
    assert (await response.text()).startswith("UsageError: ")  # SODA's own error format


async def test_trailing_slash_is_the_job_list(svc: Harness) -> None:
    job = await svc.create({"ID": svc.complete_id})
    status, body = await _get(svc, "/soda/async/")
    assert status == 200 and job in _listed(body)
    response = await svc.client.post(
        "/soda/async/", data={"ID": svc.complete_id}, allow_redirects=False
    )
    assert response.status == 303
    assert re.fullmatch(
        rf"{re.escape(svc.base)}/soda/async/[A-Za-z0-9]+", response.headers["Location"]
    )


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (
            "?PHASE=NOPE",
            "PHASE must be a UWS phase (PENDING, QUEUED, EXECUTING, COMPLETED, ERROR, "
            "ABORTED, UNKNOWN, HELD, SUSPENDED, ARCHIVED), not 'NOPE'",
        ),
        ("?LAST=0", "LAST must be a positive integer, not '0'"),
        ("?LAST=-3", "LAST must be a positive integer, not '-3'"),
        ("?LAST=many", "LAST must be a positive integer, not 'many'"),
        ("?AFTER=yesterday", "AFTER must be an ISO 8601 date-time, not 'yesterday'"),
        ("?LAST=1&LAST=2", "parameter LAST given 2 times; expected once"),
        ("?AFTER=2025-01-01&after=2025-01-02", "parameter AFTER given 2 times; expected once"),
    ],
)
async def test_filter_errors_read_the_same(svc: Harness, query: str, message: str) -> None:
    status, body = await _get(svc, "/soda/async" + query)
    assert status == 400
    assert _dali_error(body) == message


async def test_wait_errors_read_the_same(svc: Harness) -> None:
    job = await svc.create({"ID": svc.complete_id})
    status, body = await _get(svc, f"/soda/async/{job}?WAIT=1&PHASE=nope")
    assert status == 400
    assert _dali_error(body).startswith("PHASE must be a UWS phase (PENDING,")
    status, body = await _get(svc, f"/soda/async/{job}?WAIT=soon")
    assert status == 400
    assert _dali_error(body) == "WAIT must be -1 or a non-negative integer (seconds), not 'soon'"
