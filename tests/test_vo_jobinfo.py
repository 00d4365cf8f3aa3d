"""Our jobInfo document: round trip, our own XSD, and embedding in a UWS 1.1 job document.

Our XSD (vo_schemas/) is always checked; the UWS XSD comes from ../shared/vo_schemas and
those checks skip when it is missing, as in test_vo_uws.
"""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from lxml import etree

from soda_reduce.vo import jobinfo, uws
from soda_reduce.vo.jobinfo import (
    JOBINFO_NS,
    DatasetInfo,
    JobInfo,
    JobProgress,
    StepStatus,
    jobinfo_elements,
    parse_jobinfo,
)
from soda_reduce.vo.uws import JobSummary, Phase
from tests.support.schemas import OfflineResolver
from tests.support.tools import missing
from tests.test_vo_uws import SCHEMA_DIR

OUR_SCHEMAS = Path(__file__).resolve().parents[1] / "vo_schemas"
OUR_XSD = OUR_SCHEMAS / "soda-reduce-jobinfo-v1.xsd"
XS = "http://www.w3.org/2001/XMLSchema"
NS = {"uws": uws.UWS_NS, "sr": JOBINFO_NS, "xs": XS}
T0 = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)
KEY = "a3f5" * 16

FULL = JobInfo(
    pipeline="ccd",
    target="science",
    planned=True,
    cached_steps=2,
    progress=JobProgress(done=3, failed=1, total=6, running=("s5", "s6")),
    datasets=(
        DatasetInfo(
            label="NGC 1234 R 2024-01-05",
            target_job="s6",
            complete=True,
            quality_level=0,
            main_inputs=("ivo://example/raw?r1.fits", "ivo://example/raw?r2.fits"),
        ),
        DatasetInfo(
            label="M 31 <B> & co",
            target_job="s7",
            complete=False,
            quality_level=2,
            reasons=(
                "no BIAS with XBINNING=2 within 3 nights of 2024-01-05T03:12",
                "flat taken 40 nights away",
            ),
            main_inputs=("ivo://example/raw?r3.fits",),
        ),
    ),
    steps=(
        StepStatus("s1", "master_bias", "cached", step_key=KEY, attempts=0, label="BIAS 2x2"),
        StepStatus("s2", "master_flat", "done", step_key=KEY, attempts=1),
        StepStatus("s3", "science", "failed", step_key=KEY, attempts=3, error="boom:\n  x < y"),
        StepStatus("s4", "science", "skipped"),
        StepStatus("s5", "science", "running", attempts=1, label="NGC 1234 R"),
        StepStatus("s6", "science", "pending"),
    ),
)
MINIMAL = JobInfo(pipeline="ccd", target="science")


@pytest.fixture(scope="module")
def jobinfo_schema() -> etree.XMLSchema:
    parser = etree.XMLParser(no_network=True, resolve_entities=False)
    return etree.XMLSchema(etree.parse(str(OUR_XSD), parser))


def _uws_parser() -> etree.XMLParser:
    parser = etree.XMLParser(no_network=True, resolve_entities=False)
    parser.resolvers.add(OfflineResolver())
    return parser


@pytest.fixture(scope="module")
def uws_schema() -> etree.XMLSchema:
    path = SCHEMA_DIR / "UWS-v1.1.xsd"
    if not path.is_file():
        missing(f"UWS 1.1 XSD not found at {path} (../shared/vo_schemas missing)")
    return etree.XMLSchema(etree.parse(str(path), _uws_parser()))


@pytest.fixture(scope="module")
def combined_schema(uws_schema: etree.XMLSchema) -> etree.XMLSchema:
    """UWS and ours in one schema, so the lax xs:any in uws:jobInfo really checks our content."""
    uws_xsd = (SCHEMA_DIR / "UWS-v1.1.xsd").as_uri()
    xsd = f"""<xs:schema xmlns:xs="{XS}">
      <xs:import namespace="{uws.UWS_NS}" schemaLocation="{uws_xsd}"/>
      <xs:import namespace="{JOBINFO_NS}" schemaLocation="{OUR_XSD.as_uri()}"/>
    </xs:schema>"""
    return etree.XMLSchema(etree.fromstring(xsd, _uws_parser()))


def _errors(schema: etree.XMLSchema) -> str:
    return "\n".join(str(e) for e in schema.error_log)


def _job_document(info: JobInfo, phase: Phase = Phase.EXECUTING) -> bytes:
    job = JobSummary(job_id="j1", phase=phase, creation_time=T0, job_info=jobinfo_elements(info))
    return uws.render_job(job)


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("info", [FULL, MINIMAL], ids=["full", "minimal"])
def test_round_trip(info: JobInfo, jobinfo_schema: etree.XMLSchema) -> None:
    (element,) = jobinfo_elements(info)
    assert element.tag == f"{{{JOBINFO_NS}}}reduction"
    assert jobinfo_schema.validate(element), _errors(jobinfo_schema)
    assert parse_jobinfo(element) == info
    # and through bytes, as a client sees it
    reparsed = etree.fromstring(etree.tostring(element))
    assert parse_jobinfo(reparsed) == info


