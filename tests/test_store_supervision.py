"""The embedded store supervised: killed under load it comes back, and nothing hangs meanwhile.

- a store whose server is gone raises the typed `StoreUnavailable` (a DALI TransientError)
  within the store's timeout, from `retrying`, from `Store` and from the job store;
- `StoreSupervisor` restarts a killed SecantusDB on its port and data, a crash loop backs
  off and ends in `StoreHealth.lost`; journaled job documents survive a SIGKILL;
- the real ``soda-reduce serve``: its SecantusDB child is SIGKILLed, and every new one too
  for a few seconds (a crash loop), while a client keeps asking: answers come fast, as 503
  DALI error VOTables with ``Retry-After``, ``/availability`` says false, then the store is
  back, the job created before is still there and a new job runs to COMPLETED;
- SIGTERM with WAITs open and the store dead, or the store hung (SIGSTOP), stops ``serve``
  within 10 s.

Every wait is bounded; processes are found through psutil by their command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import requests
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from lxml import etree
from pymongo.errors import AutoReconnect, ServerSelectionTimeoutError

from soda_reduce.runtime.broker import BrokerUnavailable
from soda_reduce.runtime.jobs import JobStore
from soda_reduce.runtime.step_cache import retrying
from soda_reduce.runtime.store import (
    Backoff,
    EmbeddedMongo,
    Store,
    StoreHealth,
    StoreSupervisor,
    StoreUnavailable,
)
from soda_reduce.runtime.store.supervision import wait_exit
from soda_reduce.vo.dali import TooManyRequestsError, TransientError
from soda_reduce.web.middleware import error_middleware
from tests.test_serve import create_job, science_frames, serve

VOSI_NS = "http://www.ivoa.net/xml/VOSIAvailability/v1.0"
TIMEOUT_S = 1.0  # the store's server-selection timeout in the unit tests
FAST_S = 5.0  # the longest any answer may take while the store is down
STOP_WITHIN_S = 10.0


def _kill(pid: int, sig: signal.Signals = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


# ----------------------------------------------------------------------------- unit level


@pytest.fixture
async def own_server(tmp_path: Path) -> AsyncIterator[EmbeddedMongo]:
    """A server of this test's own: it gets killed."""
    server = EmbeddedMongo(tmp_path / "db")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_a_gone_store_raises_the_typed_error_fast(own_server: EmbeddedMongo) -> None:
    store = Store.connect(own_server.url, "gone", timeout_s=TIMEOUT_S)
    try:
        jobs = JobStore(store)
        await store.jobs.insert_one({"job_id": "j1", "phase": "PENDING"})
        assert await store.count_raw_files() == 0
        _kill(own_server.pid or 0)
        assert await wait_exit(own_server) == -signal.SIGKILL
        calls = {
            "retrying(find_one)": lambda: retrying(lambda: store.jobs.find_one({})),
            "retrying(update_many)": lambda: retrying(
                lambda: store.jobs.update_many({}, {"$set": {"x": 1}})
            ),
            "Store.ping": store.ping,
            "Store.raw_files_by_id": lambda: store.raw_files_by_id(["ivo://x"]),
            "JobStore.get": lambda: jobs.get("j1", any_owner=True),
        }
        for what, call in calls.items():
            started = time.monotonic()
            with pytest.raises(StoreUnavailable) as caught:
                await call()
            took = time.monotonic() - started
            assert took < 3 * TIMEOUT_S, f"{what} took {took:.1f} s"
            error = caught.value
            assert isinstance(error, TransientError) and error.http_status == 503
            assert error.retry_after >= 1
            assert "ServiceUnavailable" in error.message
            assert str(own_server.port) not in error.message  # no host or port in public text
    finally:
        await store.close()


