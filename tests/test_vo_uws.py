"""UWS and DALI documents checked against the REC schemas, plus the state machine and parsers.

The XSDs live in ../shared/vo_schemas (outside the repository, never copied in); they are
loaded offline by mapping every schemaLocation to a local file.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from lxml import etree

from soda_reduce.vo import dali, uws
from soda_reduce.vo.uws import (
    ErrorSummary,
    JobRef,
    JobSummary,
    Parameter,
    Phase,
    Result,
)
from tests.support.schemas import OfflineResolver
from tests.support.tools import missing

SCHEMA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "vo_schemas"
NS = {"uws": uws.UWS_NS, "xlink": uws.XLINK_NS, "xsi": uws.XSI_NS}
T0 = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)
BASE = "https://archive.example.org/soda/async"


@pytest.fixture(scope="module")
def uws_schema() -> etree.XMLSchema:
    path = SCHEMA_DIR / "UWS-v1.1.xsd"
    if not path.is_file():
        missing(f"UWS 1.1 XSD not found at {path} (../shared/vo_schemas missing)")
    parser = etree.XMLParser(no_network=True, resolve_entities=False)
    parser.resolvers.add(OfflineResolver())
    return etree.XMLSchema(etree.parse(str(path), parser))


def _valid(schema: etree.XMLSchema, data: bytes) -> etree._Element:
    """Parse and validate, failing with the schema's own messages."""
    doc = etree.fromstring(data)
    assert schema.validate(doc), "\n".join(str(e) for e in schema.error_log)
    return doc


def _children(el: etree._Element) -> list[str]:
    return [etree.QName(c).localname for c in el]


def _nil(el: etree._Element | None) -> bool:
    assert el is not None
    return el.get(f"{{{uws.XSI_NS}}}nil") == "true"


# --------------------------------------------------------------------------- documents


def test_pending_job_has_nils_in_schema_order(uws_schema: etree.XMLSchema) -> None:
    job = JobSummary(job_id="j1", phase=Phase.PENDING, creation_time=T0)
    doc = _valid(uws_schema, uws.render_job(job))
    assert doc.get("version") == "1.1"
    assert _children(doc) == [
        "jobId", "ownerId", "phase", "quote", "creationTime", "startTime", "endTime",
        "executionDuration", "destruction", "parameters", "results",
    ]  # fmt: skip
    for name in ("ownerId", "quote", "startTime", "endTime", "destruction"):
        assert _nil(doc.find(f"uws:{name}", NS)), name
    assert doc.findtext("uws:creationTime", namespaces=NS) == "2024-03-01T12:00:00Z"
    assert doc.findtext("uws:executionDuration", namespaces=NS) == "0"


def test_completed_job_with_results_and_job_info(uws_schema: etree.XMLSchema) -> None:
    info = etree.Element("{urn:soda-reduce:jobinfo}progress", done="3", total="3")
    job = JobSummary(
        job_id="j2",
        run_id="my run",
        owner_id="alice",
        phase=Phase.COMPLETED,
        quote=T0 + timedelta(minutes=5),
        creation_time=T0,
        start_time=T0 + timedelta(seconds=1, microseconds=250_000),
        end_time=T0 + timedelta(minutes=4),
        execution_duration=3600,
        destruction=T0 + timedelta(days=7),
        parameters=[
            Parameter("ID", "ivo://example/raw?r1"),
            Parameter("ID", "ivo://example/raw?r2"),
            Parameter("UPLOAD", "https://example.org/x.fits", by_reference=True),
            Parameter("NOTE", "a < b & c", is_post=True),
        ],
        results=[
            Result("products", f"{BASE}/j2/products", "application/x-votable+xml", 1234),
            Result("log", f"{BASE}/j2/log"),
        ],
        job_info=info,
    )
    doc = _valid(uws_schema, uws.render_job(job))
    assert _children(doc) == [
        "jobId", "runId", "ownerId", "phase", "quote", "creationTime", "startTime", "endTime",
        "executionDuration", "destruction", "parameters", "results", "jobInfo",
    ]  # fmt: skip
    assert doc.findtext("uws:startTime", namespaces=NS) == "2024-03-01T12:00:01.250Z"
    assert doc.findtext("uws:phase", namespaces=NS) == "COMPLETED"
    params = doc.findall("uws:parameters/uws:parameter", NS)
    assert [p.get("id") for p in params] == ["ID", "ID", "UPLOAD", "NOTE"]
    assert params[2].get("byReference") == "true" and params[3].get("isPost") == "true"
    assert params[3].text == "a < b & c"
    results = doc.findall("uws:results/uws:result", NS)
    assert results[0].get(f"{{{uws.XLINK_NS}}}href") == f"{BASE}/j2/products"
    assert results[0].get("size") == "1234" and results[1].get("size") is None
    assert doc.find("uws:jobInfo/{urn:soda-reduce:jobinfo}progress", NS) is not None
    assert info.getparent() is None, "the caller's element must not be moved"
    # the sub-resources on their own
    _valid(uws_schema, uws.render_results(job.results))
    _valid(uws_schema, uws.render_parameters(job.parameters))


