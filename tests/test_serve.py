"""The README's first command: ``soda-reduce serve`` on embedded defaults, end to end.

The service runs as a subprocess, exactly as a user starts it (demo archive generated in its
data dir, API + worker + local executor in one process), and pyvo, the client astronomers use,
drives reductions through the UWS job list at BASE/soda/async.

The helpers at the top (``serve``, ``science_frames``, ``bounded``...) are shared with
test_uws_clients. Everything talks to 127.0.0.1 only, and every wait is bounded: pyvo's own
``wait()`` loops for as long as the job stays active, so it runs under ``bounded``.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest
import requests
from lxml import etree

from soda_reduce.reduction.index_model import raw_file_id

T = TypeVar("T")
NS = {
    "uws": "http://www.ivoa.net/xml/UWS/v1.0",
    "sr": "http://soda-reduce.org/xml/jobinfo/v1",
}
FINAL = frozenset({"COMPLETED", "ERROR", "ABORTED"})
START_S = 120.0  # demo archive generation + store start + indexing
STOP_S = 60.0


# ----------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Served:
    """A running ``soda-reduce serve`` subprocess; its output goes to a file (no pipe to fill)."""

    base: str
    process: subprocess.Popen[str]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def session(self) -> requests.Session:
        """A requests session for pyvo: never a proxy from the environment (loopback only)."""
        session = requests.Session()
        session.trust_env = False
        return session


def _stop(served: Served) -> None:
    process = served.process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextmanager
def serve(
    data_dir: Path, *args: str, env: dict[str, str] | None = None, start_s: float = START_S
) -> Iterator[Served]:
    """``soda-reduce serve`` on a free loopback port, stopped with SIGTERM afterwards.

    ``SODA_REDUCE_*`` variables of the caller's environment are dropped (embedded defaults),
    then ``env`` is applied.
    """
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SODA_REDUCE_")}
    clean.update(env or {})
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    log = data_dir.parent / f"serve-{port}.log"
    command = [sys.executable, "-m", "soda_reduce.cli", "serve", "--port", str(port)]
    command += ["--data-dir", str(data_dir), *args]
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=clean)
    served = Served(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + start_s
        while True:
            assert process.poll() is None, f"serve exited early:\n{served.output()}"
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, (
                    f"not serving after {start_s} s:\n{served.output()}"
                )
                time.sleep(0.2)
        yield served
    finally:
        _stop(served)


def science_frames(archive: Path, night: str | None = None) -> list[dict[str, Any]]:
    """Science frames of the demo archive that can be reduced, from its truth manifest.

    Each entry is the manifest's record plus ``id``, the raw-file ID the service indexed.
    Frames with header problems or named by an "incomplete" gap are left out.
    """
    manifest = json.loads((archive / "_truth" / "manifest.json").read_text())
    incomplete = {
        path for gap in manifest["gaps"] if gap["expect"] == "incomplete" for path in gap["affects"]
    }
    frames = []
    for record in manifest["files"]:
        if record["category"] != "SCIENCE" or record["problem"] or record["malformed"]:
            continue
        if record["path"] in incomplete or (night is not None and record["night"] != night):
            continue
        frames.append({**record, "id": raw_file_id(record["path"])})
    return frames


def incomplete_frames(archive: Path) -> list[str]:
    """IDs of science frames the demo archive cannot calibrate (their jobs go to ERROR)."""
    manifest = json.loads((archive / "_truth" / "manifest.json").read_text())
    return [
        raw_file_id(path)
        for gap in manifest["gaps"]
        if gap["expect"] == "incomplete"
        for path in gap["affects"]
    ]


def bounded(fn: Callable[[], T], timeout: float, what: str = "call") -> T:
    """Run ``fn`` in a daemon thread and fail the test if it has not returned in ``timeout`` s.

    A stuck call is left behind (it ends when the server is stopped); being a daemon thread
    it never keeps the interpreter alive.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the test below
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True, name=f"bounded {what}")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise AssertionError(f"{what} did not return within {timeout} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def create_job(session: requests.Session, base: str, data: Any) -> str:
    """POST to the job list as a client does: 303 to the job's absolute URL."""
    response = session.post(f"{base}/soda/async", data=data, allow_redirects=False, timeout=30)
    assert response.status_code == 303, response.text
    location = response.headers["Location"]
    parts = urlsplit(location)
    assert (parts.scheme, parts.netloc) == ("http", urlsplit(base).netloc), location
    assert parts.path.startswith("/soda/async/") and parts.path.count("/") == 3, location
    return location


def job_document(session: requests.Session, url: str, query: str = "") -> etree._Element:
    response = session.get(url + query, timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/xml")
    return etree.fromstring(response.content)


def plan_counts(doc: etree._Element) -> tuple[int, int] | None:
    """(cached steps, runnable steps) from the job's jobInfo; None before the job has a plan."""
    reduction = doc.find("uws:jobInfo/sr:reduction", NS)
    if reduction is None:
        return None
    progress = reduction.find("sr:progress", NS)
    total = int(progress.get("total", "0")) if progress is not None else 0
    return int(reduction.get("cachedSteps", "0")), total


def poll_final(job: Any, timeout: float) -> str:
    """pyvo's ``job.phase`` polled until final; pyvo's wait() refuses ABORTED jobs."""
    deadline = time.monotonic() + timeout
    while (phase := job.phase) not in FINAL:
        assert time.monotonic() < deadline, f"job still {phase} after {timeout} s"
        time.sleep(0.2)
    return phase


# ----------------------------------------------------------------------------- the test


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _check_pages_and_plans(base: str, data_dir: Path) -> None:
    status, page = _get(base + "/")
    assert status == 200
    assert (data_dir / "demo-archive" / "_truth" / "manifest.json").exists()
    assert "SCIENCE" in page and "truncated_header.fits" in page
    status, text = _get(base + "/plan?target=science")
    assert status == 200
    assert "INCOMPLETE" in text and "level 1" in text
    status, text = _get(base + "/plan?TARGET=bias&format=json")
    assert status == 200 and '"target": "bias"' in text
    status, text = _get(base + "/plan?target=nonsense")
    assert status == 400 and "no task 'nonsense'" in text
    status, text = _get(base + "/plan?target=bias&target=flat")
    assert status == 400


def _reduce_with_pyvo(served: Served, session: requests.Session, frame: dict[str, Any]) -> None:
    """Create, run, wait, fetch, download and delete, all through pyvo's AsyncTAPJob."""
    from astropy.io import fits
    from astropy.time import Time
    from pyvo.dal import AsyncTAPJob, DALServiceError

    location = create_job(session, served.base, {"ID": frame["id"]})
    job = AsyncTAPJob(location, session=session)
    assert job.phase == "PENDING"
    assert job.uws_version == "1.1"
    job.run()
    bounded(lambda: job.wait(timeout=120), 180, "pyvo job.wait()")
    assert job.phase == "COMPLETED", served.output()[-4000:]
    job.raise_if_error()

    # the products table: pyvo parses it as the query result
    table = bounded(job.fetch_result, 60, "pyvo job.fetch_result()")
    assert len(table) >= 3
    assert {"ID", "access_url", "category", "content_type"} <= set(table.fieldnames)
    rows = [(str(r["category"]), str(r["access_url"])) for r in table]
    science = [url for category, url in rows if category == "REDUCED_SCIENCE"]
    assert science, rows
    categories = {category for category, _ in rows}
    assert {"MASTER_BIAS", "MASTER_FLAT"} <= categories, categories
    for url in science + [url for category, url in rows if category.startswith("MASTER_")]:
        assert url.startswith(served.base + "/products/"), url
        download = session.get(url, timeout=60)
        assert download.status_code == 200, url
        assert download.content[:9] == b"SIMPLE  =", url
        with fits.open(io.BytesIO(download.content)) as hdus:
            assert any(hdu.data is not None and hdu.data.ndim == 2 for hdu in hdus), url

    # result links are absolute: pyvo does not resolve relative hrefs
    uris = job.result_uris
    assert uris and all(uri.startswith(served.base + "/") for uri in uris), uris
    assert job.result_uri == f"{location}/results/result"
    assert set(science) <= set(uris)

    # times are readable as pyvo types
    assert job.execution_duration.sec > 0
    assert job.destruction > Time.now()

    job.delete()
    assert session.get(location, timeout=30).status_code == 404
    with pytest.raises(DALServiceError):
        AsyncTAPJob(location, session=session)


def _abort_with_pyvo(served: Served, session: requests.Session, frame: dict[str, Any]) -> None:
    """PHASE=ABORT right after PHASE=RUN, on a plan whose steps were never computed."""
    from pyvo.dal import AsyncTAPJob, DALQueryError, DALServiceError

    location = create_job(session, served.base, {"ID": frame["id"]})
    job = AsyncTAPJob(location, session=session)
    job.run()
    job.abort()
    try:
        # pyvo's wait() raises "Job is not active!" for ABORTED (not among its active phases)
        bounded(lambda: job.wait(timeout=120), 180, "pyvo job.wait()")
    except DALServiceError as exc:
        assert "not active" in str(exc)
    phase = poll_final(job, 60)
    doc = job_document(session, location)
    counts = plan_counts(doc)
    assert counts is not None, etree.tostring(doc).decode()  # planned before the abort
    cached, total = counts
    assert total > 0
    if phase == "COMPLETED":
        # only acceptable if nothing was left to compute when the abort arrived
        assert cached == total, f"finished before the abort with {cached}/{total} cached"
        return
    assert phase == "ABORTED", etree.tostring(doc).decode()
    with pytest.raises(DALQueryError, match="aborted"):
        job.raise_if_error()
    time.sleep(1.0)
    assert job.phase == "ABORTED"  # the worker did not overwrite it afterwards
    job.delete()
    assert session.get(location, timeout=30).status_code == 404


def test_serve_generates_demo_archive_indexes_plans_and_reduces_with_pyvo(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    started = time.monotonic()
    with serve(data_dir) as served:
        _check_pages_and_plans(served.base, data_dir)
        frames = science_frames(data_dir / "demo-archive", night="2024-01-04")
        assert len(frames) >= 2, frames
        first = frames[0]
        # the abort runs on a frame of another binning: master bias, dark, flat all new
        other = next((f for f in frames if f["binning"] != first["binning"]), None)
        assert other is not None, frames
        with served.session() as session:
            _reduce_with_pyvo(served, session, first)
            _abort_with_pyvo(served, session, other)
        assert time.monotonic() - started < 240
    output = served.output()
    assert served.process.returncode == 0, output
    assert "serving on" in output
    assert "Traceback" not in output, output