async def test_supervisor_restarts_a_killed_store_and_journaled_jobs_survive(
    own_server: EmbeddedMongo,
) -> None:
    store = Store.connect(own_server.url, "supervised", timeout_s=TIMEOUT_S)
    supervisor = StoreSupervisor(own_server, store.health)
    restarted = asyncio.Event()

    async def hook() -> None:
        restarted.set()

    store.health.on_restart.append(hook)
    supervisor.start()
    try:
        port, first = own_server.port, own_server.pid
        await store.jobs.insert_one({"job_id": "just-before", "phase": "PENDING"})
        _kill(first or 0)  # at once: an unjournaled write would be lost (docs/store.md)
        started = time.monotonic()
        async with asyncio.timeout(2):
            while store.health.up:
                await asyncio.sleep(0.01)
        noticed = time.monotonic() - started
        assert noticed < 1.0, f"the exit was noticed after {noticed:.2f} s"
        assert "SIGKILL" in store.health.note
        async with asyncio.timeout(30):
            await restarted.wait()
        assert store.health.up and store.health.restarts == 1
        assert own_server.port == port and own_server.pid != first
        doc = await store.jobs.find_one({"job_id": "just-before"})
        assert doc is not None and doc["phase"] == "PENDING"
    finally:
        await supervisor.stop()
        await store.close()
    assert not own_server.running


async def test_a_crash_loop_backs_off_then_supervision_gives_up(tmp_path: Path) -> None:
    backoff = Backoff(first_s=0.05, max_s=0.2, max_failures=3)
    assert [backoff.delay(n) for n in range(1, 6)] == [0.0, 0.05, 0.1, 0.2, 0.2]
    server = EmbeddedMongo(tmp_path / "db")
    await server.start()
    health = StoreHealth()
    supervisor = StoreSupervisor(server, health, backoff)
    supervisor.start()
    try:
        server.executable = "/bin/false"  # every restart now exits while starting
        _kill(server.pid or 0)
        async with asyncio.timeout(20):
            await health.lost.wait()
        assert not health.up and "gave up" in health.note
        assert health.restarts == 0
    finally:
        await supervisor.stop()


async def test_outages_are_503_with_retry_after_at_the_edge() -> None:
    """The error middleware: the driver's own errors, a broker outage and typed errors."""
    errors: dict[str, Exception] = {
        "selection": ServerSelectionTimeoutError("mongodb://secret-host:27017 refused"),
        "dropped": AutoReconnect("connection closed"),
        "broker": BrokerUnavailable("amqp://secret-host refused"),
        "typed": StoreUnavailable(),
        "quota": TooManyRequestsError("too many", retry_after=7),
        "bug": RuntimeError("secret-host"),
    }

    async def fail(request: web.Request) -> web.Response:
        raise errors[request.match_info["what"]]

    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/{what}", fail)
    async with TestClient(TestServer(app)) as client:
        answers = {}
        for what in errors:
            response = await client.get(f"/{what}")
            body = await response.text()
            assert response.content_type == "application/x-votable+xml"
            assert "secret-host" not in body and "Traceback" not in body
            answers[what] = (response.status, response.headers.get("Retry-After"))
            if response.status == 503:
                assert "ServiceUnavailable" in body
    assert answers == {
        "selection": (503, "5"),
        "dropped": (503, "5"),
        "broker": (503, "5"),
        "typed": (503, "5"),
        "quota": (429, "7"),
        "bug": (500, None),
    }


# ----------------------------------------------------------------------------- serve


def _store_children(process: psutil.Process) -> list[psutil.Process]:
    """The SecantusDB children of a ``serve`` process."""
    found = []
    for child in process.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if any("secantusd" in part for part in child.cmdline()):
                found.append(child)
    return found


def _one_store(served_pid: int, timeout: float = 30.0) -> psutil.Process:
    deadline = time.monotonic() + timeout
    parent = psutil.Process(served_pid)
    while time.monotonic() < deadline:
        children = _store_children(parent)
        if len(children) == 1:
            return children[0]
        time.sleep(0.05)
    raise AssertionError(f"no single store child after {timeout} s")


