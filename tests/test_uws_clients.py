"""Real clients against the UWS job list at BASE/soda/async of a ``soda-reduce serve`` process.

- STILTS ``taplint stages=UWS``: the IVOA validator's UWS stage (it works against any job list
  named BASE/async);
- STILTS ``xsdvalidate``: job documents (PENDING, COMPLETED with our jobInfo, ERROR), the job
  list and the results / parameters sub-resources, fetched over HTTP, against the UWS 1.1 REC
  XSD and our own jobInfo XSD;
- pyvo's ``AsyncTAPJob``: creation, the WAIT long poll, the executionDuration and destruction
  setters, errors as pyvo reports them.

One server for the module, on the session's small demo archive, WAIT capped at 5 s. STILTS
parts skip when ``stilts`` is not on PATH; everything stays on 127.0.0.1 (Java gets a dead
proxy for any other host, so a schema fetch from the network would fail, not happen).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

import pytest
import requests
from lxml import etree

from tests.support.tools import missing
from tests.test_serve import (
    FINAL,
    NS,
    Served,
    bounded,
    create_job,
    incomplete_frames,
    job_document,
    plan_counts,
    science_frames,
    serve,
)

WAIT_CAP_S = 5.0
SHARED_SCHEMAS = Path(__file__).resolve().parents[2] / "shared" / "vo_schemas"
OUR_SCHEMAS = Path(__file__).resolve().parents[1] / "vo_schemas"
UWS_NS = NS["uws"]
JOBINFO_NS = NS["sr"]
XLINK_NS = "http://www.w3.org/1999/xlink"
# any http(s) fetch by the JVM goes to a closed loopback port; 127.* and localhost are
# exempt by Java's default http.nonProxyHosts, so the service itself stays reachable
NO_NETWORK = [
    "-Dhttp.proxyHost=127.0.0.1",
    "-Dhttp.proxyPort=9",
    "-Dhttps.proxyHost=127.0.0.1",
    "-Dhttps.proxyPort=9",
]
# taplint warnings that are not UWS deviations, each with the reason:
KNOWN_WARNINGS = {
    # uws:jobInfo is xs:any (lax); ours is in the soda-reduce namespace, whose XSD taplint
    # cannot know. That content is validated against our XSD in the xsdvalidate test.
    "UNSC": "Schema from unknown namespace during validation: " + JOBINFO_NS,
}
REPORT_LINE = re.compile(r"^([EWISF])-UWS-([A-Z0-9]{4})-\d+ (.*)$")


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def served(demo_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data_dir = tmp_path_factory.mktemp("uws-clients") / "data"
    env = {"SODA_REDUCE_WAIT_CAP_S": str(WAIT_CAP_S)}
    with serve(data_dir, "--archive", str(demo_archive), "--checksum", "fast", env=env) as proc:
        yield proc


@pytest.fixture(scope="module")
def frames(demo_archive: Path) -> dict[str, str]:
    """One science frame per test, so no test finds another's steps already cached."""
    ids = [frame["id"] for frame in science_frames(demo_archive)]
    assert len(ids) >= 3, ids
    return {"taplint": ids[-1], "xsd": ids[1], "pyvo": ids[0]}


@pytest.fixture
def session(served: Served) -> Iterator[requests.Session]:
    with served.session() as s:
        yield s


def _stilts() -> str:
    stilts = shutil.which("stilts")
    if stilts is None:
        missing("stilts not on PATH (Debian package stilts)")
    return stilts


def _run(command: list[str], timeout: float) -> tuple[int, str]:
    """Run a command in its own process group; the whole group is killed on timeout.

    (/usr/bin/stilts is a shell script that starts java as a child: killing only the
    script would leave the JVM running.)
    """
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate(timeout=10)
        raise AssertionError(f"{command[:3]} timed out after {timeout} s:\n{output}") from None
    return process.returncode, output


def _wait_final(session: requests.Session, url: str, limit_s: float = 120) -> etree._Element:
    """GET the job with WAIT until it is final (each request is capped by the server)."""
    deadline = time.monotonic() + limit_s
    while True:
        doc = job_document(session, url, "?WAIT=30")
        if doc.findtext("uws:phase", namespaces=NS) in FINAL:
            return doc
        assert time.monotonic() < deadline, etree.tostring(doc).decode()


# ----------------------------------------------------------------------------- taplint


def _taplint(served: Served, *extra: str) -> tuple[str, dict[str, list[str]]]:
    command = [_stilts(), *NO_NETWORK, "taplint", f"tapurl={served.base}/soda"]
    command += ["interface=tap1.1", "stages=UWS", "report=EWISF", *extra]
    code, report = _run(command, timeout=300)
    assert code == 0, report
    by_type: dict[str, list[str]] = {t: [] for t in "EWISF"}
    for line in report.splitlines():
        match = REPORT_LINE.match(line)
        if match:
            by_type[match.group(1)].append(line)
    totals = re.search(r"Totals: Errors: (\d+); Warnings: (\d+)", report)
    assert totals is not None, report
    assert int(totals.group(1)) == len(by_type["E"]), report
    return report, by_type


