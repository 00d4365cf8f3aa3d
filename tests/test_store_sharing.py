"""One embedded store per data directory, shared by the commands and the service using it.

Real processes throughout: ``soda-reduce`` commands as subprocesses, their store keeper
(detached, as in use), ``soda-reduce serve``; the record ``store.json`` and the locks are
the ones the code uses. Every keeper a test starts is stopped (or seen to stop) by it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from lxml import etree

from soda_reduce.runtime.store.sharing import (
    RECORD,
    USERS_LOCK,
    FileLock,
    StoreRecord,
    process_alive,
    read_record,
    write_record,
)
from tests.test_cli_errors import closed_port, run_cli
from tests.test_serve import free_port, serve

VOSI = {"vosi": "http://www.ivoa.net/xml/VOSIAvailability/v1.0"}


def wait_gone(pid: int, limit_s: float) -> float:
    """Seconds until ``pid`` is gone; fails after ``limit_s``."""
    started = time.monotonic()
    while process_alive(pid):  # bounded below
        assert time.monotonic() - started < limit_s, f"process {pid} still alive"
        time.sleep(0.05)
    return time.monotonic() - started


def stop_keeper(data_dir: Path) -> None:
    record = read_record(data_dir)
    if record is not None and record.owner == "keeper" and record.alive():
        os.kill(record.pid, signal.SIGTERM)
        wait_gone(record.pid, 10)


def index(archive: Path, data_dir: Path, linger_s: float) -> subprocess.CompletedProcess:
    argv = ["index", "--archive", str(archive), "--data-dir", str(data_dir)]
    done = run_cli(argv, data_dir.parent, data_dir.parent / "home",
                   SODA_REDUCE_STORE_LINGER_S=str(linger_s))  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done


def test_two_commands_in_a_row_share_one_store(demo_archive: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    try:
        index(demo_archive, data, linger_s=60)
        first = read_record(data)
        assert first is not None and first.owner == "keeper" and first.alive()
        index(demo_archive, data, linger_s=60)
        second = read_record(data)
        assert second == first  # the same keeper, the same server: no second start
        starts = (data / "mongo.log").read_text().count("secantusd-py --standalone")
        assert starts == 1
    finally:
        stop_keeper(data)
    assert read_record(data) is None  # removed by the keeper as it stopped


def test_commands_at_once_start_one_store(demo_archive: Path, tmp_path: Path) -> None:
    """Three commands started together on a data directory without a store: one keeper."""
    data = tmp_path / "data"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SODA_REDUCE_")}
    clean["SODA_REDUCE_STORE_LINGER_S"] = "30"  # a slow starter still finds it (stopped after)
    argv = [sys.executable, "-m", "soda_reduce.cli", "plan", "--archive", str(demo_archive),
            "--data-dir", str(data), "--allow-incomplete"]  # fmt: skip
    running = [
        subprocess.Popen(argv, env=clean, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    for process in running:
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err.decode()
    assert (data / "keeper.log").read_text().count("store up on port") == 1
    assert (data / "mongo.log").read_text().count("secantusd-py --standalone") == 1


def test_a_keeper_stops_after_its_linger_and_not_while_used(
    demo_archive: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    linger = 1.5
    index(demo_archive, data, linger_s=linger)
    record = read_record(data)
    assert record is not None and record.linger_s == linger
    user = FileLock(data / USERS_LOCK)  # a command in progress: presence is this lock
    try:
        assert user.acquire(shared=True, deadline=time.monotonic() + 5)
        time.sleep(linger + 1.5)
        assert record.alive(), "the keeper stopped under a user"
    finally:
        user.release()
    gone_after = wait_gone(record.pid, linger + 5)
    assert gone_after >= linger - 0.2
    assert read_record(data) is None
    log = (data / "keeper.log").read_text()
    assert f"stopping: no user for {linger:g} s" in log and log.rstrip().endswith("stopped")


def test_a_stale_record_is_replaced(demo_archive: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_record(data, StoreRecord("keeper", dead.pid, closed_port()))  # its owner was killed
    try:
        index(demo_archive, data, linger_s=30)
        record = read_record(data)
        assert record is not None and record.pid != dead.pid and record.alive()
    finally:
        stop_keeper(data)


def test_commands_beside_serve_share_its_store(demo_archive: Path, tmp_path: Path) -> None:
    """The tester's first finding: index/plan/reduce beside a running serve failed with
    80 lines of "Device or resource busy". A keeper's store is taken over by serve; the
    commands then use serve's; a second serve on the directory is refused in one line."""
    data = tmp_path / "data"
    index(demo_archive, data, linger_s=60)
    keeper = read_record(data)
    assert keeper is not None and keeper.owner == "keeper"
    with serve(data, "--archive", str(demo_archive), "--checksum", "full") as served:
        wait_gone(keeper.pid, 10)  # asked to stop when idle, and idle
        owner = read_record(data)
        assert owner is not None and owner.owner == "serve" and owner.pid == served.process.pid
        assert "asked to stop when idle" in (data / "keeper.log").read_text()
        argv = ["plan", "--archive", str(demo_archive), "--data-dir", str(data),
                "--allow-incomplete", "--json"]  # fmt: skip
        started = time.monotonic()
        done = run_cli(argv, tmp_path, tmp_path / "home")
        elapsed = time.monotonic() - started
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["datasets"] and "busy" not in done.stderr
        assert read_record(data) == owner  # no keeper was started beside serve
        again = run_cli(
            ["serve", "--archive", str(demo_archive), "--data-dir", str(data),
             "--port", str(free_port())],
            tmp_path, tmp_path / "home",
        )  # fmt: skip
        assert again.returncode == 1
        assert again.stderr.strip() == (
            f"error: soda-reduce serve (pid {owner.pid}) already runs on the data directory "
            f"{data}; stop it, or give this one another --data-dir (SODA_REDUCE_DATA_DIR)"
        )
        assert served.process.poll() is None
    assert read_record(data) is None  # serve removed its record as it stopped
    print(f"plan beside serve: {elapsed:.2f} s")


