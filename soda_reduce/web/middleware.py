"""Identity and error middlewares.

Identity (docs/uws.md, Owners): a bearer token from the configured tokens file, else a
trusted header set by an authenticating proxy (only honoured when configured: otherwise
anyone could claim any name), else an anonymous session (web/sessions.py), started by the
caller's first job creation. Anonymous callers are allowed unless configured off; then
every route that creates, reads or changes jobs answers 401. Requests that change jobs
from another site are refused: a browser sends the session cookie, or the proxy's own
credentials, along with a form posted by any page it visits.

Errors: a DALI error raised anywhere becomes its HTTP status and a DALI error
VOTable; anything unexpected becomes a 500 with the same document and a log
line, never a traceback page.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from soda_reduce.runtime.broker import BrokerUnavailable
from soda_reduce.runtime.store import StoreUnavailable, is_outage
from soda_reduce.vo.dali import DaliError, TransientError
from soda_reduce.web.context import (
    ANONYMOUS_PREFIX,
    ASYNC_PATH,
    NEW_OWNER,
    NO_SESSION,
    OWNER,
    READ_METHODS,
    SERVICES,
)
from soda_reduce.web.errors import error_response
from soda_reduce.web.sessions import new_token, session_owner, set_session_cookie, token_of

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class AuthConfig:
    trusted_header: str | None = None
    tokens: dict[str, str] = field(default_factory=dict)  # token -> owner
    allow_anonymous: bool = True

    @classmethod
    def load(
        cls, trusted_header: str | None, tokens_file: Path | None, allow_anonymous: bool
    ) -> AuthConfig:
        """Tokens file: one ``TOKEN OWNER`` per line; blank lines and # comments ignored."""
        tokens: dict[str, str] = {}
        if tokens_file is not None:
            for line in tokens_file.read_text().splitlines():
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                token, _, owner = line.partition(" ")
                if not owner.strip():
                    raise ValueError(f"{tokens_file}: line without an owner: {line!r}")
                if owner.strip().startswith(ANONYMOUS_PREFIX):
                    raise ValueError(f"{tokens_file}: {ANONYMOUS_PREFIX!r} names anonymous owners")
                tokens[token] = owner.strip()
        return cls(trusted_header, tokens, allow_anonymous)


PAGES_JOBS_PATH = "/jobs"  # the HTML job list, form and job pages (web/pages.py)
SYNC_PATH = "/soda/sync"


@dataclass
class Refusal(Exception):
    """A request refused before any handler ran."""

    status: int
    message: str
    headers: dict[str, str] = field(default_factory=dict)


def auth_middleware(config: AuthConfig):
    @web.middleware
    async def identify(request: web.Request, handler: Handler) -> web.StreamResponse:
        jobs = _protected(request)
        try:
            if jobs and request.method not in READ_METHODS and _cross_site(request):
                raise Refusal(403, "jobs are created and changed from this site only")
            owner = _authenticated(config, request)
            if owner is None and not config.allow_anonymous and jobs:
                raise Refusal(401, "authentication required", {"WWW-Authenticate": "Bearer"})
        except Refusal as refusal:
            return _refuse(request, refusal)
        token = None
        if owner is None:
            token = token_of(request)
            if token is None and _creates_job(request):
                token = new_token()
                request[NEW_OWNER] = True  # a session of its own: it owns no job yet
            owner = session_owner(token) if token is not None else NO_SESSION
        request[OWNER] = owner
        if token is None or not _creates_job(request):
            return await handler(request)
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # the HTML form answers with a raised 303
            if exc.status < 400:
                set_session_cookie(request, exc, token)
            raise
        if response.status < 400:  # a job was created: its session is the caller's
            set_session_cookie(request, response, token)
        return response

    return identify


def _authenticated(config: AuthConfig, request: web.Request) -> str | None:
    """The authenticated owner, or None (anonymous).

    A valid bearer token wins over the trusted header: it is a credential the client
    chose to send and proves with a secret, where the header is ambient (the proxy adds
    it to whatever the browser sends). A bearer token naming one owner and a header
    naming another is therefore the token's owner, not an error. An unknown token is a
    401, header or not. A header given twice is refused: a proxy that appends rather
    than replaces would let the client's own copy through.
    """
    header = config.trusted_header
    claimed: str | None = None
    if header:
        values = request.headers.getall(header, [])
        if len(values) > 1:
            raise Refusal(400, f"the {header} header is given {len(values)} times")
        claimed = values[0].strip() if values else None
    authorizations = request.headers.getall("Authorization", [])
    if len(authorizations) > 1:
        raise Refusal(400, f"the Authorization header is given {len(authorizations)} times")
    if authorizations and authorizations[0][:7].lower() == "bearer ":
        owner = config.tokens.get(authorizations[0][7:].strip())
        if owner is None:
            invalid = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
            raise Refusal(401, "unknown bearer token", invalid)
        return owner
    if claimed and claimed.startswith(ANONYMOUS_PREFIX):
        raise Refusal(400, f"{header}: {ANONYMOUS_PREFIX!r} names anonymous owners")
    return claimed or None


