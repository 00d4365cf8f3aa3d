"""Benchmark of the UWS API on loopback, each figure measured in one run.

Three servers, each in a subprocess of its own behind a real TCP site:
- the service: ``build_app`` on ``open_runtime`` (embedded SecantusDB started
  here in a temp dir, in-process queue and events, no worker, no sweeper);
- bare: aiohttp handlers serving the very bytes the service served (same body,
  same content type), the baseline of the goals;
- bare+store: the bare handlers after the service's own store-layer calls
  (``JobStore.get``; ``KnownRawFiles.by_id`` + ``JobStore.create`` of a new
  session's job), to tell the store's share from the service's.
The load generator (a lean asyncio HTTP/1.1 keep-alive client, N connections)
runs in this process, so no two of them share an event loop or a core's queue.

(a) job status: GET /soda/async/{id} of a PENDING job and of a COMPLETED-looking
    job (plan, steps, results, jobInfo). Goal: service/bare >= 0.5.
(b) job creation: POST /soda/async with ID=<a raw file of a small demo archive>;
    bare answers 303 with a Location of the same length (and the service's session
    cookie). Goal: service/bare >= 0.5.
(c) API memory with --jobs stored jobs of one anonymous session (bulk-inserted in
    JobStore.create's shape): VmRSS of the API process after the status GETs of (a)
    and the first page of that session's job list (GET /soda/async: the oldest 1,000
    rows, timed). Goal: < 200 MB.
(d) API memory under 2,000 concurrent blocking WAITs (GET /soda/async/{id}?WAIT=25
    of a PENDING job, one connection each): VmRSS once the server holds them all,
    minus the idle VmRSS just before. Goal: < 50 MB. Every answer must be a 200 within
    the server's WAIT cap + 2 s.
(e) job-list latency with --list-jobs (100,000) jobs of one session: GET
    /soda/async?LAST=100, 20 sequential requests on a warm connection, best and median;
    must be the newest 100, newest first. Goal: best < 50 ms. Also timed, for
    information: LAST=100&PHASE=PENDING and the first page without LAST (1,000 rows).
    Fewer GETs (three at least) once a list has taken --list-budget seconds.

The API runs with every check of docs/limits.md in place (request limits, server
options, the per-owner quota and the creation-rate limiter) but with quotas too large to
refuse the bench's own load: the limiter's code still runs on every creation.

Each rate is the best of --rounds rounds (service, bare and bare+store in turn):
the machine may be shared, and interference only ever lowers a rate.

  .venv/bin/python bench/api_bench.py [--jobs 10000] [--list-jobs 100000] [--waits 2000]
                                      [--requests N] [--connections C]
  .venv/bin/python bench/api_bench.py --profile     # cProfile of the API process per phase
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import cProfile
import io
import json
import os
import pstats
import re
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DATABASE = "api_bench"
GOALS = {"(a)": 0.5, "(b)": 0.5, "(c)": 200.0, "(d)": 50.0, "(e)": 50.0}  # ratios, MB, ms
TICKS = os.sysconf("SC_CLK_TCK")
UNLIMITED_JOBS = 10**9  # the API's quotas in this bench: never reached, always checked
UNLIMITED_RATE = 1e12  # job creations a minute
SESSION_COOKIE = "soda_reduce_session"  # web/sessions.py


# -- /proc ----------------------------------------------------------------


def rss_mb(pid: int, field_name: str = "VmRSS") -> float:
    """VmRSS (or VmHWM, the peak) of a process, MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field_name)


def loadavg() -> float:
    """The 1-minute load average: other work on the machine skews every figure."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def sockets(pid: int) -> int:
    """Open sockets of a process (its accepted connections among them)."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            count += os.readlink(fd).startswith("socket:")
    return count


