"""The archive boundary and what the service says in public (issue 10, items 8, 11 and 14).

A copy of the small demo archive gets links planted in it: a file and a directory that lead
out of the archive (one to a passwd-like file, one to a real FITS file kept elsewhere), and a
link that stays inside. The indexer must skip and report the first two, every route that
opens a raw file must refuse them (also when planted after the scan), and the inside link
keeps working. A real reduction then shows that logs and errors reach clients without the
server's paths, and the landing page is served from one load of the index per version.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import sys
import threading
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient, TestServer
from lxml import etree

from soda_reduce.cli import main
from soda_reduce.pipelines import registry
from soda_reduce.runtime.archive_boundary import OUTSIDE, inside, servable
from soda_reduce.runtime.archive_plans import ArchivePipelines
from soda_reduce.runtime.indexer import index_archive
from soda_reduce.runtime.public_text import PublicText, public_message
from soda_reduce.runtime.store import Store
from soda_reduce.web import landing
from soda_reduce.web.app import ServiceState, build_app
from soda_reduce.web.bundles import plan_raw_inputs
from soda_reduce.web.middleware import AuthConfig
from tests.support.uws_harness import UWS, Harness, uws_service

AUTHORITY = "example.org"
ALICE = {"X-Remote-User": "alice"}
PASSWD = b"root:x:0:0:root:/root:/bin/bash\n"
# an absolute path under a system prefix, as a client would see it
SERVER_PATH = re.compile(r"(?<![\w.~$-])/+(tmp|home|root|work|var|usr|opt)/")


@pytest.fixture
def archive(demo_archive: Path, tmp_path: Path) -> Path:
    """A private copy of the demo archive with links planted in and out of it."""
    root = tmp_path / "archive"
    shutil.copytree(demo_archive, root)
    outside = tmp_path / "outside"
    (outside / "night").mkdir(parents=True)
    (outside / "passwd").write_bytes(PASSWD)
    science = _first_fits(root)
    shutil.copy(science, outside / "night" / "foreign.fits")  # real FITS, but not ours
    night = science.parent
    (night / "evil.fits").symlink_to(outside / "passwd")
    (night / "foreign.fits").symlink_to(outside / "night" / "foreign.fits")
    (root / "elsewhere").symlink_to(outside / "night", target_is_directory=True)
    (night / "alias.fits").symlink_to(science.name)  # relative, stays inside
    return root


def _first_fits(root: Path) -> Path:
    return sorted(p for p in root.glob("2024-*/demo*.fits") if p.is_file())[0]


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


# ----------------------------------------------------------------- pure parts


def test_inside_and_servable_follow_links_but_not_out(archive: Path) -> None:
    science = _first_fits(archive)
    night = _rel(archive, science.parent)
    assert inside(archive, _rel(archive, science)) == science.resolve()
    assert inside(archive, f"{night}/alias.fits") == science.resolve()
    for bad in (f"{night}/evil.fits", f"{night}/foreign.fits", "elsewhere/foreign.fits"):
        assert inside(archive, bad) is None and servable(archive, bad) is None, bad
    for bad in ("", "/etc/passwd", "../outside/passwd", f"{night}/../../outside/passwd", "a\0b"):
        assert inside(archive, bad) is None, bad
    assert servable(archive, f"{night}/alias.fits") == science.resolve()
    assert servable(archive, "_truth/manifest.json") is None  # inside, but not FITS
    assert servable(archive, f"{night}/notes.fits") is None  # a FITS name, not FITS content
    loop = archive / "loop.fits"
    loop.symlink_to("loop.fits")
    assert inside(archive, "loop.fits") is None


def test_public_text_replaces_roots_and_keeps_file_names(tmp_path: Path) -> None:
    archive, data = tmp_path / "archive", tmp_path / "data"
    public = PublicText.of(archive=archive, products=data / "products", data=data)
    text = (
        f"$ {sys.prefix}/bin/python -m soda_reduce.recipe bias --out {data}/products/scratch/k/out"
        f"\ncannot read '{archive}/2024-01-04/x.fits': no; see {data}/overrides.txt."
        f"\n{archive}2/y.fits /var/lib/z/recipe.log http://example.org/tmp/keep /tmpfoo"
    )
    assert public(text) == (
        "$ $PYTHON/bin/python -m soda_reduce.recipe bias --out $PRODUCTS/scratch/k/out"
        "\ncannot read '$ARCHIVE/2024-01-04/x.fits': no; see $DATA/overrides.txt."
        "\ny.fits recipe.log http://example.org/tmp/keep /tmpfoo"
    )
    # streamed in small chunks: a path is never cut in two, other bytes pass unchanged
    line = f"read {archive}/n/a.fits ok\n".encode()
    blob = line * 200 + b"\xff\xfe binary " + f"{data}/products/x".encode()
    pieces = list(public.stream(io.BytesIO(blob), chunk=64))  # tokens < 2 chunks
    assert len(pieces) > 10
    assert b"".join(pieces) == b"read $ARCHIVE/n/a.fits ok\n" * 200 + b"\xff\xfe binary $PRODUCTS/x"
    assert public.size(_write(tmp_path / "log", blob)) == len(b"".join(pieces))
    assert public_message(f"failed (log: {tmp_path}/s/recipe.log)") == "failed (log: recipe.log)"


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# ----------------------------------------------------------------- index


async def test_links_out_of_the_archive_are_reported_not_indexed(
    store: Store, archive: Path, tmp_path: Path
) -> None:
    night = _rel(archive, _first_fits(archive).parent)
    report = await index_archive(store, archive, AUTHORITY, checksum_mode="fast")
    outside = {f"{night}/evil.fits", f"{night}/foreign.fits", "elsewhere/"}
    assert dict(report.outside) == dict.fromkeys(outside, OUTSIDE)
    assert set(report.outside) <= set(report.problems)
    indexed = {raw.path for raw in await store.all_raw_files()}
    assert not outside & indexed and not any(p.startswith("elsewhere/") for p in indexed)
    assert f"{night}/alias.fits" in indexed  # a link inside the archive is a file like any
    assert report.total == len(indexed)

    # an indexed file replaced by a link out: forgotten at the next scan, and reported
    victim = sorted(p for p in (archive / night).glob("demo*.fits") if p.is_file())[-1]
    victim.unlink()
    victim.symlink_to(tmp_path / "outside" / "passwd")
    report = await index_archive(store, archive, AUTHORITY, checksum_mode="fast")
    assert report.removed == 1 and (_rel(archive, victim), OUTSIDE) in report.problems
    assert _rel(archive, victim) not in {raw.path for raw in await store.all_raw_files()}


def test_soda_reduce_index_prints_them_as_problems(
    archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    night = _rel(archive, _first_fits(archive).parent)
    code = main(["index", "--archive", str(archive), "--data-dir", str(tmp_path / "cli")])
    printed = capsys.readouterr().out
    assert code == 0
    for path in (f"{night}/evil.fits", f"{night}/foreign.fits", "elsewhere/"):
        assert re.search(rf"^{re.escape(path)}\s+-\s+PROBLEM: {OUTSIDE}$", printed, re.M), path
    assert f"{night}/alias.fits" in printed and "root:x" not in printed


# ----------------------------------------------------------------- serving


@pytest.fixture
async def svc(store: Store, archive: Path, tmp_path: Path) -> AsyncIterator[Harness]:
    auth = AuthConfig(trusted_header="X-Remote-User")
    async with uws_service(store, archive, tmp_path / "data", auth=auth) as harness:
        yield harness


async def _status(svc: Harness, path: str) -> tuple[int, bytes]:
    response = await svc.client.get(path, headers=ALICE)
    return response.status, await response.read()


async def test_links_out_are_refused_on_every_route_even_when_planted_late(
    svc: Harness, tmp_path: Path
) -> None:
    archive = svc.archive
    science = _first_fits(archive)
    night = _rel(archive, science.parent)
    status, body = await _status(svc, f"/archive/files/{night}/alias.fits")
    assert status == 200 and body == science.read_bytes()  # a link inside still works

    # planted after the scan, over files the index knows: passwd, foreign FITS, non-FITS
    calibrations = sorted(p for p in (archive / night).glob("demo*.fits") if p != science)
    targets = [
        tmp_path / "outside" / "passwd",
        tmp_path / "outside" / "night" / "foreign.fits",
        archive / "_truth" / "manifest.json",
    ]
    planted = []
    for victim, target in zip(calibrations[-3:], targets, strict=True):
        victim.unlink()
        victim.symlink_to(target)
        planted.append(_rel(archive, victim))
    never_indexed = [f"{night}/evil.fits", f"{night}/foreign.fits", "elsewhere/foreign.fits"]
    for rel in planted + never_indexed:
        raw_id = f"ivo://{AUTHORITY}/raw?{rel}"
        routes = [
            f"/archive/files/{rel}",
            f"/previews/raw/{rel}.png",
            f"/soda/sync?ID={quote(raw_id)}&CIRCLE=0+0+1",
        ]
        if rel != planted[-1]:  # the page shows the index, not the file: only links out go
            routes.append(f"/raw/{rel}")
        for path in routes:
            status, body = await _status(svc, path)
            assert status == 404, (path, status, body[:200])
            assert b"root:x:0:0" not in body and b"SIMPLE  =" not in body, path


async def test_logs_and_errors_reach_clients_without_server_paths(
    svc: Harness, tmp_path: Path
) -> None:
    job_id = await svc.create({"ID": svc.complete_id, "PHASE": "RUN"}, headers=ALICE)
    assert await _final(svc, job_id) == "COMPLETED"
    job = await svc.runtime.service.get(job_id, "alice")
    keys = sorted({row["step_key"] for row in job.results})
    products = svc.runtime.products
    for key in keys:
        on_disk = (products.step_dir(key) / "recipe.log").read_text()
        assert str(tmp_path) in on_disk  # the log names the server's paths...
        response = await svc.client.get(f"/products/{key}/recipe.log")
        text = await response.text()
        assert response.status == 200 and response.content_type == "text/plain"
        assert "$PRODUCTS/" in text and "soda_reduce.recipe" in text  # ...clients do not see them
        _assert_public(text, tmp_path)
        head = await svc.client.head(f"/products/{key}/recipe.log")
        assert head.status == 200 and await head.read() == b""
    response = await svc.client.get(f"/soda/async/{job_id}/bundles/all.zip", headers=ALICE)
    assert response.status == 200
    bundle = zipfile.ZipFile(io.BytesIO(await response.read()))
    assert bundle.testzip() is None
    logs = [n for n in bundle.namelist() if n.endswith("/recipe.log")]
    assert len(logs) == len(keys)
    for name in logs:
        _assert_public(bundle.read(name).decode(), tmp_path)

    # a raw input replaced by a link out after the job ran: the raw bundle refuses it
    victim = svc.archive / plan_raw_inputs(job.plan)[0][1]
    victim.unlink()
    victim.symlink_to(tmp_path / "outside" / "passwd")
    response = await svc.client.get(f"/soda/async/{job_id}/bundles/reduced-raw.zip", headers=ALICE)
    assert response.status == 404 and b"root:x:0:0" not in await response.read()


async def test_a_failed_step_error_names_no_server_path(svc: Harness, tmp_path: Path) -> None:
    """A raw calibration broken after the scan: its step fails, the job's error is public."""
    plan = await svc.client.get("/plan", params={"ID": svc.complete_id, "FORMAT": "json"})
    inputs = [i for j in (await plan.json())["jobs"] for i in j["inputs"] if i.get("path")]
    bias = next(i["path"] for i in inputs if i["category"] == "BIAS")
    (svc.archive / bias).write_bytes(b"this is no FITS file\n" * 200)
    failing = await svc.create({"ID": svc.complete_id, "PHASE": "RUN"}, headers=ALICE)
    assert await _final(svc, failing) == "ERROR"
    document = await svc.client.get(f"/soda/async/{failing}", headers=ALICE)
    xml = await document.text()
    message = etree.fromstring(xml.encode()).findtext("uws:errorSummary/uws:message", None, UWS)
    assert message and "steps failed" in message and "recipe.log" in message, message
    _assert_public(xml, tmp_path)
    error = await svc.client.get(f"/soda/async/{failing}/error", headers=ALICE)
    assert error.status == 200
    _assert_public(await error.text(), tmp_path)


