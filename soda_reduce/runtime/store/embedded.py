"""The embedded store: SecantusDB run as a child process.

SecantusDB speaks the MongoDB wire protocol, so the service talks to it exactly
as to MongoDB. It is never imported: keeping it in its own process keeps its
licence (GPL-2.0) at arm's length, and a crash there is not a crash here. It
runs in ``--standalone`` mode, which sustains far more writes than its default
single-node replica-set mode (and has no change streams: nothing here needs them).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from soda_reduce.runtime.process import die_with_parent

EXECUTABLE = "secantusd-py"
LOG_TAIL_BYTES = 4000
START_ATTEMPTS = 3  # a picked port can be taken before the server binds it
READY_POLL_S = 0.02  # while starting, the port is tried this often


class EmbeddedMongoError(RuntimeError):
    """The embedded store could not be started."""


def find_executable(name: str = EXECUTABLE) -> str:
    """The server launcher next to this interpreter (the venv's bin) first, then on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise EmbeddedMongoError(
            f"{name} not found next to {sys.executable} nor on PATH; install 'secantusdb'"
        )
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EmbeddedMongo:
    """One SecantusDB server process storing its data in ``storage_path``.

    The log (``<storage_path>.log``) and an empty config file sit beside the
    storage directory: the config is passed explicitly so that no stray
    ``./secantusd.toml`` is auto-discovered from the working directory.
    """

    def __init__(
        self,
        storage_path: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        startup_timeout: float = 30.0,
        stop_timeout: float = 10.0,
        executable: str | None = None,
    ) -> None:
        self.storage_path = Path(storage_path).resolve()
        self.host = host
        self.port = port
        self._fixed_port = port is not None
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.executable = executable
        self.log_path = self.storage_path.with_name(self.storage_path.name + ".log")
        self.config_path = self.storage_path.with_name(self.storage_path.name + ".secantusd.toml")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise EmbeddedMongoError("the embedded store has not been started")
        return f"mongodb://{self.host}:{self.port}/?directConnection=true"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        """The server process (running or exited), None before start and after stop."""
        return self._process

    async def start(self) -> EmbeddedMongo:
        """Start the server and wait until it answers ``ping``."""
        if self.running:
            return self
        self.storage_path.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text("# empty on purpose: all settings are on the command line\n")
        fixed_port = self._fixed_port
        for attempt in range(1, START_ATTEMPTS + 1):
            if not fixed_port:
                self.port = free_port(self.host)
            self._spawn()
            try:
                await self._wait_ready()
                return self
            except EmbeddedMongoError:
                died = self._process is not None and self._process.poll() is not None
                await self.stop()
                if fixed_port or not died or attempt == START_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    async def restart(self) -> EmbeddedMongo:
        """Start again after the process exited, on the same port: clients keep their URL
        and their connection pools reconnect by themselves."""
        if self.running:
            return self
        if self.port is None:
            raise EmbeddedMongoError("the embedded store was never started")
        self._process = None
        fixed, self._fixed_port = self._fixed_port, True
        try:
            return await self.start()
        finally:
            self._fixed_port = fixed

    def _spawn(self) -> None:
        command = [
            self.executable or find_executable(),
            "--standalone",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--storage-path",
            str(self.storage_path),
            "--config",
            str(self.config_path),
        ]
        with open(self.log_path, "ab") as log:
            log.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(command)}\n".encode())
            log.flush()
            try:
                self._process = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.storage_path.parent,
                    preexec_fn=die_with_parent,
                )
            except OSError as exc:
                raise EmbeddedMongoError(f"cannot run {command[0]}: {exc}") from exc

    async def _wait_ready(self) -> None:
        """Until the server answers ``ping``: its port is polled first (every 20 ms), and
        a client made only once it accepts. A client made earlier, finding no server,
        would not look again for PyMongo's minimum heartbeat (0.5 s): that cost ~0.5 s
        of every start."""
        deadline = time.monotonic() + self.startup_timeout
        while True:  # bounded by the deadline
            assert self._process is not None
            code = self._process.poll()
            if code is not None:
                raise EmbeddedMongoError(
                    f"SecantusDB exited with code {code} while starting; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            if await self._accepts() and await self._pings():
                return
            if time.monotonic() > deadline:
                raise EmbeddedMongoError(
                    f"SecantusDB did not answer ping within {self.startup_timeout:.0f} s; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            await asyncio.sleep(READY_POLL_S)

    async def _accepts(self) -> bool:
        try:
            async with asyncio.timeout(0.5):
                _, writer = await asyncio.open_connection(self.host, self.port)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    async def _pings(self) -> bool:
        # imported here, once the server is spawned: the two start together (the store
        # keeper of command-line users imports this module first thing)
        from pymongo import AsyncMongoClient
        from pymongo.errors import PyMongoError

        client: AsyncMongoClient = AsyncMongoClient(
            self.url, serverSelectionTimeoutMS=2000, connectTimeoutMS=1000
        )
        try:
            await client.admin.command("ping")
            return True
        except PyMongoError:
            return False
        finally:
            await client.close()

    def log_tail(self, size: int = LOG_TAIL_BYTES) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(f.seek(0, os.SEEK_END) - size, 0))
                return f.read().decode("utf-8", "replace")
        except OSError as exc:
            return f"(no log: {exc})"

    async def stop(self) -> None:
        """SIGTERM, a bounded wait for a clean shutdown, then SIGKILL."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            await asyncio.to_thread(self._wake_accept, process)
            try:
                await asyncio.to_thread(process.wait, self.stop_timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await asyncio.to_thread(process.wait)

    def _wake_accept(self, process: subprocess.Popen[bytes]) -> None:
        """Connect once after SIGTERM: SecantusDB's accept thread, blocked in ``accept()``,
        does not notice its listening socket closing, and its shutdown waits 2 s for that
        thread unless a connection wakes it (a measured quirk, docs/store.md)."""
        if self.port is None:
            return
        for _ in range(10):  # bounded: until the socket is gone or the process ended
            time.sleep(0.05)  # first let its signal handler close the listening socket
            if process.poll() is not None:
                return
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    pass
            except OSError:
                return

    async def __aenter__(self) -> EmbeddedMongo:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
