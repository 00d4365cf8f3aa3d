"""The service as its own publishing registry: identifiers, the vg:Registry and vg:Authority
records, Dublin Core views, and what keeps the records from being harvestable.

A record is harvested from a publishing registry (RegistryInterface 1.0): an OAI-PMH
endpoint whose own vg:Registry record carries a vg:Harvest capability and names the
authorities it manages; those authorities' vg:Authority records and every record under them
are its ``ivo_managed`` set. When the service is its own publisher (the default), it serves
three records: the service (the filled template of vosi.py), the registry and the authority.
The two generated records take their curation, status and dates from the service record, so
the operator edits one template. Pure functions: values in, lxml elements out.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from lxml import etree

from soda_reduce.vo.vosi import RECORD_RESOURCE_KEY, RI_NS, VR_NS, XSI_NS, XSI_TYPE

VG_NS: Final = "http://www.ivoa.net/xml/VORegistry/v1.0"
REGISTRY_STANDARD: Final = "ivo://ivoa.net/std/Registry"
OAI_PATH: Final = "/oai"
MANAGED_SET: Final = "ivo_managed"
REGISTRY_SUBJECT: Final = "virtual-observatories"  # UAT, as registries' own records use
OAI_DC_NS: Final = "http://www.openarchives.org/OAI/2.0/oai_dc/"
DC_NS: Final = "http://purl.org/dc/elements/1.1/"
OAI_DC_SCHEMA: Final = "http://www.openarchives.org/OAI/2.0/oai_dc.xsd"

# IVOA Identifiers 2.0: an authority of at least 3 characters, a resource key of path
# segments, both from the unreserved URI characters (no query or fragment in a record's ID)
_AUTHORITY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~\-]{2,}")
_KEY = re.compile(r"[A-Za-z0-9._~\-]+(/[A-Za-z0-9._~\-]+)*")
# RFC 2606 / 6761 names: documentation and local use, never a published authority
_RESERVED = re.compile(
    r"(.*\.)?(example\.(org|com|net)|example|test|invalid|localhost|local)$", re.IGNORECASE
)


class PublicationError(ValueError):
    """An identifier setting that no registry would accept."""


def is_placeholder_authority(authority: str) -> bool:
    """example.org and the like: fine on a laptop, never in a harvested record."""
    return bool(_RESERVED.fullmatch(authority))


def check_authority(authority: str) -> str:
    if not _AUTHORITY.fullmatch(authority):
        raise PublicationError(
            f"SODA_REDUCE_AUTHORITY {authority[:80]!r} is not an IVOA authority (at least 3 of "
            "letters, digits and . _ ~ -, starting with a letter or digit)"
        )
    return authority


def service_identifier(authority: str, configured: str | None) -> str:
    """The service record's identifier: ``SODA_REDUCE_IDENTIFIER`` or
    ``ivo://{authority}/soda-reduce``. It must lie in the configured authority (the only
    one this registry manages, the one every raw-file and product ID carries)."""
    check_authority(authority)
    if not configured:
        return f"ivo://{authority}/{RECORD_RESOURCE_KEY}"
    prefix, _, rest = configured.partition("://")
    found, _, key = rest.partition("/")
    if prefix.lower() != "ivo" or found.lower() != authority.lower() or not _KEY.fullmatch(key):
        raise PublicationError(
            f"SODA_REDUCE_IDENTIFIER {configured[:120]!r} must be ivo://{authority}/KEY, KEY "
            "made of path segments (letters, digits and . _ ~ -)"
        )
    return f"ivo://{authority}/{key}"


@dataclass(frozen=True, slots=True)
class Publication:
    """Who the records say the service is, and whether it is its own publishing registry."""

    authority: str
    identifier: str  # of the service record
    contact_email: str | None
    publishing_registry: bool = True
    page_size: int = 100  # records per OAI-PMH list page (vg:Harvest maxRecords)
    base_url_configured: bool = True

    @property
    def registry_identifier(self) -> str:
        return f"{self.identifier}/registry"

    @property
    def authority_identifier(self) -> str:
        return f"ivo://{self.authority}"

    @property
    def admin_email(self) -> str:
        """OAI-PMH Identify requires one: the contact's, else the RFC 2142 mailbox every mail
        domain must have (docs/operators.md)."""
        return self.contact_email or f"postmaster@{self.authority}"

    def advisories(self) -> list[str]:
        """What keeps the records from being fit to harvest (the availability notes)."""
        notes = []
        if is_placeholder_authority(self.authority):
            notes.append(
                f"registry: the authority {self.authority} is a placeholder: set "
                "SODA_REDUCE_AUTHORITY before anything is harvested"
            )
        if not self.contact_email:
            notes.append(
                "registry: no contact e-mail (SODA_REDUCE_CONTACT_EMAIL): the records have "
                f"none and OAI-PMH Identify names {self.admin_email}"
            )
        if not self.base_url_configured:
            notes.append(
                "registry: SODA_REDUCE_BASE_URL is not set: the records' URLs follow the "
                "Host of each request"
            )
        return notes


# ----------------------------------------------------------------------------- records


def _sub(parent: etree._Element, name: str, text: str | None = None) -> etree._Element:
    child = etree.SubElement(parent, name)
    if text is not None:
        child.text = text
    return child


def _resource(kind: str, service: etree._Element, title: str, identifier: str) -> etree._Element:
    """A fresh ri:Resource of ``xsi:type=kind`` with the service record's dates, status and
    curation (the operator's publisher and contact)."""
    nsmap = {"ri": RI_NS, "vr": VR_NS, "vg": VG_NS, "xsi": XSI_NS}
    root = etree.Element(f"{{{RI_NS}}}Resource", nsmap=nsmap)
    root.set(XSI_TYPE, kind)
    for name in ("created", "updated", "status"):
        if service.get(name) is not None:
            root.set(name, service.get(name))
    _sub(root, "title", title)
    _sub(root, "identifier", identifier)
    curation = service.find("curation")
    if curation is None:
        raise ValueError("the service record has no curation")
    root.append(copy.deepcopy(curation))
    return root


def _content(root: etree._Element, description: str, reference_url: str) -> None:
    content = _sub(root, "content")
    _sub(content, "subject", REGISTRY_SUBJECT)
    _sub(content, "description", description)
    _sub(content, "referenceURL", reference_url)


def _publisher(service: etree._Element) -> etree._Element:
    publisher = service.find("curation/publisher")
    if publisher is None or not (publisher.text or "").strip():
        raise ValueError("the service record has no publisher")
    return publisher


def registry_record(
    service: etree._Element, publication: Publication, base_url: str
) -> etree._Element:
    """The vg:Registry record: an OAI-PMH vg:Harvest capability at {base}/oai, managing
    the configured authority (full: false, it harvests nobody)."""
    root_url = base_url.rstrip("/")
    title = (service.findtext("title") or "soda-reduce").strip()
    record = _resource(
        "vg:Registry", service, f"{title}: publishing registry", publication.registry_identifier
    )
    _content(
        record,
        f"The publishing registry of the authority {publication.authority}: its OAI-PMH "
        f"interface gives the record of {publication.identifier}, of this registry and of the "
        "authority itself, for the searchable registries to harvest.",
        f"{root_url}/",
    )
    capability = _sub(record, "capability")
    capability.set("standardID", REGISTRY_STANDARD)
    capability.set(XSI_TYPE, "vg:Harvest")
    _sub(capability, "description", "OAI-PMH 2.0 harvesting (GET and POST)")
    interface = _sub(capability, "interface")
    interface.set(XSI_TYPE, "vg:OAIHTTP")
    interface.set("role", "std")
    interface.set("version", "1.0")
    _sub(interface, "accessURL", f"{root_url}{OAI_PATH}").set("use", "base")
    _sub(capability, "maxRecords", str(publication.page_size))
    _sub(record, "full", "false")
    _sub(record, "managedAuthority", publication.authority)
    return record


def authority_record(
    service: etree._Element, publication: Publication, base_url: str
) -> etree._Element:
    """The vg:Authority record of the managed authority; managingOrg is the publisher."""
    publisher = _publisher(service)
    name = (publisher.text or "").strip()
    record = _resource(
        "vg:Authority",
        service,
        f"{name}: IVOA authority {publication.authority}",
        publication.authority_identifier,
    )
    _content(
        record,
        f"The IVOA naming authority {publication.authority}, managed by {name}: identifiers "
        f"beginning with ivo://{publication.authority}/ name its resources and data sets.",
        f"{base_url.rstrip('/')}/",
    )
    org = _sub(record, "managingOrg", name)
    if publisher.get("ivo-id"):
        org.set("ivo-id", publisher.get("ivo-id"))
    return record


def published_records(
    service: etree._Element, publication: Publication, base_url: str
) -> list[etree._Element]:
    """Every record the OAI-PMH interface serves: the service, and when the service is its
    own publishing registry, the registry and the authority."""
    if not publication.publishing_registry:
        return [service]
    return [
        service,
        registry_record(service, publication, base_url),
        authority_record(service, publication, base_url),
    ]


# ----------------------------------------------------------------------------- Dublin Core


def _texts(resource: etree._Element, paths: Sequence[str]) -> list[str]:
    found = []
    for path in paths:
        found += [" ".join((el.text or "").split()) for el in resource.iterfind(path)]
    return [text for text in found if text]


def dublin_core(resource: etree._Element) -> etree._Element:
    """oai_dc:dc of an ri:Resource (OAI-PMH's mandatory format), the usual VOResource to
    Dublin Core mapping: title, identifier, creators, subjects, description, publisher,
    contributors, the update date, the type and the reference URL as a relation."""
    nsmap = {"oai_dc": OAI_DC_NS, "dc": DC_NS, "xsi": XSI_NS}
    root = etree.Element(f"{{{OAI_DC_NS}}}dc", nsmap=nsmap)
    root.set(f"{{{XSI_NS}}}schemaLocation", f"{OAI_DC_NS} {OAI_DC_SCHEMA}")
    kind = resource.get(XSI_TYPE, "vr:Resource").rpartition(":")[2]
    fields = [
        ("title", _texts(resource, ["title"])),
        ("identifier", _texts(resource, ["identifier"])),
        ("creator", _texts(resource, ["curation/creator/name"])),
        ("subject", _texts(resource, ["content/subject"])),
        ("description", _texts(resource, ["content/description"])),
        ("publisher", _texts(resource, ["curation/publisher"])),
        ("contributor", _texts(resource, ["curation/contributor"])),
        ("date", [resource.get("updated")] if resource.get("updated") else []),
        ("type", [kind]),
        ("relation", _texts(resource, ["content/referenceURL"])),
    ]
    for name, values in fields:
        for value in values:
            etree.SubElement(root, f"{{{DC_NS}}}{name}").text = value
    return root
