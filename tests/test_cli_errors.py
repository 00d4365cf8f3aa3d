"""The command line fails like a Unix tool: one ``error:`` line on stderr, the right status.

Each case runs ``python -m soda_reduce.cli`` as a user would (a subprocess, its own data
directory under the test's folder, no ``SODA_REDUCE_*`` settings of the caller) and
checks: the exit status (2 usage, 1 failure), that the last stderr line is the one line
starting ``error:``, no traceback, and for usage errors that the answer came before any
store started (no store files anywhere, well under a second).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

USAGE_S = 1.0  # a usage error answers within this (measured ~0.1 s): no store, no imports
UNREACHABLE_S = 6.0  # an unreachable MongoDB: the store timeout (2 s) and start-up


@dataclass(frozen=True)
class Case:
    name: str
    argv: tuple[str, ...]
    status: int
    message: str  # a regular expression the error line must match (after "error: ")
    usage: bool = True  # answered before any store starts
    details: bool = False  # lines may come before the error line (what is missing)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield sock.getsockname()[1]


UNWRITABLE = "/proc" if os.geteuid() == 0 else "{tmp}/read-only"  # root writes any mode

CASES = [
    Case("archive missing", ("index", "--archive", "{tmp}/nope"), 2,
         r"--archive \S+/nope: no such directory"),
    Case("archive is a file", ("plan", "--archive", "{file}"), 2,
         r"--archive \S+: not a directory"),
    Case("--archive required", ("plan",), 2,
         r"the following arguments are required: --archive \(see soda-reduce plan --help\)"),
    Case("unknown command", ("frobnicate",), 2,
         r"argument COMMAND: invalid choice: 'frobnicate'.*"),
    Case("--out in a missing folder", ("reduce", "--archive", "{archive}", "--out", "{tmp}/a/b"),
         2, r"--out \S+/a/b: no folder \S+/a"),
    Case("--out is a file", ("reduce", "--archive", "{archive}", "--out", "{file}"), 2,
         r"--out \S+: a file is in the way \(a directory is needed\)"),
    Case("--nights 0", ("demo-data", "{tmp}/demo", "--nights", "0"), 2,
         r"argument --nights: must be between 1 and 366, got 0 "
         r"\(see soda-reduce demo-data --help\)"),
    Case("--size odd", ("demo-data", "{tmp}/demo", "--size", "33"), 2,
         r"argument --size: 33 must be even .*"),
    Case("demo-data into a file", ("demo-data", "{file}"), 2,
         r"demo-data DIR \S+: a file is in the way \(a directory is needed\)"),
    Case("demo-data below a file", ("demo-data", "{file}/sub"), 2,
         r"demo-data DIR \S+: \S+ is a file, not a directory"),
    Case("--graph in a missing folder",
         ("plan", "--archive", "{archive}", "--graph", "{tmp}/x/p.dot"), 2,
         r"--graph \S+/x/p.dot: no folder \S+/x"),
    Case("--graph in an unwritable folder",
         ("plan", "--archive", "{archive}", "--graph", UNWRITABLE + "/p.dot"), 2,
         r"--graph \S+/p.dot: the folder \S+ is not writable"),
    Case("--param without =", ("plan", "--archive", "{archive}", "--param", "flat.sigma_clip"), 2,
         r"--param must be NAME=VALUE, got 'flat.sigma_clip'"),
    Case("--where without =", ("reduce", "--archive", "{archive}", "--out", "{tmp}/o",
                               "--where", "NIGHT"), 2, r"--where must be NAME=VALUE, got 'NIGHT'"),
    Case("--mongo-url scheme", ("index", "--archive", "{archive}", "--mongo-url", "mysql://x/"), 2,
         r"--mongo-url must start with mongodb:// or mongodb\+srv://"),
    Case("--mongo-url malformed", ("index", "--archive", "{archive}", "--mongo-url",
                                   "mongodb://a:b:c"), 2, r"--mongo-url: .*escaped.*"),
    Case("--pipeline unknown", ("plan", "--archive", "{archive}", "--pipeline", "nope"), 2,
         r"--pipeline nope: no such pipeline \(installed: ccd, kast.*\)"),
    Case("--jobs 0", ("reduce", "--archive", "{archive}", "--out", "{tmp}/o", "--jobs", "0"), 2,
         r"argument --jobs: must be between 1 and 1024, got 0 .*"),
    Case("--port out of range", ("serve", "--port", "70000"), 2,
         r"argument --port: must be between 0 and 65535, got 70000 .*"),
    Case("api without a broker", ("api", "--archive", "{archive}"), 2,
         r"soda-reduce api needs a broker: set SODA_REDUCE_AMQP_URL .*run soda-reduce serve"),
    Case("worker without an archive", ("worker",), 2, r"set --archive or SODA_REDUCE_ARCHIVE"),
    Case("port in use", ("serve", "--archive", "{archive}", "--port", "{busy}"), 1,
         r"cannot listen on 127\.0\.0\.1:\d+: already in use"),
    Case("MongoDB unreachable", ("index", "--archive", "{archive}", "--mongo-url",
                                 "mongodb://127.0.0.1:{closed}/"), 1,
         r"MongoDB at 127\.0\.0\.1:\d+ does not answer within 2 s", usage=False),
    Case("empty archive", ("plan", "--archive", "{tmp}/empty"), 1,
         r"no FITS files under \S+/empty .*", usage=False),
    Case("no complete stack", ("plan", "--archive", "{archive}", "--target", "stack",
                               "--allow-incomplete"), 1,
         r"none of the \d+ datasets can be reduced", usage=False, details=True),
    Case("a partial plan", ("plan", "--archive", "{archive}"), 1,
         r"\d+ of \d+ datasets are incomplete; --allow-incomplete accepts a partial plan",
         usage=False),
    Case("reduce of a partial plan", ("reduce", "--archive", "{archive}", "--out", "{tmp}/o"), 1,
         r"\d+ of \d+ datasets are incomplete; --allow-incomplete accepts a partial plan",
         usage=False, details=True),
    Case("unknown ID", ("plan", "--archive", "{archive}", "--id", "ivo://example.org/raw?x.fits"),
         2, r"unknown ID ivo://example.org/raw\?x.fits", usage=False),
]  # fmt: skip


def run_cli(argv: list[str], cwd: Path, home: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SODA_REDUCE_")}
    clean.update({"XDG_DATA_HOME": str(home), "SODA_REDUCE_STORE_LINGER_S": "0", **env})
    command = [sys.executable, "-m", "soda_reduce.cli", *argv]
    return subprocess.run(command, cwd=cwd, env=clean, capture_output=True, text=True, timeout=120)


def store_files(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob("*") if p.name in ("store.json", "mongo")]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_errors_are_one_line_with_the_right_status(
    case: Case, demo_archive: Path, tmp_path: Path, busy_port: int
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "a-file").write_text("not a folder\n")
    read_only = tmp_path / "read-only"
    read_only.mkdir(mode=0o500)
    home = tmp_path / "home"
    values = {
        "tmp": str(tmp_path),
        "archive": str(demo_archive),
        "file": str(tmp_path / "a-file"),
        "busy": str(busy_port),
        "closed": str(closed_port()),
    }
    argv = [arg.format(**values) for arg in case.argv]
    started = time.monotonic()
    done = run_cli(argv, tmp_path, home)
    elapsed = time.monotonic() - started
    lines = done.stderr.strip().splitlines()
    assert done.returncode == case.status, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr and lines, done.stderr
    assert [line for line in lines if line.startswith("error:")] == [lines[-1]], done.stderr
    assert re.fullmatch(case.message, lines[-1].removeprefix("error: ")), lines[-1]
    if not case.details and case.usage:
        assert len(lines) == 1, done.stderr
    if case.usage:
        assert elapsed < USAGE_S, f"{elapsed:.2f} s: {done.stderr}"
        assert not store_files(tmp_path), "a store was started for a usage error"
    else:
        assert elapsed < UNREACHABLE_S + 30, elapsed
    if case.name == "MongoDB unreachable":
        assert elapsed < UNREACHABLE_S, f"{elapsed:.1f} s"
    if case.name == "port in use":  # checked before the store started, the archive indexed
        assert "indexed" not in done.stdout + done.stderr


def test_help_of_every_command_has_examples(tmp_path: Path) -> None:
    commands = ["demo-data", "index", "plan", "reduce", "cascade", "serve", "api", "worker"]
    for command in [None, *commands]:
        argv = [command, "--help"] if command else ["--help"]
        done = run_cli(argv, tmp_path, tmp_path / "home")
        assert done.returncode == 0, done.stderr
        assert "examples:\n  " in done.stdout, (command, done.stdout)
        example = done.stdout.split("examples:\n", 1)[1].splitlines()[0].strip()
        assert example.startswith("soda-reduce ") or "soda-reduce " in example, example
    done = run_cli(["plan", "--help"], tmp_path, tmp_path / "home")
    assert "--allow-incomplete" in done.stdout and "exit status: 0" in done.stdout
