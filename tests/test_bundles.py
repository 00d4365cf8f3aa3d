"""Product delivery: zip bundles of a job (as PAWS offers), and the product files themselves.

The whole stack runs (harness: real store, worker, ccd recipes on the demo archive). Bundles
are unzipped and every member compared byte for byte with the file it came from.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from soda_reduce.runtime.public_text import PublicText
from soda_reduce.runtime.store import Store
from soda_reduce.web.bundles import plan_raw_inputs
from soda_reduce.web.middleware import AuthConfig
from tests.support.uws_harness import Harness, uws_service

ALICE = {"X-Remote-User": "alice"}
BOB = {"X-Remote-User": "bob"}


@pytest.fixture
async def svc(store: Store, demo_archive: Path, tmp_path: Path):
    auth = AuthConfig(trusted_header="X-Remote-User")
    async with uws_service(store, demo_archive, tmp_path, auth=auth) as harness:
        yield harness


async def _completed(svc: Harness, headers: dict[str, str]) -> str:
    job_id = await svc.create({"ID": svc.complete_id, "PHASE": "RUN"}, headers=headers)
    assert await _wait(svc, job_id, headers) == "COMPLETED"
    return job_id


async def _wait(svc: Harness, job_id: str, headers: dict[str, str]) -> str:
    for _ in range(12):  # 12 x WAIT=10 s at most
        response = await svc.client.get(f"/soda/async/{job_id}/phase", headers=headers)
        phase = await response.text()
        if phase in ("COMPLETED", "ERROR", "ABORTED"):
            return phase
        await svc.client.get(f"/soda/async/{job_id}?WAIT=10", headers=headers)
    raise AssertionError(f"job {job_id} not final")


async def _bundle(svc: Harness, job_id: str, kind: str) -> tuple[zipfile.ZipFile, dict]:
    response = await svc.client.get(f"/soda/async/{job_id}/bundles/{kind}.zip", headers=ALICE)
    assert response.status == 200, await response.text()
    assert response.content_type == "application/zip"
    disposition = response.headers["Content-Disposition"]
    assert disposition == f'attachment; filename="soda-reduce-{job_id}-{kind}.zip"'
    # streamed: no length known in advance
    assert response.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in response.headers
    archive = zipfile.ZipFile(io.BytesIO(await response.read()))
    assert archive.testzip() is None  # every CRC checks
    manifest = json.loads(archive.read(f"{job_id}/bundle.json"))
    assert manifest["job_id"] == job_id and manifest["content"] == kind
    listed = {m["name"] for m in manifest["members"]}
    assert listed | {f"{job_id}/bundle.json"} == set(archive.namelist())
    return archive, manifest


async def _raw_bundle(svc: Harness, job_id: str, kind: str) -> bytes:
    response = await svc.client.get(f"/soda/async/{job_id}/bundles/{kind}.zip", headers=ALICE)
    assert response.status == 200
    return await response.read()


async def test_three_bundles_hold_the_right_files_byte_for_byte(
    svc: Harness, tmp_path: Path
) -> None:
    job_id = await _completed(svc, ALICE)
    job = await svc.runtime.service.get(job_id, "alice")
    products = svc.runtime.products

    reduced, manifest = await _bundle(svc, job_id, "reduced")
    targets = [r for r in job.results if r["target"] and r["category"] != "PREVIEW"]
    assert targets and {r["category"] for r in targets} == {"REDUCED_SCIENCE"}
    names = sorted(n for n in reduced.namelist() if not n.endswith("bundle.json"))
    assert names == sorted(f"{job_id}/reduced/{r['file']}" for r in targets)
    for row in targets:
        on_disk = (products.step_dir(row["step_key"]) / row["file"]).read_bytes()
        assert reduced.read(f"{job_id}/reduced/{row['file']}") == on_disk
    ids = {m["id"] for m in manifest["members"]}
    assert all(i.startswith("ivo://") and "/product?" in i for i in ids)

    with_raw, _ = await _bundle(svc, job_id, "reduced-raw")
    raw_inputs = plan_raw_inputs(job.plan)
    # the science frame plus the raw calibrations of every step (5 bias, 3 darks, 5 flats)
    assert svc.complete_id in {i for i, _ in raw_inputs} and len(raw_inputs) >= 10
    raw_members = [n for n in with_raw.namelist() if n.startswith(f"{job_id}/raw/")]
    assert sorted(raw_members) == sorted(f"{job_id}/raw/{p}" for _, p in raw_inputs)
    for _, relative in raw_inputs:
        assert with_raw.read(f"{job_id}/raw/{relative}") == (svc.archive / relative).read_bytes()
    assert set(reduced.namelist()) - {f"{job_id}/bundle.json"} < set(with_raw.namelist())

    everything, manifest = await _bundle(svc, job_id, "all")
    kinds = {m["name"]: m["kind"] for m in manifest["members"]}
    for row in job.results:  # every product of every step, previews included
        name = f"{job_id}/steps/{row['task']}-{row['step_key'][:12]}/{row['file']}"
        assert (
            everything.read(name) == (products.step_dir(row["step_key"]) / row["file"]).read_bytes()
        )
    keys = {r["step_key"] for r in job.results}
    logs = [n for n, k in kinds.items() if k == "log"]
    assert len(logs) == len(keys) == len(job.steps)
    for name in logs:
        key_prefix = name.split("/")[2].rsplit("-", 1)[1]
        key = next(k for k in keys if k.startswith(key_prefix))
        log = (products.step_dir(key) / "recipe.log").read_bytes()  # redacted in the bundle
        public = PublicText.of(archive=svc.archive, products=products.root, data=tmp_path)
        assert everything.read(name) == public.bytes(log) and b"$PRODUCTS/" in public.bytes(log)
    assert sum(1 for k in kinds.values() if k == "manifest") == len(keys)
    assert any(n.endswith(".png") for n in everything.namelist())
    assert sum(1 for k in kinds.values() if k == "raw") == len(raw_inputs)
    # logs and JSON are deflated, FITS stored
    info = {i.filename: i for i in everything.infolist()}
    assert info[logs[0]].compress_type == zipfile.ZIP_DEFLATED
    fits_name = next(n for n in everything.namelist() if n.endswith(".fits"))
    assert info[fits_name].compress_type == zipfile.ZIP_STORED

    unzip = shutil.which("unzip")
    if unzip:  # Info-ZIP reads the streamed layout (data descriptors) too
        target = tmp_path / "all.zip"
        target.write_bytes(await _raw_bundle(svc, job_id, "all"))
        result = subprocess.run([unzip, "-tq", str(target)], capture_output=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr

    head = await svc.client.head(f"/soda/async/{job_id}/bundles/all.zip", headers=ALICE)
    assert head.status == 200 and head.content_type == "application/zip"


async def test_bundles_follow_the_owner_rules_and_the_phase(svc: Harness) -> None:
    job_id = await _completed(svc, ALICE)
    for headers in (BOB, {}):
        response = await svc.client.get(
            f"/soda/async/{job_id}/bundles/reduced.zip", headers=headers
        )
        assert response.status == 404
        assert b'name="QUERY_STATUS" value="ERROR"' in await response.read()
    unknown = await svc.client.get(f"/soda/async/{job_id}/bundles/nonsense.zip", headers=ALICE)
    assert unknown.status == 404
    pending = await svc.create({"ID": svc.complete_id}, headers=ALICE)
    response = await svc.client.get(f"/soda/async/{pending}/bundles/all.zip", headers=ALICE)
    assert response.status == 404  # no products yet: a resource that does not exist (DALI)
    assert "votable" in response.content_type
    body = await response.read()
    assert b'value="ERROR"' in body and b"PENDING" in body


async def test_bundle_refuses_when_a_product_was_collected(svc: Harness) -> None:
    job_id = await _completed(svc, ALICE)
    job = await svc.runtime.service.get(job_id, "alice")
    target = next(r for r in job.results if r["target"] and r["category"] != "PREVIEW")
    (svc.runtime.products.step_dir(target["step_key"]) / target["file"]).unlink()
    response = await svc.client.get(f"/soda/async/{job_id}/bundles/reduced.zip", headers=ALICE)
    assert response.status == 404
    assert b"run the job again" in await response.read()


def test_plan_raw_inputs_keeps_runnable_steps_and_safe_paths() -> None:
    plan = {
        "datasets": [{"complete": True, "jobs": ["a"]}, {"complete": False, "jobs": ["b"]}],
        "jobs": [
            {
                "job_id": "a",
                "inputs": [
                    {"file_id": "ivo://x/raw?n/2.fits", "path": "n/2.fits"},
                    {"file_id": "ivo://x/raw?n/1.fits", "path": "n/1.fits"},
                    {"file_id": None, "path": None, "job": "up"},
                    {"file_id": "ivo://x/raw?n/1.fits", "path": "n/1.fits"},
                ],
            },
            {"job_id": "b", "inputs": [{"file_id": "ivo://x/raw?n/3.fits", "path": "n/3.fits"}]},
        ],
    }
    assert plan_raw_inputs(plan) == [
        ("ivo://x/raw?n/1.fits", "n/1.fits"),
        ("ivo://x/raw?n/2.fits", "n/2.fits"),
    ]
    assert plan_raw_inputs(None) == []
    from soda_reduce.web.bundles import _inside

    root = Path("/archive")
    assert _inside(root, "n/1.fits") == Path("/archive/n/1.fits")
    assert _inside(root, "../etc/passwd") is None
    assert _inside(root, "/etc/passwd") is None
    assert _inside(root, "n/../../x") is None


# ----------------------------------------------------------------- product files


async def test_product_files_types_etag_and_ranges(svc: Harness) -> None:
    """What web/products.py promises: types from the manifest, ETag, 304, ranges, 416."""
    job_id = await _completed(svc, ALICE)
    job = await svc.runtime.service.get(job_id, "alice")
    preview = next(r for r in job.results if r["category"] == "PREVIEW")
    fits_row = next(r for r in job.results if r["file"].endswith(".fits"))
    png = await svc.client.get(f"/products/{preview['step_key']}/{preview['file']}")
    assert png.status == 200 and png.content_type == "image/png"
    assert (await png.read()).startswith(b"\x89PNG\r\n\x1a\n")
    path = f"/products/{fits_row['step_key']}/{fits_row['file']}"
    whole = await svc.client.get(path)
    assert whole.content_type == "application/fits"
    data = await whole.read()
    etag = whole.headers["ETag"]
    again = await svc.client.get(path, headers={"If-None-Match": etag})
    assert again.status == 304 and await again.read() == b""
    tail = await svc.client.get(path, headers={"Range": "bytes=-2880"})
    assert tail.status == 206 and await tail.read() == data[-2880:]
    assert tail.headers["Content-Range"] == f"bytes {len(data) - 2880}-{len(data) - 1}/{len(data)}"
    middle = await svc.client.get(path, headers={"Range": "bytes=2880-5759"})
    assert middle.status == 206 and await middle.read() == data[2880:5760]
    beyond = await svc.client.get(path, headers={"Range": f"bytes={len(data) + 10}-"})
    assert beyond.status == 416
    manifest = await svc.client.get(f"/products/{fits_row['step_key']}/products.json")
    assert manifest.content_type == "application/json"
    assert any(p["file"] == fits_row["file"] for p in (await manifest.json())["products"])
    for bad in (
        f"/products/{fits_row['step_key']}/nope.fits",
        f"/products/{'0' * 64}/{fits_row['file']}",
        f"/products/{fits_row['step_key'][:20]}/{fits_row['file']}",
        f"/products/{fits_row['step_key']}/..%2Fproducts.json",
    ):
        assert (await svc.client.get(bad)).status == 404, bad