def test_shape_of_the_element() -> None:
    (el,) = jobinfo_elements(FULL)
    assert el.prefix == "sr"
    assert el.get("planned") == "true" and el.get("cachedSteps") == "2"
    assert [etree.QName(c).localname for c in el] == ["progress", "datasets", "steps"]
    progress = el.find("sr:progress", NS)
    assert progress is not None
    assert (progress.get("done"), progress.get("failed"), progress.get("total")) == ("3", "1", "6")
    assert [r.text for r in progress.findall("sr:running", NS)] == ["s5", "s6"]
    ds = el.findall("sr:datasets/sr:dataset", NS)[1]
    assert ds.get("targetJob") == "s7" and ds.get("complete") == "false"
    assert ds.get("qualityLevel") == "2"
    assert [etree.QName(c).localname for c in ds] == ["mainInput", "reason", "reason"]
    steps = el.findall("sr:steps/sr:step", NS)
    assert steps[0].get("stepKey") == KEY and steps[0].get("label") == "BIAS 2x2"
    assert steps[3].get("stepKey") is None and steps[3].get("label") is None
    assert steps[3].get("attempts") == "0"
    assert steps[2].findtext("sr:error", namespaces=NS) == "boom:\n  x < y"
    (minimal,) = jobinfo_elements(MINIMAL)
    assert len(minimal) == 0 and minimal.get("planned") == "false"


def test_unrepresentable_characters_are_replaced(jobinfo_schema: etree.XMLSchema) -> None:
    """Recipe stderr carries ANSI escapes and NULs; the job document must still render."""
    step = StepStatus("s1", "science", "failed", error="\x1b[31mFAIL\x1b[0m\x00")
    info = JobInfo(pipeline="ccd", target="science", steps=(step,))
    (el,) = jobinfo_elements(info)
    assert jobinfo_schema.validate(el), _errors(jobinfo_schema)
    assert parse_jobinfo(el).steps[0].error == "\ufffd[31mFAIL\ufffd[0m\ufffd"


def test_parse_accepts_whole_job_document_and_rejects_others() -> None:
    doc = etree.fromstring(_job_document(FULL))
    assert parse_jobinfo(doc) == FULL
    assert parse_jobinfo(etree.ElementTree(doc)) == FULL
    info_el = doc.find("uws:jobInfo", NS)
    assert info_el is not None and parse_jobinfo(info_el) == FULL
    bare = etree.fromstring(uws.render_job(JobSummary("j", Phase.PENDING, T0)))
    with pytest.raises(ValueError, match=r"no .*reduction"):
        parse_jobinfo(bare)
    (el,) = jobinfo_elements(MINIMAL)
    del el.attrib["pipeline"]
    with pytest.raises(ValueError, match="pipeline"):
        parse_jobinfo(el)


def test_parse_ignores_unknown_content() -> None:
    (el,) = jobinfo_elements(FULL)
    etree.SubElement(el, "{urn:other}extension", flag="1")
    el.set("futureAttribute", "x")
    assert parse_jobinfo(el) == FULL


# --------------------------------------------------------------------------- dataclasses


def test_dataclass_validation() -> None:
    with pytest.raises(ValueError, match="status"):
        StepStatus("s1", "bias", "finished")
    with pytest.raises(ValueError, match="attempts"):
        StepStatus("s1", "bias", "done", attempts=-1)
    with pytest.raises(ValueError, match="job_id"):
        StepStatus("", "bias", "done")
    with pytest.raises(ValueError, match="quality_level"):
        DatasetInfo("d", "s1", True, 3)
    with pytest.raises(TypeError, match="reasons"):
        DatasetInfo("d", "s1", False, 1, reasons="no bias")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="total"):
        JobProgress(done=3, failed=1, total=3)
    with pytest.raises(ValueError, match="done"):
        JobProgress(done=-1, failed=0, total=3)
    with pytest.raises(ValueError, match="pipeline"):
        JobInfo(pipeline="", target="science")
    # lists are accepted and frozen into tuples, so the objects stay hashable
    info = JobInfo("ccd", "science", steps=[StepStatus("s1", "b", "done")])  # type: ignore[arg-type]
    assert isinstance(info.steps, tuple)
    hash(info)
    assert DatasetInfo("d", "s1", True, 0, main_inputs=["ivo://x"]).main_inputs == ("ivo://x",)  # type: ignore[arg-type]


def test_progress_fraction() -> None:
    assert JobProgress(done=0, failed=0, total=0).fraction == 0.0
    assert JobProgress(done=3, failed=1, total=8).fraction == 0.5
    assert JobProgress(done=4, failed=0, total=4).fraction == 1.0