def raise_open_files() -> int:
    """Raise this process's soft RLIMIT_NOFILE to the hard one (2,000 WAITs need 2,000
    sockets on each side); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 65536)
    if soft != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


# -- servers (subprocesses of this script) --------------------------------


async def _until_stdin_closes() -> None:
    await asyncio.to_thread(sys.stdin.buffer.read)


def _announce(port: int) -> None:
    print(json.dumps({"port": port, "pid": os.getpid()}), flush=True)


def _profiling(prefix: str) -> None:
    """SIGUSR1 starts a cProfile, SIGUSR2 stops it and dumps it to prefix-N.prof."""
    state: dict[str, Any] = {"profile": None, "n": 0}

    def start() -> None:
        state["profile"] = cProfile.Profile()
        state["profile"].enable()

    def stop() -> None:
        profile = state["profile"]
        if profile is not None:
            profile.disable()
            state["n"] += 1
            profile.dump_stats(f"{prefix}-{state['n']}.prof")
            state["profile"] = None

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, start)
    loop.add_signal_handler(signal.SIGUSR2, stop)


async def serve_api(args: argparse.Namespace) -> None:
    """The real service, as ``soda-reduce api`` assembles it (minus the sweeper)."""
    from aiohttp import web

    from soda_reduce.config import Settings
    from soda_reduce.pipelines import get_cascade
    from soda_reduce.runtime.host import open_runtime
    from soda_reduce.runtime.store import Store
    from soda_reduce.web.app import ServiceState, build_app, server_options
    from soda_reduce.web.context import Services
    from soda_reduce.web.middleware import AuthConfig

    raise_open_files()
    archive = Path(args.archive)
    # every check on, but quotas the bench's own load never reaches: the per-owner count
    # and the rate limiter still run on every creation
    settings = Settings(
        data_dir=Path(args.data_dir),
        archive_dir=archive,
        mongo_url=args.mongo_url,
        max_active_jobs=UNLIMITED_JOBS,
        job_rate_per_minute=UNLIMITED_RATE,
    ).with_(database=DATABASE)
    store = Store.connect(args.mongo_url, DATABASE)
    await store.ensure_indexes()
    async with open_runtime(
        settings, store, archive, worker=False, sweeper=args.sweeper
    ) as runtime:
        services = Services.from_runtime(runtime, archive)
        auth = AuthConfig.load(
            settings.trusted_header, settings.tokens_file, settings.allow_anonymous
        )
        app = build_app(ServiceState(store, get_cascade("ccd"), str(archive)), services, auth)
        runner = web.AppRunner(app, access_log=None, **server_options(settings))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        if args.profile_prefix:
            _profiling(args.profile_prefix)
        _announce(runner.addresses[0][1])
        try:
            await _until_stdin_closes()
        finally:
            await runner.cleanup()
            await store.close()


async def serve_bare(args: argparse.Namespace) -> None:
    """The same bytes from bare handlers: a dict lookup, and a 303 with a same-length Location."""
    from aiohttp import web

    spec = json.loads(Path(args.spec).read_text())
    bodies = {job_id: base64.b64decode(body) for job_id, body in spec["bodies"].items()}
    content_type = spec["content_type"]
    location_length = spec["location_length"]
    created_headers = {"Set-Cookie": spec["set_cookie"]} if spec["set_cookie"] else {}

    async def get_job(request: web.Request) -> web.Response:
        body = bodies.get(request.match_info["job_id"])
        if body is None:
            raise web.HTTPNotFound()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def create_job(request: web.Request) -> web.Response:
        await request.read()
        prefix = f"{request.scheme}://{request.host}/soda/async/"
        location = prefix + "x" * (location_length - len(prefix))
        return web.Response(status=303, headers={"Location": location, **created_headers})

    if args.mongo_url:
        # bare+store: the same calls of the service's store layer, then the same bytes
        from soda_reduce.runtime.jobs import JobStore, utcnow
        from soda_reduce.runtime.known_raw_files import KnownRawFiles
        from soda_reduce.runtime.store import Store
        from soda_reduce.vo.job_request import parse_job_request

        store = Store.connect(args.mongo_url, DATABASE)
        jobs = JobStore(store)
        known = KnownRawFiles(store)
        bare_get, bare_create = get_job, create_job

        async def get_job(request: web.Request) -> web.Response:
            if await jobs.get(request.match_info["job_id"], None, any_owner=True) is None:
                raise web.HTTPNotFound()
            return await bare_get(request)

        async def create_job(request: web.Request) -> web.Response:
            raw_id = str((await request.post())["ID"])
            job_request = parse_job_request([("ID", raw_id)])
            owner = "anon:" + secrets.token_hex(32)  # a new session, as the service's
            if not await known.by_id([raw_id]):  # as RequestChecks.pipeline_for
                raise web.HTTPBadRequest()
            # a new session owns nothing: JobService.create counts no active jobs for it
            await jobs.create(
                owner,
                job_request,
                execution_duration=4 * 3600,
                destruction=utcnow() + timedelta(days=7),
                new_owner=True,
            )
            return await bare_create(request)

    app = web.Application()
    app.router.add_get("/soda/async/{job_id}", get_job)
    app.router.add_post("/soda/async", create_job)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    _announce(runner.addresses[0][1])
    try:
        await _until_stdin_closes()
    finally:
        await runner.cleanup()


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    def start(cls, role: str, *options: str) -> Server:
        from soda_reduce.runtime.process import die_with_parent

        command = [sys.executable, str(Path(__file__).resolve()), "--serve", role, *options]
        process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, preexec_fn=die_with_parent
        )
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            process.wait()
            raise RuntimeError(f"{role} server exited with code {process.returncode}")
        return cls(process, json.loads(line)["port"])

    def stop(self) -> None:
        assert self.process.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.process.stdin.close()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# -- load generator -------------------------------------------------------


@dataclass
class Load:
    """Figures of one load run."""

    requests: int
    seconds: float
    statuses: Counter[int]
    latencies: list[float]
    errors: int
    server_cpu: float  # CPU seconds of the server process
    store_cpu: float  # of SecantusDB, for the servers that use it
    client_cpu: float
    sizes: set[int] = field(default_factory=set)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


class _Run:
    def __init__(self, request: bytes, total: int, connections: int) -> None:
        self.request = request
        self.remaining = total
        self.open = connections
        self.statuses: Counter[int] = Counter()
        self.latencies: list[float] = []
        self.sizes: set[int] = set()
        self.errors = 0
        self.finished = asyncio.get_running_loop().create_future()

    def take(self) -> bool:
        if self.remaining <= 0:
            return False
        self.remaining -= 1
        return True

    def closed(self, exc: Exception | None) -> None:
        if exc is not None:
            self.errors += 1
        self.open -= 1
        if self.open == 0 and not self.finished.done():
            self.finished.set_result(None)


class _Connection(asyncio.Protocol):
    """One keep-alive connection sending the same request again as soon as the answer is in."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.buffer = bytearray()
        self.need = -1
        self.status = 0
        self.sent = 0.0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._next()

    def _next(self) -> None:
        assert self.transport is not None
        if not self.run.take():
            self.transport.close()
            return
        self.sent = time.perf_counter()
        self.transport.write(self.run.request)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if self.need < 0:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buffer[:end]).lower()
            self.status = int(head[9:12])
            at = head.find(b"\r\ncontent-length:")
            if at < 0:
                raise RuntimeError(f"no Content-Length in {head!r}")
            stop = head.find(b"\r\n", at + 2)
            length = int(head[at + 17 : stop if stop >= 0 else len(head)])
            self.need = end + 4 + length
            self.run.sizes.add(length)
        if len(buffer) >= self.need:
            run = self.run
            run.latencies.append(time.perf_counter() - self.sent)
            run.statuses[self.status] += 1
            del buffer[: self.need]
            self.need = -1
            self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        self.run.closed(exc)


