"""VOSI /availability, /capabilities and the VOResource record at /registry.

Availability runs its real checks on the whole in-process stack (embedded store, in-process
queue, the local recipe command, the product store's disk); degraded states are made real by
a broker that stops answering, a store that fails, a check that hangs, a free-space minimum
above the disk's size, a recipe command that cannot run, and a Kubernetes API server (a
loopback stand-in) that answers or is gone. Documents are validated with STILTS xsdvalidate
against the REC XSDs in ../shared/vo_schemas (skipped when STILTS or that folder is missing),
and read back with pyvo.
"""

from __future__ import annotations

import asyncio
import io
import os
import sys
import time
import warnings
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from lxml import etree

from soda_reduce.config import Settings
from soda_reduce.runtime.store import Store
from soda_reduce.vo import vosi
from soda_reduce.vo.archive_table import COLUMNS
from soda_reduce.web.context import SERVICES
from soda_reduce.web.vosi import DEFAULT_TEMPLATE, MONITOR, AvailabilityMonitor
from tests.support.tools import missing
from tests.support.uws_harness import Harness, uws_service
from tests.test_uws_clients import NO_NETWORK, SHARED_SCHEMAS, _run, _stilts

NS = {
    "vosi": vosi.AVAILABILITY_NS,
    "cap": vosi.CAPABILITIES_NS,
    "ri": vosi.RI_NS,
    "vr": vosi.VR_NS,
    "vs": vosi.VS_NS,
    "xsi": vosi.XSI_NS,
}
TITLE = "Demo <archive> & its $reductions"
ADVISORY = "registry: "  # notes on the registry records' fitness, not checks (tests/test_oai.py)
EMAIL = "archive-ops@example.org"


def _settings(tmp_path: Path, archive: Path, **changes: object) -> Settings:
    base = Settings(
        data_dir=tmp_path,
        archive_dir=archive,
        min_free_bytes=1,
        title=TITLE,
        contact_email=EMAIL,
    )
    return base.with_(**changes)


@pytest.fixture
async def svc(store: Store, demo_archive: Path, tmp_path: Path) -> AsyncIterator[Harness]:
    settings = _settings(tmp_path, demo_archive)
    async with uws_service(store, demo_archive, tmp_path, settings=settings, worker=False) as h:
        yield h


def _monitor(h: Harness) -> AvailabilityMonitor:
    return h.client.server.app[MONITOR]


async def _xml(h: Harness, path: str) -> etree._Element:
    response = await h.client.get(path)
    assert response.status == 200, await response.text()
    assert response.content_type == "text/xml"
    return etree.fromstring(await response.read())


async def _availability(h: Harness) -> tuple[bool, list[str]]:
    doc = await _xml(h, "/availability")
    available = doc.findtext("vosi:available", namespaces=NS)
    assert available in ("true", "false")
    notes = [n.text for n in doc.iterfind("vosi:note", NS)]
    return available == "true", [n for n in notes if not n.startswith(ADVISORY)]


# ----------------------------------------------------------------------------- availability


async def test_availability_from_real_checks(svc: Harness) -> None:
    from pyvo.io.vosi import parse_availability

    response = await svc.client.get("/availability")
    body = await response.read()
    doc = etree.fromstring(body)
    assert doc.tag == f"{{{vosi.AVAILABILITY_NS}}}availability"
    assert doc.findtext("vosi:available", namespaces=NS) == "true", body.decode()
    note, *advisories = [n.text for n in doc.iterfind("vosi:note", NS)]
    # the placeholder authority and the missing base URL of this test's settings
    assert len(advisories) == 2 and all(a.startswith(ADVISORY) for a in advisories), advisories
    for what in ("store: answers", "broker: answers", "executor: local: the recipe command runs"):
        assert what in note, note
    assert "GB free on the product store" in note
    up_since = datetime.fromisoformat(doc.findtext("vosi:upSince", namespaces=NS))
    assert abs((datetime.now(UTC) - up_since).total_seconds()) < 600

    parsed = parse_availability(io.BytesIO(body))
    assert parsed.available is True
    assert parsed.notes == [note, *advisories]