def _assert_clean(report: str, by_type: dict[str, list[str]]) -> None:
    assert not by_type["E"], report
    assert not by_type["F"], report  # taplint could not run a check
    for line in by_type["W"]:
        code = REPORT_LINE.match(line).group(2)  # type: ignore[union-attr]
        assert code in KNOWN_WARNINGS and KNOWN_WARNINGS[code] in line, report


def test_taplint_uws_stage(served: Served, frames: dict[str, str], session: requests.Session):
    """taplint's UWS stage, first as it is, then with jobs that really reduce something.

    taplint creates its jobs with TAP parameters only (QUERY, LANG, REQUEST), which the
    service keeps and ignores as DALI asks; run, such a job goes to ERROR at once ("no ID
    given") and taplint reports "Job completed immediately - can't test phase progression".
    The second run gives the job list URL with an ID in its query string: parameters of the
    query and of the form are merged on POST, so taplint's jobs reduce a frame and taplint
    follows them through QUEUED/EXECUTING to COMPLETED and validates the final document.
    """
    report, by_type = _taplint(served)
    _assert_clean(report, by_type)
    assert len([line for line in by_type["I"] if "-CJOB-" in line]) == 3, report

    async_url = f"{served.base}/soda/async?{urlencode({'ID': frames['taplint']})}"
    report, by_type = _taplint(served, f"asyncurl={async_url}")
    _assert_clean(report, by_type)
    assert any("POSTed PHASE=RUN" in line for line in by_type["I"]), report
    assert not any("completed immediately" in line for line in by_type["I"]), report

    # taplint deleted every job it made (its runIds are TAPLINT-...)
    listing = etree.fromstring(session.get(f"{served.base}/soda/async", timeout=30).content)
    run_ids = [ref.findtext("uws:runId", namespaces=NS) or "" for ref in listing]
    assert not [r for r in run_ids if r.startswith("TAPLINT")], run_ids


# ----------------------------------------------------------------------------- xsdvalidate


def _xsdvalidate(path: Path, top: str) -> tuple[int, str]:
    command = [_stilts(), *NO_NETWORK, "xsdvalidate", f"topel={{{UWS_NS}}}{top}"]
    command += [
        f"schemaloc={UWS_NS}={SHARED_SCHEMAS / 'UWS-v1.1.xsd'}",
        f"schemaloc={XLINK_NS}={SHARED_SCHEMAS / 'xlink.xsd'}",
        f"schemaloc={JOBINFO_NS}={OUR_SCHEMAS / 'soda-reduce-jobinfo-v1.xsd'}",
        f"doc={path}",
    ]
    return _run(command, timeout=120)


def test_stilts_xsdvalidate_documents(
    served: Served, frames: dict[str, str], session: requests.Session, tmp_path: Path
) -> None:
    _stilts()
    if not (SHARED_SCHEMAS / "UWS-v1.1.xsd").is_file():
        missing(f"UWS 1.1 XSD not found at {SHARED_SCHEMAS} (../shared missing)")
    base = served.base
    pending = create_job(
        session, base, {"ID": frames["xsd"], "RUNID": "xsd", "flat.combine": "median"}
    )
    completed = create_job(session, base, {"ID": frames["xsd"], "PHASE": "RUN"})
    failed = create_job(session, base, {"RUNID": "no-id", "PHASE": "RUN"})
    done = _wait_final(session, completed)
    assert done.findtext("uws:phase", namespaces=NS) == "COMPLETED", etree.tostring(done)
    assert plan_counts(done) is not None  # jobInfo present: our XSD is really exercised
    assert done.find("uws:jobInfo/sr:reduction/sr:steps/sr:step", NS) is not None
    error = _wait_final(session, failed)
    assert error.findtext("uws:errorSummary/uws:message", namespaces=NS)

    documents = {
        "pending.xml": (pending, "job"),
        "completed.xml": (completed, "job"),
        "error.xml": (failed, "job"),
        "jobs.xml": (f"{base}/soda/async", "jobs"),
        "jobs-filtered.xml": (f"{base}/soda/async?PHASE=COMPLETED&LAST=5", "jobs"),
        "results.xml": (f"{completed}/results", "results"),
        "parameters.xml": (f"{pending}/parameters", "parameters"),
    }
    for name, (url, top) in documents.items():
        response = session.get(url, timeout=30)
        assert response.status_code == 200, (url, response.text)
        path = tmp_path / name
        path.write_bytes(response.content)
        code, report = _xsdvalidate(path, top)
        assert code == 0 and "ERROR" not in report, f"{name} from {url}:\n{report}"

    # a control: the jobInfo content really is checked against our XSD (not skipped as lax)
    bad = (tmp_path / "completed.xml").read_bytes()
    bad = re.sub(rb'(<sr:step [^>]*status=")[a-z]+"', rb'\1finished"', bad, count=1)
    assert b'status="finished"' in bad
    (tmp_path / "bad.xml").write_bytes(bad)
    code, report = _xsdvalidate(tmp_path / "bad.xml", "job")
    assert code != 0 and "finished" in report, report