# --------------------------------------------------------------------------- schemas


def test_job_document_validates_against_uws_and_ours(
    uws_schema: etree.XMLSchema,
    jobinfo_schema: etree.XMLSchema,
    combined_schema: etree.XMLSchema,
) -> None:
    for info, phase in ((FULL, Phase.EXECUTING), (MINIMAL, Phase.PENDING)):
        doc = etree.fromstring(_job_document(info, phase))
        assert uws_schema.validate(doc), _errors(uws_schema)
        assert combined_schema.validate(doc), _errors(combined_schema)
        (reduction,) = doc.findall("uws:jobInfo/sr:reduction", NS)
        assert jobinfo_schema.validate(reduction), _errors(jobinfo_schema)


def test_combined_schema_checks_our_content(combined_schema: etree.XMLSchema) -> None:
    """Guard: inside a job document, a bad step status is caught once our XSD is known."""
    data = _job_document(FULL).replace(b'status="pending"', b'status="finished"')
    assert not combined_schema.validate(etree.fromstring(data))
    assert "finished" in _errors(combined_schema)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda el: el.find("sr:steps/sr:step", NS).set("status", "finished"), "finished"),
        (lambda el: el.find("sr:datasets/sr:dataset", NS).set("qualityLevel", "3"), "3"),
        (lambda el: el.find("sr:progress", NS).set("done", "-1"), "-1"),
        (lambda el: el.find("sr:steps/sr:step", NS).set("jobId", ""), "jobId"),
        (lambda el: el.attrib.pop("pipeline"), "pipeline"),
        (lambda el: el.find("sr:datasets/sr:dataset", NS).set("complete", "yes"), "yes"),
        (lambda el: el.append(el[0]), "progress"),  # moves progress after steps: bad order
    ],
    ids=["status", "quality", "negative", "empty-id", "no-pipeline", "boolean", "order"],
)
def test_our_schema_rejects_invalid(mutate, message: str, jobinfo_schema) -> None:  # type: ignore[no-untyped-def]
    (el,) = jobinfo_elements(FULL)
    mutate(el)
    assert not jobinfo_schema.validate(el)
    assert message in _errors(jobinfo_schema)


def test_schema_matches_module_and_is_documented() -> None:
    """Every declaration tells a client developer what it means; enums match the code."""
    xsd = etree.parse(str(OUR_XSD)).getroot()
    assert xsd.get("targetNamespace") == JOBINFO_NS
    statuses = xsd.xpath("xs:simpleType[@name='StepStatus']//xs:enumeration/@value", namespaces=NS)
    assert tuple(statuses) == jobinfo.STEP_STATUSES
    documented_types = {
        f"sr:{t.get('name')}"
        for t in xsd.xpath("xs:complexType | xs:simpleType", namespaces=NS)
        if t.find("xs:annotation/xs:documentation", NS) is not None
    }
    undocumented = [
        decl.get("name")
        for decl in xsd.xpath(".//xs:element | .//xs:attribute", namespaces=NS)
        if decl.find("xs:annotation/xs:documentation", NS) is None
        and decl.get("type") not in documented_types
    ]
    assert undocumented == []


def test_catalog_maps_namespace_and_system_id_to_our_xsd() -> None:
    catalog = etree.parse(str(OUR_SCHEMAS / "catalog.xml")).getroot()
    cat = {"c": "urn:oasis:names:tc:entity:xmlns:xml:catalog"}
    uris = {e.get("name"): e.get("uri") for e in catalog.findall("c:uri", cat)}
    systems = {e.get("systemId"): e.get("uri") for e in catalog.findall("c:system", cat)}
    for mapping in (uris, systems):
        assert mapping[JOBINFO_NS] == OUR_XSD.name
        assert mapping[jobinfo.JOBINFO_SCHEMA_URL] == OUR_XSD.name
    for target in (*uris.values(), *systems.values()):
        assert (OUR_SCHEMAS / target).is_file()


@pytest.mark.parametrize(("status", "ok"), [("pending", True), ("finished", False)])
def test_stilts_xsdvalidate_agrees(status: str, ok: bool, tmp_path: Path) -> None:
    """A second, Java (Xerces) validator, as the README tells client developers to use."""
    stilts = shutil.which("stilts")
    if stilts is None:
        missing("stilts not on PATH")
    (el,) = jobinfo_elements(FULL)
    el.find("sr:steps/sr:step", NS).set("status", status)
    path = tmp_path / "reduction.xml"
    path.write_bytes(etree.tostring(el, xml_declaration=True, encoding="UTF-8"))
    proc = subprocess.run(
        [stilts, "xsdvalidate", f"schemaloc={JOBINFO_NS}={OUR_XSD}", f"doc={path}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = proc.stdout + proc.stderr
    assert (proc.returncode == 0) == ok, report
    if not ok:
        assert "finished" in report
