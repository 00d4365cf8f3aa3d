"""VOSI 1.1 availability and capabilities, and the service's VOResource record.

Pure: what the service offers and how it is doing come in as values, XML goes out. The
capabilities are listed once (`ENDPOINTS`) and written both into `/capabilities` and into the
registry record, so what a registry harvests and what a client finds on the service agree.

The record starts from an operator-editable template (vo_schemas/voresource-template.xml): its
`${name}` placeholders in text and attributes are filled from the settings; an element left
empty by a placeholder (an unset contact e-mail, say) is dropped; the capabilities and, for a
vs:CatalogService, the tableset of /archive/raw are added here. Record types follow VOResource
1.1, VODataService 1.2 and RegistryInterface 1.0.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from lxml import etree

from soda_reduce.vo.archive_table import COLUMNS as RAW_COLUMNS
from soda_reduce.vo.archive_table import DATALINK_CONTENT_TYPE, DATALINK_STANDARD_ID
from soda_reduce.vo.dali import VOTABLE_MEDIA_TYPE

AVAILABILITY_NS: Final = "http://www.ivoa.net/xml/VOSIAvailability/v1.0"
CAPABILITIES_NS: Final = "http://www.ivoa.net/xml/VOSICapabilities/v1.0"
VR_NS: Final = "http://www.ivoa.net/xml/VOResource/v1.0"
VS_NS: Final = "http://www.ivoa.net/xml/VODataService/v1.1"
RI_NS: Final = "http://www.ivoa.net/xml/RegistryInterface/v1.0"
XSI_NS: Final = "http://www.w3.org/2001/XMLSchema-instance"
XSI_TYPE: Final = f"{{{XSI_NS}}}type"

# standardIDs as the RECs define them
SODA_SYNC: Final = "ivo://ivoa.net/std/SODA#sync-1.0"
SODA_ASYNC: Final = "ivo://ivoa.net/std/SODA#async-1.0"
DATALINK: Final = DATALINK_STANDARD_ID
VOSI_CAPABILITIES: Final = "ivo://ivoa.net/std/VOSI#capabilities"
VOSI_AVAILABILITY: Final = "ivo://ivoa.net/std/VOSI#availability"
UWS: Final = "ivo://ivoa.net/std/UWS#rest-1.1"

RECORD_RESOURCE_KEY: Final = "soda-reduce"  # the template's identifier: ivo://{authority}/...


# ----------------------------------------------------------------------------- availability


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One health check: what was checked, whether it passed, and the detail people need."""

    name: str
    ok: bool
    detail: str


def _timestamp(moment: datetime) -> str:
    """xsd:dateTime in UTC, whole seconds, with the Z that VOResource's UTCTimestamp wants."""
    if moment.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def availability_xml(
    checks: Sequence[CheckResult], up_since: datetime, advisories: Sequence[str] = ()
) -> bytes:
    """available is true only when every check passed; one note per failed check.

    When all pass, a single note says what was checked, so a monitor sees it was real.
    ``advisories`` are notes that do not make the service unavailable (a registry record
    not fit for harvesting yet, say), written after the checks' notes.
    """
    if not checks:
        raise ValueError("availability needs at least one check")
    ns = f"{{{AVAILABILITY_NS}}}"
    root = etree.Element(ns + "availability", nsmap={"vosi": AVAILABILITY_NS})
    failed = [c for c in checks if not c.ok]
    etree.SubElement(root, ns + "available").text = "false" if failed else "true"
    etree.SubElement(root, ns + "upSince").text = _timestamp(up_since)
    if failed:
        notes = [f"{c.name}: {c.detail}" for c in failed]
    else:
        notes = ["all checks passed: " + "; ".join(f"{c.name}: {c.detail}" for c in checks)]
    for note in (*notes, *advisories):
        etree.SubElement(root, ns + "note").text = note
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)


# ----------------------------------------------------------------------------- capabilities