def _assert_public(text: str, tmp_path: Path) -> None:
    for secret in (str(tmp_path), str(tmp_path.resolve()), sys.prefix):
        assert secret not in text, secret
    found = SERVER_PATH.search(text)
    assert found is None, text[max(0, found.start() - 80) : found.end() + 80]


async def _final(svc: Harness, job_id: str) -> str:
    for _ in range(12):  # 12 x WAIT=10 s at most
        response = await svc.client.get(f"/soda/async/{job_id}/phase", headers=ALICE)
        phase = await response.text()
        if phase in ("COMPLETED", "ERROR", "ABORTED"):
            return phase
        await svc.client.get(f"/soda/async/{job_id}?WAIT=10", headers=ALICE)
    raise AssertionError(f"job {job_id} not final")


# ----------------------------------------------------------------- / and /plan


class _Calls:
    """Counts calls of an async store method (and the threads a sync function runs in)."""

    def __init__(self) -> None:
        self.count = 0
        self.threads: list[threading.Thread] = []


def _count_loads(monkeypatch: pytest.MonkeyPatch, store: Store) -> tuple[_Calls, _Calls]:
    loads, summaries = _Calls(), _Calls()
    load = store.all_raw_files

    async def counted_load():
        loads.count += 1
        return await load()

    summarise = landing.summarise_landing

    def counted_summary(*args):
        summaries.count += 1
        summaries.threads.append(threading.current_thread())
        return summarise(*args)

    monkeypatch.setattr(store, "all_raw_files", counted_load)
    monkeypatch.setattr(landing, "summarise_landing", counted_summary)
    return loads, summaries


