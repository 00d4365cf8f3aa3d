"""What every handler needs: the services, the caller's identity, URLs, parameters.

Kept apart from the handlers so the UWS, product and page modules share one
way of building absolute URLs (clients such as pyvo do not resolve relative
result hrefs) and of reading IVOA parameters.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from aiohttp import web
from lxml import etree

from soda_reduce.config import Settings
from soda_reduce.runtime.events import JobEvents
from soda_reduce.runtime.host import Runtime
from soda_reduce.runtime.jobs import JobRecord
from soda_reduce.runtime.products import ProductStore
from soda_reduce.runtime.quotas import RateLimiter
from soda_reduce.runtime.service import JobService
from soda_reduce.vo.dali import (
    ForbiddenError,
    NotFoundError,
    PayloadTooLargeError,
    RequestTimeoutError,
    TooManyRequestsError,
    UnsupportedMediaTypeError,
    UsageError,
)
from soda_reduce.vo.job_request import JobRequest
from soda_reduce.vo.jobinfo import DatasetInfo, JobInfo, JobProgress, StepStatus, jobinfo_elements
from soda_reduce.vo.results import ProductRow
from soda_reduce.vo.uws import Phase
from soda_reduce.web.status_cache import StatusCache

ASYNC_PATH = "/soda/async"
PRODUCTS_PATH = "/products"
OWNER = web.RequestKey("owner", object)  # set by the auth middleware
NEW_OWNER = web.RequestKey("new_owner", bool)  # ... when it minted the caller's session
ANONYMOUS_PREFIX = "anon:"  # owners of anonymous sessions: "anon:" + sha256 of the session token
NO_SESSION = ANONYMOUS_PREFIX  # an anonymous caller without a session: owns no job at all
READ_METHODS = frozenset({"GET", "HEAD"})
SESSION_SEEN = "session_seen"  # job field: its anonymous session came back to it
FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})  # DALI


@dataclass
class Services:
    jobs: JobService
    events: JobEvents
    products: ProductStore
    authority: str
    base_url: str | None = None  # public root URL; None: from each request
    wait_cap_s: float = 30.0
    pipeline: str = "ccd"
    archive_root: Path | None = None  # raw files are served and cut out from here
    settings: Settings | None = None
    stopping: bool = False  # set at shutdown: WAIT no longer blocks
    status_cache: StatusCache = field(default_factory=StatusCache)
    creation_rate: RateLimiter = field(default_factory=lambda: RateLimiter(60.0, 30))

    @classmethod
    def from_runtime(cls, runtime: Runtime, archive_root: Path, pipeline: str = "ccd") -> Services:
        """The services of a process assembled by ``runtime.host.open_runtime``."""
        settings = runtime.settings
        return cls(
            jobs=runtime.service,
            events=runtime.events,
            products=runtime.products,
            authority=settings.authority,
            base_url=settings.base_url,
            wait_cap_s=settings.wait_cap_s,
            pipeline=pipeline,
            archive_root=archive_root,
            settings=settings,
            status_cache=StatusCache(settings.status_cache_s),
            creation_rate=RateLimiter(settings.job_rate_per_minute, settings.job_rate_burst),
        )

    def stop_waits(self) -> None:
        self.stopping = True
        self.events.wake_all()


SERVICES = web.AppKey("services", Services)


BASE_OVERRIDE = web.RequestKey("base_override", str)  # set while rendering a cached document
_HOST = re.compile(r"[A-Za-z0-9.\-]{1,253}(?::[0-9]{1,5})?|\[[0-9A-Fa-f:.]{2,45}\](?::[0-9]{1,5})?")


def base_url(request: web.Request) -> str:
    """The public root URL: configured (SODA_REDUCE_BASE_URL), else from the request's
    Host, which must then be a plain host[:port] (it goes into every link)."""
    override = request.get(BASE_OVERRIDE)
    if override is not None:
        return override
    configured = request.app[SERVICES].base_url
    if configured:
        return configured.rstrip("/")
    host = request.host
    if not _HOST.fullmatch(host):
        raise UsageError("the Host header is not a host name or address with a port")
    return f"{request.scheme}://{host}"


def job_url(request: web.Request, job_id: str) -> str:
    return f"{base_url(request)}{ASYNC_PATH}/{job_id}"


def owner_of(request: web.Request) -> str | None:
    """Whose jobs the caller lists and changes: an authenticated name, the owner of its
    anonymous session, or ``NO_SESSION``; None only in an app without identities."""
    return request.get(OWNER)


def owns_nothing_yet(request: web.Request) -> bool:
    """The caller's session was minted for this request: its owner has no job (so the
    active-job quota needs no count)."""
    return request.get(NEW_OWNER, False)


def is_anonymous(owner: str | None) -> bool:
    """Jobs of anonymous sessions (and ownerless ones from before sessions existed)."""
    return owner is None or owner.startswith(ANONYMOUS_PREFIX)


def public_owner(owner: str | None) -> str | None:
    """The UWS ownerId: nil for anonymous jobs (a session's hash is nobody's name)."""
    return None if is_anonymous(owner) else owner


def may_change(job: JobRecord, owner: str | None) -> bool:
    """Its owner; for an anonymous job whose session never came back to it (a client that
    keeps no cookies, such as STILTS or a plain script), whoever holds its URL."""
    return job.owner == owner or (is_anonymous(job.owner) and not job.doc.get(SESSION_SEEN))


async def job_of(request: web.Request) -> JobRecord:
    """The job named in the path, if the caller may have it (docs/uws.md, Owners).

    Owners read and change their jobs; anyone else's authenticated job is a 404, as if it
    did not exist. The URL of an anonymous job lets whoever holds it read the job. Changing
    it needs its session (403) from the first time that session comes back to the job: a
    client that keeps cookies (a browser, pyvo's requests.Session) then has the job to
    itself; one that keeps none still has its job URL, its only key, as UWS clients expect.
    """
    job_id = request.match_info["job_id"]
    jobs = request.app[SERVICES].jobs.jobs
    job = await jobs.get(job_id, any_owner=True)
    owner = owner_of(request)
    if job is None or (job.owner != owner and not is_anonymous(job.owner)):
        raise NotFoundError(f"no job {job_id!r}")
    if job.owner == owner and is_anonymous(owner) and not job.doc.get(SESSION_SEEN):
        await jobs.update_if(job_id, {"owner": owner}, {SESSION_SEEN: True})
        job.doc[SESSION_SEEN] = True
    if request.method not in READ_METHODS and not may_change(job, owner):
        raise ForbiddenError(
            "this anonymous job is changed only from the session that created it (its "
            "cookie); its URL alone lets you read it"
        )
    return job


async def params_of(request: web.Request) -> list[tuple[str, str]]:
    """Query and form parameters, in order; uploads are refused (no UPLOAD support), and so
    are bodies that are not forms (415: DALI takes form encodings only).

    The body is bounded by the application's ``client_max_size`` (413); a body that
    cannot be decoded (bad multipart boundary, invalid UTF-8) is the client's error.
    """
    pairs = list(request.query.items())
    if request.method == "POST" and request.can_read_body:
        if request.content_type not in FORM_TYPES:  # read as a form, it would be no parameters
            raise UnsupportedMediaTypeError(
                f"a request body of type {request.content_type[:80]!r} is not read: send the "
                "parameters as a form (application/x-www-form-urlencoded or multipart/form-data)"
                " or in the query string"
            )
        services = request.app.get(SERVICES)
        settings = services.settings if services is not None else None
        timeout = settings.body_timeout_s if settings is not None else 30.0
        try:
            async with asyncio.timeout(timeout):
                form = await request.post()
        except TimeoutError:
            raise RequestTimeoutError(
                f"the request body did not arrive within {timeout:g} s"
            ) from None
        except web.HTTPRequestEntityTooLarge:
            raise PayloadTooLargeError(
                f"the request body is larger than {request.app._client_max_size} bytes"
            ) from None
        except (ValueError, UnicodeDecodeError, AssertionError, LookupError) as exc:
            raise UsageError(f"the request body cannot be read: {type(exc).__name__}") from None
        for name, value in form.items():
            if not isinstance(value, str):
                raise UsageError(f"parameter {name}: file uploads are not supported")
            pairs.append((name, value))
    return pairs


async def job_request_of(
    request: web.Request, pairs: list[tuple[str, str]] | None = None
) -> tuple[JobRequest, list[tuple[str, str]]]:
    """The typed job request of an HTTP request (parsed once, off the event loop)."""
    if pairs is None:
        pairs = await params_of(request)
    return await request.app[SERVICES].jobs.parse(pairs), pairs


def check_creation_rate(request: web.Request) -> None:
    """429 when the caller creates jobs faster than the configured rate.

    Anonymous callers are also counted by network address: a new session per request
    must not buy a new allowance.
    """
    owner = owner_of(request)
    keys = (f"owner:{owner}",) if owner is not None else ()
    if owner is None or owner.startswith("anon:"):
        keys = (*keys, f"address:{request.remote or 'unknown'}")
    limiter = request.app[SERVICES].creation_rate
    wait = limiter.take(keys)
    if wait > 0:
        raise TooManyRequestsError(
            "too many jobs created in a short time: try again later",
            retry_after=limiter.retry_after(wait),
        )


def product_id(authority: str, step_key: str, file: str) -> str:
    return f"ivo://{authority}/product?{step_key}/{file}"


def product_url(request: web.Request, step_key: str, file: str) -> str:
    return f"{base_url(request)}{PRODUCTS_PATH}/{step_key}/{file}"


def product_rows(request: web.Request, job: JobRecord) -> list[ProductRow]:
    services = request.app[SERVICES]
    root = base_url(request)
    rows = []
    for item in job.results:
        pid = product_id(services.authority, item["step_key"], item["file"])
        rows.append(
            ProductRow(
                id=pid,
                access_url=product_url(request, item["step_key"], item["file"]),
                category=item.get("category", ""),
                task=item.get("task", ""),
                content_type=item.get("content_type", "application/octet-stream"),
                size=item.get("size"),
                datalink_url=f"{root}/datalink?ID={_quote(pid)}",
                dataset=item.get("dataset", ""),
                step_key=item["step_key"],
                main=bool(item.get("main")),
            )
        )
    return rows


def _quote(value: str) -> str:
    return quote(value, safe="")


def job_info_elements(request: web.Request, job: JobRecord) -> list[etree._Element] | None:
    """Progress, planned datasets and step states, once the job has a plan."""
    services = request.app[SERVICES]
    plan = job.plan
    if plan is None:
        return None
    progress = job.progress or {}
    info = JobInfo(
        pipeline=plan.get("cascade", services.pipeline),
        target=plan.get("target", ""),
        progress=JobProgress(
            done=int(progress.get("done", 0)),
            failed=int(progress.get("failed", 0)),
            total=int(progress.get("total", 0)),
            running=tuple(progress.get("running", ())),
        ),
        datasets=tuple(
            DatasetInfo(
                label=d["label"],
                target_job=d["target_job"],
                complete=bool(d["complete"]),
                quality_level=int(d.get("quality_level", 0)),
                reasons=tuple(d.get("reasons", ())),
                main_inputs=tuple(d.get("main_inputs", ())),
            )
            for d in plan.get("datasets", [])
        ),
        steps=tuple(
            StepStatus(
                job_id=s["job_id"],
                task=s["task"],
                status=s["status"],
                step_key=s.get("step_key"),
                attempts=int(s.get("attempts") or 0),
                error=s.get("error"),
                label=s.get("label") or "",
            )
            for s in job.steps
        ),
        planned=True,
        cached_steps=sum(1 for s in job.steps if s.get("status") == "cached"),
    )
    if job.phase == Phase.ABORTED:  # before (and after) its worker recorded the stop
        info = info.interrupted()
    return jobinfo_elements(info)


def products_path(services: Services, step_key: str, file: str) -> Path:
    return services.products.step_dir(step_key) / file