@dataclass(frozen=True, slots=True)
class InputParam:
    """A vs:InputParam: one parameter of a ParamHTTP interface."""

    name: str
    description: str
    datatype: str = "string"  # vs:SimpleDataType
    ucd: str | None = None
    unit: str | None = None
    std: bool = False
    required: bool = False


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One capability: a standard (or none) offered at a path below the service root."""

    path: str
    description: str
    standard_id: str | None = None
    version: str | None = None  # of the standard's interface
    # VODataService 1.2 allows both (maxOccurs 2, RegTAP's query_type "get#post"); pyvo 1.9's
    # VOSI parser warns W17 on the second one against its own documentation: harmless
    query_types: tuple[str, ...] = ("GET", "POST")
    mirrors: tuple[str, ...] = ()  # vr:mirrorURL paths: the same resource at another URL
    result_type: str | None = None
    params: tuple[InputParam, ...] = ()
    browser: bool = False  # a vr:WebBrowser interface (pages for people) instead of ParamHTTP


_FILTER_PARAMS = tuple(
    InputParam(name, f"exact {name.lower()} to select (repeat for several)", ucd=ucd)
    for name, ucd in (
        ("INSTRUMENT", "meta.id;instr"),
        ("CATEGORY", "meta.code.class"),
        ("NIGHT", "meta.id;time"),
        ("OBJECT", "meta.id;src"),
    )
)
_MAXREC = InputParam("MAXREC", "maximum number of rows returned", "integer", std=True)
# UCDs as the RECs give them: SODA 1.0 section 3.2.1, DataLink 1.1 section 3.2.1
_SODA_ID = InputParam(
    "ID", "identifier of a raw file or product", ucd="meta.ref.url;meta.curation", std=True
)
_DATALINK_ID = InputParam(
    "ID", "identifier of a raw file or product", ucd="meta.id;meta.main", std=True
)

ENDPOINTS: Final = (
    Endpoint(
        "/soda/sync",
        "SODA cutouts of products and raw files, returned at once",
        SODA_SYNC,
        "1.0",
        params=(_SODA_ID,),
    ),
    Endpoint(
        "/soda/async",
        "SODA jobs: on-demand reduction of raw files, with cutouts of the products",
        SODA_ASYNC,
        "1.0",
        params=(_SODA_ID,),
    ),
    # GET lists the caller's jobs, POST creates one
    Endpoint("/soda/async", "The UWS 1.1 job list of the SODA jobs", UWS, "1.1"),
    Endpoint(
        "/datalink",
        "DataLink links of raw files (with a 'reduce this' descriptor) and of products",
        DATALINK,
        "1.1",
        result_type=DATALINK_CONTENT_TYPE,
        params=(_DATALINK_ID, _MAXREC),
    ),
    # siblings of the SODA endpoints (DALI 1.1 section 2), also served at the root (the
    # sibling of /datalink, where pyvo's DALService(base) looks): a true mirror
    Endpoint(
        "/soda/capabilities",
        "VOSI capabilities",
        VOSI_CAPABILITIES,
        "1.1",
        ("GET",),
        mirrors=("/capabilities",),
    ),
    Endpoint(
        "/soda/availability",
        "VOSI availability",
        VOSI_AVAILABILITY,
        "1.1",
        ("GET",),
        mirrors=("/availability",),
    ),
    Endpoint(
        "/archive/raw",
        "The indexed raw files as a VOTable, with their DataLink URLs",
        result_type=VOTABLE_MEDIA_TYPE,
        params=(*_FILTER_PARAMS, _MAXREC),
    ),
    Endpoint(
        "/",
        "Pages for people: jobs, their progress and products",
        query_types=("GET",),
        browser=True,
    ),
)


def _param_element(parent: etree._Element, param: InputParam) -> None:
    el = etree.SubElement(parent, "param", use="required" if param.required else "optional")
    if param.std:
        el.set("std", "true")
    etree.SubElement(el, "name").text = param.name
    etree.SubElement(el, "description").text = param.description
    if param.unit:
        etree.SubElement(el, "unit").text = param.unit
    if param.ucd:
        etree.SubElement(el, "ucd").text = param.ucd
    etree.SubElement(el, "dataType").text = param.datatype


def add_capabilities(
    parent: etree._Element,
    base_url: str,
    endpoints: Sequence[Endpoint] = ENDPOINTS,
    *,
    with_params: bool = True,
) -> list[etree._Element]:
    """Append one unqualified <capability> per endpoint; `parent` must declare vr, vs, xsi.

    Parameters are for registries (RegTAP's intf_param); /capabilities leaves them out
    because pyvo's VOSI parser does not know vs:ParamHTTP's <param> and warns on each.
    """
    root = base_url.rstrip("/")
    added = []
    for ep in endpoints:
        cap = etree.SubElement(parent, "capability")
        if ep.standard_id:
            cap.set("standardID", ep.standard_id)
        etree.SubElement(cap, "description").text = ep.description
        interface = etree.SubElement(cap, "interface")
        interface.set(XSI_TYPE, "vr:WebBrowser" if ep.browser else "vs:ParamHTTP")
        if ep.version:
            interface.set("version", ep.version)
        if ep.standard_id:
            interface.set("role", "std")
        etree.SubElement(interface, "accessURL", use="full").text = root + ep.path
        for mirror in ep.mirrors:
            etree.SubElement(interface, "mirrorURL").text = root + mirror
        if not ep.browser:
            for query_type in ep.query_types:
                etree.SubElement(interface, "queryType").text = query_type
            if ep.result_type:
                etree.SubElement(interface, "resultType").text = ep.result_type
            for param in ep.params if with_params else ():
                _param_element(interface, param)
        added.append(cap)
    return added


def capabilities_xml(base_url: str, endpoints: Sequence[Endpoint] = ENDPOINTS) -> bytes:
    nsmap = {"vosi": CAPABILITIES_NS, "vr": VR_NS, "vs": VS_NS, "xsi": XSI_NS}
    root = etree.Element(f"{{{CAPABILITIES_NS}}}capabilities", nsmap=nsmap)
    add_capabilities(root, base_url, endpoints, with_params=False)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)


# ----------------------------------------------------------------------------- the record


@dataclass(frozen=True)
class RecordValues:
    """What fills the template's placeholders (`${authority}`, `${base_url}`...)."""

    authority: str
    base_url: str
    title: str
    publisher: str
    contact_name: str
    contact_email: str
    updated: datetime
    identifier: str = ""  # the record's IVOA identifier; default ivo://{authority}/soda-reduce

    def placeholders(self) -> dict[str, str]:
        return {
            "authority": self.authority,
            "base_url": self.base_url.rstrip("/"),
            "title": self.title,
            "publisher": self.publisher,
            "contact_name": self.contact_name,
            "contact_email": self.contact_email,
            "updated": _timestamp(self.updated),
            "identifier": self.identifier or f"ivo://{self.authority}/{RECORD_RESOURCE_KEY}",
        }


class TemplateError(ValueError):
    """The registry template is not usable (unknown placeholder, not XML, wrong root)."""


_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, remove_blank_text=True, remove_comments=True
)