# ----------------------------------------------------------------------------- pyvo


def test_pyvo_async_job_lifecycle(
    served: Served, frames: dict[str, str], session: requests.Session
) -> None:
    from astropy.time import Time
    from pyvo.dal import AsyncTAPJob, DALServiceError

    waits: list[float] = []  # seconds to the response of every GET with WAIT

    def record(response: requests.Response, *args: object, **kwargs: object) -> None:
        if response.request.method == "GET" and "WAIT=" in (response.request.url or ""):
            waits.append(response.elapsed.total_seconds())

    session.hooks["response"].append(record)

    # pyvo's own creation call: TAP parameters (QUERY, LANG, REQUEST) plus ours; the POST
    # follows our 303 and pyvo takes the job URL from where it landed
    job = AsyncTAPJob.create(f"{served.base}/soda", "", ID=frames["pyvo"], session=session)
    assert job.url.startswith(f"{served.base}/soda/async/")
    assert job.url.rsplit("/", 1)[1] == job.job_id
    assert job.phase == "PENDING"
    assert job.uws_version == "1.1"

    # the setters POST to the sub-resources (303 back to the job), then re-read the job
    job.execution_duration = 600
    assert job.execution_duration.sec == 600
    text = session.get(f"{job.url}/executionduration", timeout=30).text
    assert text == "600"
    wanted = datetime.now(UTC).replace(microsecond=0) + timedelta(days=2)
    job.destruction = wanted
    assert abs((job.destruction - Time(wanted)).sec) < 1

    # WAIT blocks on an active job (PENDING counts), up to the server's cap, well under 60 s
    started = time.monotonic()
    response = session.get(job.url, params={"WAIT": "-1"}, timeout=30)
    blocked = time.monotonic() - started
    assert response.status_code == 200
    assert WAIT_CAP_S - 0.5 <= blocked < WAIT_CAP_S + 5, blocked

    # run and wait as pyvo does: repeated WAIT=-1 long polls until a final phase
    waits.clear()
    job.run()
    bounded(lambda: job.wait(timeout=30), 120, "pyvo job.wait()")
    assert job.phase == "COMPLETED", served.output()[-4000:]
    assert waits and max(waits) < WAIT_CAP_S + 3, waits
    job.raise_if_error()
    table = bounded(job.fetch_result, 60, "pyvo job.fetch_result()")
    assert "REDUCED_SCIENCE" in {str(c) for c in table["category"]}
    assert all(uri.startswith(f"{served.base}/") for uri in job.result_uris)

    # executionDuration is fixed once the job ran (403); destruction may still move
    with pytest.raises(DALServiceError):
        job.execution_duration = 60
    assert job.execution_duration.sec == 600
    later = wanted + timedelta(days=1)
    job.destruction = later
    assert abs((job.destruction - Time(later)).sec) < 1

    url = job.url
    job.delete()
    assert session.get(url, timeout=30).status_code == 404


@pytest.mark.parametrize("case", ["no ID", "incomplete"])
def test_pyvo_raise_if_error_reports_our_message(
    served: Served, demo_archive: Path, session: requests.Session, case: str
) -> None:
    from pyvo.dal import AsyncTAPJob, DALQueryError

    if case == "no ID":
        data, message = {"RUNID": "no-id"}, "no ID given"
    else:
        incomplete = incomplete_frames(demo_archive)
        assert incomplete, "the demo archive has no science frame missing calibrations"
        data, message = {"ID": incomplete[0]}, "cannot be reduced"
    job = AsyncTAPJob(create_job(session, served.base, data), session=session)
    assert job.phase == "PENDING"
    job.run()
    started = time.monotonic()
    bounded(lambda: job.wait(timeout=30), 60, "pyvo job.wait()")
    assert time.monotonic() - started < WAIT_CAP_S  # ERROR is final: no long poll
    assert job.phase == "ERROR"
    with pytest.raises(DALQueryError, match=message):
        job.raise_if_error()
    with pytest.raises(DALQueryError, match=message):
        job.fetch_result()  # no result: pyvo re-reads the job and raises its error
    job.delete()
