"""The production shape, distributed: two API processes and two workers on one store and broker.

Real processes (``soda-reduce api`` / ``soda-reduce worker``), one SecantusDB,
the RabbitMQ on 127.0.0.1:5672 under queue and exchange names of this run, one
product directory, the real ccd recipes on the small demo archive. Each test
reduces with a ``bias.sigma_clip`` of its own, so its steps are new to the
shared step cache and its plans really run.

The tests run in file order on one cluster: jobs shared by both APIs and run
by both workers; a worker killed mid-plan; a worker stopped mid-plan; the
broker restarted; an API killed under a client's WAIT. Every wait is bounded
and every process is killed at the end, however the tests went; the broker is
always left running. Without RabbitMQ they are skipped (under CI: they fail); the
last test (in-process, a regression of the sweeper's orphan mark) is not.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest
from lxml import etree

from soda_reduce.pipelines import get_cascade
from soda_reduce.reduction.organisation import classify_all
from soda_reduce.reduction.planner import plan_reduction
from soda_reduce.runtime.jobs import utcnow
from soda_reduce.runtime.store import EmbeddedMongo, Store
from soda_reduce.runtime.sweeper import Sweeper
from soda_reduce.runtime.worker import Worker, WorkerConfig
from soda_reduce.vo.uws import Phase
from tests.support.cluster import (
    UWS,
    Cluster,
    UwsClient,
    eventually,
    phase_of,
    progress_of,
    result_hrefs,
)
from tests.support.rabbit import ensure_broker_running, port_open, run_command, wait_port
from tests.support.tools import missing
from tests.support.uws_harness import uws_service

LEASE_S = 6  # SODA_REDUCE_JOB_LEASE_S: a killed worker's job and steps are free after this
CLIP = "bias.sigma_clip"  # a parameter of the first step: a new value makes every step new


@dataclass
class Env:
    cluster: Cluster
    store: Store
    session: aiohttp.ClientSession
    science: list[str]  # science frames whose plan is complete, by path
    created: dict[str, str] = field(default_factory=dict)  # job -> its final phase

    def client(self, api: str) -> UwsClient:
        return UwsClient(self.session, self.cluster.apis[api].base)

    @property
    def api1(self) -> UwsClient:
        return self.client("api1")

    @property
    def api2(self) -> UwsClient:
        return self.client("api2")

    async def create(
        self, client: UwsClient, data: object, end: str | None = "COMPLETED", timeout: float = 30
    ) -> str:
        """A new job; ``end``: the phase it must end in (checked by the last test)."""
        job_id = await client.create(data, timeout)
        if end is not None:
            self.created[job_id] = end
        return job_id

    async def doc(self, job_id: str) -> dict:
        doc = await self.store.jobs.find_one({"job_id": job_id}, {"_id": 0, "plan": 0})
        assert doc is not None, f"job {job_id} is not in the store"
        return doc

    def worker_of(self, doc: dict) -> str | None:
        service = self.cluster.worker_by_id(doc.get("worker"))
        return service.name if service else None


async def complete_science(store: Store) -> list[str]:
    cascade = get_cascade("ccd")
    files = await store.all_raw_files()
    science = [f.raw for f in classify_all(cascade, files) if f.category == "SCIENCE"]
    return [
        raw.file_id
        for raw in sorted(science, key=lambda r: r.path)
        if plan_reduction(cascade, files, ids=[raw.file_id]).complete
    ]


@pytest.fixture(scope="module")
async def cluster_env(
    demo_archive: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Env]:
    if not port_open():
        missing("RabbitMQ refuses connections on 127.0.0.1:5672")
    root = tmp_path_factory.mktemp("distributed")
    mongo = EmbeddedMongo(root / "mongo")
    cluster: Cluster | None = None
    store: Store | None = None
    try:
        await mongo.start()
        cluster = Cluster(root, demo_archive, mongo.url, {"SODA_REDUCE_JOB_LEASE_S": str(LEASE_S)})
        await asyncio.gather(cluster.start_api("api1"), cluster.start_api("api2"))
        await asyncio.gather(cluster.start_worker("w1"), cluster.start_worker("w2"))
        await eventually(lambda: _equals(cluster.consumers(), 2), 30, "two plan consumers")
        store = Store.connect(mongo.url, cluster.database)
        science = await complete_science(store)
        assert len(science) >= 4, science
        # the jobs of one anonymous session (a cookie; the jar takes it from an IP host too)
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as session:
            yield Env(cluster, store, session, science)
    finally:
        if cluster is not None:
            await cluster.close()
        if store is not None:
            await store.close()
        await mongo.stop()


@pytest.fixture
async def env(cluster_env: Env) -> Env:
    """The cluster with two APIs and two consuming workers, whatever the last test left."""
    cluster = cluster_env.cluster
    for name in ("api1", "api2"):
        if not cluster.apis[name].alive:
            await cluster.start_api(name)
    for name in ("w1", "w2"):
        if not cluster.workers[name].alive:
            await cluster.start_worker(name)
    await eventually(lambda: _equals(cluster.consumers(), 2), 30, "two plan consumers")
    return cluster_env


async def _equals(value, expected) -> bool:
    return await value == expected


async def _until_steps_done(env: Env, job: str, count: int) -> tuple[int, int]:
    """Poll the job (jobInfo progress, on API 2) until ``count`` steps are done."""
    deadline = time.monotonic() + 30
    while True:
        doc = await env.api2.job(job)
        done, total = progress_of(doc)
        assert phase_of(doc) == "EXECUTING", (phase_of(doc), done, total)
        if done >= count:
            return done, total
        assert time.monotonic() < deadline, f"not {count} steps done in 30 s"
        await asyncio.sleep(0.1)


def _steps_by_key(doc: dict) -> dict[str, str]:
    return {s["step_key"]: s["status"] for s in doc.get("steps") or []}


# --------------------------------------------------------------------------- tests


async def test_two_apis_and_two_workers_share_the_work(env: Env) -> None:
    async with asyncio.timeout(90):
        # one job, made on API 1, controlled and watched on API 2
        job = await env.create(env.api1, {"ID": env.science[0], "RUNID": "shared", CLIP: "3.1"})
        doc = await env.api2.job(job)
        assert phase_of(doc) == "PENDING"
        assert doc.findtext("uws:runId", namespaces=UWS) == "shared"
        assert await env.api2.post(f"/soda/async/{job}/phase", {"PHASE": "RUN"}) == 303
        final = await env.api1.wait_final(job, 60)
        assert phase_of(final) == "COMPLETED", env.cluster.logs()
        other = await env.api2.job(job)
        assert result_hrefs(other).keys() == result_hrefs(final).keys()
        status, table = await env.api2.get_bytes(result_hrefs(other)["result"])
        assert status == 200 and b"REDUCED_SCIENCE" in table

        # ABORT on API 2 stops the worker running a job made on API 1 (the event crosses)
        data = [("ID", frame) for frame in env.science] + [(CLIP, "3.15"), ("PHASE", "RUN")]
        job = await env.create(env.api1, data, end="ABORTED")
        assert await env.api2.wait_phase(job, ("EXECUTING",), 30) == "EXECUTING"
        assert await env.api2.post(f"/soda/async/{job}/phase", {"PHASE": "ABORT"}) == 303
        assert phase_of(await env.api1.wait_final(job, 15)) == "ABORTED"

        async def released() -> bool:  # the worker gave its running steps back
            query = {"owner": {"$regex": f":{job}$"}, "state": "running"}
            return await env.store.steps.count_documents(query) == 0

        await eventually(released, 15, "the aborted job's steps released")
        # DELETE on API 2 of a job made on API 1
        job = await env.create(env.api1, {"ID": env.science[0]}, end=None)
        assert await env.api2.post(f"/soda/async/{job}", {"ACTION": "DELETE"}) == 303
        status, _ = await env.api1.get_bytes(f"{env.api1.base}/soda/async/{job}")
        assert status == 404

        # four at once, half on each API, each watched on the other: all complete
        frames = env.science[:4]
        clients = [env.api1, env.api2]
        jobs = await asyncio.gather(
            *(
                env.create(clients[n % 2], {"ID": frame, CLIP: "3.2", "PHASE": "RUN"})
                for n, frame in enumerate(frames)
            )
        )
        finals = await asyncio.gather(
            *(clients[(n + 1) % 2].wait_final(j, 75) for n, j in enumerate(jobs))
        )
        assert [phase_of(d) for d in finals] == ["COMPLETED"] * 4, env.cluster.logs()

        docs = [await env.doc(j) for j in jobs]
        by = Counter(env.worker_of(d) for d in docs)
        assert set(by) == {"w1", "w2"}, by  # both workers ran plans

        # every step computed once: one runner ran it, every other job reused it
        runs: Counter[str] = Counter()
        for d in docs:
            for key, status in _steps_by_key(d).items():
                assert status in ("done", "cached"), (key, status)
                runs[key] += status == "done"
        assert set(runs.values()) == {1}, runs
        steps = await env.store.steps.find({"step_key": {"$in": list(runs)}}).to_list()
        assert sorted(s["step_key"] for s in steps) == sorted(runs)  # one document per key
        assert all(s["state"] == "done" and s["attempts"] == 1 for s in steps), steps
        shared = [k for k in runs if sum(k in _steps_by_key(d) for d in docs) > 1]
        assert shared  # the frames of a night share their calibrations


async def test_worker_killed_mid_plan_another_finishes(env: Env) -> None:
    async with asyncio.timeout(120):
        data = [("ID", frame) for frame in env.science] + [(CLIP, "3.3"), ("PHASE", "RUN")]
        job = await env.create(env.api1, data)
        assert await env.api2.wait_phase(job, ("EXECUTING",), 30) == "EXECUTING"
        done, total = await _until_steps_done(env, job, 1)  # then kill its worker
        held = await env.doc(job)
        victim_name = env.worker_of(held)
        assert victim_name is not None, held.get("worker")
        victim = env.cluster.workers[victim_name]
        victim.kill(signal.SIGKILL)
        killed = time.monotonic()
        assert await victim.wait_exit(10) == -signal.SIGKILL
        assert done < total, "the plan finished before the kill"
        # the steps it was running, left with a lease nobody renews
        mine = {"$regex": f"^{re.escape(held['worker'])}:"}
        orphans = await env.store.steps.find({"owner": mine, "state": "running"}).to_list()

        final = await env.api1.wait_final(job, 90)
        took = time.monotonic() - killed
        assert phase_of(final) == "COMPLETED", env.cluster.logs()
        after = await env.doc(job)
        survivor = "w2" if victim_name == "w1" else "w1"
        assert env.worker_of(after) == survivor
        assert after["deliveries"] >= 2
        print(
            f"killed {victim_name} at {done}/{total} steps, {len(orphans)} running; "
            f"{survivor} finished in {took:.1f} s"
        )
        statuses = Counter(_steps_by_key(after).values())
        assert set(statuses) <= {"done", "cached"}, statuses
        for step in orphans:  # taken over by the survivor once their lease ran out
            now = await env.store.steps.find_one({"step_key": step["step_key"]})
            assert now["state"] == "done", now
            assert now["owner"].startswith(f"{after['worker']}:"), now["owner"]

        await env.cluster.start_worker(victim_name)  # a replacement
        await eventually(lambda: _equals(env.cluster.consumers(), 2), 30, "two plan consumers")


async def test_worker_stopped_hands_its_job_over_at_once(env: Env) -> None:
    """SIGTERM (a rolling update): the worker gives the job back, no lease to wait out."""
    async with asyncio.timeout(90):
        data = [("ID", frame) for frame in env.science] + [(CLIP, "3.35"), ("PHASE", "RUN")]
        job = await env.create(env.api2, data)
        assert await env.api1.wait_phase(job, ("EXECUTING",), 30) == "EXECUTING"
        await _until_steps_done(env, job, 1)
        name = env.worker_of(await env.doc(job))
        assert name is not None
        worker = env.cluster.workers[name]
        worker.kill(signal.SIGTERM)
        stopped = time.monotonic()
        assert await worker.wait_exit(20) == 0, worker.log()
        exited = time.monotonic() - stopped

        async def taken_over() -> bool:
            return env.worker_of(await env.doc(job)) not in (None, name)

        await eventually(taken_over, 20, "the job taken over", every=0.05)
        took = time.monotonic() - stopped
        # a lease left to expire would take 2/3 of it at least (renewed every third)
        assert took < LEASE_S * 2 / 3, f"taken over after {took:.1f} s"
        final = await env.api1.wait_final(job, 60)
        assert phase_of(final) == "COMPLETED", env.cluster.logs()
        print(f"{name} exited in {exited:.1f} s, its job taken over after {took:.1f} s")
        await env.cluster.start_worker(name)


async def test_broker_restart_loses_no_job(env: Env) -> None:
    if shutil.which("rabbitmqctl") is None:
        missing("rabbitmqctl not installed")
    async with asyncio.timeout(150):
        data = [("ID", frame) for frame in env.science] + [(CLIP, "3.4"), ("PHASE", "RUN")]
        running = await env.create(env.api1, data)
        assert await env.api1.wait_phase(running, ("EXECUTING",), 30) == "EXECUTING"
        try:
            await run_command("rabbitmqctl", "stop_app")
            outage = time.monotonic()
            assert (await env.doc(running))["phase"] == "EXECUTING"
            # the store is up: a job made now is accepted and waits in the outbox
            data = {"ID": env.science[3], CLIP: "3.5", "PHASE": "RUN"}
            late = await env.create(env.api2, data)
            answered = time.monotonic() - outage
            assert phase_of(await env.api1.job(late)) == "QUEUED"
            assert (await env.doc(late))["published"] is False
            await run_command("rabbitmqctl", "start_app")
            assert await wait_port(60), "RabbitMQ did not come back"
            print(f"outage {time.monotonic() - outage:.1f} s; POST answered in {answered:.1f} s")
        finally:
            await ensure_broker_running()
        for job, client in ((running, env.api2), (late, env.api1)):
            final = await client.wait_final(job, 90)
            assert phase_of(final) == "COMPLETED", (job, env.cluster.logs())
        assert (await env.doc(late))["published"] is True
        print(f"the running job was started {(await env.doc(running))['deliveries']} times")
        await eventually(lambda: _equals(env.cluster.consumers(), 2), 30, "two plan consumers")


async def test_api_killed_under_wait_client_recovers(env: Env) -> None:
    async with asyncio.timeout(120):
        data = [("ID", frame) for frame in env.science[:3]] + [(CLIP, "3.6"), ("PHASE", "RUN")]
        job = await env.create(env.api1, data)
        assert await env.api1.wait_phase(job, ("EXECUTING",), 30) == "EXECUTING"
        api1 = env.cluster.apis["api1"]
        waiting = asyncio.create_task(env.api1.job(job, "?WAIT=30"))
        await asyncio.sleep(0.5)
        assert not waiting.done(), "WAIT returned at once"
        api1.kill(signal.SIGKILL)
        assert await api1.wait_exit(10) == -signal.SIGKILL
        with pytest.raises(aiohttp.ClientError):
            await asyncio.wait_for(waiting, 10)

        # the client retries on the other API: the job went on, and completes
        final = await env.api2.wait_final(job, 90)
        assert phase_of(final) == "COMPLETED", env.cluster.logs()
        results = result_hrefs(final)
        assert "result" in results

        # API 1 back on its port: same job, same results; no job of this module lost
        await env.cluster.start_api("api1")
        again = await env.api1.job(job)
        assert phase_of(again) == "COMPLETED"
        assert result_hrefs(again).keys() == results.keys()
        for client in (env.api1, env.api2):
            status, listing = await client.get_bytes(f"{client.base}/soda/async")
            assert status == 200
            listed = {
                ref.get("id"): ref.findtext("uws:phase", namespaces=UWS)
                for ref in etree.fromstring(listing).iterfind("uws:jobref", UWS)
            }
            assert listed == env.created  # every job, in the phase it had to reach


# --------------------------------------------------------------------------- in-process


async def test_republished_orphan_is_taken_at_once(
    store: Store, demo_archive: Path, tmp_path: Path
) -> None:
    """The sweeper's mark on an orphaned job must not look like a live lease.

    It used to push ``lease_until`` one grace period (30 s) ahead: a worker with a
    shorter lease gave up on the job after three lease-long waits and acked the
    message, and the next mark did the same again, so the job never ran.
    """
    async with uws_service(store, demo_archive, tmp_path, worker=False) as svc:
        jobs = svc.runtime.service.jobs
        job_id = await svc.create({"ID": svc.complete_id, "PHASE": "RUN"})
        long_ago = utcnow() - timedelta(hours=1)
        assert await jobs.transition(
            job_id,
            Phase.EXECUTING,
            expect=[Phase.QUEUED],
            changes={"worker": "dead-worker", "lease_until": long_ago, "start_time": long_ago},
        )
        sweeper = Sweeper(svc.runtime.service, svc.runtime.products, cache_bytes=10**12)
        assert job_id in (await sweeper.sweep(collect=False)).republished
        assert (await sweeper.sweep(collect=False)).republished == []  # once per grace period
        worker = Worker(
            store,
            svc.runtime.queue,
            svc.runtime.events,
            executor=None,  # type: ignore[arg-type]  # take() runs nothing
            products=svc.runtime.products,
            archive_root=demo_archive,
            config=WorkerConfig(lease_s=2),
            worker_id="new-worker",
        )
        taken, busy_until = await worker.take(job_id)
        assert busy_until is None and taken is not None and taken.worker == "new-worker"