def _substitute(text: str, values: Mapping[str, str]) -> str:
    try:
        return string.Template(text).substitute(values)
    except KeyError as exc:
        known = ", ".join(sorted(values))
        raise TemplateError(f"unknown placeholder ${{{exc.args[0]}}} (known: {known})") from None
    except ValueError as exc:
        raise TemplateError(f"bad placeholder: {exc} (write $$ for a literal $)") from None


def fill_template(template: str | bytes, values: Mapping[str, str]) -> etree._Element:
    """The template parsed (comments dropped), placeholders in text and attributes replaced.

    Filling the parsed tree rather than the text keeps any value from changing the XML
    structure, and lets the template's comments mention placeholders freely.
    """
    try:
        root = etree.fromstring(
            template.encode() if isinstance(template, str) else template, _PARSER
        )
    except etree.XMLSyntaxError as exc:
        raise TemplateError(f"the template is not well-formed XML: {exc}") from None
    if root.tag != f"{{{RI_NS}}}Resource":
        raise TemplateError(f"the root element must be ri:Resource, not {root.tag}")
    for el in root.iter(tag=etree.Element):
        if el.text:
            el.text = _substitute(el.text, values)
        for name, value in el.attrib.items():
            el.set(name, _substitute(value, values))
    return root


def _drop_empty_leaves(root: etree._Element) -> None:
    for el in list(root.iter()):
        if el is root or not isinstance(el.tag, str):
            continue
        if len(el) == 0 and not el.attrib and not (el.text or "").strip():
            el.getparent().remove(el)