def http_request(method: str, port: int, path: str, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "User-Agent: api_bench"]
    if body:
        lines += ["Content-Type: application/x-www-form-urlencoded", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def load(
    server: Server, request: bytes, total: int, connections: int, store_pid: int | None = None
) -> Load:
    loop = asyncio.get_running_loop()
    run = _Run(request, total, connections)
    cpu0 = cpu_seconds(server.pid)
    store0 = cpu_seconds(store_pid) if store_pid else 0.0
    client0 = time.process_time()
    t0 = time.perf_counter()
    for _ in range(connections):
        await loop.create_connection(lambda: _Connection(run), "127.0.0.1", server.port)
    await run.finished
    seconds = time.perf_counter() - t0
    done = sum(run.statuses.values())
    return Load(
        requests=done,
        seconds=seconds,
        statuses=run.statuses,
        latencies=run.latencies,
        errors=run.errors + (total - done),
        server_cpu=cpu_seconds(server.pid) - cpu0,
        store_cpu=(cpu_seconds(store_pid) - store0) if store_pid else 0.0,
        client_cpu=time.process_time() - client0,
        sizes=run.sizes,
    )


def describe(name: str, result: Load, expected: int) -> str:
    bad = sum(n for s, n in result.statuses.items() if s != expected) + result.errors
    cpu = f"server {result.server_cpu / result.seconds:4.0%}"
    if result.store_cpu:
        cpu += f" store {result.store_cpu / result.seconds:4.0%}"
    return (
        f"  {name:<28}{result.rate:>9.0f} req/s  p50 {result.percentile(0.5):6.1f} ms"
        f"  p99 {result.percentile(0.99):6.1f} ms  cpu: {cpu} client "
        f"{result.client_cpu / result.seconds:4.0%}" + (f"  {bad} NOT {expected}!" if bad else "")
    )


# -- the store and its jobs -----------------------------------------------


async def completed_looking(store: Any, service: Any, raw_id: str) -> str:
    """A job run to QUEUED by the real service (plan stored), then marked COMPLETED by hand,
    with the steps, progress and result rows a worker writes."""
    from soda_reduce.runtime.jobs import utcnow

    job = await service.create(None, await service.parse([("ID", raw_id)]))
    job = await service.run(job)
    assert job.plan is not None, job.error
    plan = job.plan
    wanted = {j for d in plan["datasets"] if d["complete"] for j in d["jobs"]}
    targets = {d["target_job"] for d in plan["datasets"] if d["complete"]}
    steps, results = [], []
    for item in plan["jobs"]:
        if item["job_id"] not in wanted:
            continue
        steps.append(
            {
                "job_id": item["job_id"],
                "task": item["task"],
                "label": item.get("label", ""),
                "step_key": item["step_key"],
                "status": "done",
                "attempts": 1,
                "error": None,
            }
        )
        target = item["job_id"] in targets
        for file, main in ((f"{item['task']}.fits", True), ("qa.json", False)):
            results.append(
                {
                    "step_key": item["step_key"],
                    "file": file,
                    "category": item["task"].upper(),
                    "content_type": "application/fits" if main else "application/json",
                    "size": 34560 if main else 812,
                    "task": item["task"],
                    "plan_job": item["job_id"],
                    "dataset": plan["datasets"][0]["label"],
                    "main": main,
                    "target": target,
                }
            )
    now = utcnow()
    await store.jobs.update_one(
        {"job_id": job.job_id},
        {
            "$set": {
                "phase": "COMPLETED",
                "published": True,
                "start_time": now - timedelta(seconds=42),
                "end_time": now,
                "progress": {"done": len(steps), "failed": 0, "total": len(steps), "running": []},
                "steps": steps,
                "results": results,
                "lease_until": None,
            }
        },
    )
    return job.job_id


async def insert_jobs(
    store: Any, n: int, raw_id: str, owner: str | None
) -> tuple[float, list[str]]:
    """``n`` PENDING jobs of ``owner`` in the shape JobStore.create writes (one typed
    request, parsed once), by insert_many; the seconds taken and the job IDs, oldest first
    (one second apart, the newest a second ago)."""
    from soda_reduce.runtime.job_lists import Creation, JobLists
    from soda_reduce.runtime.jobs import new_job_id, utcnow
    from soda_reduce.vo.job_request import parse_job_request

    request = parse_job_request([("ID", raw_id)])
    request_doc = request.to_doc()
    parameters = [list(p) for p in request.parameters()]
    start = time.perf_counter()
    now = utcnow()
    ids: list[str] = []
    for first in range(0, n, 1000):
        docs = [
            {
                "job_id": new_job_id(),
                "owner": owner,
                "run_id": request.run_id,
                "phase": "PENDING",
                "creation_time": now - timedelta(seconds=n - i),
                "request": request_doc,
                "parameters": parameters,
                "execution_duration": 4 * 3600,
                "destruction": now + timedelta(days=7),
                "published": False,
                "version": 0,
            }
            for i in range(first, min(n, first + 1000))
        ]
        ids += [doc["job_id"] for doc in docs]
        await store.jobs.insert_many(docs, ordered=False)
    # as JobStore.create does: the owner's first creation, where oldest-first lists start
    await JobLists(store).note_creations([Creation(owner, now - timedelta(seconds=n))])
    return time.perf_counter() - start, ids


def jobref_ids(listing: bytes) -> list[str]:
    return [m.decode() for m in re.findall(rb'<uws:jobref id="([^"]+)"', listing)]


# -- the run --------------------------------------------------------------


def top_functions(path: Path, limit: int) -> str:
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.sort_stats("cumulative").print_stats(limit)
    stats.sort_stats("tottime").print_stats(limit)
    return out.getvalue()


@dataclass
class Figure:
    """One line of the summary: requests/s of the service and of its baselines."""

    name: str
    service: Load
    bare: Load
    floor: Load  # bare handler + the same store calls as the service

    @property
    def ratio(self) -> float:
        return self.service.rate / self.bare.rate


async def hold_waits(
    server: Server,
    store_pid: int,
    job_id: str,
    n: int,
    wait_s: int,
    cap: float,
    profile: Path | None,
) -> dict[str, Any]:
    """(d): ``n`` connections, each with one blocking GET ?WAIT=wait_s of a PENDING job.

    The API's VmRSS is read once it holds them all: every connection accepted, 2 s since
    the last request was written, the burst of first reads over (API CPU under half a
    core), none answered. Then the answers are awaited, the RSS sampled and the CPU of
    the API and of the store measured while the WAITs are parked, and the answers checked.
    """
    loop = asyncio.get_running_loop()
    request = http_request("GET", server.port, f"/soda/async/{job_id}?WAIT={wait_s}")
    idle = rss_mb(server.pid)
    sockets_before = sockets(server.pid)
    if profile is not None:
        os.kill(server.pid, signal.SIGUSR1)
    run = _Run(request, n, n)
    transports = []
    t0 = time.perf_counter()
    for _ in range(n):
        transport, _ = await loop.create_connection(
            lambda: _Connection(run), "127.0.0.1", server.port
        )
        transports.append(transport)
    written = time.perf_counter() - t0
    cpu = cpu_seconds(server.pid)
    accepted = 0
    # the first answers are due wait_s after the first request: read well before that
    while time.perf_counter() - t0 < wait_s - 3:
        await asyncio.sleep(0.5)
        now = cpu_seconds(server.pid)
        accepted = sockets(server.pid) - sockets_before
        calm = now - cpu < 0.25  # under half a core over the last 0.5 s
        cpu = now
        if accepted >= n and calm and time.perf_counter() - t0 > written + 2:
            break
    settled = time.perf_counter() - t0
    blocked = rss_mb(server.pid)
    # answered, or closed without an answer, by now (an answered connection closes too)
    early = max(sum(run.statuses.values()), n - run.open)
    peak = blocked
    parked = (time.perf_counter(), cpu_seconds(server.pid), cpu_seconds(store_pid))
    parked_cpu = (0.0, 0.0)
    while not run.finished.done() and time.perf_counter() - t0 < written + cap + 15:
        await asyncio.wait({run.finished}, timeout=0.5)
        peak = max(peak, rss_mb(server.pid))
        if not run.latencies:  # still all parked
            seconds = time.perf_counter() - parked[0]
            parked_cpu = (
                (cpu_seconds(server.pid) - parked[1]) / seconds,
                (cpu_seconds(store_pid) - parked[2]) / seconds,
            )
    for transport in transports:  # whatever did not answer in time
        transport.close()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(run.finished, 5)
    if profile is not None:
        os.kill(server.pid, signal.SIGUSR2)
    answered = sum(run.statuses.values())
    return {
        "n": n,
        "wait_s": wait_s,
        "cap": cap,
        "idle": idle,
        "blocked": blocked,
        "above_idle": blocked - idle,
        "per_wait_kb": (blocked - idle) * 1024 / n,
        "peak": peak,
        "after": rss_mb(server.pid),
        "written_s": written,
        "settled_s": settled,
        "accepted": accepted,
        "early": early,
        "parked_cpu": parked_cpu,
        "statuses": dict(run.statuses),
        "answered": answered,
        "ok": run.statuses[200],
        "errors": run.errors,
        "max_s": max(run.latencies, default=float("nan")),
        "min_s": min(run.latencies, default=float("nan")),
    }


async def time_list(
    session: Any, url: str, expected: list[str], requests: int, budget: float = 0.0
) -> tuple[list[float], int]:
    """``requests`` sequential GETs of a job list after one warm-up, each checked against
    the job IDs expected in that order; the seconds of each and the size of the answer.
    With a ``budget`` (seconds), fewer once it is spent (three at least)."""
    timings: list[float] = []
    size = 0
    started = time.perf_counter()
    for i in range(requests + 1):
        if budget and len(timings) >= 3 and time.perf_counter() - started > budget:
            break
        t0 = time.perf_counter()
        async with session.get(url) as response:
            listing = await response.read()
        if i:
            timings.append(time.perf_counter() - t0)
        assert response.status == 200, listing[:500]
        ids = jobref_ids(listing)
        assert ids == expected, f"{url}: {len(ids)} jobrefs, not the {len(expected)} expected"
        size = len(listing)
    return timings, size


async def bench(args: argparse.Namespace) -> tuple[list[Figure], dict[str, Any]]:
    import aiohttp

    from soda_reduce.config import Settings
    from soda_reduce.pipelines.ccd.demo import generate_demo_archive
    from soda_reduce.runtime.host import open_runtime
    from soda_reduce.runtime.indexer import index_archive
    from soda_reduce.runtime.store import EmbeddedMongo, Store
    from soda_reduce.web.sessions import new_token, session_owner
    from tests.support.uws_harness import pick_ids

    raise_open_files()
    memory: dict[str, Any] = {"load_before": loadavg()}
    work = Path(tempfile.mkdtemp(prefix="api_bench_"))
    archive = work / "archive"
    figures: list[Figure] = []
    servers: list[Server] = []
    profiles: list[tuple[str, Path]] = []
    started = time.perf_counter()
    mongo = EmbeddedMongo(work / "mongo")
    # the jobs of (c) and of (e) belong to two anonymous sessions: a list shows the caller's
    list_token, many_token = new_token(), new_token()
    try:
        generate_demo_archive(archive, nights=3, science_per_night=2, size=64)
        await mongo.start()
        store = Store.connect(mongo.url, DATABASE)
        await store.ensure_indexes()
        settings = Settings(data_dir=work / "data", archive_dir=archive, mongo_url=mongo.url)
        report = await index_archive(store, archive, settings.authority, checksum_mode="fast")
        raw_id, _ = await pick_ids(store)
        async with open_runtime(settings, store, archive, worker=False, sweeper=False) as rt:
            request = await rt.service.parse([("ID", raw_id)])
            pending_id = (await rt.service.create(None, request)).job_id
            waited_id = (await rt.service.create(None, request)).job_id
            completed_id = await completed_looking(store, rt.service, raw_id)
        stored = args.jobs if "c" in args.only else 0
        seconds, listed_ids = await insert_jobs(store, stored, raw_id, session_owner(list_token))
        await store.close()
        print(
            f"demo archive: {report.summary()}\n  ID={raw_id}\n"
            f"inserted {stored} jobs in {seconds:.1f} s; "
            f"setup {time.perf_counter() - started:.1f} s"
        )

        api_options = ["--mongo-url", mongo.url, "--archive", str(archive)]
        api_options += ["--data-dir", str(work / "data")]
        if args.sweeper:
            api_options.append("--sweeper")
        if args.profile:
            api_options += ["--profile-prefix", str(work / "api")]
        api = Server.start("api", *api_options)
        servers.append(api)
        memory["idle"] = rss_mb(api.pid)

        def profiled(name: str) -> contextlib.AbstractContextManager[None]:
            @contextlib.contextmanager
            def span():
                if args.profile:
                    os.kill(api.pid, signal.SIGUSR1)
                yield
                if args.profile:
                    os.kill(api.pid, signal.SIGUSR2)
                    profiles.append((name, work / f"api-{len(profiles) + 1}.prof"))

            return span()

        # the service's own answers become the bare servers' bytes
        base = f"http://127.0.0.1:{api.port}"
        bodies = {}
        async with aiohttp.ClientSession() as session:
            for job_id in (pending_id, completed_id):
                async with session.get(f"{base}/soda/async/{job_id}") as response:
                    assert response.status == 200, await response.text()
                    bodies[job_id] = base64.b64encode(await response.read()).decode()
                    content_type = response.headers["Content-Type"]
            async with session.post(
                f"{base}/soda/async", data={"ID": raw_id}, allow_redirects=False
            ) as response:
                assert response.status == 303, await response.text()
                location = response.headers["Location"]
                set_cookie = response.headers.get("Set-Cookie")
        spec = work / "bare.json"
        spec.write_text(
            json.dumps(
                {
                    "bodies": bodies,
                    "content_type": content_type,
                    "location_length": len(location),
                    "set_cookie": set_cookie,
                }
            )
        )
        bare = Server.start("bare", "--spec", str(spec))
        floor = Server.start("bare", "--spec", str(spec), "--mongo-url", mongo.url)
        servers += [bare, floor]
        sizes = {k: len(base64.b64decode(v)) for k, v in bodies.items()}
        print(
            f"API pid {api.pid} (RSS {memory['idle']:.0f} MB idle), bare pid {bare.pid}, "
            f"bare+store pid {floor.pid}, store pid {mongo.pid}; {content_type!r}\n"
            f"bodies: PENDING {sizes[pending_id]} B, COMPLETED {sizes[completed_id]} B; "
            f"{args.requests} requests per figure over {args.connections} connections"
        )

        async def measure(name: str, server: Server, request: bytes, expected: int) -> Load:
            store_pid = mongo.pid if server is not bare else None
            await load(server, request, max(200, args.requests // 10), args.connections)
            if server is api:
                with profiled(name):
                    result = await load(server, request, args.requests, args.connections, store_pid)
            else:
                result = await load(server, request, args.requests, args.connections, store_pid)
            print(describe(name, result, expected))
            return result

        async def compare(name: str, method: str, path: str, body: bytes, expected: int):
            """Rounds of service, bare, bare+store in turn; the best round of each counts
            (the machine may be shared: interference only ever lowers a rate)."""
            best: dict[str, Load] = {}
            for _ in range(args.rounds):
                for label, server in (("service", api), ("bare", bare), ("bare+store", floor)):
                    request = http_request(method, server.port, path, body)
                    run = await measure(f"{label:<11}{name}", server, request, expected)
                    if label not in best or run.rate > best[label].rate:
                        best[label] = run
            figure = Figure(name, best["service"], best["bare"], best["bare+store"])
            figures.append(figure)
            return figure

        if "a" in args.only:
            print("(a) GET /soda/async/{id}")
        for label, job_id in (("PENDING", pending_id), ("COMPLETED", completed_id)):
            if "a" not in args.only:
                break
            figure = await compare(f"GET {label}", "GET", f"/soda/async/{job_id}", b"", 200)
            assert figure.service.sizes == figure.bare.sizes == {sizes[job_id]}

        if "c" in args.only:
            await first_page(args, base, list_token, listed_ids, memory, api, profiled)
        if "b" in args.only:
            print("(b) POST /soda/async ID=<raw file>")
            await compare("POST create", "POST", "/soda/async", f"ID={raw_id}".encode(), 303)
            memory["after_create"] = rss_mb(api.pid)
            memory["peak"] = rss_mb(api.pid, "VmHWM")
        if "d" in args.only:
            cap_s = settings.wait_cap_s
            await many_waits(args, api, mongo.pid, waited_id, cap_s, memory, work, profiles)
        if "e" in args.only:
            await long_lists(args, base, mongo.url, raw_id, many_token, memory, api, profiled)
    finally:
        for server in servers:
            server.stop()
        await mongo.stop()
        for name, path in profiles:
            if path.exists():
                print(f"\n===== API profile: {name} =====")
                print(top_functions(path, args.profile_lines))
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    memory["wall"] = time.perf_counter() - started
    memory["load_after"] = loadavg()
    return figures, memory


async def first_page(
    args: argparse.Namespace,
    base: str,
    token: str,
    listed_ids: list[str],
    memory: dict[str, Any],
    api: Server,
    profiled: Any,
) -> None:
    """(c): the first page of a session's stored jobs, and the API's RSS after it."""
    import aiohttp

    print(f"(c) GET /soda/async: the first page of a session's {args.jobs} jobs")
    cookie = {"Cookie": f"{SESSION_COOKIE}={token}"}
    first = listed_ids[:1000]
    async with aiohttp.ClientSession(headers=cookie) as session:
        with profiled("job list, first page x3"):
            timings, size = await time_list(session, f"{base}/soda/async", first, 3)
    memory.update(listed=len(first), list_bytes=size, list_s=timings, after_list=rss_mb(api.pid))
    print(
        f"  {memory['listed']} jobrefs, {size / 1e3:.0f} kB, in "
        + ", ".join(f"{t * 1000:.0f}" for t in timings)
        + f" ms; API RSS {memory['after_list']:.0f} MB"
    )


async def many_waits(
    args: argparse.Namespace,
    api: Server,
    store_pid: int,
    job_id: str,
    cap_s: float,
    memory: dict[str, Any],
    work: Path,
    profiles: list[tuple[str, Path]],
) -> None:
    """(d): the API's RSS under ``--waits`` blocking WAITs, and their answers."""
    print(f"(d) {args.waits} concurrent GET /soda/async/{{id}}?WAIT={args.wait} of a PENDING job")
    profile_d = work / f"api-{len(profiles) + 1}.prof" if args.profile else None
    waits = await hold_waits(api, store_pid, job_id, args.waits, args.wait, cap_s, profile_d)
    if profile_d is not None:
        profiles.append((f"{args.waits} WAITs", profile_d))
    memory["waits"] = waits
    print(
        f"  {waits['n']} requests written in {waits['written_s']:.1f} s, "
        f"{waits['accepted']} connections accepted, settled at {waits['settled_s']:.1f} s, "
        f"{waits['early']} answered by then; API RSS {waits['idle']:.0f} MB idle, "
        f"{waits['blocked']:.0f} MB blocked (+{waits['above_idle']:.1f} MB, "
        f"{waits['per_wait_kb']:.1f} kB per WAIT), {waits['peak']:.0f} MB peak, "
        f"{waits['after']:.0f} MB after; while parked: API CPU "
        f"{waits['parked_cpu'][0]:.0%}, store CPU {waits['parked_cpu'][1]:.0%}\n"
        f"  answers: {waits['statuses']}, {waits['errors']} connection errors; "
        f"{waits['min_s']:.1f} to {waits['max_s']:.1f} s"
    )


async def long_lists(
    args: argparse.Namespace,
    base: str,
    mongo_url: str,
    raw_id: str,
    token: str,
    memory: dict[str, Any],
    api: Server,
    profiled: Any,
) -> None:
    """(e): job lists of a session with ``--list-jobs`` jobs, on one warm connection."""
    import aiohttp

    from soda_reduce.runtime.store import Store
    from soda_reduce.web.sessions import session_owner

    print(f"(e) GET /soda/async?LAST=100 with {args.list_jobs} jobs of one session")
    store = Store.connect(mongo_url, DATABASE)
    seconds, many_ids = await insert_jobs(store, args.list_jobs, raw_id, session_owner(token))
    await store.close()
    newest = many_ids[::-1][:100]
    lists: dict[str, tuple[list[float], int]] = {}
    cookie = {"Cookie": f"{SESSION_COOKIE}={token}"}
    connector = aiohttp.TCPConnector(limit=1)  # one warm keep-alive connection
    async with aiohttp.ClientSession(headers=cookie, connector=connector) as session:
        budget = args.list_budget
        with profiled(f"LAST=100 of {args.list_jobs}"):
            lists["LAST=100"] = await time_list(
                session, f"{base}/soda/async?LAST=100", newest, args.list_requests, budget
            )
        lists["LAST=100&PHASE=PENDING"] = await time_list(
            session,
            f"{base}/soda/async?LAST=100&PHASE=PENDING",
            newest,
            args.list_requests,
            budget,
        )
        lists["first page (no LAST)"] = await time_list(
            session, f"{base}/soda/async", many_ids[:1000], args.list_requests, budget
        )
    memory["lists"] = lists
    memory["list_insert_s"] = seconds
    memory["after_lists"] = rss_mb(api.pid)
    print(f"  inserted {args.list_jobs} jobs in {seconds:.1f} s")
    for name, (timings, size) in lists.items():
        print(
            f"  {name:<24} {size / 1e3:5.0f} kB  best {min(timings) * 1000:6.1f} ms  "
            f"median {statistics.median(timings) * 1000:6.1f} ms  ({len(timings)} GETs)"
        )


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def print_summary(figures: Sequence[Figure], memory: dict[str, Any], args: argparse.Namespace):
    print(
        f"\n{'req/s':<26}{'service':>9}{'bare':>9}{'bare+store':>12}"
        f"{'service/bare':>14}  {'goal':<8}{'verdict':<9}{'service/(bare+store)':>20}"
    )
    for f in figures:
        tag = "(b)" if f.name.startswith("POST") else "(a)"
        goal = GOALS[tag]
        print(
            f"{tag + ' ' + f.name:<26}{f.service.rate:>9.0f}{f.bare.rate:>9.0f}"
            f"{f.floor.rate:>12.0f}{f.ratio:>14.3f}  {'>= ' + str(goal):<8}"
            f"{_verdict(f.ratio >= goal):<9}{f.service.rate / f.floor.rate:>20.2f}"
        )

    def row(label: str, value: str, goal: str, ok: bool) -> None:
        print(f"{label:<26}{value:>9}{'':>35}  {goal:<8}{_verdict(ok):<9}")

    if "c" in args.only:
        _summary_c(memory, args, row)
    if "d" in args.only:
        _summary_d(memory, row)
    if "e" in args.only:
        _summary_e(memory, args, row)
    print(
        f"wall {memory['wall']:.0f} s on {os.cpu_count()} cores; load average (1 min) "
        f"{memory['load_before']:.1f} before, {memory['load_after']:.1f} after"
    )


def _summary_c(memory: dict[str, Any], args: argparse.Namespace, row: Any) -> None:
    rss = memory["after_list"]
    row("(c) API RSS, MB", f"{rss:.0f}", f"< {GOALS['(c)']:.0f}", rss < GOALS["(c)"])
    timings = memory["list_s"]
    after_b = f", after (b) {memory['after_create']:.0f} MB" if "after_create" in memory else ""
    print(
        f"    {args.jobs} stored jobs of one session; RSS idle {memory['idle']:.0f} MB, after "
        f"the list {rss:.0f} MB{after_b}, peak {rss_peak(memory):.0f} MB; first page: "
        f"{memory['listed']} jobrefs, {memory['list_bytes'] / 1e3:.0f} kB, best "
        f"{min(timings) * 1000:.0f} ms"
    )


def rss_peak(memory: dict[str, Any]) -> float:
    return memory.get("peak", memory["after_list"])


def _summary_d(memory: dict[str, Any], row: Any) -> None:
    w = memory["waits"]
    row(
        f"(d) RSS, {w['n']} WAITs, MB",
        f"+{w['above_idle']:.1f}",
        f"< {GOALS['(d)']:.0f}",
        w["above_idle"] < GOALS["(d)"] and w["early"] == 0,
    )
    limit = w["cap"] + 2
    row(
        "(d) WAIT answers, max s",
        f"{w['max_s']:.1f}",
        f"<= {limit:.0f}",
        w["ok"] == w["n"] and w["max_s"] <= limit,
    )
    print(
        f"    idle {w['idle']:.0f} MB, blocked {w['blocked']:.0f} MB ({w['per_wait_kb']:.1f} kB "
        f"per WAIT), peak while waiting {w['peak']:.0f} MB, after {w['after']:.0f} MB; "
        f"{w['early']} answered before the reading\n"
        f"    CPU while parked: API {w['parked_cpu'][0]:.0%}, store {w['parked_cpu'][1]:.0%}; "
        f"WAIT={w['wait_s']} (cap {w['cap']:.0f} s): "
        f"{w['ok']}/{w['n']} answered 200 in {w['min_s']:.1f}-{w['max_s']:.1f} s"
        + (f", statuses {w['statuses']}, {w['errors']} errors" if w["ok"] != w["n"] else "")
    )


def _summary_e(memory: dict[str, Any], args: argparse.Namespace, row: Any) -> None:
    lists = memory["lists"]
    best = min(lists["LAST=100"][0]) * 1000
    row("(e) LAST=100, best ms", f"{best:.1f}", f"< {GOALS['(e)']:.0f}", best < GOALS["(e)"])
    print(
        f"    {args.list_jobs} jobs of one session (inserted in {memory['list_insert_s']:.0f} s); "
        f"sequential GETs on one warm connection, best / median ms:"
    )
    for name, (timings, size) in lists.items():
        print(
            f"      {name:<24}{min(timings) * 1000:8.1f} /{statistics.median(timings) * 1000:8.1f}"
            f"   {size / 1e3:.0f} kB, {len(timings)} GETs"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000, help="stored jobs for (c)")
    parser.add_argument("--requests", type=int, default=4000, help="requests per figure")
    parser.add_argument("--connections", type=int, default=16, help="concurrent connections")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per figure; best counts")
    parser.add_argument("--waits", type=int, default=2000, help="concurrent WAITs for (d)")
    parser.add_argument("--wait", type=int, default=25, help="WAIT= of (d), seconds")
    parser.add_argument("--list-jobs", type=int, default=100_000, help="stored jobs for (e)")
    parser.add_argument("--list-requests", type=int, default=20, help="GETs per list of (e)")
    parser.add_argument(
        "--list-budget", type=float, default=30.0, help="seconds per list of (e); 0: no limit"
    )
    parser.add_argument(
        "--only", default="abcde", help="the figures to measure, e.g. b for creation alone"
    )
    parser.add_argument("--sweeper", action="store_true", help="run the sweeper in the API")
    parser.add_argument("--profile", action="store_true", help="cProfile the API per phase")
    parser.add_argument("--profile-lines", type=int, default=25)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    # internal: the server subprocesses
    parser.add_argument("--serve", choices=["api", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--mongo-url", help=argparse.SUPPRESS)
    parser.add_argument("--archive", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--profile-prefix", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve == "api":
        asyncio.run(serve_api(args))
        return 0
    if args.serve == "bare":
        asyncio.run(serve_bare(args))
        return 0
    figures, memory = asyncio.run(bench(args))
    print_summary(figures, memory, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
