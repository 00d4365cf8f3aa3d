"""An in-process UWS service on the real embedded store, for HTTP-level tests.

The whole stack runs: aiohttp app, auth and error middlewares, JobService,
in-process queue and events, the worker with the local executor running the
real ccd recipes on a small demo archive.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from lxml import etree

from soda_reduce.config import Settings
from soda_reduce.pipelines import get_cascade
from soda_reduce.reduction.organisation import classify_all
from soda_reduce.reduction.planner import plan_reduction
from soda_reduce.runtime.host import Runtime, open_runtime
from soda_reduce.runtime.indexer import index_archive
from soda_reduce.runtime.runner import RunnerConfig
from soda_reduce.runtime.store import Store
from soda_reduce.runtime.worker import WorkerConfig
from soda_reduce.web.app import ServiceState, build_app, server_options
from soda_reduce.web.context import Services
from soda_reduce.web.middleware import AuthConfig

UWS = {"uws": "http://www.ivoa.net/xml/UWS/v1.0", "xlink": "http://www.w3.org/1999/xlink"}


@dataclass
class Harness:
    client: TestClient
    runtime: Runtime
    archive: Path
    complete_id: str  # a science frame whose plan is complete
    incomplete_id: str | None  # a science frame that cannot be reduced

    @property
    def base(self) -> str:
        return str(self.client.make_url("")).rstrip("/")

    async def create(self, data: Any, headers: dict[str, str] | None = None) -> str:
        response = await self.client.post(
            "/soda/async", data=data, allow_redirects=False, headers=headers
        )
        body = await response.text()
        assert response.status == 303, body
        location = response.headers["Location"]
        assert location.startswith("http://"), location
        return location.rsplit("/", 1)[1]

    async def job(self, job_id: str, query: str = "", **kw: Any) -> etree._Element:
        response = await self.client.get(f"/soda/async/{job_id}{query}", **kw)
        assert response.status == 200, await response.text()
        return etree.fromstring(await response.read())

    async def phase(self, job_id: str) -> str:
        return (await self.job(job_id)).findtext("uws:phase", namespaces=UWS)

    async def wait_final(self, job_id: str, limit_s: float = 120) -> etree._Element:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            doc = await self.job(job_id, "?WAIT=10")
            if doc.findtext("uws:phase", namespaces=UWS) in ("COMPLETED", "ERROR", "ABORTED"):
                return doc
        raise AssertionError(f"job {job_id} not final after {limit_s} s")


async def pick_ids(store: Store) -> tuple[str, str | None]:
    cascade = get_cascade("ccd")
    files = await store.all_raw_files()
    science = [f.raw for f in classify_all(cascade, files) if f.category == "SCIENCE"]
    complete = incomplete = None
    for raw in sorted(science, key=lambda r: r.path):
        plan = plan_reduction(cascade, files, ids=[raw.file_id])
        if plan.complete and complete is None:
            complete = raw.file_id
        elif not plan.complete and incomplete is None:
            incomplete = raw.file_id
    assert complete is not None
    return complete, incomplete


@asynccontextmanager
async def uws_service(
    store: Store,
    archive: Path,
    data_dir: Path,
    *,
    auth: AuthConfig | None = None,
    settings: Settings | None = None,
    worker: bool = True,
    sweeper: bool = False,
    executor: Any = None,  # the worker's (default: the local executor of the settings)
) -> AsyncIterator[Harness]:
    settings = settings or Settings(data_dir=data_dir, archive_dir=archive, sweep_s=0.5)
    await index_archive(store, archive, authority=settings.authority, checksum_mode="fast")
    config = WorkerConfig(lease_s=6.0, check_s=0.5, runner=RunnerConfig(backoff_s=0.2))
    async with open_runtime(
        settings,
        store,
        archive,
        worker=worker,
        sweeper=sweeper,
        worker_config=config,
        executor=executor,
    ) as runtime:
        services = Services.from_runtime(runtime, archive)
        state = ServiceState(store, runtime.service.pipelines, str(archive))
        app = build_app(state, services, auth)
        server = TestServer(app)
        await server.start_server(**server_options(settings))  # the server's own limits
        client = TestClient(server)
        await client.start_server()
        try:
            complete, incomplete = await pick_ids(store)
            yield Harness(client, runtime, archive, complete, incomplete)
        finally:
            await client.close()
            await asyncio.sleep(0)