@dataclass
class Answer:
    what: str
    status: int
    seconds: float
    content_type: str
    retry_after: str | None
    body: bytes


def _ask(session: requests.Session, method: str, url: str, **kwargs) -> Answer:
    started = time.monotonic()
    response = session.request(method, url, timeout=30, allow_redirects=False, **kwargs)
    return Answer(
        f"{method} {url}",
        response.status_code,
        time.monotonic() - started,
        response.headers.get("Content-Type", ""),
        response.headers.get("Retry-After"),
        response.content,
    )


def _available(session: requests.Session, base: str) -> tuple[bool, list[str]]:
    response = session.get(f"{base}/availability", timeout=30)
    assert response.status_code == 200
    doc = etree.fromstring(response.content)
    available = doc.findtext(f"{{{VOSI_NS}}}available")
    return available == "true", [n.text or "" for n in doc.iter(f"{{{VOSI_NS}}}note")]


def _phase(session: requests.Session, url: str) -> str:
    response = session.get(url + "/phase", timeout=30)
    assert response.status_code == 200, response.text
    return response.text.strip()


@dataclass
class Client:
    """Asks the service in a loop (job, job list, availability, a few creations) until
    stopped; records every answer."""

    session: requests.Session
    base: str
    job_url: str
    frame_id: str
    answers: list[Answer]
    stop: threading.Event
    created: int = 0

    def run(self, deadline: float) -> None:
        n = 0
        while not self.stop.is_set() and time.monotonic() < deadline:
            n += 1
            self.answers.append(_ask(self.session, "GET", self.job_url))
            self.answers.append(_ask(self.session, "GET", f"{self.base}/soda/async"))
            if n % 4 == 0 and self.created < 8:
                self.created += 1
                data = {"ID": self.frame_id}
                self.answers.append(
                    _ask(self.session, "POST", f"{self.base}/soda/async", data=data)
                )
            time.sleep(0.05)


def _check_answers(answers: list[Answer]) -> list[Answer]:
    """Every answer fast and either fine or a 503 in DALI form; the 503s."""
    assert answers
    slow = [a for a in answers if a.seconds >= FAST_S]
    assert not slow, [(a.what, a.status, round(a.seconds, 1)) for a in slow]
    wrong = [a for a in answers if a.status not in (200, 303, 503)]
    assert not wrong, [(a.what, a.status, a.body[:300]) for a in wrong]
    unavailable = [a for a in answers if a.status == 503]
    for answer in unavailable:
        assert answer.content_type.startswith("application/x-votable+xml"), answer
        assert answer.retry_after is not None and int(answer.retry_after) >= 1, answer
        doc = etree.fromstring(answer.body)
        info = doc.find(".//{*}INFO[@name='QUERY_STATUS']")
        assert info is not None and info.get("value") == "ERROR"
        assert "ServiceUnavailable" in (info.text or "")
        assert b"Traceback" not in answer.body
    return unavailable


