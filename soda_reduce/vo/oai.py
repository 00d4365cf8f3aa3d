"""OAI-PMH 2.0, the harvesting interface of a publishing registry: requests in, documents out.

Pure: the web layer hands over the request's parameters and a `Repository` (its records,
sets, identity, page size) and serves the bytes. Every protocol error is an ``error``
element of the OAI-PMH document (HTTP 200, as OAI-PMH wants), never an exception out of
here. Lists are ordered by datestamp and identifier and paged by resumption tokens
(`vo.oai_requests`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Final

from lxml import etree

from soda_reduce.vo.oai_requests import (
    FORMATS,
    GRANULARITY,
    MEDIA_TYPE,
    OAI_NS,
    OAI_SCHEMA,
    ListQuery,
    OaiError,
    OaiRecord,
    OaiSet,
    Repository,
    datestamp,
    decode_token,
    encode_token,
    fingerprint,
    is_format,
    parse_request,
    records_of,
)
from soda_reduce.vo.registry import dublin_core
from soda_reduce.vo.vosi import XSI_NS

__all__ = [
    "MEDIA_TYPE",
    "OaiError",
    "OaiRecord",
    "OaiSet",
    "Repository",
    "error_document",
    "records_of",
    "respond",
]

# ----------------------------------------------------------------------------- documents


def _q(name: str) -> str:
    return f"{{{OAI_NS}}}{name}"


def _sub(parent: etree._Element, name: str, text: str | None = None) -> etree._Element:
    child = etree.SubElement(parent, _q(name))
    if text is not None:
        child.text = text
    return child


def _header(parent: etree._Element, record: OaiRecord) -> None:
    header = _sub(parent, "header")
    _sub(header, "identifier", record.identifier)
    _sub(header, "datestamp", datestamp(record.datestamp))
    for spec in record.sets:
        _sub(header, "setSpec", spec)


def _metadata(parent: etree._Element, record: OaiRecord, prefix: str) -> None:
    metadata = _sub(parent, "metadata")
    if prefix == "oai_dc":
        metadata.append(dublin_core(record.resource))
    else:
        metadata.append(copy.deepcopy(record.resource))


def _record(parent: etree._Element, record: OaiRecord, prefix: str) -> None:
    element = _sub(parent, "record")
    _header(element, record)
    _metadata(element, record, prefix)


def _find(repository: Repository, identifier: str) -> OaiRecord:
    for record in repository.records:
        if record.identifier == identifier:
            return record
    raise OaiError("idDoesNotExist", f"no record {identifier[:200]!r} here")


def _identify(parent: etree._Element, repository: Repository, _: dict[str, str]) -> None:
    identify = _sub(parent, "Identify")
    _sub(identify, "repositoryName", repository.name)
    _sub(identify, "baseURL", repository.base_url)
    _sub(identify, "protocolVersion", "2.0")
    _sub(identify, "adminEmail", repository.admin_email)
    earliest = min((r.datestamp for r in repository.records), default=datetime.now(UTC))
    _sub(identify, "earliestDatestamp", datestamp(earliest))
    _sub(identify, "deletedRecord", repository.deleted_record)
    _sub(identify, "granularity", GRANULARITY)
    if repository.description is not None:  # RegistryInterface: the vg:Registry record
        _sub(identify, "description").append(copy.deepcopy(repository.description))


def _list_formats(parent: etree._Element, repository: Repository, args: dict[str, str]) -> None:
    if "identifier" in args:
        _find(repository, args["identifier"])  # every record is offered in every format
    formats = _sub(parent, "ListMetadataFormats")
    for fmt in FORMATS:
        element = _sub(formats, "metadataFormat")
        _sub(element, "metadataPrefix", fmt.prefix)
        _sub(element, "schema", fmt.schema)
        _sub(element, "metadataNamespace", fmt.namespace)


def _list_sets(parent: etree._Element, repository: Repository, args: dict[str, str]) -> None:
    if "resumptionToken" in args:  # the set list is never split
        raise OaiError("badResumptionToken", "ListSets issues no resumption tokens")
    if not repository.sets:
        raise OaiError("noSetHierarchy", "this repository has no sets")
    sets = _sub(parent, "ListSets")
    for item in repository.sets:
        element = _sub(sets, "set")
        _sub(element, "setSpec", item.spec)
        _sub(element, "setName", item.name)


def _get_record(parent: etree._Element, repository: Repository, args: dict[str, str]) -> None:
    prefix = args["metadataPrefix"]
    record = _find(repository, args["identifier"])
    if not is_format(prefix):
        raise OaiError("cannotDisseminateFormat", f"no metadata format {prefix[:40]!r}")
    _record(_sub(parent, "GetRecord"), record, prefix)


def _list(verb: str) -> Callable[[etree._Element, Repository, dict[str, str]], None]:
    def respond(parent: etree._Element, repository: Repository, args: dict[str, str]) -> None:
        token = args.get("resumptionToken")
        if token is not None:
            query, expected = decode_token(verb, token)
        else:
            query = ListQuery(
                args["metadataPrefix"], args.get("from"), args.get("until"), args.get("set")
            )
            expected = None
        if query.set_spec is not None and not repository.sets:
            raise OaiError("noSetHierarchy", "this repository has no sets")
        try:
            found = query.select(repository)
        except OaiError:
            if token is not None:  # the list it paged has gone
                raise OaiError("badResumptionToken", "the list has changed: start again") from None
            raise
        current = fingerprint(found)
        if expected is not None and (expected != current or query.cursor >= len(found)):
            raise OaiError("badResumptionToken", "the list has changed: start again")
        page = found[query.cursor : query.cursor + repository.page_size]
        element = _sub(parent, verb)
        for record in page:
            if verb == "ListRecords":
                _record(element, record, query.prefix)
            else:
                _header(element, record)
        if len(found) > repository.page_size:  # a split list: the last page's token is empty
            after = query.cursor + len(page)
            resumption = _sub(element, "resumptionToken")
            resumption.set("completeListSize", str(len(found)))
            resumption.set("cursor", str(query.cursor))
            if after < len(found):
                resumption.text = encode_token(verb, query, after, current)

    return respond


_HANDLERS: Final = {
    "Identify": _identify,
    "ListMetadataFormats": _list_formats,
    "ListSets": _list_sets,
    "GetRecord": _get_record,
    "ListIdentifiers": _list("ListIdentifiers"),
    "ListRecords": _list("ListRecords"),
}


def _document(repository: Repository, now: datetime | None) -> etree._Element:
    # a prefix, not the default namespace: the records' unqualified elements must stay so
    root = etree.Element(_q("OAI-PMH"), nsmap={"oai": OAI_NS, "xsi": XSI_NS})
    root.set(f"{{{XSI_NS}}}schemaLocation", f"{OAI_NS} {OAI_SCHEMA}")
    _sub(root, "responseDate", datestamp(now or datetime.now(UTC)))
    _sub(root, "request", repository.base_url)
    return root


def error_document(repository: Repository, exc: OaiError, now: datetime | None = None) -> bytes:
    """A request that could not be read at all: its error, the request element bare (as
    OAI-PMH wants for badVerb and badArgument)."""
    root = _document(repository, now)
    _error(root, exc)
    return _serialize(root)


def respond(
    pairs: Sequence[tuple[str, str]], repository: Repository, now: datetime | None = None
) -> bytes:
    """The OAI-PMH document answering ``pairs`` (the query string or form)."""
    try:
        parsed = parse_request(pairs)
    except OaiError as exc:  # badVerb, badArgument: the request element has no attributes
        return error_document(repository, exc, now)
    root = _document(repository, now)
    request = root.find(_q("request"))
    assert request is not None
    for name, value in {"verb": parsed.verb, **parsed.arguments}.items():
        request.set(name, value)
    try:
        body = etree.Element(_q("body"))
        _HANDLERS[parsed.verb](body, repository, parsed.arguments)
    except OaiError as exc:
        if exc.code in ("badVerb", "badArgument"):
            request.attrib.clear()
        _error(root, exc)
    else:
        root.extend(list(body))
    return _serialize(root)


def _error(root: etree._Element, exc: OaiError) -> None:
    _sub(root, "error", exc.message).set("code", exc.code)


def _serialize(root: etree._Element) -> bytes:
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)
