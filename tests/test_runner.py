"""The plan runner with real processes, a real store and the shared step cache."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from soda_reduce.pipelines import get_cascade
from soda_reduce.reduction.index_model import RawFile, raw_file_id
from soda_reduce.reduction.planner import plan_reduction
from soda_reduce.runtime.products import ProductStore
from soda_reduce.runtime.runner import PlanRunner, RunnerConfig
from tests.support.fakes import FakeRecipeExecutor

ROOT = Path(__file__).resolve().parents[1]


def frame(name: str, **header: object) -> RawFile:
    header.setdefault("INSTRUME", "CAM")
    return RawFile(raw_file_id(name), name, header, checksum="sha-" + name)


def archive_files(nights: int = 2) -> list[RawFile]:
    files = []
    for n in range(nights):
        night = f"2024-01-0{5 + n}"
        for i in range(3):
            files.append(
                frame(f"{night}/b{i}.fits", IMAGETYP="BIAS", **{"DATE-OBS": f"{night}T18:0{i}"})
            )
            files.append(
                frame(
                    f"{night}/d{i}.fits",
                    IMAGETYP="DARK",
                    EXPTIME=300.0,
                    **{"DATE-OBS": f"{night}T17:0{i}"},
                )
            )
            files.append(
                frame(
                    f"{night}/f{i}.fits",
                    IMAGETYP="FLAT",
                    FILTER="V",
                    **{"DATE-OBS": f"{night}T19:0{i}"},
                )
            )
        for i in range(2):
            files.append(
                frame(
                    f"{night}/s{i}.fits",
                    IMAGETYP="OBJECT",
                    FILTER="V",
                    OBJECT="M67",
                    **{"DATE-OBS": f"{night}T23:0{i}"},
                )
            )
    return files


PLAN = plan_reduction(get_cascade("ccd"), archive_files(), target="science")
STEPS = len(PLAN.runnable_jobs())  # 2 bias, 2 dark, 2 flat, 4 science


@pytest.fixture
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "ledger.txt"
    path.touch()
    monkeypatch.setenv("FAKE_LEDGER", str(path))
    monkeypatch.setenv("FAKE_STATE", str(tmp_path))
    return path


def finished(ledger: Path) -> Counter[str]:
    return Counter(
        line.split()[1] for line in ledger.read_text().splitlines() if line.startswith("finish")
    )


def runner(store, tmp_path: Path, **config) -> PlanRunner:
    events: list[dict] = []
    made = PlanRunner(
        store,
        FakeRecipeExecutor(concurrency=2),
        ProductStore(tmp_path / "products"),
        tmp_path / "archive",
        config=RunnerConfig(**{"lease_s": 5.0, "poll_s": 0.05, "backoff_s": 0.05, **config}),
        on_event=events.append,
    )
    made.events = events  # type: ignore[attr-defined]
    return made


async def test_plan_runs_then_is_all_cache_hits(store, tmp_path: Path, ledger: Path) -> None:
    first = await runner(store, tmp_path).run(PLAN)
    assert first.ok and first.count("done") == STEPS
    assert set(finished(ledger).values()) == {1} and len(finished(ledger)) == STEPS
    products = ProductStore(tmp_path / "products")
    for job in PLAN.runnable_jobs():
        assert products.product_path(job.step_key, job.products).is_file()
        assert (products.step_dir(job.step_key) / "recipe.log").is_file()
    assert not any((tmp_path / "products" / "scratch").iterdir())  # scratch cleaned
    again = runner(store, tmp_path)
    second = await again.run(PLAN)
    assert second.ok and second.count("cached") == STEPS
    assert len(ledger.read_text().splitlines()) == 2 * STEPS  # nothing ran again
    progress = [e for e in again.events if e["type"] == "progress"]
    assert progress[-1]["done"] == STEPS == progress[-1]["total"]
    docs = await store.steps.find({}).to_list(None)
    assert {d["state"] for d in docs} == {"done"} and len(docs) == STEPS


async def test_upstream_products_reach_downstream_steps(
    store, tmp_path: Path, ledger: Path
) -> None:
    await runner(store, tmp_path).run(PLAN)
    products = ProductStore(tmp_path / "products")
    science = next(j for j in PLAN.runnable_jobs() if j.task == "science")
    seen = json.loads((products.step_dir(science.step_key) / "inputs-seen.json").read_text())
    by_category = {i["category"]: i for i in seen["inputs"]}
    assert set(by_category) == {"SCIENCE", "MASTER_BIAS", "MASTER_DARK", "MASTER_FLAT"}
    assert by_category["SCIENCE"]["path"] == str(tmp_path / "archive" / "2024-01-05/s0.fits")
    assert by_category["SCIENCE"]["checksum"] == "sha-2024-01-05/s0.fits"
    flat = PLAN.job(next(i.job for i in science.inputs if i.category == "MASTER_FLAT"))
    assert by_category["MASTER_FLAT"]["step_key"] == flat.step_key
    assert by_category["MASTER_FLAT"]["path"] == str(
        products.product_path(flat.step_key, "MASTER_FLAT")
    )


async def test_changed_parameter_reruns_only_downstream(
    store, tmp_path: Path, ledger: Path
) -> None:
    await runner(store, tmp_path).run(PLAN)
    changed = plan_reduction(
        get_cascade("ccd"), archive_files(), target="science", parameters={"flat.sigma_clip": "4"}
    )
    outcome = await runner(store, tmp_path).run(changed)
    computed = Counter(o.task for o in outcome.jobs.values() if o.status == "done")
    reused = Counter(o.task for o in outcome.jobs.values() if o.status == "cached")
    assert computed == {"flat": 2, "science": 4}
    assert reused == {"bias": 2, "dark": 2}


async def test_two_runners_compute_each_step_once(store, tmp_path: Path, ledger: Path) -> None:
    first, second = runner(store, tmp_path), runner(store, tmp_path)
    os.environ["FAKE_SLEEP"] = "0.3"
    try:
        a, b = await asyncio.gather(first.run(PLAN), second.run(PLAN))
    finally:
        del os.environ["FAKE_SLEEP"]
    assert a.ok and b.ok
    counts = finished(ledger)
    assert len(counts) == STEPS and set(counts.values()) == {1}
    assert a.count("done") + b.count("done") == STEPS


async def test_transient_failures_are_retried(store, tmp_path: Path, ledger, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_FAIL_BIAS", "crash-once")
    made = runner(store, tmp_path)
    outcome = await made.run(PLAN)
    assert outcome.ok
    bias = [o for o in outcome.jobs.values() if o.task == "bias"]
    assert all(o.attempts == 2 for o in bias)
    assert any(e["type"] == "retry" for e in made.events)


async def test_one_attempt_only_and_failures_skip_downstream(
    store, tmp_path: Path, ledger, monkeypatch
) -> None:
    monkeypatch.setenv("FAKE_FAIL_FLAT", "crash")
    outcome = await runner(store, tmp_path, max_attempts=1).run(PLAN)
    assert not outcome.ok
    flats = [o for o in outcome.jobs.values() if o.task == "flat"]
    assert all(o.status == "failed" and o.attempts == 1 for o in flats)
    assert "killed by SIGKILL" in flats[0].error
    science = [o for o in outcome.jobs.values() if o.task == "science"]
    assert all(o.status == "skipped" and "upstream failed" in o.error for o in science)
    assert all(o.status == "done" for o in outcome.jobs.values() if o.task in ("bias", "dark"))
    doc = await store.steps.find_one({"step_key": flats[0].step_key})
    assert doc["state"] == "failed" and "SIGKILL" in doc["error"]


async def test_processing_failure_is_not_retried(store, tmp_path, ledger, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_FAIL_DARK", "exit")
    outcome = await runner(store, tmp_path).run(PLAN)
    darks = [o for o in outcome.jobs.values() if o.task == "dark"]
    assert all(o.status == "failed" and o.attempts == 1 for o in darks)
    assert "exited with code 1" in darks[0].error


def await_docs(url: str, database: str, query: dict) -> list[dict]:
    """Read step documents from a synchronous test."""
    from pymongo import MongoClient

    client = MongoClient(url)
    try:
        return list(client[database].steps.find(query))
    finally:
        client.close()


def _running_pids(ledger: Path) -> list[int]:
    started = {}
    for line in ledger.read_text().splitlines():
        parts = line.split()
        if parts[0] == "start":
            started[parts[1]] = int(parts[2])
    done = finished(ledger)
    return [pid for key, pid in started.items() if key not in done]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


async def test_cancellation_kills_running_steps(store, tmp_path, ledger, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_SLEEP", "30")
    task = asyncio.create_task(runner(store, tmp_path).run(PLAN))
    for _ in range(200):
        await asyncio.sleep(0.05)
        if _running_pids(ledger):
            break
    pids = _running_pids(ledger)
    assert pids
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not any(_alive(pid) for pid in pids)
    docs = await store.steps.find({}).to_list(None)
    states = [(d["state"], d.get("task")) for d in docs]
    assert docs and all(d["state"] == "pending" for d in docs), states  # released for others


async def test_step_timeout_kills_the_recipe(store, tmp_path, ledger, monkeypatch) -> None:
    import dataclasses

    monkeypatch.setenv("FAKE_SLEEP", "30")
    bias = next(j for j in PLAN.runnable_jobs() if j.task == "bias")
    quick = dataclasses.replace(bias, resources={**bias.resources, "timeout_s": 0.5})
    plan = dataclasses.replace(PLAN, jobs=(quick,), datasets=())
    plan = dataclasses.replace(
        plan, datasets=(dataclasses.replace(PLAN.datasets[0], jobs=(quick.job_id,)),)
    )
    started = time.monotonic()
    outcome = await runner(store, tmp_path).run(plan)
    assert time.monotonic() - started < 10
    (result,) = outcome.jobs.values()
    assert result.status == "failed" and "timed out after 0.5 s" in result.error
    assert not any(_alive(pid) for pid in _running_pids(ledger))


def test_runner_killed_mid_plan_resumes_without_rerunning(
    mongo, store, tmp_path: Path, ledger: Path
) -> None:
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(PLAN.to_json())
    argv = [
        sys.executable,
        "-m",
        "tests.support.runner_process",
        mongo.url,
        store.db.name,
        str(plan_path),
        str(tmp_path / "products"),
        str(tmp_path / "archive"),
        "1.5",
    ]
    env = {**os.environ, "FAKE_SLEEP": "0.4"}
    first = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(finished(ledger)) < 3:
        time.sleep(0.05)
    assert len(finished(ledger)) >= 3, "the first runner did not get going"
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    # finished = recorded done in the step cache (a recipe may end just after the kill)
    done_before = {d["step_key"] for d in await_docs(mongo.url, store.db.name, {"state": "done"})}
    assert 0 < len(done_before) < STEPS
    starts_before = len(ledger.read_text().splitlines())
    second = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stdout + second.stderr
    assert len(finished(ledger)) == STEPS
    restarted = [line.split()[1] for line in ledger.read_text().splitlines()[starts_before:]]
    assert not done_before & set(restarted), "a finished step was computed again"
    result = json.loads(second.stdout.strip().splitlines()[-1])["result"]
    assert all(
        result[j.job_id] == "cached" for j in PLAN.runnable_jobs() if j.step_key in done_before
    )