def test_error_job_has_error_summary_message(uws_schema: etree.XMLSchema) -> None:
    job = JobSummary(
        job_id="j3",
        owner_id="bob",
        phase=Phase.ERROR,
        creation_time=T0,
        start_time=T0,
        end_time=T0 + timedelta(seconds=2),
        error_summary=ErrorSummary("no bias frames within 3 nights", type="fatal"),
    )
    doc = _valid(uws_schema, uws.render_job(job))
    summary = doc.find("uws:errorSummary", NS)
    assert summary is not None
    assert summary.get("type") == "fatal" and summary.get("hasDetail") == "false"
    assert summary.findtext("uws:message", namespaces=NS) == "no bias frames within 3 nights"
    votable = uws.render_error_summary(job.error_summary)  # type: ignore[arg-type]
    assert b"no bias frames within 3 nights" in votable


def test_job_list(uws_schema: etree.XMLSchema) -> None:
    refs = [
        JobRef("a", Phase.EXECUTING, f"{BASE}/a", run_id="r", owner_id="alice", creation_time=T0),
        JobRef("b", Phase.PENDING, f"{BASE}/b"),
    ]
    doc = _valid(uws_schema, uws.render_job_list(refs))
    assert doc.get("version") == "1.1"
    jobrefs = doc.findall("uws:jobref", NS)
    assert [j.get("id") for j in jobrefs] == ["a", "b"]
    assert jobrefs[0].get(f"{{{uws.XLINK_NS}}}href") == f"{BASE}/a"
    assert _children(jobrefs[0]) == ["phase", "runId", "ownerId", "creationTime"]
    assert _nil(jobrefs[1].find("uws:ownerId", NS))
    _valid(uws_schema, uws.render_job_list([]))


def test_schema_check_is_real(uws_schema: etree.XMLSchema) -> None:
    """Guard against a vacuous schema: a wrong phase or a missing element must fail."""
    good = uws.render_job(JobSummary(job_id="j", phase=Phase.PENDING, creation_time=T0))
    assert not uws_schema.validate(etree.fromstring(good.replace(b">PENDING<", b">BOGUS<")))
    no_results = good.replace(b"<uws:results/>", b"")
    assert not uws_schema.validate(etree.fromstring(no_results))


def test_result_href_must_be_absolute() -> None:
    with pytest.raises(ValueError, match="absolute"):
        Result("log", "/soda/async/j1/log")


def test_format_time_converts_to_utc() -> None:
    cet = timezone(timedelta(hours=1))
    assert uws.format_time(datetime(2024, 3, 1, 13, 0, tzinfo=cet)) == "2024-03-01T12:00:00Z"
    assert uws.format_time(datetime(2024, 3, 1, 12, 0)) == "2024-03-01T12:00:00Z"


# --------------------------------------------------------------------------- state machine


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (Phase.PENDING, Phase.QUEUED),
        (Phase.QUEUED, Phase.EXECUTING),
        (Phase.EXECUTING, Phase.COMPLETED),
        (Phase.EXECUTING, Phase.ERROR),
        (Phase.EXECUTING, Phase.ABORTED),
        (Phase.PENDING, Phase.ABORTED),
        (Phase.COMPLETED, Phase.ARCHIVED),
        (Phase.QUEUED, Phase.QUEUED),
    ],
)
def test_legal_transitions(old: Phase, new: Phase) -> None:
    assert uws.can_transition(old, new)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (Phase.COMPLETED, Phase.EXECUTING),
        (Phase.COMPLETED, Phase.ABORTED),
        (Phase.ABORTED, Phase.QUEUED),
        (Phase.ERROR, Phase.COMPLETED),
        (Phase.ARCHIVED, Phase.PENDING),
        (Phase.EXECUTING, Phase.PENDING),
        (Phase.QUEUED, Phase.COMPLETED),
    ],
)
def test_illegal_transitions(old: Phase, new: Phase) -> None:
    assert not uws.can_transition(old, new)


def test_transition_table_is_complete() -> None:
    assert set(uws.TRANSITIONS) == set(Phase)
    assert {Phase.PENDING, Phase.QUEUED, Phase.EXECUTING} == uws.ACTIVE
    assert not (uws.ACTIVE & uws.FINAL)
    for phase in uws.FINAL:
        assert uws.TRANSITIONS[phase] <= {Phase.ARCHIVED}


# --------------------------------------------------------------------------- parsers


