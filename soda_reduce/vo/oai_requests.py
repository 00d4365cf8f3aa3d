"""OAI-PMH 2.0 requests: the repository model, a harvester's arguments checked as the
protocol and its XSD want, list queries, and resumption tokens.

A token carries the whole list request, the cursor of its next page and a fingerprint of
the list (identifiers and datestamps), base64url-encoded JSON: no state on the server, any
API process answers it, and a token of a list that has changed since is refused
(badResumptionToken) so the harvester starts again, as OAI-PMH allows. A token's contents
are checked again like the arguments they came from: a forged one gains nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

from lxml import etree

from soda_reduce.vo.registry import OAI_DC_NS, OAI_DC_SCHEMA
from soda_reduce.vo.vosi import RI_NS

OAI_NS: Final = "http://www.openarchives.org/OAI/2.0/"
OAI_SCHEMA: Final = "http://www.openarchives.org/OAI/2.0/OAI-PMH.xsd"
GRANULARITY: Final = "YYYY-MM-DDThh:mm:ssZ"
MEDIA_TYPE: Final = "text/xml"
ERROR_CODES: Final = frozenset(
    {
        "badArgument",
        "badResumptionToken",
        "badVerb",
        "cannotDisseminateFormat",
        "idDoesNotExist",
        "noRecordsMatch",
        "noMetadataFormats",
        "noSetHierarchy",
    }
)
MAX_PARAMETERS: Final = 16  # more than any verb takes, with room for repeats to report
MAX_VALUE: Final = 1024  # characters of any argument (a token is far shorter)
MAX_PAGE: Final = 1000


@dataclass(frozen=True, slots=True)
class MetadataFormat:
    prefix: str
    schema: str
    namespace: str


# RegistryInterface 1.0: records as ri:Resource under ivo_vor, and OAI-PMH's own oai_dc
FORMATS: Final = (
    MetadataFormat("ivo_vor", RI_NS, RI_NS),
    MetadataFormat("oai_dc", OAI_DC_SCHEMA, OAI_DC_NS),
)
_FORMATS = {f.prefix: f for f in FORMATS}


def is_format(prefix: str) -> bool:
    return prefix in _FORMATS


@dataclass(frozen=True, slots=True)
class OaiSet:
    spec: str
    name: str


@dataclass(frozen=True)
class OaiRecord:
    """One record: its OAI identifier (the IVOA identifier), datestamp and sets."""

    identifier: str
    datestamp: datetime
    sets: tuple[str, ...]
    resource: etree._Element = field(compare=False, repr=False)  # the ri:Resource


@dataclass(frozen=True)
class Repository:
    """What Identify says and what the lists page through."""

    name: str
    base_url: str  # of the OAI-PMH endpoint itself
    admin_email: str
    records: tuple[OaiRecord, ...]
    sets: tuple[OaiSet, ...]
    page_size: int = 100
    description: etree._Element | None = field(default=None, compare=False)  # vg:Registry
    deleted_record: str = "transient"

    def __post_init__(self) -> None:
        if not 1 <= self.page_size <= MAX_PAGE:
            raise ValueError(f"page_size must be within 1..{MAX_PAGE}, not {self.page_size}")


class OaiError(Exception):
    """An OAI-PMH error condition: its code and a message for people."""

    def __init__(self, code: str, message: str) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"not an OAI-PMH error code: {code}")
        super().__init__(message)
        self.code, self.message = code, message


# ----------------------------------------------------------------------------- arguments

# verb -> (required, optional, exclusive)
_VERBS: Final[dict[str, tuple[frozenset[str], frozenset[str], str | None]]] = {
    "Identify": (frozenset(), frozenset(), None),
    "ListMetadataFormats": (frozenset(), frozenset({"identifier"}), None),
    "ListSets": (frozenset(), frozenset(), "resumptionToken"),
    "GetRecord": (frozenset({"identifier", "metadataPrefix"}), frozenset(), None),
    "ListIdentifiers": (
        frozenset({"metadataPrefix"}),
        frozenset({"from", "until", "set"}),
        "resumptionToken",
    ),
    "ListRecords": (
        frozenset({"metadataPrefix"}),
        frozenset({"from", "until", "set"}),
        "resumptionToken",
    ),
}
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
# the OAI-PMH XSD's patterns of a metadataPrefix and a setSpec
_PREFIX = re.compile(r"[A-Za-z0-9\-_.!~*'()]+")
_SET_SPEC = re.compile(r"[A-Za-z0-9\-_.!~*'()]+(:[A-Za-z0-9\-_.!~*'()]+)*")
_SECOND = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")


@dataclass(frozen=True, slots=True)
class OaiRequest:
    verb: str
    arguments: dict[str, str]  # as given, for the response's request element


def parse_request(pairs: Sequence[tuple[str, str]]) -> OaiRequest:
    """The verb and its arguments (names are case-sensitive in OAI-PMH); badVerb or
    badArgument for anything the verb does not take exactly so."""
    if len(pairs) > MAX_PARAMETERS:
        raise OaiError("badArgument", f"at most {MAX_PARAMETERS} arguments")
    verbs = [v for n, v in pairs if n == "verb"]
    if len(verbs) != 1:
        raise OaiError("badVerb", "give the verb argument exactly once")
    verb = verbs[0]
    if verb not in _VERBS:
        names = ", ".join(_VERBS)
        raise OaiError("badVerb", f"{verb[:40]!r} is not an OAI-PMH verb ({names})")
    required, optional, exclusive = _VERBS[verb]
    arguments: dict[str, str] = {}
    for name, value in pairs:
        if name == "verb":
            continue
        if name not in required | optional and name != exclusive:
            raise OaiError("badArgument", f"{verb} takes no argument {name[:40]!r}")
        if name in arguments:
            raise OaiError("badArgument", f"{name} given more than once")
        if len(value) > MAX_VALUE:
            raise OaiError("badArgument", f"{name} is longer than {MAX_VALUE} characters")
        arguments[name] = value
    if exclusive is not None and exclusive in arguments:
        if len(arguments) > 1:
            raise OaiError("badArgument", f"{exclusive} is an exclusive argument")
        return OaiRequest(verb, arguments)
    missing = sorted(required - arguments.keys())
    if missing:
        raise OaiError("badArgument", f"{verb} needs {', '.join(missing)}")
    _check_syntax(arguments)
    return OaiRequest(verb, arguments)


def _check_syntax(arguments: dict[str, str]) -> None:
    """Values the OAI-PMH XSD types (the response's request element repeats them)."""
    prefix = arguments.get("metadataPrefix")
    if prefix is not None and not _PREFIX.fullmatch(prefix):
        raise OaiError("badArgument", f"{prefix[:40]!r} is not a metadataPrefix")
    spec = arguments.get("set")
    if spec is not None and not _SET_SPEC.fullmatch(spec):
        raise OaiError("badArgument", f"{spec[:40]!r} is not a setSpec")
    granularities = {
        _bound(arguments[name], name, upper=name == "until")[1]
        for name in ("from", "until")
        if name in arguments
    }
    if len(granularities) > 1:
        raise OaiError("badArgument", "from and until must have the same granularity")


def datestamp(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _bound(text: str, name: str, *, upper: bool) -> tuple[datetime, str]:
    """A from/until value and its granularity; a day-granular until includes the whole day."""
    try:
        if _SECOND.fullmatch(text):
            return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC), "second"
        if _DAY.fullmatch(text):
            day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
            return (day + timedelta(days=1, seconds=-1) if upper else day), "day"
    except ValueError:
        pass
    raise OaiError("badArgument", f"{name} must be YYYY-MM-DD or {GRANULARITY}, not {text[:40]!r}")


@dataclass(frozen=True, slots=True)
class ListQuery:
    """A ListRecords/ListIdentifiers request, from its arguments or from a token."""

    prefix: str
    since: str | None
    until: str | None
    set_spec: str | None
    cursor: int = 0

    def select(self, repository: Repository) -> list[OaiRecord]:
        if self.prefix not in _FORMATS:
            raise OaiError("cannotDisseminateFormat", f"no metadata format {self.prefix[:40]!r}")
        low = high = None
        granularities = set()
        if self.since is not None:
            low, granularity = _bound(self.since, "from", upper=False)
            granularities.add(granularity)
        if self.until is not None:
            high, granularity = _bound(self.until, "until", upper=True)
            granularities.add(granularity)
        if len(granularities) > 1:
            raise OaiError("badArgument", "from and until must have the same granularity")
        found = [
            r
            for r in repository.records
            if (low is None or r.datestamp >= low)
            and (high is None or r.datestamp <= high)
            and (self.set_spec is None or self.set_spec in r.sets)
        ]
        if not found:
            raise OaiError("noRecordsMatch", "no record matches these arguments")
        return sorted(found, key=lambda r: (r.datestamp, r.identifier))


def fingerprint(records: Iterable[OaiRecord]) -> str:
    digest = hashlib.sha256()
    for record in records:
        digest.update(f"{record.identifier}\n{datestamp(record.datestamp)}\n".encode())
    return digest.hexdigest()[:16]


def encode_token(verb: str, query: ListQuery, cursor: int, digest: str) -> str:
    body = {
        "v": verb,
        "p": query.prefix,
        "f": query.since,
        "u": query.until,
        "s": query.set_spec,
        "c": cursor,
        "h": digest,
    }
    raw = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(verb: str, token: str) -> tuple[ListQuery, str]:
    bad = OaiError("badResumptionToken", "the resumption token is not one of this list")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        body = json.loads(raw)
    except (binascii.Error, ValueError):
        raise bad from None
    if not isinstance(body, dict):
        raise bad
    strings = ("p", "h", *(k for k in ("f", "u", "s") if body.get(k) is not None))
    if (
        body.get("v") != verb
        or not all(isinstance(body.get(k), str) for k in strings)
        or type(body.get("c")) is not int
        or body["c"] <= 0
    ):
        raise bad
    query = ListQuery(body["p"], body.get("f"), body.get("u"), body.get("s"), body["c"])
    return query, body["h"]


def records_of(resources: Sequence[etree._Element], sets: Sequence[str]) -> tuple[OaiRecord, ...]:
    """OAI records of ri:Resource elements: the identifier, ``updated`` as datestamp."""
    records = []
    for resource in resources:
        identifier = (resource.findtext("identifier") or "").strip()
        updated = resource.get("updated") or resource.get("created")
        if not identifier or not updated:
            raise ValueError("a record needs an identifier and an updated (or created) time")
        records.append(OaiRecord(identifier, _parse_time(updated), tuple(sets), resource))
    return tuple(records)


def _parse_time(text: str) -> datetime:
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)
