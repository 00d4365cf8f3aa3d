"""Warm recipe runners: recipes forked from a process that imported their pipeline once.

Through the real LocalExecutor and a real zygote of the ``ccd`` pipeline (its
``warm`` hook imports the ccd recipe modules): a recipe forked from it honours
the whole contract, in its own process group; failures, kills and timeouts look
exactly as they do for a recipe in a fresh interpreter; a zygote killed under a
running recipe fails that attempt as transient and is started again; with
``warm=False`` nothing is forked.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import pytest

from soda_reduce.runtime.executors.base import StepResources, StepRun
from soda_reduce.runtime.executors.local import LocalExecutor


def step(tmp_path: Path, name: str, params: dict, timeout_s: float = 60.0) -> StepRun:
    workdir = tmp_path / name
    (workdir / "out").mkdir(parents=True)
    (workdir / "inputs.json").write_text(json.dumps({"recipe": "core.noop", "inputs": []}))
    (workdir / "params.json").write_text(json.dumps(params))
    return StepRun(
        step_key="0" * 64,
        job_id=f"noop-{name}",
        pipeline="ccd",
        recipe="core.noop",
        workdir=workdir,
        log_path=workdir / "recipe.log",
        resources=StepResources(timeout_s=timeout_s),
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def _started(run: StepRun) -> None:
    """Until the recipe says it is sleeping (bounded: 20 s)."""
    for _ in range(400):
        await asyncio.sleep(0.05)
        if "sleeping" in (run.log_path.read_text() if run.log_path.exists() else ""):
            return
    pytest.fail("the recipe never started")


def _zygote_pid(executor: LocalExecutor) -> int:
    assert executor._warm is not None
    return executor._warm._zygotes["ccd"].process.pid


async def test_a_forked_recipe_honours_the_contract(tmp_path: Path) -> None:
    executor = LocalExecutor(concurrency=2, warm=True)
    try:
        first = await executor.run(step(tmp_path, "a", {}))
        zygote = _zygote_pid(executor)
        second = await executor.run(step(tmp_path, "b", {}))
        assert first.ok and second.ok, (first, second)
        assert _zygote_pid(executor) == zygote  # one warm runner served both
        for name in ("a", "b"):
            out = tmp_path / name / "out"
            manifest = json.loads((out / "products.json").read_text())
            assert manifest["recipe"] == "core.noop" and manifest["products"][0]["main"]
            log = (tmp_path / name / "recipe.log").read_text()
            assert "forked from the ccd warm runner" in log and "core.noop v1" in log
        failed = await executor.run(step(tmp_path, "c", {"fail": "failure"}))
        assert not failed.ok and failed.exit_code == 1 and not failed.transient
        killed = await executor.run(step(tmp_path, "d", {"fail": "kill"}))
        assert not killed.ok and killed.transient and "SIGKILL" in (killed.error or "")
    finally:
        await executor.close()
    assert not _alive(zygote)


async def test_timeout_kills_the_forked_recipe(tmp_path: Path) -> None:
    executor = LocalExecutor(concurrency=1, warm=True)
    try:
        await executor.run(step(tmp_path, "warm", {}))  # the zygote is up
        outcome = await executor.run(step(tmp_path, "slow", {"sleep_s": 60}, timeout_s=1.0))
        assert not outcome.ok and "timed out after 1 s" in (outcome.error or "")
        # the zygote reaped it: another recipe runs at once
        assert (await executor.run(step(tmp_path, "after", {}))).ok
    finally:
        await executor.close()


async def test_cancelled_step_kills_the_forked_recipe(tmp_path: Path) -> None:
    executor = LocalExecutor(concurrency=1, warm=True)
    try:
        run = step(tmp_path, "slow", {"sleep_s": 60})
        task = asyncio.create_task(executor.run(run))
        await _started(run)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await executor.run(step(tmp_path, "next", {}))).ok
    finally:
        await executor.close()


async def test_a_dead_warm_runner_fails_the_attempt_and_is_replaced(tmp_path: Path) -> None:
    executor = LocalExecutor(concurrency=1, warm=True)
    try:
        await executor.run(step(tmp_path, "warm", {}))
        zygote = _zygote_pid(executor)
        run = step(tmp_path, "victim", {"sleep_s": 60})
        task = asyncio.create_task(executor.run(run))
        await _started(run)
        os.kill(zygote, signal.SIGKILL)
        outcome = await asyncio.wait_for(task, timeout=30)
        assert not outcome.ok and outcome.transient and "warm runner" in (outcome.error or "")
        again = await executor.run(step(tmp_path, "again", {}))
        assert again.ok and _zygote_pid(executor) != zygote
    finally:
        await executor.close()


async def test_warm_off_runs_a_fresh_interpreter(tmp_path: Path) -> None:
    executor = LocalExecutor(concurrency=1, warm=False)
    try:
        run = step(tmp_path, "cold", {})
        assert (await executor.run(run)).ok
        assert "warm runner" not in run.log_path.read_text()
        assert executor._warm is None
    finally:
        await executor.close()