async def test_degraded_checks_each_give_a_note(
    svc: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monitor = _monitor(svc)
    monitor.cache_s = 0  # every request runs the checks

    async def silent_broker() -> bool:
        return False

    monkeypatch.setattr(svc.runtime.queue, "ping", silent_broker)
    available, notes = await _availability(svc)
    assert not available
    assert notes == ["broker: the plan queue's broker does not answer"]

    services = svc.client.server.app[SERVICES]
    monkeypatch.setattr(services, "settings", services.settings.with_(min_free_bytes=10**18))

    async def broken_store() -> None:
        raise ConnectionError("mongodb://secret-host:27017 refused")

    monkeypatch.setattr(svc.runtime.store, "ping", broken_store)
    available, notes = await _availability(svc)
    assert not available
    assert len(notes) == 3, notes
    store, broker, disk = notes
    # the exception's text (host names...) stays in the log: the document is public
    assert store == "store: failed (ConnectionError; see the service log)"
    assert broker.startswith("broker: ")
    assert disk.startswith("disk: ") and "below the minimum" in disk
    assert "MIN_FREE_BYTES" in disk


async def test_a_hung_check_is_bounded(svc: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monitor = _monitor(svc)
    assert (await _availability(svc))[0]  # the executor's verdict is now kept for 30 s
    monitor.cache_s, monitor.timeout_s = 0, 0.5

    async def hung_broker() -> bool:
        await asyncio.sleep(3600)
        return True

    monkeypatch.setattr(svc.runtime.queue, "ping", hung_broker)
    started = time.monotonic()
    available, notes = await _availability(svc)
    assert time.monotonic() - started < 5
    assert not available
    assert notes == ["broker: no answer within 0.5 s"]


async def test_checks_are_cached_and_shared(svc: Harness) -> None:
    monitor = _monitor(svc)
    monitor.cache_s = 60
    responses = await asyncio.gather(*(svc.client.get("/availability") for _ in range(5)))
    assert all(r.status == 200 for r in responses)
    await _availability(svc)
    assert monitor.runs == 1
    monitor.cache_s = 0
    await _availability(svc)
    assert monitor.runs == 2


async def test_local_executor_that_cannot_start(
    svc: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monitor = _monitor(svc)
    monitor.cache_s = monitor.executor_cache_s = 0
    monkeypatch.setattr(sys, "executable", "/bin/false")  # read at each check; no worker here
    available, notes = await _availability(svc)
    assert not available
    assert notes == ["executor: the recipe command exited with 1: no output"]


async def test_hung_recipe_command_is_killed(
    svc: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid_file = tmp_path / "pid"
    script = tmp_path / "slow-python"
    script.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 60\n")
    script.chmod(0o755)
    monitor = _monitor(svc)
    monitor.cache_s = monitor.executor_cache_s = 0
    monitor.timeout_s = 1.5
    monkeypatch.setattr(sys, "executable", str(script))
    started = time.monotonic()
    available, notes = await _availability(svc)
    assert time.monotonic() - started < 5
    assert not available
    assert notes == ["executor: the recipe command did not answer within 1 s"]
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped, not left sleeping


async def test_kubernetes_executor_check(
    store: Store, demo_archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GET /version of a loopback stand-in for the API server: answered, refused, gone."""
    status = [200]

    async def version(request: web.Request) -> web.Response:
        assert "Authorization" not in request.headers  # the API process sends no credentials
        if status[0] != 200:
            return web.json_response({"kind": "Status", "code": status[0]}, status=status[0])
        return web.json_response({"major": "1", "minor": "30", "gitVersion": "v1.30.2"})

    api = web.Application()
    api.router.add_get("/version", version)
    server = TestServer(api, host="127.0.0.1")
    await server.start_server()
    monkeypatch.setenv("SODA_REDUCE_K8S_API_HOST", str(server.make_url("")).rstrip("/"))
    settings = _settings(tmp_path, demo_archive, executor="kubernetes")
    try:
        async with uws_service(store, demo_archive, tmp_path, settings=settings, worker=False) as h:
            monitor = _monitor(h)
            monitor.cache_s = monitor.executor_cache_s = 0
            available, notes = await _availability(h)
            assert available, notes
            assert "executor: kubernetes: the API server answers (version v1.30.2)" in notes[0]
            status[0] = 401  # anonymous requests refused: still up and reachable
            available, notes = await _availability(h)
            assert available, notes
            assert "executor: kubernetes: the API server answers (HTTP 401)" in notes[0]
            await server.close()
            available, notes = await _availability(h)
            assert not available
            assert len(notes) == 1, notes
            assert notes[0].startswith("executor: the Kubernetes API server does not answer")
    finally:
        await server.close()


# ----------------------------------------------------------------------------- capabilities


EXPECTED_IDS = {
    vosi.SODA_SYNC: "/soda/sync",
    vosi.SODA_ASYNC: "/soda/async",
    vosi.UWS: "/soda/async",
    vosi.DATALINK: "/datalink",
    vosi.VOSI_CAPABILITIES: "/soda/capabilities",  # siblings of the SODA endpoints
    vosi.VOSI_AVAILABILITY: "/soda/availability",
}
MIRRORS = {vosi.VOSI_CAPABILITIES: "/capabilities", vosi.VOSI_AVAILABILITY: "/availability"}


def _access_urls(doc: etree._Element) -> dict[str | None, list[str]]:
    urls: dict[str | None, list[str]] = {}
    for cap in doc.iterfind("capability"):
        urls.setdefault(cap.get("standardID"), []).extend(
            url.text for url in cap.iterfind("interface/accessURL")
        )
    return urls


async def test_capabilities_use_the_configured_base_url(svc: Harness) -> None:
    doc = await _xml(svc, "/capabilities")
    assert doc.tag == f"{{{vosi.CAPABILITIES_NS}}}capabilities"
    urls = _access_urls(doc)
    for standard_id, path in EXPECTED_IDS.items():
        assert urls[standard_id] == [svc.base + path]
    assert sorted(urls[None]) == sorted([svc.base + "/archive/raw", svc.base + "/"])
    mirrors = {
        cap.get("standardID"): [m.text for m in cap.iterfind("interface/mirrorURL")]
        for cap in doc.iterfind("capability")
    }
    for standard_id, path in MIRRORS.items():
        assert mirrors[standard_id] == [svc.base + path]  # the root copies, still served
        assert (await svc.client.get(path)).status == 200

    services = svc.client.server.app[SERVICES]
    services.base_url = "https://archive.example.org/reduce/"
    urls = _access_urls(await _xml(svc, "/capabilities"))
    assert urls[vosi.SODA_ASYNC] == ["https://archive.example.org/reduce/soda/async"]
    everything = [u for values in urls.values() for u in values]
    assert all(u.startswith("https://archive.example.org/reduce/") for u in everything)


async def test_pyvo_reads_capabilities(svc: Harness) -> None:
    from pyvo.dal import TAPService
    from pyvo.io.vosi.exceptions import W17

    def read() -> tuple[dict[str | None, list[str]], dict[str | None, list[str]], list]:
        service = TAPService(svc.base)  # any pyvo service finds {base}/capabilities
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            capabilities = service.capabilities
        urls = {
            cap.standardid: [url.content for i in cap.interfaces for url in i.accessurls]
            for cap in capabilities
        }
        methods = {
            cap.standardid: [str(q) for i in cap.interfaces for q in getattr(i, "querytypes", [])]
            for cap in capabilities
        }
        return urls, methods, [w.category for w in caught]

    found, methods, complaints = await asyncio.to_thread(read)
    for standard_id, path in EXPECTED_IDS.items():
        assert found[standard_id] == [svc.base + path]
    assert methods[vosi.SODA_SYNC] == ["GET", "POST"]  # pyvo reads both queryTypes
    # pyvo 1.9 warns W17 on a second queryType, although VODataService 1.2 allows two
    # (maxOccurs="2") and pyvo's own docstring says so; nothing else is reported
    assert complaints and set(complaints) == {W17}, complaints


# ----------------------------------------------------------------------------- the record


async def test_registry_record(svc: Harness) -> None:
    doc = await _xml(svc, "/registry")
    assert doc.tag == f"{{{vosi.RI_NS}}}Resource"
    assert doc.get(f"{{{vosi.XSI_NS}}}type") == "vs:CatalogService"
    assert doc.findtext("identifier") == "ivo://example.org/soda-reduce"
    assert doc.findtext("title") == TITLE  # escaped on the way out, intact on the way in
    assert doc.findtext("curation/publisher") == "example.org"  # the authority by default
    assert doc.findtext("curation/contact/email") == EMAIL
    assert doc.findtext("content/referenceURL") == svc.base + "/"
    updated = datetime.strptime(doc.get("updated"), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert updated == datetime.fromtimestamp(int(DEFAULT_TEMPLATE.stat().st_mtime), UTC)
    children = [el.tag for el in doc]
    first, last = (
        children.index("capability"),
        len(children) - 1 - children[::-1].index("capability"),
    )
    assert children[first - 1] == "content" and children[last + 1] == "tableset"
    assert _access_urls(doc)[vosi.DATALINK] == [svc.base + "/datalink"]
    params = doc.xpath("capability[not(@standardID)]/interface/param/name/text()")
    assert params == ["INSTRUMENT", "CATEGORY", "NIGHT", "OBJECT", "MAXREC"]
    columns = doc.xpath("tableset/schema/table[name='archive.raw']/column/name/text()")
    assert columns == [c.name for c in COLUMNS]


async def test_registry_without_email_and_with_own_template(
    svc: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = svc.client.server.app[SERVICES]
    monkeypatch.setattr(services, "settings", services.settings.with_(contact_email=None))
    doc = await _xml(svc, "/registry")
    assert doc.find("curation/contact/email") is None
    assert doc.findtext("curation/contact/name") == "Archive operations"

    own = tmp_path / "record.xml"
    own.write_text(
        DEFAULT_TEMPLATE.read_text()
        .replace('xsi:type="vs:CatalogService"', 'xsi:type="vr:Service"')
        .replace("<shortName>soda-reduce</shortName>", "<shortName>${authority}</shortName>")
    )
    monkeypatch.setattr(services, "settings", services.settings.with_(registry_template=own))
    doc = await _xml(svc, "/registry")
    assert doc.get(f"{{{vosi.XSI_NS}}}type") == "vr:Service"
    assert doc.findtext("shortName") == "example.org"
    assert doc.find("tableset") is None  # a vr:Service has none
    assert len(doc.findall("capability")) == len(vosi.ENDPOINTS)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("${title}", "${titel}"), "unknown placeholder ${titel}"),
        (lambda t: t.replace("</content>", "</content><capability/>"), "leave <capability> out"),
        (
            lambda t: t.replace("<ri:Resource", "<ri:Resorce").replace(
                "</ri:Resource", "</ri:Resorce"
            ),
            "root element must be ri:Resource",
        ),
        (lambda t: t.replace("</ri:Resource>", ""), "not well-formed"),
        (None, "set SODA_REDUCE_REGISTRY_TEMPLATE"),
    ],
)
async def test_registry_template_errors(
    svc: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, edit, message: str
) -> None:
    path = tmp_path / "broken.xml"
    if edit is not None:
        path.write_text(edit(DEFAULT_TEMPLATE.read_text()))
    services = svc.client.server.app[SERVICES]
    monkeypatch.setattr(services, "settings", services.settings.with_(registry_template=path))
    response = await svc.client.get("/registry")
    assert response.status == 500
    error = etree.fromstring(await response.read())
    (info,) = error.iterfind(".//{*}INFO[@name='QUERY_STATUS']")
    assert info.get("value") == "ERROR"
    assert message in info.text, info.text


def test_values_are_never_placeholders_themselves() -> None:
    """Filling is one pass: a value that looks like a placeholder stays as written."""
    values = vosi.RecordValues(
        authority="example.org",
        base_url="https://h/x/",
        title="${authority} & <friends>",
        publisher="P",
        contact_name="C",
        contact_email="",
        updated=datetime(2025, 3, 1, tzinfo=UTC),
    )
    doc = etree.fromstring(vosi.render_record(DEFAULT_TEMPLATE.read_bytes(), values))
    assert doc.findtext("title") == "${authority} & <friends>"
    assert doc.get("updated") == "2025-03-01T00:00:00Z"
    assert doc.findtext("content/referenceURL") == "https://h/x/"
    with pytest.raises(ValueError, match="timezone-aware"):
        vosi.availability_xml([vosi.CheckResult("x", True, "")], datetime(2025, 1, 1))


# ----------------------------------------------------------------------------- STILTS


def _xsdvalidate(path: Path, voresource: str = "1.1") -> tuple[int, str]:
    schemas = {
        vosi.AVAILABILITY_NS: "VOSIAvailability-v1.0.xsd",
        vosi.CAPABILITIES_NS: "VOSICapabilities-v1.0.xsd",
        vosi.VR_NS: f"VOResource-v{voresource}.xsd",
        vosi.VS_NS: "VODataService-v1.2.xsd",
        vosi.RI_NS: "RegistryInterface-v1.0.xsd",
        "http://www.ivoa.net/xml/STC/stc-v1.30.xsd": "stc-v1.30.xsd",
        "http://www.w3.org/1999/xlink": "xlink.xsd",
    }
    command = [_stilts(), *NO_NETWORK, "xsdvalidate"]
    command += [f"schemaloc={ns}={SHARED_SCHEMAS / name}" for ns, name in schemas.items()]
    return _run([*command, f"doc={path}"], timeout=120)


async def test_stilts_xsdvalidate_vosi_and_record(
    svc: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _stilts()
    if not (SHARED_SCHEMAS / "VODataService-v1.2.xsd").is_file():
        missing(f"IVOA XSDs not found at {SHARED_SCHEMAS} (../shared missing)")
    documents = {}
    for name in ("availability", "capabilities", "registry"):
        response = await svc.client.get(f"/{name}")
        assert response.status == 200
        documents[name] = await response.read()
    monitor = _monitor(svc)
    monitor.cache_s = 0

    async def silent_broker() -> bool:
        return False

    monkeypatch.setattr(svc.runtime.queue, "ping", silent_broker)
    degraded = await (await svc.client.get("/availability")).read()
    assert b"<vosi:available>false</vosi:available>" in degraded
    documents["degraded"] = degraded

    for name, body in documents.items():
        path = tmp_path / f"{name}.xml"
        path.write_bytes(body)
        code, report = _xsdvalidate(path)
        assert code == 0 and "ERROR" not in report, f"{name}:\n{report}"
    code, report = _xsdvalidate(tmp_path / "registry.xml", voresource="1.2")
    assert code == 0 and "ERROR" not in report, f"registry, VOResource 1.2:\n{report}"

    # controls: the validator really reads our elements
    bad = documents["registry"].replace(b"<identifier>", b"<identifer>", 1)
    bad = bad.replace(b"</identifier>", b"</identifer>", 1)
    (tmp_path / "bad-record.xml").write_bytes(bad)
    code, report = _xsdvalidate(tmp_path / "bad-record.xml")
    assert code != 0 and "identifer" in report, report
    bad = documents["capabilities"].replace(b"<queryType>GET", b"<queryType>PUT", 1)
    (tmp_path / "bad-capabilities.xml").write_bytes(bad)
    code, report = _xsdvalidate(tmp_path / "bad-capabilities.xml")
    assert code != 0 and "PUT" in report, report
