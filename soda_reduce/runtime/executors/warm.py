"""The parent side of warm recipe runners: one zygote per pipeline (see ``zygote.py``).

``LocalExecutor`` asks ``WarmRunners.spawn`` for a recipe process when the
pipeline declares a ``warm`` hook; it gets the child's pid (a process group
leader it can kill like a cold recipe) and a future of its wait status and CPU
seconds. A zygote that dies fails what it was running (transient: the runner
retries) and is started again on the next call.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from soda_reduce.runtime.process import die_with_parent

log = logging.getLogger(__name__)

READY_S = 300.0  # importing a pipeline's science stack, on a busy machine


class WarmRunnerError(Exception):
    """The zygote could not start or died; the recipe can run cold or be retried."""


@dataclass
class _Zygote:
    process: asyncio.subprocess.Process
    pids: dict[str, asyncio.Future[int]] = field(default_factory=dict)
    exits: dict[str, asyncio.Future[tuple[int, float]]] = field(default_factory=dict)
    reader: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        reading = self.reader is not None and not self.reader.done()
        return self.process.returncode is None and reading


class WarmRunners:
    def __init__(self, python: str = sys.executable, env: dict[str, str] | None = None) -> None:
        self.python = python
        self.env = env
        self._zygotes: dict[str, _Zygote] = {}
        self._starting: dict[str, asyncio.Lock] = {}
        self._ids = itertools.count(1)

    async def spawn(
        self, pipeline: str, argv: list[str], cwd: Path, log_path: Path
    ) -> tuple[int, asyncio.Future[tuple[int, float]]]:
        """Fork ``python -m soda_reduce.recipe ARGV`` from the pipeline's zygote."""
        zygote = await self._zygote(pipeline)
        request_id = str(next(self._ids))
        loop = asyncio.get_running_loop()
        pid_future: asyncio.Future[int] = loop.create_future()
        exit_future: asyncio.Future[tuple[int, float]] = loop.create_future()
        zygote.pids[request_id] = pid_future
        zygote.exits[request_id] = exit_future
        request = {"id": request_id, "argv": argv, "cwd": str(cwd), "log": str(log_path)}
        assert zygote.process.stdin is not None
        try:
            zygote.process.stdin.write((json.dumps(request) + "\n").encode())
            await zygote.process.stdin.drain()
            pid = await asyncio.wait_for(asyncio.shield(pid_future), timeout=60)
        except (OSError, TimeoutError, WarmRunnerError) as exc:
            zygote.pids.pop(request_id, None)
            zygote.exits.pop(request_id, None)
            message = f"the {pipeline} warm runner did not start the recipe: {exc}"
            raise WarmRunnerError(message) from None
        return pid, exit_future

    async def _zygote(self, pipeline: str) -> _Zygote:
        lock = self._starting.setdefault(pipeline, asyncio.Lock())
        async with lock:
            found = self._zygotes.get(pipeline)
            if found is not None and found.alive:
                return found
            if found is not None:
                await self._stop(found)
            zygote = await self._start(pipeline)
            self._zygotes[pipeline] = zygote
            return zygote

    async def _start(self, pipeline: str) -> _Zygote:
        argv = [self.python, "-m", "soda_reduce.runtime.executors.zygote", pipeline]
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=None,  # the zygote's own messages join the service's log
            env=self.env,
            preexec_fn=die_with_parent,
        )
        zygote = _Zygote(process)
        assert process.stdout is not None
        try:
            line = await asyncio.wait_for(process.stdout.readline(), timeout=READY_S)
            ready = json.loads(line) if line else {}
        except (TimeoutError, ValueError) as exc:
            ready = {"error": str(exc)}
        if not ready.get("ready"):
            await self._stop(zygote)
            raise WarmRunnerError(f"the {pipeline} warm runner did not start ({ready})")
        zygote.reader = asyncio.create_task(self._read(pipeline, zygote))
        log.info("warm runner for %s ready (pid %s)", pipeline, process.pid)
        return zygote

    async def _read(self, pipeline: str, zygote: _Zygote) -> None:
        assert zygote.process.stdout is not None
        try:
            while True:
                line = await zygote.process.stdout.readline()
                if not line:
                    break
                message = json.loads(line)
                request_id = str(message.get("id"))
                if "status" in message:
                    future = zygote.exits.pop(request_id, None)
                    if future is not None and not future.done():
                        future.set_result((int(message["status"]), float(message["cpu"])))
                elif "pid" in message:
                    started = zygote.pids.pop(request_id, None)
                    if started is not None and not started.done():
                        started.set_result(int(message["pid"]))
        finally:
            error = WarmRunnerError(f"the {pipeline} warm runner ended")
            for waiting in (*zygote.pids.values(), *zygote.exits.values()):
                if not waiting.done():
                    waiting.set_exception(error)
            zygote.pids.clear()
            zygote.exits.clear()

    async def _stop(self, zygote: _Zygote) -> None:
        process = zygote.process
        if process.stdin is not None and not process.stdin.is_closing():
            process.stdin.close()  # end of input: the zygote finishes its children and exits
        if process.returncode is None:
            try:
                await asyncio.wait_for(process.wait(), timeout=10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if zygote.reader is not None:
            zygote.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await zygote.reader

    async def close(self) -> None:
        zygotes, self._zygotes = list(self._zygotes.values()), {}
        for zygote in zygotes:
            await self._stop(zygote)


def exit_code(status: int) -> int:
    return os.waitstatus_to_exitcode(status)
