"""One embedded store per data directory, shared by every command that uses it.

SecantusDB keeps a lock on its storage (WiredTiger's), so two servers on one data
directory cannot both run: the second one's start failed with "Device or resource busy".
Instead, whoever starts the store of a data directory publishes it in a small record,
``DATA_DIR/store.json`` (owner, pid, port), written atomically and removed when the
store stops; a command that finds a live one connects to it.

- ``serve``, ``api`` and ``worker`` own their store (`take_ownership`): they start and
  supervise it themselves. A second one on the same data directory is refused; a store
  a keeper holds for command-line users is asked to stop once idle, then taken over.
- The other commands attach (`attach`): to the live store if there is one, otherwise to
  a *keeper* they start (`runtime/store/keeper.py`), a small detached process that owns
  the server and stops it once no command has used it for ``SODA_REDUCE_STORE_LINGER_S``.

Presence is a shared ``flock`` on ``store.users.lock`` held by every attached command
for its lifetime (the kernel releases it when a process dies, however it dies). The
keeper takes it exclusively, without blocking, to see that nobody is there, and keeps
it through its shutdown, so no newcomer connects to a dying store. ``store.start.lock``
(exclusive) is held by whoever is starting a store until its record is written, so two
commands never start two servers. Lock order: users, then start.

Only the standard library here: a command starts the keeper before its heavy imports.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

RECORD = "store.json"
USERS_LOCK = "store.users.lock"
START_LOCK = "store.start.lock"
KEEPER_LOG = "keeper.log"
KEEPER_LOG_MAX_BYTES = 1024**2  # rotated (once, to keeper.log.1) beyond this
RECORD_MAX_BYTES = 4096
ATTACH_S = 30.0  # a command waits at most this for a store: a stopping one, a starting one
TAKE_OVER_S = 15.0  # serve waits this long for a keeper's users to finish
POLL_S = 0.01
KEEPER = "keeper"
VERSION = 1


class StoreOpenError(RuntimeError):
    """The store cannot be opened; the message is one line, for the user."""


class StoreInUse(StoreOpenError):
    """Another long-running command owns this data directory's store."""


class StoreStartFailed(StoreOpenError):
    """The keeper did not bring a store up."""


def process_start(pid: int) -> tuple[int, str] | None:
    """(start time in clock ticks since boot, state) of a process, from ``/proc``; None
    where there is no ``/proc`` entry. The start time tells a reused pid from its owner."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # the command name may hold spaces
    try:
        return int(fields[19]), fields[0]
    except (IndexError, ValueError):
        return None


def process_alive(pid: int, start: int | None = None) -> bool:
    """Whether ``pid`` runs (not a zombie) and is the process that started at ``start``."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's: it exists
    found = process_start(pid)
    if found is None:
        return not Path("/proc").is_dir()  # no /proc: trust kill(0)
    started, state = found
    return state not in ("Z", "X") and (start is None or started == start)


@dataclass(frozen=True)
class StoreRecord:
    """``store.json``: who runs the store of a data directory, and where it listens."""

    owner: str  # keeper | serve | api | worker
    pid: int
    port: int
    host: str = "127.0.0.1"
    pid_start: int | None = None
    started: float = 0.0  # unix time
    draining: bool = False  # a keeper asked to stop: attach elsewhere (serve is taking over)
    linger_s: float | None = None  # keepers only
    version: int = VERSION

    @classmethod
    def mine(cls, owner: str, port: int, host: str = "127.0.0.1", **extra: object) -> StoreRecord:
        found = process_start(os.getpid())
        start = found[0] if found else None
        return cls(owner, os.getpid(), port, host, start, time.time(), **extra)  # type: ignore[arg-type]

    @property
    def url(self) -> str:
        return f"mongodb://{self.host}:{self.port}/?directConnection=true"

    def alive(self) -> bool:
        return process_alive(self.pid, self.pid_start)

    def describe(self) -> str:
        if self.owner == KEEPER:
            return f"the store keeper of soda-reduce commands (pid {self.pid})"
        return f"soda-reduce {self.owner} (pid {self.pid})"


def read_record(data_dir: Path) -> StoreRecord | None:
    """The record, or None when there is none or it is unreadable (treated as stale)."""
    try:
        with open(Path(data_dir) / RECORD, "rb") as f:
            doc = json.loads(f.read(RECORD_MAX_BYTES))
        record = StoreRecord(**{k: doc[k] for k in StoreRecord.__dataclass_fields__ if k in doc})
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(record.pid, int) or not isinstance(record.port, int):
        return None
    return record


