"""What every handler needs: the services, the caller's identity, URLs, parameters.

Kept apart from the handlers so the UWS, product and page modules share one
way of building absolute URLs (clients such as pyvo do not resolve relative
result hrefs) and of reading IVOA parameters.
"""

from __future__ import annotations

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
from soda_reduce.runtime.service import JobService
from soda_reduce.vo.dali import UsageError
from soda_reduce.vo.jobinfo import DatasetInfo, JobInfo, JobProgress, StepStatus, jobinfo_elements
from soda_reduce.vo.results import ProductRow
from soda_reduce.web.status_cache import StatusCache

ASYNC_PATH = "/soda/async"
PRODUCTS_PATH = "/products"
OWNER = web.RequestKey("owner", object)  # set by the auth middleware


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
        )

    def stop_waits(self) -> None:
        self.stopping = True
        self.events.wake_all()


SERVICES = web.AppKey("services", Services)


def base_url(request: web.Request) -> str:
    configured = request.app[SERVICES].base_url
    if configured:
        return configured.rstrip("/")
    return f"{request.scheme}://{request.host}"


def job_url(request: web.Request, job_id: str) -> str:
    return f"{base_url(request)}{ASYNC_PATH}/{job_id}"


def owner_of(request: web.Request) -> str | None:
    return request.get(OWNER)


async def params_of(request: web.Request) -> list[tuple[str, str]]:
    """Query and form parameters, in order; uploads are refused (no UPLOAD support)."""
    pairs = list(request.query.items())
    if request.method == "POST" and request.can_read_body:
        form = await request.post()
        for name, value in form.items():
            if not isinstance(value, str):
                raise UsageError(f"parameter {name}: file uploads are not supported")
            pairs.append((name, value))
    return pairs


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
    return jobinfo_elements(info)


def products_path(services: Services, step_key: str, file: str) -> Path:
    return services.products.step_dir(step_key) / file
