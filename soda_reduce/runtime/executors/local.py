"""Run recipes as local subprocesses: one process group each, killed as a whole.

CPU time is measured per child with ``os.wait4`` (the run's own rusage), so
the benchmark can compare wall time with the CPU the recipes really used.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from soda_reduce.runtime.executors.base import StepOutcome, StepRun, recipe_argv
from soda_reduce.runtime.process import die_with_parent

KILL_GRACE_S = 5.0


class LocalExecutor:
    name = "local"

    def __init__(
        self,
        concurrency: int | None = None,
        python: str = sys.executable,
        env: dict[str, str] | None = None,
    ) -> None:
        self.concurrency = concurrency or os.cpu_count() or 1
        self.python = python
        self.env = {**os.environ, **(env or {})}
        self._slots = asyncio.Semaphore(self.concurrency)

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
        wall = time.monotonic() - started
        code = process.returncode
        if code == 0:
            return StepOutcome(True, 0, cpu_seconds=cpu, wall_seconds=wall)
        if code < 0:
            name = signal.Signals(-code).name
            error = f"the recipe was killed by {name}"
            # killed from outside (OOM killer, operator): worth another try
            return StepOutcome(
                False, code, error, transient=True, cpu_seconds=cpu, wall_seconds=wall
            )
        return StepOutcome(
            False, code, f"the recipe exited with code {code}", cpu_seconds=cpu, wall_seconds=wall
        )

    async def close(self) -> None:
        return None


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