@pytest.mark.parametrize(
    ("text", "phase"),
    [("RUN", Phase.QUEUED), ("run", Phase.QUEUED), (" Abort ", Phase.ABORTED)],
)
def test_parse_phase_request(text: str, phase: Phase) -> None:
    assert uws.parse_phase_request(text) == phase


@pytest.mark.parametrize("text", ["SUSPEND", "", "COMPLETED", "RUNNING"])
def test_parse_phase_request_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        uws.parse_phase_request(text)


@pytest.mark.parametrize(
    "text",
    ["2024-03-01T12:00:00Z", "2024-03-01T12:00:00", "2024-03-01T13:00:00+01:00"],
)
def test_parse_destruction(text: str) -> None:
    assert uws.parse_destruction(text) == T0


@pytest.mark.parametrize("text", ["tomorrow", "", "2024-13-01T00:00:00Z", "1709294400"])
def test_parse_destruction_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        uws.parse_destruction(text)


def test_parse_execution_duration_and_wait() -> None:
    assert uws.parse_execution_duration("0") == 0
    assert uws.parse_execution_duration(" 3600 ") == 3600
    assert uws.parse_wait("-1") == -1
    assert uws.parse_wait("30") == 30
    assert uws.parse_wait("0") == 0


@pytest.mark.parametrize("text", ["-5", "1.5", "abc", "", "1e3", str(2**31)])
def test_parse_execution_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        uws.parse_execution_duration(text)


@pytest.mark.parametrize("text", ["-2", "1.5", "soon", ""])
def test_parse_wait_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        uws.parse_wait(text)


def test_parse_job_list_filters() -> None:
    items = [("phase", "EXECUTING"), ("PHASE", "queued"), ("After", "2024-03-01T12:00:00Z"),
             ("last", "10"), ("other", "ignored")]  # fmt: skip
    phases, after, last = uws.parse_job_list_filters(items)
    assert phases == {Phase.EXECUTING, Phase.QUEUED}
    assert after == T0 and last == 10
    assert uws.parse_job_list_filters({}) == (set(), None, None)


@pytest.mark.parametrize(
    "items",
    [
        [("PHASE", "RUNNING")],
        [("AFTER", "yesterday")],
        [("LAST", "-1")],
        [("LAST", "0")],
        [("LAST", "1"), ("last", "2")],
    ],
)
def test_parse_job_list_filters_rejects(items: list[tuple[str, str]]) -> None:
    with pytest.raises(ValueError):
        uws.parse_job_list_filters(items)


# --------------------------------------------------------------------------- DALI


def test_error_votable_parses_with_astropy() -> None:
    from astropy.io.votable import parse

    data = dali.render_error_votable("bad POS value: <nonsense> & more")
    votable = parse(io.BytesIO(data))
    assert votable.version == "1.4"
    resource = votable.resources[0]
    assert resource.type == "results"
    (info,) = [i for i in resource.infos if i.name == "QUERY_STATUS"]
    assert info.value == "ERROR"
    assert info.content == "bad POS value: <nonsense> & more"
    xsd = SCHEMA_DIR / "VOTable-v1.4.xsd"
    if xsd.is_file():
        schema = etree.XMLSchema(etree.parse(str(xsd)))
        assert schema.validate(etree.fromstring(data)), str(schema.error_log)


def test_error_votable_passes_votlint(tmp_path: Path) -> None:
    stilts = shutil.which("stilts")
    if stilts is None:
        missing("stilts not on PATH")
    path = tmp_path / "error.vot"
    path.write_bytes(dali.render_error_votable("no such dataset"))
    proc = subprocess.run(
        [stilts, "votlint", f"votable={path}"], capture_output=True, text=True, timeout=120
    )
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report
    assert "ERROR" not in report, report


def test_error_taxonomy() -> None:
    expected = {
        dali.UsageError: 400,
        dali.ForbiddenError: 403,
        dali.NotFoundError: 404,
        dali.FatalError: 500,
        dali.TransientError: 503,
    }
    for cls, status in expected.items():
        err = cls("why")
        assert isinstance(err, dali.DaliError) and err.http_status == status
        assert b"why" in err.votable()
    assert dali.TransientError.uws_type == "transient"
    assert dali.FatalError.uws_type == "fatal"
    with pytest.raises(ValueError):
        dali.render_error_votable("x", query_status="BROKEN")


def test_case_insensitive_params_and_single() -> None:
    params = dali.case_insensitive_params([("id", "a"), ("ID", "b"), ("RunId", "r")])
    assert params == {"ID": ["a", "b"], "RUNID": ["r"]}
    assert dali.single(params, "runid") == "r"
    assert dali.single(params, "TARGET") is None
    assert dali.single(params, "TARGET", "bias") == "bias"
    with pytest.raises(dali.UsageError, match="ID given 2 times"):
        dali.single(params, "id")