async def test_landing_and_plan_load_the_index_once_per_version(
    svc: Harness, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads, summaries = _count_loads(monkeypatch, store)
    first = await (await svc.client.get("/")).text()
    assert loads.count <= 1 and summaries.count == 1
    assert summaries.threads[0] is not threading.main_thread()  # CPU work off the event loop
    assert svc.archive.name in first and str(svc.archive) not in first
    assert str(svc.archive.parent) not in first
    before = loads.count
    for _ in range(3):
        assert (await svc.client.get("/")).status == 200
    plan = await svc.client.get("/plan", params={"ID": svc.complete_id, "FORMAT": "json"})
    assert plan.status == 200, await plan.text()
    assert (loads.count, summaries.count) == (before, 1)

    # a new file: one load and one summary after the re-index, and the page shows it
    science = _first_fits(svc.archive)
    added = science.with_name("zz_added.fits")
    shutil.copy(science, added)
    await index_archive(store, svc.archive, AUTHORITY, checksum_mode="fast")
    page = await (await svc.client.get("/")).text()
    assert (loads.count, summaries.count) == (before + 1, 2)
    assert "zz_added.fits" in page
    assert (await svc.client.get("/")).status == 200 and loads.count == before + 1


async def test_plan_requests_are_bounded(svc: Harness) -> None:
    async def status(params: list[tuple[str, str]]) -> tuple[int, str]:
        response = await svc.client.get("/plan", params=params)
        return response.status, await response.text()

    ok, _ = await status([("ID", svc.complete_id)] * 100)
    assert ok == 200
    code, text = await status([("ID", svc.complete_id)] * 101)
    assert code == 400 and "at most 100 ID" in text
    code, text = await status([("ID", svc.complete_id)] + [("PARAM", "bias.x=1")] * 51)
    assert code == 400 and "at most 50 PARAM" in text
    code, text = await status([("ID", svc.complete_id), ("TARGET", "x" * 1025)])
    assert code == 400 and "1 KiB" in text


async def test_preview_app_loads_the_index_once_per_version(
    store: Store, archive: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the job service the index view keeps its own copy, on the same rule."""
    await index_archive(store, archive, AUTHORITY, checksum_mode="fast")
    loads, summaries = _count_loads(monkeypatch, store)
    app = build_app(ServiceState(store, ArchivePipelines(registry()), str(archive)))
    async with TestClient(TestServer(app)) as client:
        pages = [await (await client.get("/")).text() for _ in range(3)]
        assert (loads.count, summaries.count) == (1, 1)
        assert all(archive.name in p and str(archive) not in p for p in pages)
        (archive / "gone.fits").symlink_to(os.devnull)  # out of the archive: not indexed
        (_first_fits(archive)).unlink()
        await index_archive(store, archive, AUTHORITY, checksum_mode="fast")
        assert (await client.get("/")).status == 200
        assert (loads.count, summaries.count) == (2, 2)
