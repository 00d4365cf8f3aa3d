"""A small production-shaped deployment for tests: API and worker processes on one store.

The processes are the real commands (``python -m soda_reduce.cli api`` and
``... worker``) sharing one SecantusDB, the RabbitMQ on 127.0.0.1:5672 (under
queue and exchange names of their own) and one product directory; each has a
data directory of its own. Every wait here is bounded, and every process is
killed when the cluster is closed, however the test went.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
from lxml import etree

from soda_reduce.runtime.process import die_with_parent
from soda_reduce.runtime.store.embedded import free_port
from soda_reduce.vo.jobinfo import JOBINFO_NS
from tests.support.rabbit import port_open

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
UWS = {"uws": "http://www.ivoa.net/xml/UWS/v1.0", "xlink": "http://www.w3.org/1999/xlink"}
FINAL = ("COMPLETED", "ERROR", "ABORTED")
ROOT = Path(__file__).resolve().parents[2]


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float, what: str, every: float = 0.2
) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        await asyncio.sleep(every)


# --------------------------------------------------------------------------- processes


@dataclass
class Service:
    """One ``soda-reduce api`` or ``worker`` process, its output in ``log_path``."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    port: int | None = None
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=ROOT,
                start_new_session=True,  # its own process group, killed whole at the end
                preexec_fn=die_with_parent,  # and never outliving the test run
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self, tail: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError as exc:
            return f"(no log: {exc})"

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the service process only (its recipes die with it: PDEATHSIG)."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    async def wait_exit(self, timeout: float) -> int | None:
        """The exit code, or None if still running after ``timeout``."""
        deadline = time.monotonic() + timeout
        while self.alive and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return None if self.process is None else self.process.poll()

    async def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, a bounded wait, then SIGKILL of the whole process group."""
        if self.process is None:
            return
        self.kill(signal.SIGTERM)
        if await self.wait_exit(grace) is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            await self.wait_exit(5.0)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(0)

    def log_contains(self, text: str) -> bool:
        return text in self.log(10**7)


@dataclass
class Cluster:
    """APIs and workers on one store, one broker namespace and one product directory."""

    root: Path
    archive: Path
    mongo_url: str
    extra_env: Mapping[str, str] = field(default_factory=dict)
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    apis: dict[str, Service] = field(default_factory=dict)
    workers: dict[str, Service] = field(default_factory=dict)
    retired: list[Service] = field(default_factory=list)

    @property
    def database(self) -> str:
        return f"distributed_{self.tag}"

    @property
    def queue(self) -> str:
        return f"test.plans.{self.tag}"

    @property
    def exchange(self) -> str:
        return f"test.events.{self.tag}"

    @property
    def products(self) -> Path:
        return self.root / "products"

    def env(self, name: str) -> dict[str, str]:
        data_dir = self.root / name
        data_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SODA_REDUCE_")}
        env.update(
            {
                "PYTHONPATH": str(ROOT),
                "PYTHONUNBUFFERED": "1",
                "SODA_REDUCE_MONGO_URL": self.mongo_url,
                "SODA_REDUCE_DATABASE": self.database,
                "SODA_REDUCE_AMQP_URL": AMQP_URL,
                "SODA_REDUCE_AMQP_QUEUE": self.queue,
                "SODA_REDUCE_AMQP_EXCHANGE": self.exchange,
                "SODA_REDUCE_PRODUCTS": str(self.products),
                "SODA_REDUCE_DATA_DIR": str(data_dir),
                "SODA_REDUCE_ARCHIVE": str(self.archive),
                "SODA_REDUCE_CHECKSUM": "fast",
                "SODA_REDUCE_SWEEP_S": "1",
                **self.extra_env,
            }
        )
        return env

    def _command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "soda_reduce.cli", *args, "--archive", str(self.archive)]

    def _service(self, name: str, argv: list[str], port: int | None = None) -> Service:
        log = self.root / f"{name}.log"
        with open(log, "ab") as f:
            f.write(f"\n--- {time.strftime('%H:%M:%S')} {' '.join(argv)}\n".encode())
        return Service(name, argv, self.env(name), log, port)

    async def start_api(self, name: str, port: int | None = None) -> Service:
        """Start (or restart, on its old port) an API process; returns once it answers."""
        old = self.apis.get(name)
        if old is not None:
            assert not old.alive, f"{name} is still running"
            self.retired.append(old)
            port = port or old.port
        port = port or free_port()
        argv = self._command("api", "--host", "127.0.0.1", "--port", str(port))
        api = self._service(name, argv, port).start()
        self.apis[name] = api
        await self.ready_api(api)
        return api

    async def ready_api(self, api: Service, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session:
            while True:
                assert api.alive, f"{api.name} exited:\n{api.log()}"
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(f"{api.base}/soda/async") as response:
                        if response.status == 200:
                            return
                assert time.monotonic() < deadline, f"{api.name} not serving:\n{api.log()}"
                await asyncio.sleep(0.1)

    async def start_worker(self, name: str) -> Service:
        """Start a worker process; returns once it says it consumes."""
        assert name not in self.workers or not self.workers[name].alive
        if name in self.workers:
            self.retired.append(self.workers[name])
        worker = self._service(name, self._command("worker")).start()
        self.workers[name] = worker
        deadline = time.monotonic() + 60
        while not worker.log_contains(" consuming"):
            assert worker.alive, f"{name} exited:\n{worker.log()}"
            assert time.monotonic() < deadline, f"{name} not consuming:\n{worker.log()}"
            await asyncio.sleep(0.1)
        return worker

    def worker_by_id(self, worker_id: str | None) -> Service | None:
        """The process behind a job document's ``worker`` (``host:pid:object``)."""
        if not worker_id:
            return None
        pid = int(worker_id.split(":")[1])
        for worker in (*self.workers.values(), *self.retired):
            if worker.process is not None and worker.pid == pid:
                return worker
        return None

    async def consumers(self) -> int:
        """How many consumers the plan queue has (a passive declare)."""
        conn = await aio_pika.connect(AMQP_URL, timeout=5)
        try:
            channel = await conn.channel()
            queue = await channel.declare_queue(self.queue, passive=True)
            return queue.declaration_result.consumer_count or 0
        finally:
            await asyncio.wait_for(conn.close(), 5)

    def logs(self) -> str:
        parts = []
        for service in (*self.apis.values(), *self.workers.values()):
            parts.append(f"===== {service.name} (pid {service.process and service.pid})")
            parts.append(service.log(4000))
        return "\n".join(parts)

    async def close(self) -> None:
        services = [*self.apis.values(), *self.workers.values(), *self.retired]
        await asyncio.gather(*(s.stop() for s in services), return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._delete_topology(), 15)

    async def _delete_topology(self) -> None:
        if not port_open():
            return
        conn = await aio_pika.connect(AMQP_URL, timeout=5)
        try:
            channel = await conn.channel()
            for name in (self.queue, f"{self.queue}.dead"):
                await channel.queue_delete(name)
            for name in (f"{self.queue}.dlx", self.exchange):
                await channel.exchange_delete(name)
        finally:
            await asyncio.wait_for(conn.close(), 5)


