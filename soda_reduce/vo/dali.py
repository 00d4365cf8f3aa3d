"""DALI error documents, the error taxonomy and case-insensitive parameter handling.

Pure functions only: the web layer turns a raised `DaliError` into an HTTP status plus the
VOTable rendered here, so every handler reports failures the same way (the safir/vo-cutouts
lesson: usage / transient / fatal errors map onto DALI errors, not onto ad-hoc text).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from typing import ClassVar, Literal

VOTABLE_MEDIA_TYPE = "application/x-votable+xml"
QUERY_STATUSES = frozenset({"ERROR", "OVERFLOW", "OK"})


def render_error_votable(message: str, query_status: str = "ERROR") -> bytes:
    """A DALI error VOTable: version 1.4 because Debian's STILTS 3.4.7 rejects 1.5.

    DALI puts the status on an INFO named QUERY_STATUS inside the results RESOURCE; clients
    (pyvo, TOPCAT) show the INFO text as the error message, so it must be the plain reason.
    """
    if query_status not in QUERY_STATUSES:
        raise ValueError(f"QUERY_STATUS must be one of {sorted(QUERY_STATUSES)}")
    # imported here: the error classes are imported by the command line and the store,
    # which never render a VOTable, and astropy.io.votable costs ~0.3 s to import
    from astropy.io.votable.tree import Info, Resource, VOTableFile

    votable = VOTableFile(version="1.4")
    resource = Resource(type="results")
    votable.resources.append(resource)
    info = Info(name="QUERY_STATUS", value=query_status)
    info.content = message
    resource.infos.append(info)
    out = io.BytesIO()
    votable.to_xml(out)
    return out.getvalue()


class DaliError(Exception):
    """Base of the taxonomy; `http_status` picks the response, `uws_type` the errorSummary type."""

    http_status: ClassVar[int] = 500
    uws_type: ClassVar[Literal["fatal", "transient"]] = "fatal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def votable(self) -> bytes:
        """The DALI error document that goes with this error."""
        return render_error_votable(self.message)


class UsageError(DaliError):
    """The client sent something wrong (bad value, repeated single parameter): 400."""

    http_status = 400


class ForbiddenError(DaliError):
    """The request is understood but not allowed, e.g. an illegal UWS phase change: 403."""

    http_status = 403


class NotFoundError(DaliError):
    """Unknown job or resource, also used for other owners' jobs so they stay invisible: 404."""

    http_status = 404


class PayloadTooLargeError(UsageError):
    """A request body larger than the service accepts: 413 (a usage error to SODA)."""

    http_status = 413


class UnsupportedMediaTypeError(UsageError):
    """A request body in an encoding DALI does not take (JSON, XML...): 415.

    DALI parameters come as a query string or a form (urlencoded or multipart); any other
    body would otherwise be read as no parameters at all."""

    http_status = 415


class RequestTimeoutError(UsageError):
    """The client did not send its request in time: 408."""

    http_status = 408


class TooManyRequestsError(DaliError):
    """A quota or rate limit reached; ``retry_after`` seconds says when to try again: 429."""

    http_status = 429
    uws_type = "transient"

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))


class TransientError(DaliError):
    """A temporary failure (queue or store down); retrying later may work: 503."""

    http_status = 503
    uws_type = "transient"


class FatalError(DaliError):
    """A failure retrying will not fix: 500."""

    http_status = 500


def _pairs(items: Iterable[tuple[str, str]] | Mapping[str, str]) -> Iterable[tuple[str, str]]:
    """Accept a multidict (its items() keep duplicates), a plain mapping or a list of pairs."""
    if isinstance(items, Mapping) or hasattr(items, "items"):
        return items.items()  # type: ignore[union-attr]
    return items


def case_insensitive_params(
    pairs: Iterable[tuple[str, str]] | Mapping[str, str],
) -> dict[str, list[str]]:
    """Group values by upper-cased name: DALI parameter names are case-insensitive, values not."""
    grouped: dict[str, list[str]] = {}
    for name, value in _pairs(pairs):
        grouped.setdefault(name.upper(), []).append(value)
    return grouped


def single(params: Mapping[str, list[str]], name: str, default: str | None = None) -> str | None:
    """The one value of a single-valued parameter; DALI makes a repeated one a usage error."""
    values = params.get(name.upper(), [])
    if len(values) > 1:
        raise UsageError(f"parameter {name.upper()} given {len(values)} times; expected once")
    return values[0] if values else default
