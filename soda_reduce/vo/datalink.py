"""DataLink 1.1 {links} documents: the request, the links table and its service descriptors.

The links table (RESOURCE type="results", TABLEDATA) is written by astropy.io.votable, as
every table of the service is; the service descriptors (vo/descriptors.py, lxml) are
appended after it. Errors name a DataLink fault first (DataLink 1.1 3.4), in a row's
``error_message`` and in the error document of a request that fails as a whole
(`fault_message`): ``UsageFault: MAXREC must be >= 0``. Pure functions only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from astropy.io.votable.tree import Field, Info, Resource, TableElement, VOTableFile
from lxml import etree

from soda_reduce.vo.dali import UsageError, case_insensitive_params, render_error_votable, single
from soda_reduce.vo.descriptors import ServiceDescriptor, descriptor_element
from soda_reduce.vo.jobinfo import xml_safe
from soda_reduce.vo.results import VOTABLE_VERSION, votable_bytes

LINKS_STANDARD_ID: Final = "ivo://ivoa.net/std/DataLink#links-1.1"
DATALINK_MEDIA_TYPE: Final = "application/x-votable+xml;content=datalink"
VOTABLE_MEDIA_TYPE: Final = "application/x-votable+xml"
FAULTS: Final = ("NotFoundFault", "UsageFault", "TransientFault", "FatalFault", "DefaultFault")
# an error message: a fault, then optionally ": " and the reason (STILTS checks the same)
FAULT_MESSAGE: Final = re.compile(r"(NotFound|Usage|Transient|Fatal|Default)Fault(: .*)?\Z", re.S)
ID_FIELD: Final = "ID"  # XML ID of the links table's ID column: descriptors' ID refers to it
MAX_IDS: Final = 100  # IDs processed per request; more give OVERFLOW (DataLink 3.2.1)
MAX_ROWS: Final = 10_000  # MAXREC above this is lowered to it (DALI 3.2.4)
_IVOID: Final = re.compile(r"ivo://([^/?#]+)/([^?#]*)\?(.+)\Z", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class _Column:
    name: str
    datatype: str
    ucd: str
    description: str
    unit: str | None = None


# DataLink 1.1 table 1, in its order; link_auth and link_authorized (optional) are left out:
# whether a link needs a login is the deployment's proxy's business, not known here.
# quality_level is ours (extra columns are allowed after the standard ones).
COLUMNS: Final = (
    _Column("ID", "char", "meta.id;meta.main", "Input identifier"),
    _Column("access_url", "char", "meta.ref.url", "Link to data or service"),
    _Column("service_def", "char", "meta.ref", "Reference to a service descriptor resource"),
    _Column("error_message", "char", "meta.code.error", "Error if no link could be made"),
    _Column("description", "unicodeChar", "meta.note", "Human-readable text for this link"),
    _Column("semantics", "char", "meta.code", "Term from the DataLink core vocabulary"),
    _Column("content_type", "char", "meta.code.mime", "MIME type of what the link returns"),
    _Column("content_length", "long", "phys.size;meta.file", "Size of the download", "byte"),
    _Column("content_qualifier", "char", "meta.code.class", "Product type of the link target"),
    _Column("local_semantics", "char", "meta.id.assoc", "Kind of link, the same for every ID"),
    _Column(
        "quality_level",
        "short",
        "meta.code.qual",
        "Calibrations: association quality level (0 same night and setup, 1 within 3 nights, "
        "2 any valid)",
    ),
)
_NAMES: Final = tuple(c.name for c in COLUMNS)


@dataclass(frozen=True, slots=True)
class Link:
    """One row of a {links} table: exactly one of access_url, service_def, error_message."""

    id: str
    semantics: str
    description: str = ""
    access_url: str | None = None
    service_def: str | None = None
    error_message: str | None = None
    content_type: str | None = None
    content_length: int | None = None
    content_qualifier: str | None = None
    local_semantics: str | None = None
    quality_level: int | None = None

    def __post_init__(self) -> None:
        targets = [self.access_url, self.service_def, self.error_message]
        if sum(t is not None for t in targets) != 1:
            raise ValueError(f"link {self.semantics} of {self.id!r}: need exactly one target")
        if not self.semantics.startswith("#") and ":" not in self.semantics:
            raise ValueError(f"semantics {self.semantics!r}: a core term (#...) or a full URI")
        if self.error_message is not None and not FAULT_MESSAGE.match(self.error_message):
            raise ValueError(f"error_message must start with one of {FAULTS}, then ': '")
        if self.content_length is not None and self.content_length < 0:
            raise ValueError(f"content_length must be >= 0, not {self.content_length}")
        for name, column in zip(_NAMES, COLUMNS, strict=True):
            value = self._cell(name)
            if column.datatype == "char" and isinstance(value, str) and not value.isascii():
                raise ValueError(f"link of {self.id!r}: {name} must be ASCII: {value!r}")

    @classmethod
    def error(cls, id: str, fault: str, message: str, semantics: str = "#this") -> Link:
        return cls(id=id, semantics=semantics, error_message=f"{fault}: {message}")

    def _cell(self, name: str) -> str | int | None:
        return getattr(self, "id" if name == "ID" else name)


@dataclass(frozen=True, slots=True)
class LinksRequest:
    ids: tuple[str, ...]
    maxrec: int
    media_type: str
    dropped_ids: int = 0  # IDs past MAX_IDS, not processed (OVERFLOW)


# ----------------------------------------------------------------------------- request


def response_media_type(value: str | None) -> str:
    """The Content-Type for RESPONSEFORMAT; UsageError unless it asks for a VOTable.

    DataLink 3.1.2: strip MIME parameters, accept no value, "votable" and
    application/x-votable+xml; text/xml is VOTable's other registered type.
    """
    if value is None or not value.strip():
        return DATALINK_MEDIA_TYPE
    base, _, params = value.strip().partition(";")
    base = base.strip().lower()
    if base in ("votable", "votable/td", "application/x-votable+xml"):
        if base == "application/x-votable+xml" and "datalink" not in params.lower():
            return VOTABLE_MEDIA_TYPE
        return DATALINK_MEDIA_TYPE
    if base == "text/xml":
        return "text/xml"
    raise UsageError(f"RESPONSEFORMAT {value.strip()!r} is not supported; use votable")


def parse_links_request(pairs: Iterable[tuple[str, str]] | Mapping[str, str]) -> LinksRequest:
    """ID (repeatable, names case-insensitive), MAXREC and RESPONSEFORMAT, checked."""
    params = case_insensitive_params(pairs)
    media_type = response_media_type(single(params, "RESPONSEFORMAT"))
    raw_maxrec = single(params, "MAXREC")
    maxrec = MAX_ROWS
    if raw_maxrec is not None:
        try:
            maxrec = int(raw_maxrec.strip())
        except ValueError:
            raise UsageError(f"MAXREC must be an integer, not {raw_maxrec!r}") from None
        if maxrec < 0:
            raise UsageError(f"MAXREC must be >= 0, not {maxrec}")
        maxrec = min(maxrec, MAX_ROWS)
    ids: list[str] = []
    for value in params.get("ID", []):
        value = value.strip()
        if not value:
            continue
        if not value.isascii() or any(ord(c) < 32 for c in value):
            raise UsageError(f"ID {value!r} has characters no identifier here has")
        if value not in ids:
            ids.append(value)
    kept = tuple(ids[:MAX_IDS])
    return LinksRequest(kept, maxrec, media_type, dropped_ids=len(ids) - len(kept))


def local_id(identifier: str, authority: str) -> tuple[str, str] | None:
    """(resource, query) of an ``ivo://{authority}/{resource}?{query}`` ID of ours, else None.

    The authority part of an IVOA identifier is case-insensitive; the rest is not.
    """
    match = _IVOID.match(identifier)
    if match is None or match.group(1).lower() != authority.lower():
        return None
    return match.group(2), match.group(3)


def fault_for_status(status: int) -> str:
    """The DataLink fault of an HTTP error status (DataLink 1.1 3.4)."""
    if status == 404:
        return "NotFoundFault"
    if status in (429, 503):
        return "TransientFault"
    if 400 <= status < 500:
        return "UsageFault"
    return "FatalFault" if status >= 500 else "DefaultFault"


def fault_message(status: int, message: str) -> str:
    """``message`` behind the fault of ``status``, unless it already names a fault."""
    if FAULT_MESSAGE.match(message):
        return message
    return f"{fault_for_status(status)}: {message}"


def error_document(status: int, message: str) -> bytes:
    """The DALI error VOTable of a failed {links} request, its text led by the fault."""
    return render_error_votable(fault_message(status, message))


# ----------------------------------------------------------------------------- document


def _check(links: Sequence[Link], descriptors: Sequence[ServiceDescriptor]) -> None:
    ids = [d.xml_id for d in descriptors]
    if len(set(ids)) != len(ids):
        raise ValueError(f"service descriptor IDs must be unique: {ids}")
    for link in links:
        if link.service_def is not None and link.service_def not in ids:
            raise ValueError(f"service_def {link.service_def!r} names no descriptor")
    finished: set[str] = set()
    current: str | None = None
    for link in links:
        if link.id != current:
            if link.id in finished:
                raise ValueError(f"rows of ID {link.id!r} are not consecutive")
            if current is not None:
                finished.add(current)
            current = link.id


def _info(name: str, value: str) -> Info:
    info = Info(ID="placeholder", name=name, value=value)
    info.ID = None  # no XML ID: see results._info
    return info


def links_votable(links: Sequence[Link], *, overflow: bool = False) -> VOTableFile:
    """The results RESOURCE alone (QUERY_STATUS, standardID, the links table)."""
    votable = VOTableFile(version=VOTABLE_VERSION)
    resource = Resource(type="results")
    votable.resources.append(resource)
    resource.infos.append(_info("QUERY_STATUS", "OVERFLOW" if overflow else "OK"))
    resource.infos.append(_info("standardID", LINKS_STANDARD_ID))
    table = TableElement(votable, name="links")
    resource.tables.append(table)
    for col in COLUMNS:
        text = col.datatype in ("char", "unicodeChar")
        field = Field(
            votable,
            ID=ID_FIELD if col.name == "ID" else None,
            name=col.name,
            datatype=col.datatype,
            arraysize="*" if text else None,
            ucd=col.ucd,
            unit=col.unit,
        )
        field.description = col.description
        table.fields.append(field)
    table.create_arrays(len(links))
    for i, link in enumerate(links):
        values: list[str | int] = []
        mask: list[bool] = []
        for col in COLUMNS:
            value = link._cell(col.name)
            mask.append(value is None)
            if value is None:
                values.append("" if col.datatype in ("char", "unicodeChar") else 0)
            else:
                values.append(xml_safe(value) if isinstance(value, str) else value)
        table.array[i] = tuple(values)
        table.array.mask[i] = tuple(mask)
    return votable


def render_links(
    links: Sequence[Link],
    descriptors: Sequence[ServiceDescriptor] = (),
    *,
    overflow: bool = False,
) -> bytes:
    """The whole {links} response: results RESOURCE, then one RESOURCE per descriptor."""
    _check(links, descriptors)
    document = votable_bytes(links_votable(links, overflow=overflow))
    if not descriptors:
        return document
    parser = etree.XMLParser(remove_blank_text=True, resolve_entities=False, no_network=True)
    root = etree.fromstring(document, parser)
    for descriptor in descriptors:
        root.append(descriptor_element(descriptor))
    etree.indent(root, space=" ")
    return etree.tostring(root, xml_declaration=True, encoding="utf-8")