def _resource_type(root: etree._Element) -> tuple[str | None, str]:
    value = root.get(XSI_TYPE, "")
    prefix, _, local = value.rpartition(":")
    return root.nsmap.get(prefix or None), local


def tableset_element(parent: etree._Element) -> etree._Element:
    """The /archive/raw table as a VODataService tableset (columns from archive_table)."""
    tableset = etree.SubElement(parent, "tableset")
    schema = etree.SubElement(tableset, "schema")
    etree.SubElement(schema, "name").text = "archive"
    etree.SubElement(schema, "description").text = "What the service knows of the archive"
    table = etree.SubElement(schema, "table")
    etree.SubElement(table, "name").text = "archive.raw"
    about = "The indexed raw files (GET /archive/raw), one row each, with their DataLink URLs"
    etree.SubElement(table, "description").text = about
    for col in RAW_COLUMNS:
        column = etree.SubElement(table, "column")
        etree.SubElement(column, "name").text = col.name
        etree.SubElement(column, "description").text = col.description
        if col.unit:
            etree.SubElement(column, "unit").text = col.unit
        etree.SubElement(column, "ucd").text = col.ucd
        datatype = etree.SubElement(column, "dataType")
        datatype.set(XSI_TYPE, "vs:VOTableType")
        if col.datatype != "double":
            datatype.set("arraysize", "*")
        if col.xtype:
            datatype.set("extendedType", col.xtype)
        datatype.text = col.datatype
    return tableset


def render_record(
    template: str | bytes, values: RecordValues, endpoints: Sequence[Endpoint] = ENDPOINTS
) -> bytes:
    """The ri:Resource record: the filled template plus capabilities (and tableset)."""
    root = record_element(template, values, endpoints)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def record_element(
    template: str | bytes, values: RecordValues, endpoints: Sequence[Endpoint] = ENDPOINTS
) -> etree._Element:
    """The record as an element (/registry serves it, OAI-PMH embeds it)."""
    root = fill_template(template, values.placeholders())
    if root.find("capability") is not None:
        raise TemplateError("leave <capability> out of the template: the service adds them")
    _drop_empty_leaves(root)
    namespace, kind = _resource_type(root)
    if namespace not in (VR_NS, VS_NS) or not kind:
        raise TemplateError("the record needs xsi:type vr:Service or a vs: service type")
    for prefix, uri in (("vr", VR_NS), ("vs", VS_NS), ("xsi", XSI_NS)):
        if root.nsmap.get(prefix) != uri:
            raise TemplateError(f"the root element must declare xmlns:{prefix}={uri!r}")
    anchors = [el for el in root if el.tag in ("content", "rights")]
    if not anchors:
        raise TemplateError("the record has no <content>")
    position = root.index(anchors[-1]) + 1
    for offset, cap in enumerate(add_capabilities(root, values.base_url, endpoints)):
        root.insert(position + offset, cap)
    if namespace == VS_NS and kind == "CatalogService" and root.find("tableset") is None:
        tableset_element(root)
    return root
