"""Supervision of the embedded store: a SecantusDB child that exits is started again.

`StoreSupervisor` waits for the child's exit (a pidfd: noticed at once, no polling),
marks the store down in `StoreHealth` (read by ``/availability`` and error messages),
and starts the server again on the same data directory and port, so the client's
connection pool simply reconnects. Restarts back off (the first at once, then doubling
up to a cap) while the store keeps dying soon after each start; after too many failed
starts in a row supervision gives up and says so (``StoreHealth.lost``): ``serve`` then
stops rather than answer 503 forever, leaving the restart to whatever runs it.

Jobs survive: they live in the store (written with ``j: true``, docs/store.md), and the
callbacks in ``StoreHealth.on_restart`` let the runtime republish what a dead store may
have stranded (embedded mode: QUEUED jobs, through the sweeper's outbox).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from soda_reduce.runtime.store.embedded import EmbeddedMongo, EmbeddedMongoError

log = logging.getLogger(__name__)

RestartHook = Callable[[], Awaitable[None]]
LOG_TAIL_BYTES = 600  # of SecantusDB's log, shown when it died: why, if it said


@dataclass
class StoreHealth:
    """What the service knows about its store between two calls.

    Written by the supervisor of an embedded store; a store nobody supervises (MongoDB)
    stays ``up`` here and its availability check pings it.
    """

    up: bool = True
    note: str = ""
    restarts: int = 0
    version: int = 0  # bumped at every change: an availability report cached before is stale
    down_since: float | None = None  # time.monotonic()
    pid: int | None = None  # the embedded server's process: killed if a shutdown overruns
    lost: asyncio.Event = field(default_factory=asyncio.Event)  # supervision gave up
    on_restart: list[RestartHook] = field(default_factory=list)

    def mark_down(self, note: str) -> None:
        self.up, self.note = False, note
        if self.down_since is None:
            self.down_since = time.monotonic()
        self.version += 1

    def mark_up(self, note: str = "") -> float:
        """Back up; returns how long it was down (seconds)."""
        down_s = time.monotonic() - self.down_since if self.down_since is not None else 0.0
        self.up, self.note, self.down_since = True, note, None
        self.version += 1
        return down_s

    def give_up(self, note: str) -> None:
        self.mark_down(note)
        self.lost.set()


@dataclass(frozen=True)
class Backoff:
    """Delays between restarts: at once, then ``first_s`` doubling up to ``max_s``.

    A store that ran ``stable_s`` before dying starts the count again; ``max_failures``
    consecutive deaths or failed starts end supervision.
    """

    first_s: float = 0.5
    max_s: float = 10.0
    stable_s: float = 60.0
    max_failures: int = 20  # ~3 minutes of a store that cannot start

    def delay(self, failures: int) -> float:
        """Seconds to wait before the restart following the ``failures``-th failure."""
        if failures <= 1:
            return 0.0
        return min(self.max_s, self.first_s * 2 ** (failures - 2))


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit code {code}"


async def wait_exit(server: EmbeddedMongo, poll_s: float = 0.5) -> int | None:
    """Wait until the server process exits; its return code (None if it was never started).

    A pidfd becomes readable when the process exits, so the exit is noticed at once;
    where pidfds are missing the process is polled every ``poll_s``.
    """
    process = server.process
    if process is None:
        return None
    try:
        pidfd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):
        pidfd = None
    if pidfd is None:
        while process.poll() is None:  # bounded by the process's life
            await asyncio.sleep(poll_s)
        return process.returncode
    loop = asyncio.get_running_loop()
    exited = loop.create_future()
    loop.add_reader(pidfd, lambda: exited.done() or exited.set_result(None))
    try:
        if process.poll() is None:
            await exited
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
    return process.wait()  # reaped: returns at once


class StoreSupervisor:
    """Keeps one `EmbeddedMongo` running until ``stop``; its state goes to ``health``."""

    def __init__(
        self, server: EmbeddedMongo, health: StoreHealth, backoff: Backoff | None = None
    ) -> None:
        self.server = server
        self.health = health
        self.backoff = backoff or Backoff()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start watching (the server must be running)."""
        self.health.pid = self.server.pid
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="store supervisor")

    async def stop(self) -> None:
        """Stop watching, then stop the server (in that order: its exit is no crash)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.server.stop()

    async def run(self) -> None:
        """Restart the server after each exit until cancelled or too many failures."""
        failures = 0
        started = time.monotonic()
        while True:  # one pass per death of the server; each pass is bounded
            code = await wait_exit(self.server)
            if time.monotonic() - started >= self.backoff.stable_s:
                failures = 0
            failures += 1
            why = describe_exit(code)
            self.health.mark_down(f"the embedded store stopped ({why}); restarting it")
            log.error(
                "the embedded store (SecantusDB) stopped: %s; the end of its log %s:\n%s",
                why,
                self.server.log_path,
                self.server.log_tail(LOG_TAIL_BYTES).rstrip(),
            )
            failures = await self._restart(failures)
            started = time.monotonic()
            self.health.pid = self.server.pid
            self.health.restarts += 1
            down_s = self.health.mark_up(f"restarted {self.health.restarts} times")
            log.warning(
                "the embedded store is back on port %s (restart %d, down %.1f s)",
                self.server.port,
                self.health.restarts,
                down_s,
            )
            for hook in tuple(self.health.on_restart):
                try:
                    await hook()
                except Exception:
                    log.exception("after the store's restart: %r failed", hook)

    async def _restart(self, failures: int) -> int:
        """Start the server again, backing off; returns the failures counted so far."""
        for _ in range(self.backoff.max_failures):
            if failures > self.backoff.max_failures:
                break
            delay = self.backoff.delay(failures)
            log.warning(
                "restarting the embedded store in %.1f s (failure %d of at most %d)",
                delay,
                failures,
                self.backoff.max_failures,
            )
            await asyncio.sleep(delay)
            try:
                await self.server.restart()
                return failures
            except (EmbeddedMongoError, OSError) as exc:  # first line: the log was shown above
                log.error("the embedded store did not start again: %s", str(exc).split("\n")[0])
                failures += 1
        note = f"the embedded store failed {failures - 1} times in a row; supervision gave up"
        self.health.give_up(note)
        raise EmbeddedMongoError(note)
