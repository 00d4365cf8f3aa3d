"""OAI-PMH 2.0 at /oai: the service as the publishing registry of its authority.

Through the real server (aiohttp on loopback, the embedded store): every verb, by GET and
POST, resumption tokens paging through the records (one record a page here), the
from/until/set/metadataPrefix arguments and every error condition that applies. Each answer
is validated against the OAI-PMH 2.0 XSD with oai_dc, RegistryInterface, VOResource 1.1,
VODataService 1.2 and VORegistry 1.1 (OAI-PMH's ``xs:any`` is strict, so the embedded
records are validated too), and two of them again with STILTS xsdvalidate.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from lxml import etree

from soda_reduce.config import Settings, authority_from_base_url
from soda_reduce.runtime.store import Store
from soda_reduce.vo.registry import PublicationError, service_identifier
from soda_reduce.web.vosi import DEFAULT_TEMPLATE
from tests.support.schemas import (
    REGISTRY_SCHEMAS,
    SHARED_SCHEMAS,
    assert_valid,
    registry_schema,
)
from tests.support.tools import stilts
from tests.support.uws_harness import Harness, uws_service
from tests.test_uws_clients import NO_NETWORK, _run

NS = {
    "oai": "http://www.openarchives.org/OAI/2.0/",
    "ri": "http://www.ivoa.net/xml/RegistryInterface/v1.0",
    "vg": "http://www.ivoa.net/xml/VORegistry/v1.0",
    "oai_dc": "http://www.openarchives.org/OAI/2.0/oai_dc/",
    "dc": "http://purl.org/dc/elements/1.1/",
    "xsi": "http://www.w3.org/2001/XMLSchema-instance",
}
EMAIL = "registry-ops@archive.example.org"
SERVICE = "ivo://archive.example.org/reduce"
REGISTRY = f"{SERVICE}/registry"
AUTHORITY = "ivo://archive.example.org"
RECORDS = {SERVICE, REGISTRY, AUTHORITY}


def _settings(tmp_path: Path, archive: Path, **changes: object) -> Settings:
    template = tmp_path / "record.xml"
    shutil.copyfile(DEFAULT_TEMPLATE, template)
    base = Settings(
        data_dir=tmp_path,
        archive_dir=archive,
        min_free_bytes=1,
        authority="archive.example.org",
        identifier=SERVICE,
        contact_email=EMAIL,
        registry_template=template,
        oai_page_size=1,
    )
    return base.with_(**changes)


@pytest.fixture
async def svc(store: Store, demo_archive: Path, tmp_path: Path) -> AsyncIterator[Harness]:
    settings = _settings(tmp_path, demo_archive)
    async with uws_service(store, demo_archive, tmp_path, settings=settings, worker=False) as h:
        yield h


async def _oai(
    h: Harness, params: dict[str, str] | list[tuple[str, str]], *, post: bool = False
) -> etree._Element:
    """One OAI-PMH request; always HTTP 200 and a document valid against the schemas."""
    if post:
        response = await h.client.post("/oai", data=params)
    else:
        response = await h.client.get("/oai", params=params)
    body = await response.read()
    assert response.status == 200, body.decode()
    assert response.content_type == "text/xml"
    doc = etree.fromstring(body)
    assert_valid(registry_schema(), doc, f"{params}")
    assert doc.findtext("oai:request", namespaces=NS) == f"{h.base}/oai"
    return doc


def _error(doc: etree._Element) -> str | None:
    error = doc.find("oai:error", NS)
    return None if error is None else error.get("code")


def _token(doc: etree._Element, verb: str) -> etree._Element | None:
    return doc.find(f"oai:{verb}/oai:resumptionToken", NS)


async def _page_through(h: Harness, verb: str, first: dict[str, str]) -> list[etree._Element]:
    """Every page of a list, following the tokens (bounded: a page per record at most)."""
    pages = [await _oai(h, {"verb": verb, **first})]
    for _ in range(10):
        token = _token(pages[-1], verb)
        if token is None or not (token.text or ""):
            return pages
        pages.append(await _oai(h, {"verb": verb, "resumptionToken": token.text}, post=True))
    raise AssertionError("the list did not end")


def _canonical(element: etree._Element) -> bytes:
    """Exclusive C14N without the indentation: equal for the same record wherever embedded."""
    parser = etree.XMLParser(remove_blank_text=True)
    bare = etree.fromstring(etree.tostring(element), parser)
    return etree.tostring(bare, method="c14n", exclusive=True)


# ----------------------------------------------------------------------------- verbs


async def test_identify_names_the_registry_and_its_harvest_interface(svc: Harness) -> None:
    doc = await _oai(svc, {"verb": "Identify"})
    assert _error(doc) is None
    assert doc.find("oai:request", NS).get("verb") == "Identify"
    identify = doc.find("oai:Identify", NS)
    assert identify.findtext("oai:baseURL", namespaces=NS) == f"{svc.base}/oai"
    assert identify.findtext("oai:protocolVersion", namespaces=NS) == "2.0"
    assert identify.findtext("oai:adminEmail", namespaces=NS) == EMAIL
    assert identify.findtext("oai:granularity", namespaces=NS) == "YYYY-MM-DDThh:mm:ssZ"
    assert identify.findtext("oai:deletedRecord", namespaces=NS) == "transient"
    (registry,) = identify.iterfind("oai:description/ri:Resource", NS)
    assert registry.get(f"{{{NS['xsi']}}}type") == "vg:Registry"
    assert registry.findtext("identifier") == REGISTRY
    assert registry.findtext("managedAuthority") == "archive.example.org"
    assert registry.findtext("full") == "false"
    (harvest,) = registry.iterfind("capability", NS)
    assert harvest.get("standardID") == "ivo://ivoa.net/std/Registry"
    assert harvest.get(f"{{{NS['xsi']}}}type") == "vg:Harvest"
    assert harvest.findtext("interface/accessURL") == f"{svc.base}/oai"
    assert harvest.find("interface").get(f"{{{NS['xsi']}}}type") == "vg:OAIHTTP"
    assert harvest.findtext("maxRecords") == "1"
    assert registry.findtext("curation/contact/email") == EMAIL  # the template's curation
    earliest = identify.findtext("oai:earliestDatestamp", namespaces=NS)
    assert earliest == registry.get("updated")

    post = await _oai(svc, {"verb": "Identify"}, post=True)
    assert post.find("oai:Identify", NS) is not None


async def test_metadata_formats_and_sets(svc: Harness) -> None:
    doc = await _oai(svc, {"verb": "ListMetadataFormats"})
    formats = {
        f.findtext("oai:metadataPrefix", namespaces=NS): f.findtext(
            "oai:metadataNamespace", namespaces=NS
        )
        for f in doc.iterfind("oai:ListMetadataFormats/oai:metadataFormat", NS)
    }
    assert formats == {"ivo_vor": NS["ri"], "oai_dc": NS["oai_dc"]}
    for_record = await _oai(svc, {"verb": "ListMetadataFormats", "identifier": AUTHORITY})
    assert len(for_record.findall("oai:ListMetadataFormats/oai:metadataFormat", NS)) == 2
    unknown = await _oai(svc, {"verb": "ListMetadataFormats", "identifier": "ivo://x.org/no"})
    assert _error(unknown) == "idDoesNotExist"

    sets = await _oai(svc, {"verb": "ListSets"})
    specs = [s.findtext("oai:setSpec", namespaces=NS) for s in sets.iterfind(".//oai:set", NS)]
    assert specs == ["ivo_managed"]


async def test_list_records_pages_with_resumption_tokens(svc: Harness) -> None:
    pages = await _page_through(svc, "ListRecords", {"metadataPrefix": "ivo_vor"})
    assert len(pages) == 3  # one record a page
    seen = []
    for n, page in enumerate(pages):
        records = page.findall("oai:ListRecords/oai:record", NS)
        assert len(records) == 1
        header = records[0].find("oai:header", NS)
        seen.append(header.findtext("oai:identifier", namespaces=NS))
        assert [s.text for s in header.iterfind("oai:setSpec", NS)] == ["ivo_managed"]
        resource = records[0].find("oai:metadata/ri:Resource", NS)
        assert resource.findtext("identifier") == seen[-1]
        assert header.findtext("oai:datestamp", namespaces=NS) == resource.get("updated")
        token = _token(page, "ListRecords")
        assert token.get("completeListSize") == "3" and token.get("cursor") == str(n)
        assert bool(token.text) == (n < 2)  # the last page carries an empty token
    assert set(seen) == RECORDS and len(seen) == 3

    kinds = {}
    for page in pages:
        resource = page.find("oai:ListRecords/oai:record/oai:metadata/ri:Resource", NS)
        kinds[resource.findtext("identifier")] = resource.get(f"{{{NS['xsi']}}}type")
    assert kinds == {
        SERVICE: "vs:CatalogService",
        REGISTRY: "vg:Registry",
        AUTHORITY: "vg:Authority",
    }

    headers = await _page_through(svc, "ListIdentifiers", {"metadataPrefix": "oai_dc"})
    listed = [h.findtext("oai:header/oai:identifier", namespaces=NS) for h in headers]
    assert listed == [None] * 3  # ListIdentifiers has headers directly, no record
    listed = [
        h.findtext("oai:ListIdentifiers/oai:header/oai:identifier", namespaces=NS) for h in headers
    ]
    assert listed == seen  # the same order: datestamp, then identifier

    # the same list in Dublin Core, and with a set
    dc_pages = await _page_through(
        svc, "ListRecords", {"metadataPrefix": "oai_dc", "set": "ivo_managed"}
    )
    titles = [p.findtext(".//oai_dc:dc/dc:title", namespaces=NS) for p in dc_pages]
    assert all(titles) and len(titles) == 3
    identifiers = [p.findtext(".//oai_dc:dc/dc:identifier", namespaces=NS) for p in dc_pages]
    assert identifiers == seen


async def test_get_record_is_the_registry_record(svc: Harness) -> None:
    registry = etree.fromstring(await (await svc.client.get("/registry")).read())
    doc = await _oai(svc, {"verb": "GetRecord", "identifier": SERVICE, "metadataPrefix": "ivo_vor"})
    (resource,) = doc.iterfind("oai:GetRecord/oai:record/oai:metadata/ri:Resource", NS)
    assert _canonical(resource) == _canonical(registry)  # the same record, as served
    datestamp = doc.findtext("oai:GetRecord/oai:record/oai:header/oai:datestamp", namespaces=NS)
    assert datestamp == registry.get("updated")

    dc = await _oai(
        svc, {"verb": "GetRecord", "identifier": AUTHORITY, "metadataPrefix": "oai_dc"}, post=True
    )
    record = dc.find("oai:GetRecord/oai:record/oai:metadata/oai_dc:dc", NS)
    assert record.findtext("dc:identifier", namespaces=NS) == AUTHORITY
    assert record.findtext("dc:type", namespaces=NS) == "Authority"
    assert record.findtext("dc:publisher", namespaces=NS) == "archive.example.org"


async def test_from_until_and_set_select(svc: Harness) -> None:
    doc = await _oai(svc, {"verb": "Identify"})
    stamp = doc.findtext("oai:Identify/oai:earliestDatestamp", namespaces=NS)
    day = stamp[:10]
    for arguments in (
        {"from": stamp},
        {"until": stamp},
        {"from": day, "until": day},  # a day-granular until includes the whole day
        {"set": "ivo_managed"},
    ):
        found = await _oai(
            svc, {"verb": "ListIdentifiers", "metadataPrefix": "ivo_vor", **arguments}
        )
        assert _error(found) is None, arguments
        assert _token(found, "ListIdentifiers").get("completeListSize") == "3"
    for arguments in (
        {"from": "2999-01-01"},
        {"until": "2000-01-01T00:00:00Z"},
        {"from": stamp, "until": "2000-01-01T00:00:00Z"},  # from after until
        {"set": "no_such_set"},
    ):
        found = await _oai(svc, {"verb": "ListRecords", "metadataPrefix": "ivo_vor", **arguments})
        assert _error(found) == "noRecordsMatch", arguments


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({}, "badVerb"),
        ({"verb": "ListEverything"}, "badVerb"),
        ([("verb", "Identify"), ("verb", "Identify")], "badVerb"),
        ({"verb": "Identify", "metadataPrefix": "ivo_vor"}, "badArgument"),
        ({"verb": "ListRecords"}, "badArgument"),
        ({"verb": "GetRecord", "identifier": SERVICE}, "badArgument"),
        (
            [("verb", "ListRecords"), ("metadataPrefix", "ivo_vor"), ("set", "a"), ("set", "b")],
            "badArgument",
        ),
        ({"verb": "ListRecords", "metadataPrefix": "ivo_vor", "from": "yesterday"}, "badArgument"),
        (
            {
                "verb": "ListRecords",
                "metadataPrefix": "ivo_vor",
                "from": "2025-01-01",
                "until": "2026-01-01T00:00:00Z",
            },
            "badArgument",
        ),
        (
            {"verb": "ListRecords", "metadataPrefix": "ivo_vor", "resumptionToken": "x"},
            "badArgument",
        ),
        ({"verb": "ListRecords", "metadataPrefix": "x" * 2000}, "badArgument"),
        ({"verb": "ListRecords", "metadataPrefix": "marc21"}, "cannotDisseminateFormat"),
        (
            {"verb": "GetRecord", "identifier": SERVICE, "metadataPrefix": "marc21"},
            "cannotDisseminateFormat",
        ),
        (
            {"verb": "GetRecord", "identifier": "ivo://x.org/y", "metadataPrefix": "ivo_vor"},
            "idDoesNotExist",
        ),
        ({"verb": "ListRecords", "resumptionToken": "not-a-token"}, "badResumptionToken"),
        ({"verb": "ListIdentifiers", "resumptionToken": "e30"}, "badResumptionToken"),  # {}
        ({"verb": "ListSets", "resumptionToken": "anything"}, "badResumptionToken"),
    ],
)
async def test_errors_are_oai_documents(svc: Harness, params, code: str) -> None:
    for post in (False, True):
        doc = await _oai(svc, params, post=post)
        assert _error(doc) == code, etree.tostring(doc).decode()
        request = doc.find("oai:request", NS)
        if code in ("badVerb", "badArgument"):
            assert dict(request.attrib) == {}  # OAI-PMH: the base URL only
        else:
            assert request.get("verb") == dict(params)["verb"]
        assert doc.find("oai:error", NS).text  # a message for people


async def test_tokens_are_bound_to_their_list(svc: Harness, tmp_path: Path) -> None:
    first = await _oai(svc, {"verb": "ListIdentifiers", "metadataPrefix": "ivo_vor"})
    token = _token(first, "ListIdentifiers").text
    wrong_verb = await _oai(svc, {"verb": "ListRecords", "resumptionToken": token})
    assert _error(wrong_verb) == "badResumptionToken"
    again = await _oai(svc, {"verb": "ListIdentifiers", "resumptionToken": token})
    assert _error(again) is None  # still the same list
    # the records change (the template was edited): the old token pages a list that is gone
    template = tmp_path / "record.xml"
    stamp = template.stat().st_mtime + 3600
    os.utime(template, (stamp, stamp))
    changed = await _oai(svc, {"verb": "ListIdentifiers", "resumptionToken": token})
    assert _error(changed) == "badResumptionToken"
    assert "start again" in changed.findtext("oai:error", namespaces=NS)


async def test_a_body_that_is_not_a_form_is_a_bad_argument(svc: Harness) -> None:
    response = await svc.client.post(
        "/oai", data=b'{"verb": "Identify"}', headers={"Content-Type": "application/json"}
    )
    assert response.status == 200
    doc = etree.fromstring(await response.read())
    assert_valid(registry_schema(), doc, "JSON body")
    assert _error(doc) == "badArgument"


# ----------------------------------------------------------------------------- STILTS


async def test_stilts_xsdvalidate_identify_and_list_records(svc: Harness, tmp_path: Path) -> None:
    """A second, independent validator (Xerces through STILTS) on the richest answers."""
    command = [stilts(), *NO_NETWORK, "xsdvalidate"]
    command += [f"schemaloc={ns}={SHARED_SCHEMAS / name}" for ns, name in REGISTRY_SCHEMAS.items()]
    queries = {
        "identify": {"verb": "Identify"},
        "records": {"verb": "ListRecords", "metadataPrefix": "ivo_vor"},
        "dc": {"verb": "GetRecord", "identifier": SERVICE, "metadataPrefix": "oai_dc"},
    }
    for name, params in queries.items():
        body = await (await svc.client.get("/oai", params=params)).read()
        path = tmp_path / f"{name}.xml"
        path.write_bytes(body)
        code, report = _run([*command, f"doc={path}"], timeout=120)
        assert code == 0 and "ERROR" not in report, f"{name}:\n{report}"
    # a control: a record that breaks VORegistry is caught inside OAI-PMH's xs:any
    bad = (tmp_path / "identify.xml").read_bytes().replace(b"<full>false</full>", b"")
    (tmp_path / "bad.xml").write_bytes(bad)
    code, report = _run([*command, f"doc={tmp_path / 'bad.xml'}"], timeout=120)
    assert code != 0 and "managedAuthority" in report, report


# ----------------------------------------------------------------------------- settings


async def test_not_a_publishing_registry(store: Store, demo_archive: Path, tmp_path: Path) -> None:
    settings = _settings(tmp_path, demo_archive, publishing_registry=False)
    async with uws_service(store, demo_archive, tmp_path, settings=settings, worker=False) as h:
        response = await h.client.get("/oai", params={"verb": "Identify"})
        assert response.status == 404
        record = etree.fromstring(await (await h.client.get("/registry")).read())
        assert record.findtext("identifier") == SERVICE


async def test_defaults_and_advisories(store: Store, demo_archive: Path, tmp_path: Path) -> None:
    """No authority, identifier, contact or base URL: a working service whose availability
    says why its records are not fit to harvest yet, and an Identify that still is valid."""
    settings = Settings(data_dir=tmp_path, archive_dir=demo_archive, min_free_bytes=1)
    async with uws_service(store, demo_archive, tmp_path, settings=settings, worker=False) as h:
        doc = await _oai(h, {"verb": "Identify"})
        assert doc.findtext(".//oai:adminEmail", namespaces=NS) == "postmaster@example.org"
        ids = {
            r.findtext("oai:header/oai:identifier", namespaces=NS)
            for r in (await _oai(h, {"verb": "ListRecords", "metadataPrefix": "ivo_vor"})).iterfind(
                ".//oai:record", NS
            )
        }
        assert "ivo://example.org/soda-reduce" in ids
        availability = etree.fromstring(await (await h.client.get("/availability")).read())
        ns = {"vosi": "http://www.ivoa.net/xml/VOSIAvailability/v1.0"}
        assert availability.findtext("vosi:available", namespaces=ns) == "true"
        notes = [n.text for n in availability.iterfind("vosi:note", ns)]
        assert any("example.org is a placeholder" in n for n in notes), notes
        assert any("SODA_REDUCE_CONTACT_EMAIL" in n for n in notes), notes
        assert any("SODA_REDUCE_BASE_URL is not set" in n for n in notes), notes


def test_identifier_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (
        service_identifier("archive.example.org", None) == "ivo://archive.example.org/soda-reduce"
    )
    assert service_identifier("a.org", "ivo://A.org/svc/reduce") == "ivo://a.org/svc/reduce"
    for bad in ("ivo://other.org/x", "http://a.org/x", "ivo://a.org/", "ivo://a.org/x?y", "a"):
        with pytest.raises(PublicationError):
            service_identifier("a.org", bad)
    with pytest.raises(PublicationError):
        service_identifier("a b", None)

    assert (
        authority_from_base_url("https://Archive.Example.ORG:8443/reduce") == "archive.example.org"
    )
    assert authority_from_base_url("http://127.0.0.1:8080") is None
    assert authority_from_base_url("http://[::1]/") is None
    assert authority_from_base_url("http://localhost:8080") is None
    for name in list(os.environ):
        if name.startswith("SODA_REDUCE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SODA_REDUCE_BASE_URL", "https://data.obs.example.edu/reduce")
    assert Settings.from_env().authority == "data.obs.example.edu"
    monkeypatch.setenv("SODA_REDUCE_AUTHORITY", "obs.edu")
    assert Settings.from_env().authority == "obs.edu"  # configured wins
    monkeypatch.setenv("SODA_REDUCE_OAI_PAGE_SIZE", "0")
    monkeypatch.setenv("SODA_REDUCE_PUBLISHING_REGISTRY", "false")
    settings = Settings.from_env()
    assert settings.oai_page_size == 1 and settings.publishing_registry is False


async def test_a_bad_identifier_stops_the_start(
    store: Store, demo_archive: Path, tmp_path: Path
) -> None:
    settings = _settings(tmp_path, demo_archive, identifier="ivo://someone.else/reduce")
    with pytest.raises(PublicationError, match=r"must be ivo://archive\.example\.org/KEY"):
        async with uws_service(store, demo_archive, tmp_path, settings=settings, worker=False):
            pass
