"""The store keeper: the embedded store of command-line users, kept up between commands.

``python -m soda_reduce.runtime.store.keeper DATA_DIR --linger S`` is started, detached,
by the first command that finds no store running (`sharing.attach`). It starts SecantusDB
(its child: the server dies with it), publishes it in ``DATA_DIR/store.json``, and stops
it once no command has held the users lock for ``S`` seconds (0: as soon as the last one
is gone), so a command run right after another finds the store up instead of paying its
start (~0.4 s) again. It also stops at once on SIGTERM, when its server dies, or when its
record is gone (its data directory was removed); SIGUSR1 (``serve`` taking the store
over) makes it stop as soon as its users are done, whatever the linger.

Its output goes to ``DATA_DIR/keeper.log``; one line per event.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from soda_reduce.runtime.store.sharing import (
    KEEPER,
    USERS_LOCK,
    FileLock,
    StoreRecord,
    read_record,
    remove_record,
    write_record,
)

if TYPE_CHECKING:
    from soda_reduce.runtime.store.embedded import EmbeddedMongo

POLL_S = 0.1  # how often the keeper looks for users (a look costs two system calls)
STOP_S = 5.0  # the server's clean shutdown (~0.14 s measured) before SIGKILL


def say(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} keeper {os.getpid()}: {message}", flush=True)


class Keeper:
    def __init__(self, data_dir: Path, linger_s: float) -> None:
        self.data_dir = data_dir
        self.linger_s = max(0.0, linger_s)
        self.draining = False
        self.stop_now = False
        self.wake = asyncio.Event()

    def _drain(self) -> None:
        self.draining = True
        self.wake.set()

    def _terminate(self) -> None:
        self.stop_now = True
        self.wake.set()

    async def run(self) -> int:
        # imported here, and pymongo only once the server is spawned: both start together
        from soda_reduce.runtime.store.embedded import EmbeddedMongo, EmbeddedMongoError

        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._terminate)
        loop.add_signal_handler(signal.SIGINT, self._terminate)
        loop.add_signal_handler(signal.SIGUSR1, self._drain)
        server = EmbeddedMongo(self.data_dir / "mongo", stop_timeout=STOP_S)
        try:
            await server.start()
        except (EmbeddedMongoError, OSError) as exc:
            say(f"the store did not start: {exc}")
            print(f"error: {str(exc).splitlines()[0]}", flush=True)
            return 1
        assert server.port is not None
        record = StoreRecord.mine(KEEPER, server.port, server.host, linger_s=self.linger_s)
        write_record(self.data_dir, record)
        say(f"store up on port {server.port} (server pid {server.pid}), linger {self.linger_s:g} s")
        users = FileLock(self.data_dir / USERS_LOCK)
        try:
            why = await self._until_idle(server, users, record)
            say(f"stopping: {why}")
        finally:
            remove_record(self.data_dir, os.getpid())  # first: nobody attaches to a dying store
            await server.stop()
            say("stopped")
        return 0

    async def _until_idle(self, server: EmbeddedMongo, users: FileLock, record: StoreRecord) -> str:
        """Why to stop, once it is time; the users lock is then held (exclusively)."""
        idle_since: float | None = None
        expected = record
        while True:  # ends on a signal, a dead server, a lost record, or the linger's end
            if self.stop_now:
                return "SIGTERM"
            if not server.running:
                return f"the server exited (see {self.data_dir / 'mongo.log'})"
            if read_record(self.data_dir) != expected:
                return "its record was removed or replaced"
            if self.draining and not expected.draining:  # newcomers go elsewhere from now on
                expected = dataclasses.replace(expected, draining=True)
                write_record(self.data_dir, expected)
                say("asked to stop when idle (a service takes the store over)")
            if users.try_acquire(shared=False):
                now = time.monotonic()
                idle_since = now if idle_since is None else idle_since
                if self.draining or now - idle_since >= self.linger_s:
                    return "no user left" if self.draining else f"no user for {self.linger_s:g} s"
                users.release()
            else:
                idle_since = None
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), POLL_S)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="soda-reduce-store-keeper", description=__doc__)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--linger", type=float, default=120.0, help="seconds idle before stopping")
    args = parser.parse_args(argv)
    return asyncio.run(Keeper(args.data_dir.resolve(), args.linger).run())


if __name__ == "__main__":
    sys.exit(main())
