"""Run recipes as local subprocesses: one process group each, killed as a whole.

CPU time is measured per child with ``os.wait4`` (the run's own rusage), so
the benchmark can compare wall time with the CPU the recipes really used.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from soda_reduce.runtime.executors.base import StepOutcome, StepRun, recipe_argv
from soda_reduce.runtime.executors.warm import WarmRunnerError, WarmRunners
from soda_reduce.runtime.process import die_with_parent

KILL_GRACE_S = 5.0

log = logging.getLogger(__name__)


class LocalExecutor:
    name = "local"

    def __init__(
        self,
        concurrency: int | None = None,
        python: str = sys.executable,
        env: dict[str, str] | None = None,
        warm: bool | None = None,
    ) -> None:
        self.concurrency = concurrency or os.cpu_count() or 1
        self.python = python
        self.env = {**os.environ, **(env or {})}
        self._slots = asyncio.Semaphore(self.concurrency)
        if warm is None:  # SODA_REDUCE_WARM=0 runs every recipe in a fresh interpreter
            warm = self.env.get("SODA_REDUCE_WARM", "1").lower() not in ("0", "false", "no")
        self._warm = WarmRunners(python, self.env) if warm else None

    def container_path(self, host_path: Path) -> str:
        return str(host_path)

    def recipe_command(self, run: StepRun) -> list[str]:
        return recipe_argv(
            self.python,
            run.recipe,
            str(run.workdir / "inputs.json"),
            str(run.workdir / "params.json"),
            str(run.workdir / "out"),
        )

    async def run(self, run: StepRun) -> StepOutcome:
        asked = time.monotonic()
        async with self._slots:
            queued = time.monotonic() - asked
            outcome = await self._run(run)
        return dataclasses.replace(outcome, queued_seconds=queued)

    async def _run(self, run: StepRun) -> StepOutcome:
        entry = self.recipe_command(run)[1:3] == ["-m", "soda_reduce.recipe"]
        if self._warm is not None and entry and has_warm_hook(run.pipeline):
            try:
                return await self._run_warm(self._warm, run)
            except WarmRunnerError as exc:  # not started: run it cold, as it always could
                log.warning("%s; running %s in a fresh interpreter", exc, run.recipe)
        return await self._run_cold(run)

    async def _run_warm(self, warm: WarmRunners, run: StepRun) -> StepOutcome:
        """Forked from the pipeline's warm runner: the same recipe, without the imports."""
        argv = self.recipe_command(run)
        with open(run.log_path, "ab") as log_file:
            note = f"(forked from the {run.pipeline} warm runner)"
            log_file.write(f"$ {' '.join(argv)}  {note}\n".encode())
        started = time.monotonic()
        pid, done = await warm.spawn(run.pipeline, argv[3:], run.workdir, run.log_path)
        try:
            status, cpu = await asyncio.wait_for(
                asyncio.shield(done), timeout=run.resources.timeout_s
            )
        except TimeoutError:
            await _kill_group(pid, done)
            return StepOutcome(
                False,
                error=f"timed out after {run.resources.timeout_s:g} s and was killed",
                wall_seconds=time.monotonic() - started,
            )
        except asyncio.CancelledError:
            await _kill_group(pid, done)
            raise
        except WarmRunnerError as exc:  # the warm runner died under the recipe: try again
            wall = time.monotonic() - started
            return StepOutcome(False, error=str(exc), transient=True, wall_seconds=wall)
        return _outcome(os.waitstatus_to_exitcode(status), cpu, time.monotonic() - started)

    async def _run_cold(self, run: StepRun) -> StepOutcome:
        argv = self.recipe_command(run)
        started = time.monotonic()
        with open(run.log_path, "ab") as log:
            log.write(f"$ {' '.join(argv)}\n".encode())
            log.flush()
            try:
                process = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=run.workdir,
                    env=self.env,
                    start_new_session=True,  # its own process group: kill it whole
                    preexec_fn=die_with_parent,
                )
            except OSError as exc:
                return StepOutcome(False, error=f"cannot start the recipe: {exc}")
        waiter = asyncio.ensure_future(asyncio.to_thread(os.wait4, process.pid, 0))
        try:
            _, status, usage = await asyncio.wait_for(
                asyncio.shield(waiter), timeout=run.resources.timeout_s
            )
        except TimeoutError:
            await _kill_group(process.pid, waiter)
            return StepOutcome(
                False,
                error=f"timed out after {run.resources.timeout_s:g} s and was killed",
                wall_seconds=time.monotonic() - started,
            )
        except asyncio.CancelledError:
            await _kill_group(process.pid, waiter)
            raise
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4
        cpu = usage.ru_utime + usage.ru_stime
        return _outcome(process.returncode, cpu, time.monotonic() - started)

    async def close(self) -> None:
        if self._warm is not None:
            await self._warm.close()


def _outcome(code: int, cpu: float, wall: float) -> StepOutcome:
    if code == 0:
        return StepOutcome(True, 0, cpu_seconds=cpu, wall_seconds=wall)
    if code < 0:
        name = signal.Signals(-code).name
        error = f"the recipe was killed by {name}"
        # killed from outside (OOM killer, operator): worth another try
        return StepOutcome(False, code, error, transient=True, cpu_seconds=cpu, wall_seconds=wall)
    return StepOutcome(
        False, code, f"the recipe exited with code {code}", cpu_seconds=cpu, wall_seconds=wall
    )


def has_warm_hook(pipeline: str) -> bool:
    """Whether the pipeline names heavy imports worth doing once (``Pipeline.warm``)."""
    from soda_reduce.pipelines import PipelineError, registry

    try:
        return bool(registry().get(pipeline).warm)
    except (KeyError, PipelineError):
        return False


async def _kill_group(pid: int, waiter: asyncio.Future) -> None:
    """SIGTERM the process group, then SIGKILL after a grace period; reap the child."""
    for sig, grace in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, KILL_GRACE_S)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout=grace)
            return
        except TimeoutError:
            continue
        except WarmRunnerError:  # its warm runner is gone, and the child with it
            return