def test_api_with_an_unreachable_broker_is_not_available(
    demo_archive: Path, tmp_path: Path, mongo
) -> None:
    """`api` needs a broker; with one configured but down, it starts (the outbox keeps
    jobs) and /availability says false, naming the broker."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SODA_REDUCE_")}
    env["SODA_REDUCE_AMQP_URL"] = f"amqp://guest:guest@127.0.0.1:{closed_port()}/"
    argv = [sys.executable, "-m", "soda_reduce.cli", "api", "--archive", str(demo_archive),
            "--mongo-url", mongo.url, "--host", "127.0.0.1", "--port", str(port),
            "--data-dir", str(tmp_path / "data")]  # fmt: skip
    env["SODA_REDUCE_DATABASE"] = "api_no_broker"
    log = tmp_path / "api.log"
    with log.open("w") as out:
        api = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 90
        body = None
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while body is None:  # bounded by the deadline
            assert api.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            try:
                with opener.open(f"http://127.0.0.1:{port}/availability", timeout=10) as answer:
                    body = answer.read()
            except OSError:
                time.sleep(0.2)
        doc = etree.fromstring(body)
        assert doc.findtext("vosi:available", namespaces=VOSI) == "false", body
        notes = [n.text or "" for n in doc.iterfind("vosi:note", VOSI)]
        assert any(n.startswith("broker: ") for n in notes), notes
    finally:
        api.send_signal(signal.SIGTERM)
        try:
            api.wait(timeout=30)
        except subprocess.TimeoutExpired:
            api.kill()
            api.wait(timeout=10)


@pytest.fixture(autouse=True)
def _no_keeper_left(tmp_path: Path):
    yield
    for found in tmp_path.rglob(RECORD):
        stop_keeper(found.parent)