def _protected(request: web.Request) -> bool:
    """Routes that create, read or change jobs: UWS, its bundles and cutout results, the
    HTML job list, form and pages. VOSI, DataLink, SODA sync, /archive, products and
    static files serve what is public anyway and stay open."""
    path = request.path
    return any(path == p or path.startswith(p + "/") for p in (ASYNC_PATH, PAGES_JOBS_PATH))


def _creates_job(request: web.Request) -> bool:
    return request.method == "POST" and request.path in (ASYNC_PATH, PAGES_JOBS_PATH)


def _cross_site(request: web.Request) -> bool:
    """A browser request sent by another site's page (requests without these headers
    come from programs such as pyvo or curl, which no other site can drive).

    Sec-Fetch-Site is set by the browser and cannot be forged by a page: it decides when
    present ("same-site" is foreign too: a sibling host gets SameSite=Lax cookies).
    Otherwise Origin must be this service's: the configured base URL's, or the host the
    browser addressed (either scheme, for a proxy that terminates TLS).
    """
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        return site.strip().lower() not in ("same-origin", "none")
    origin = request.headers.get("Origin")
    if origin is None:
        return False
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return True  # "null": sandboxed frames, file: pages
    netloc = parts.netloc.lower()
    configured = request.app[SERVICES].base_url
    if configured:
        own = urlsplit(configured)
        if (parts.scheme, netloc) == (own.scheme, own.netloc.lower()):
            return False
    return netloc != request.host.lower()


def _refuse(request: web.Request, refusal: Refusal) -> web.StreamResponse:
    """The refusal in the format of its route (web/errors.py)."""
    return error_response(request, refusal.status, refusal.message, refusal.headers)


DEFAULT_RETRY_AFTER_S = 5  # a 503 without its own estimate
QUEUE_UNAVAILABLE = "ServiceUnavailable: the job queue does not answer right now; retry later"


def _retry_after(exc: DaliError) -> dict[str, str] | None:
    """``Retry-After`` (seconds) for errors worth retrying: the error's own estimate
    (``retry_after``, e.g. a 429's), else a default for a 503."""
    seconds = getattr(exc, "retry_after", None)
    if seconds is None and exc.http_status == 503:
        seconds = DEFAULT_RETRY_AFTER_S
    return None if seconds is None else {"Retry-After": str(max(1, int(seconds)))}


def _transient(exc: Exception) -> TransientError | None:
    """The typed error of an outage the code below did not type (the driver's own)."""
    if is_outage(exc):
        return StoreUnavailable()
    if isinstance(exc, BrokerUnavailable):
        return TransientError(QUEUE_UNAVAILABLE)
    return None


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error in its route's format (web/errors.py). Store and queue outages are a
    503 with ``Retry-After`` (typed or still the driver's exception), logged in one line:
    during an outage every request fails alike."""
    try:
        return await handler(request)
    except DaliError as exc:
        return error_response(request, exc.http_status, exc.message, _retry_after(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k in _KEPT_HEADERS}
        return error_response(request, exc.status, _public_reason(exc), headers)
    except Exception as exc:
        typed = _transient(exc)
        if typed is not None:
            log.warning("%s %s: %.200r", request.method, request.path, exc)
            return error_response(request, typed.http_status, typed.message, _retry_after(typed))
        log.exception("%s %s failed", request.method, request.path)
        return error_response(request, 500, "internal error; the service log has the details")


_KEPT_HEADERS = ("Allow", "WWW-Authenticate", "Retry-After")


def _public_reason(exc: web.HTTPException) -> str:
    """aiohttp's own text for its refusals ("405: Method Not Allowed"), without the code."""
    text = (exc.text or exc.reason or "").strip()
    code, sep, rest = text.partition(": ")
    return rest if sep and code == str(exc.status) else text or exc.reason