# --------------------------------------------------------------------------- RabbitMQ


# --------------------------------------------------------------------------- UWS client


class UwsClient:
    """Plain HTTP against one API process (``base``), as a UWS client would talk."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def create(self, data: Any, timeout: float = 30) -> str:
        async with self.session.post(
            f"{self.base}/soda/async",
            data=data,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as response:
            body = await response.text()
            assert response.status == 303, f"{response.status}: {body}"
            return response.headers["Location"].rsplit("/", 1)[1]

    async def job(self, job_id: str, query: str = "", timeout: float = 45) -> etree._Element:
        async with self.session.get(
            f"{self.base}/soda/async/{job_id}{query}",
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as response:
            body = await response.read()
            assert response.status == 200, f"{response.status}: {body[:500]!r}"
            return etree.fromstring(body)

    async def post(self, path: str, data: Any, timeout: float = 30) -> int:
        async with self.session.post(
            f"{self.base}{path}",
            data=data,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as response:
            await response.read()
            return response.status

    async def get_bytes(self, url: str, timeout: float = 30) -> tuple[int, bytes]:
        async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            return r.status, await r.read()

    async def wait_final(self, job_id: str, limit_s: float = 120) -> etree._Element:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            doc = await self.job(job_id, "?WAIT=10")
            if phase_of(doc) in FINAL:
                return doc
        raise AssertionError(f"job {job_id} not final after {limit_s:.0f} s")

    async def wait_phase(self, job_id: str, phases: tuple[str, ...], limit_s: float) -> str:
        """WAIT until the job is in one of ``phases`` (or final); its phase.

        WAIT with PHASE=<the phase now> blocks only while the job stays in it.
        """
        deadline = time.monotonic() + limit_s
        phase = phase_of(await self.job(job_id))
        while phase not in phases and phase not in FINAL and time.monotonic() < deadline:
            wait = max(1, int(deadline - time.monotonic()))
            phase = phase_of(await self.job(job_id, f"?WAIT={wait}&PHASE={phase}"))
        return phase


def phase_of(doc: etree._Element) -> str:
    return doc.findtext("uws:phase", namespaces=UWS) or ""


def progress_of(doc: etree._Element) -> tuple[int, int]:
    """(done, total) from our jobInfo, (0, 0) before there is a plan."""
    element = doc.find(f"uws:jobInfo/{{{JOBINFO_NS}}}reduction/{{{JOBINFO_NS}}}progress", UWS)
    if element is None:
        return 0, 0
    return int(element.get("done", 0)), int(element.get("total", 0))


def result_hrefs(doc: etree._Element) -> dict[str, str]:
    href = "{http://www.w3.org/1999/xlink}href"
    return {r.get("id"): r.get(href) for r in doc.iterfind("uws:results/uws:result", UWS)}