def write_record(data_dir: Path, record: StoreRecord) -> None:
    """Atomically: a reader sees the old record or the new one, never half of one."""
    path = Path(data_dir) / RECORD
    temporary = path.with_name(f".{RECORD}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(record), f)
    os.replace(temporary, path)


def remove_record(data_dir: Path, pid: int) -> None:
    """Remove the record if it is ``pid``'s (never another process's)."""
    record = read_record(data_dir)
    if record is not None and record.pid == pid:
        with contextlib.suppress(FileNotFoundError):
            (Path(data_dir) / RECORD).unlink()


def remove_stale_record(data_dir: Path, record: StoreRecord) -> None:
    if read_record(data_dir) == record:
        with contextlib.suppress(FileNotFoundError):
            (Path(data_dir) / RECORD).unlink()


class FileLock:
    """An ``flock`` on a file, taken by polling with a deadline (never an unbounded wait)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self, *, shared: bool) -> bool:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def acquire(self, *, shared: bool, deadline: float) -> bool:
        """Take the lock before ``deadline`` (time.monotonic()); False if it stayed taken."""
        while not self.try_acquire(shared=shared):  # bounded by the deadline
            if time.monotonic() >= deadline:
                self.release()
                return False
            time.sleep(POLL_S)
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor releases the lock


# ----------------------------------------------------------------------------- attach


@dataclass
class SharedStore:
    """A command's hold on its data directory's store: the users lock while it lives, and
    until the store is up, the start lock and the keeper it started (``keeper_pid``)."""

    data_dir: Path
    users: FileLock
    record: StoreRecord | None = None
    start: FileLock | None = None
    keeper_pid: int | None = None

    def wait(self, timeout_s: float = ATTACH_S) -> StoreRecord:
        """The live store's record; for a keeper just started, once its server answers."""
        if self.record is not None:
            return self.record
        deadline = time.monotonic() + timeout_s
        try:
            while True:  # bounded by the deadline
                record = read_record(self.data_dir)
                if record is not None and record.pid == self.keeper_pid:
                    self.record = record
                    return record
                if self.keeper_pid is None or not process_alive(self.keeper_pid):
                    raise StoreStartFailed(
                        f"the embedded store of {self.data_dir} did not start: "
                        f"{keeper_failure(self.data_dir)}"
                    )
                if time.monotonic() >= deadline:
                    raise StoreStartFailed(
                        f"the embedded store of {self.data_dir} did not start within "
                        f"{timeout_s:.0f} s (log: {self.data_dir / KEEPER_LOG})"
                    )
                time.sleep(POLL_S)
        finally:
            if self.start is not None:
                self.start.release()
                self.start = None

    def close(self) -> None:
        if self.start is not None:
            self.start.release()
            self.start = None
        self.users.release()


def attach(data_dir: Path, linger_s: float, timeout_s: float = ATTACH_S) -> SharedStore:
    """Hold the data directory's store for this process: the running one, or a keeper
    started now (without waiting for it: `SharedStore.wait` does)."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    users = FileLock(data_dir / USERS_LOCK)
    while True:  # each turn ends in a hold or waits for a stopping store; bounded by deadline
        if not users.acquire(shared=True, deadline=deadline):
            raise StoreOpenError(
                f"the embedded store of {data_dir} is stopping and did not finish in "
                f"{timeout_s:.0f} s (log: {data_dir / KEEPER_LOG})"
            )
        record = read_record(data_dir)
        if record is not None and record.alive():
            if not record.draining:
                return SharedStore(data_dir, users, record)
            users.release()  # let the draining keeper stop; serve takes over
            _pause_until(deadline, data_dir)
            continue
        start = FileLock(data_dir / START_LOCK)
        if not start.acquire(shared=False, deadline=deadline):
            users.release()
            raise StoreOpenError(f"another process is still starting the store of {data_dir}")
        record = read_record(data_dir)
        if record is not None and record.alive():
            start.release()
            if not record.draining:
                return SharedStore(data_dir, users, record)
            users.release()
            _pause_until(deadline, data_dir)
            continue
        if record is not None:
            remove_stale_record(data_dir, record)  # its owner died without removing it
        try:
            pid = spawn_keeper(data_dir, linger_s)
        except BaseException:
            start.release()
            users.release()
            raise
        return SharedStore(data_dir, users, None, start, pid)


def _pause_until(deadline: float, data_dir: Path) -> None:
    if time.monotonic() >= deadline:
        raise StoreOpenError(f"the embedded store of {data_dir} is being taken over; retry")
    time.sleep(0.05)


def spawn_keeper(data_dir: Path, linger_s: float) -> int:
    """Start a keeper, detached: its own session, stdio to ``keeper.log``, and not our child
    (a shell starts it in the background and exits), so it outlives this command and is
    never left a zombie of it. Returns its pid."""
    log = data_dir / KEEPER_LOG
    with contextlib.suppress(OSError):
        if log.stat().st_size > KEEPER_LOG_MAX_BYTES:
            os.replace(log, log.with_name(KEEPER_LOG + ".1"))
    command = [sys.executable, "-m", "soda_reduce.runtime.store.keeper", str(data_dir)]
    command += ["--linger", repr(float(linger_s))]
    script = '"$@" </dev/null >>"$SODA_REDUCE_KEEPER_LOG" 2>&1 & echo $!'
    env = {**os.environ, "SODA_REDUCE_KEEPER_LOG": str(log)}
    try:
        done = subprocess.run(
            ["/bin/sh", "-c", script, "keeper", *command],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=env,
            cwd=data_dir,
            start_new_session=True,
            timeout=10,
            check=True,
        )
        return int(done.stdout.strip())
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        raise StoreStartFailed(f"cannot start the store keeper: {exc}") from None


def keeper_failure(data_dir: Path) -> str:
    """The keeper's last error line, for a one-line message."""
    try:
        with open(data_dir / KEEPER_LOG, "rb") as f:
            f.seek(max(f.seek(0, os.SEEK_END) - 4000, 0))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return "the keeper left no log"
    errors = [line[len("error:") :].strip() for line in lines if line.startswith("error:")]
    why = errors[-1] if errors else "its keeper stopped"
    return f"{why} (log: {data_dir / KEEPER_LOG})"


# ----------------------------------------------------------------------------- own


@dataclass
class OwnedStore:
    """A long-running command's ownership of its data directory's store: the start lock
    until `publish`, its record after."""

    data_dir: Path
    owner: str
    start: FileLock | None

    def publish(self, port: int, host: str = "127.0.0.1") -> None:
        """The server is up: tell other commands where, and let them in."""
        write_record(self.data_dir, StoreRecord.mine(self.owner, port, host))
        self._release()

    def close(self) -> None:
        """Before the server stops: no command should connect to it any more."""
        remove_record(self.data_dir, os.getpid())
        self._release()

    def _release(self) -> None:
        if self.start is not None:
            self.start.release()
            self.start = None


def take_ownership(data_dir: Path, owner: str, timeout_s: float = TAKE_OVER_S) -> OwnedStore:
    """Become the owner of the data directory's store (blocking: call it in a thread).

    A store another long-running command owns is refused (`StoreInUse`); a keeper's is
    asked to stop as soon as its users are done (SIGUSR1) and waited for.
    """
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    start = FileLock(data_dir / START_LOCK)
    if not start.acquire(shared=False, deadline=deadline):
        raise StoreOpenError(f"another process is still starting the store of {data_dir}")
    try:
        record = read_record(data_dir)
        if record is not None and record.alive():
            if record.owner != KEEPER:
                raise StoreInUse(
                    f"{record.describe()} already runs on the data directory {data_dir}; "
                    "stop it, or give this one another --data-dir (SODA_REDUCE_DATA_DIR)"
                )
            _stop_keeper(data_dir, record, deadline, timeout_s)
        elif record is not None:
            remove_stale_record(data_dir, record)
    except BaseException:
        start.release()
        raise
    return OwnedStore(data_dir, owner, start)


def _stop_keeper(data_dir: Path, record: StoreRecord, deadline: float, timeout_s: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(record.pid, signal.SIGUSR1)  # stop once idle, whatever the linger
    while record.alive():  # bounded by the deadline
        if time.monotonic() >= deadline:
            raise StoreOpenError(
                f"the store of {data_dir} is in use by soda-reduce commands "
                f"(keeper pid {record.pid}) after {timeout_s:.0f} s; retry when they finish, "
                "or use another --data-dir"
            )
        time.sleep(0.02)