def test_serve_survives_its_store_being_killed(tmp_path: Path, demo_archive: Path) -> None:
    frames = science_frames(demo_archive)
    assert frames
    env = {"SODA_REDUCE_SWEEP_S": "1"}
    with serve(tmp_path / "data", "--archive", str(demo_archive), env=env) as served:
        session = served.session()
        before = create_job(session, served.base, {"ID": frames[0]["id"]})
        assert _available(session, served.base)[0]
        store = _one_store(served.process.pid)

        answers: list[Answer] = []
        stop = threading.Event()
        client = Client(session, served.base, before, frames[0]["id"], answers, stop)
        thread = threading.Thread(target=client.run, args=(time.monotonic() + 60,), daemon=True)
        thread.start()
        # a crash loop: the store and every new one are killed for KILL_S seconds
        killed, down_notes = 0, []
        kill_until = time.monotonic() + 6.0
        parent = psutil.Process(served.process.pid)
        while time.monotonic() < kill_until:
            for child in _store_children(parent):
                _kill(child.pid)
                killed += 1
            if not down_notes:
                available, notes = _available(session, served.base)
                if not available:
                    down_notes = notes
            time.sleep(0.05)
        assert killed >= 2, "the store was not restarted while it kept dying"
        # availability says so while the store is down (it is restarted with a backoff now)
        deadline = time.monotonic() + 10
        while not down_notes and time.monotonic() < deadline:
            available, notes = _available(session, served.base)
            down_notes = [] if available else notes
            time.sleep(0.1)
        stopped = "store: the embedded store stopped"
        assert any(note.startswith(stopped) for note in down_notes), down_notes

        deadline = time.monotonic() + 45
        while not _available(session, served.base)[0]:
            assert time.monotonic() < deadline, served.output()[-3000:]
            time.sleep(0.25)
        back = time.monotonic()
        stop.set()
        thread.join(35)
        assert not thread.is_alive()
        unavailable = _check_answers(answers)
        assert unavailable, "no request saw the store down"
        assert store.pid != _one_store(served.process.pid).pid

        # the job created before the kill is still there; a new one runs to COMPLETED
        assert _phase(session, before) == "PENDING"
        after = create_job(session, served.base, {"ID": frames[0]["id"], "PHASE": "RUN"})
        deadline = time.monotonic() + 180
        while (phase := _phase(session, after)) not in ("COMPLETED", "ERROR", "ABORTED"):
            assert time.monotonic() < deadline, f"still {phase}:\n{served.output()[-3000:]}"
            time.sleep(0.5)
        assert phase == "COMPLETED", served.output()[-3000:]
        recovered_s = time.monotonic() - back
        slowest = max(a.seconds for a in answers)
        print(
            f"store killed {killed} times; {len(answers)} answers, {len(unavailable)} were 503, "
            f"slowest {slowest:.2f} s; new job done {recovered_s:.1f} s after the store came back"
        )
    output = served.output()
    assert served.process.returncode == 0, output[-3000:]
    assert "restarting the embedded store" in output and "the embedded store is back" in output


def _wait_requests(
    session: requests.Session, url: str, count: int
) -> tuple[list[threading.Thread], list[int | str]]:
    results: list[int | str] = []

    def wait() -> None:
        try:
            response = session.get(url, params={"WAIT": "30", "PHASE": "PENDING"}, timeout=40)
            results.append(response.status_code)
        except requests.RequestException as exc:
            results.append(type(exc).__name__)

    threads = [threading.Thread(target=wait, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads, results


@pytest.mark.parametrize(("store_state", "sig"), [("dead", "SIGTERM"), ("hung", "SIGINT")])
def test_a_signal_stops_serve_within_10_s(
    tmp_path: Path, demo_archive: Path, store_state: str, sig: str
) -> None:
    frames = science_frames(demo_archive)
    with serve(tmp_path / "data", "--archive", str(demo_archive)) as served:
        session = served.session()
        job = create_job(session, served.base, {"ID": frames[0]["id"]})
        threads, results = _wait_requests(session, job, 4)
        time.sleep(1.0)  # the WAITs are blocked in the server now
        store = _one_store(served.process.pid)
        if store_state == "dead":
            _kill(store.pid)
        else:
            _kill(store.pid, signal.SIGSTOP)
        time.sleep(0.5)
        started = time.monotonic()
        served.process.send_signal(signal.Signals[sig])
        try:
            served.process.wait(STOP_WITHIN_S + 5)
        finally:
            _kill(store.pid, signal.SIGCONT)  # a hung store gets its SIGTERM now
        took = time.monotonic() - started
        for thread in threads:
            thread.join(5)
        print(f"store {store_state}: serve stopped {took:.1f} s after {sig}; WAITs: {results}")
        assert took < STOP_WITHIN_S, served.output()[-3000:]
        assert len(results) == 4
    _, alive = psutil.wait_procs([store], timeout=10)
    assert not alive, "the store outlived serve"
