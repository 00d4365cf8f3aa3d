"""All of a job's work is supervised: cutting stops on ABORT and at the executionDuration,
keeps the job's lease, is cut once by one worker, and stays within the job's limits.

The whole stack runs (HTTP API, in-process queue and events, real workers with the local
executor running the ccd recipes on the demo archive, the real store); the SODA values
multiply into hundreds of cutouts of the reduced image (~15 ms each).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import pytest
from astropy.io import fits
from astropy.wcs import WCS

from soda_reduce.runtime.cutout import cutouts_dir
from soda_reduce.runtime.cutout_jobs import (
    MAX_CUTOUTS_CEILING,
    ROW_FIELDS,
    CutoutLimits,
    CutoutsStopped,
    cut_products,
)
from soda_reduce.runtime.jobs import JobRecord
from soda_reduce.runtime.store import Store
from soda_reduce.runtime.sweeper import Sweeper
from soda_reduce.vo.job_request import RequestLimits
from soda_reduce.vo.soda import parse_soda
from soda_reduce.vo.uws import Phase
from soda_reduce.web.middleware import AuthConfig
from tests.support.uws_harness import Harness, uws_service
from tests.support.workers import running_worker, worker_config

pytestmark = pytest.mark.filterwarnings("ignore::astropy.wcs.FITSFixedWarning")
OWNER = {"X-Remote-User": "alice"}
FINAL = (Phase.COMPLETED, Phase.ERROR, Phase.ABORTED)


@pytest.fixture
async def svc(store: Store, demo_archive: Path, tmp_path: Path) -> AsyncIterator[Harness]:
    auth = AuthConfig(trusted_header="X-Remote-User")
    async with uws_service(store, demo_archive, tmp_path, auth=auth, worker=False) as harness:
        # the request-time cap is another test's business: here jobs cut thousands
        harness.runtime.service.request_limits = RequestLimits(max_cutout_combinations=10_000)
        yield harness


def _soda(svc: Harness, regions: int, times: int, bands: int = 1) -> list[tuple[str, str]]:
    """SODA values making ``regions x times x bands`` cutouts of the science product, each
    a FITS image (every circle lies on the image, every TIME and BAND overlaps it)."""
    path = svc.archive / svc.complete_id.split("?", 1)[1]
    with fits.open(path) as hdul:
        header = next(h.header for h in hdul if h.data is not None)
    wcs = WCS(header)
    pairs = []
    for n in range(regions):
        ra, dec = wcs.pixel_to_world_values(20.0 + n % 20, 20.0 + n // 20)
        pairs.append(("CIRCLE", f"{float(ra)} {float(dec)} {(3 + n % 5) / 3600}"))
    pairs += [("TIME", f"{50000 + n} 70000") for n in range(times)]
    pairs += [("BAND", f"{5.0e-7 + n * 1e-9} 8.0e-7") for n in range(bands)]
    return pairs


async def _create(svc: Harness, *extra: tuple[str, str]) -> str:
    return await svc.create([("ID", svc.complete_id), ("PHASE", "RUN"), *extra], headers=OWNER)


async def _job(svc: Harness, job_id: str) -> JobRecord:
    job = await svc.runtime.service.jobs.get(job_id, any_owner=True)
    assert job is not None
    return job


async def _until(
    check: Callable[[], Awaitable[bool]], limit_s: float, what: str, every_s: float = 0.05
) -> float:
    """Poll ``check`` until true; the time it took. Bounded."""
    start = time.monotonic()
    while not await check():
        assert time.monotonic() - start < limit_s, f"not {what} within {limit_s} s"
        await asyncio.sleep(every_s)
    return time.monotonic() - start


async def _final(svc: Harness, job_id: str, limit_s: float = 120) -> JobRecord:
    async def final() -> bool:
        return (await _job(svc, job_id)).phase in FINAL

    await _until(final, limit_s, f"job {job_id} final", every_s=0.2)
    return await _job(svc, job_id)


def _files(svc: Harness, job_id: str) -> list[str]:
    folder = cutouts_dir(svc.runtime.products.root, job_id)
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


async def _cutting(svc: Harness, job_id: str, at_least: int) -> None:
    async def started() -> bool:
        job = await _job(svc, job_id)
        assert job.phase not in FINAL, (job.phase, job.error)
        return len(_files(svc, job_id)) >= at_least

    await _until(started, 60, f"{at_least} cutouts of {job_id} written")


async def _settled(svc: Harness, job_id: str, quiet_s: float = 1.5) -> tuple[float, int]:
    """Wait until no cutout has appeared for ``quiet_s``: (seconds until the last, count)."""
    start, count, last = time.monotonic(), len(_files(svc, job_id)), time.monotonic()
    while time.monotonic() - last < quiet_s:
        assert time.monotonic() - start < 30, "cutting never stopped"
        await asyncio.sleep(0.05)
        now = len(_files(svc, job_id))
        if now != count:
            count, last = now, time.monotonic()
    return last - start, count


# --------------------------------------------------------------------------- stopping


async def test_abort_stops_cutting_at_once(svc: Harness) -> None:
    async with running_worker(svc, worker_config(), "w1"):
        job_id = await _create(svc, *_soda(svc, regions=20, times=20, bands=5))  # 2,000
        await _cutting(svc, job_id, at_least=20)
        response = await svc.client.post(
            f"/soda/async/{job_id}/phase",
            data={"PHASE": "ABORT"},
            headers=OWNER,
            allow_redirects=False,
        )
        assert response.status == 303, await response.text()
        stopped_after, count = await _settled(svc, job_id)
        assert stopped_after < 3.0  # the cutout in hand at most, then nothing
        await asyncio.sleep(1.0)
        assert len(_files(svc, job_id)) == count < 2000
        job = await _job(svc, job_id)
        assert job.phase == Phase.ABORTED and not job.doc.get("cutouts")
        assert svc.runtime.queue.qsize() == 0 and svc.runtime.queue.dead == []  # acked


async def test_execution_duration_stops_cutting(svc: Harness) -> None:
    async with running_worker(svc, worker_config(), "w1"):
        first = await _create(svc)  # caches every step: the next job goes straight to cutting
        assert (await _final(svc, first)).phase == Phase.COMPLETED
        job_id = await _create(
            svc, ("EXECUTIONDURATION", "3"), *_soda(svc, regions=20, times=20, bands=5)
        )
        job = await _final(svc, job_id, limit_s=30)
        assert job.phase == Phase.ABORTED, job.error
        assert job.error is not None and job.error.code == "deadline"
        assert "executionDuration of 3 s exceeded" in job.error.message
        assert job.start_time is not None and job.end_time is not None
        assert (job.end_time - job.start_time).total_seconds() < 5
        _, count = await _settled(svc, job_id)
        assert 0 < count < 2000
        await asyncio.sleep(1.0)
        assert len(_files(svc, job_id)) == count


# --------------------------------------------------------------------------- lease and duplicates


async def test_long_cutting_keeps_its_lease_and_is_cut_once(svc: Harness) -> None:
    """Cutting longer than several leases: the lease is renewed (the sweeper, at zero
    grace, never sees an orphan), and republished messages of the job, consumed by a
    second worker while the first cuts, are dropped: one delivery, each cutout once."""
    config = worker_config(lease_s=1.5, check_s=0.3)
    sweeper = Sweeper(
        svc.runtime.service,
        svc.runtime.products,
        cache_bytes=10**12,
        outbox_after=timedelta(0),
        lease_grace=timedelta(0),
        lost_after=timedelta(0),
    )
    seen: list[str] = []

    async def sweeping() -> None:
        while True:  # until cancelled
            report = await sweeper.sweep(collect=False)
            seen.extend(report.republished + report.lost + report.aborted)
            await asyncio.sleep(0.3)

    async with running_worker(svc, config, "w1"), running_worker(svc, config, "w2"):
        sweeps = asyncio.create_task(sweeping())
        try:
            job_id = await _create(svc, *_soda(svc, regions=20, times=15, bands=2))  # 600
            await _cutting(svc, job_id, at_least=10)
            seen.clear()  # republished while QUEUED: lost_after is 0 here
            leases = [(await _job(svc, job_id)).lease_until]
            for _ in range(3):  # duplicates, as a sweeper would send for a lost message
                assert await svc.runtime.service.publish(job_id, again=True)
                await asyncio.sleep(config.lease_s)
                leases.append((await _job(svc, job_id)).lease_until)
            job = await _final(svc, job_id)
        finally:
            sweeps.cancel()
            with pytest.raises(asyncio.CancelledError):
                await sweeps
    assert job.phase == Phase.COMPLETED, job.error
    assert job_id not in seen
    assert job.deliveries == 1
    # still cutting at the last look (the lease is cleared when the job ends), renewed
    assert None not in leases and leases == sorted(set(leases))
    rows = job.doc["cutouts"]
    assert len(rows) == 600 and all(tuple(r) == ROW_FIELDS for r in rows)
    assert [r["name"] for r in rows] == sorted(_files(svc, job_id), key=_number)
    assert svc.runtime.queue.qsize() == 0 and svc.runtime.queue.dead == []


def _number(name: str) -> int:
    return int(name.split("-")[1])


# --------------------------------------------------------------------------- limits


async def test_cutout_count_and_bytes_limits(svc: Harness) -> None:
    limits = CutoutLimits(max_cutouts=5, max_bytes=60_000)  # a cutout here is ~23 KB
    async with running_worker(svc, worker_config(cutouts=limits), "w1"):
        many = await _create(svc, *_soda(svc, regions=5, times=2))  # 10 > 5
        big = await _create(svc, *_soda(svc, regions=4, times=1))  # 4 x 23 KB > 60 KB
        fine = await _create(svc, *_soda(svc, regions=2, times=1))
        jobs = [await _final(svc, job_id) for job_id in (many, big, fine)]
    assert [j.phase for j in jobs] == [Phase.ERROR, Phase.ERROR, Phase.COMPLETED]
    assert jobs[0].error is not None and jobs[1].error is not None
    assert jobs[0].error is not None and jobs[0].error.code == "limit"
    assert "10 cutouts requested" in jobs[0].error.message
    assert "at most 5 (SODA_REDUCE_MAX_CUTOUTS)" in jobs[0].error.message
    assert "SODA_REDUCE_MAX_JOB_BYTES" in jobs[1].error.message
    assert "58.5938 KiB" in jobs[1].error.message
    assert _files(svc, many) == [] and _files(svc, big) == []  # nothing past a limit is kept
    assert len(jobs[2].doc["cutouts"]) == 2
    # the worker's results page names the error
    response = await svc.client.get(f"/soda/async/{many}/error", headers=OWNER)
    assert "SODA_REDUCE_MAX_CUTOUTS" in await response.text()


def test_the_cutout_count_has_a_ceiling() -> None:
    """However configured, a job's result list stays far below the 16 MB document limit."""
    assert CutoutLimits(max_cutouts=10**9).count == MAX_CUTOUTS_CEILING
    assert CutoutLimits(max_cutouts=7).count == 7


def test_cutting_stops_on_its_flag_and_resumes_what_was_written(
    demo_archive: Path, tmp_path: Path
) -> None:
    raw = demo_archive / "2024-01-04" / "M67_R_1x1_001.fits"
    with fits.open(raw) as hdul:
        wcs = WCS(next(h.header for h in hdul if h.data is not None))
    ra, dec = (float(v) for v in wcs.pixel_to_world_values(30.0, 30.0))
    request = parse_soda([("CIRCLE", f"{ra} {dec} {r / 3600}") for r in (2, 3, 4)], sync=False)
    targets = [(raw, "raw/M67_R_1x1_001.fits")]
    out = tmp_path / "cutouts"
    stop = threading.Event()
    stop.set()
    with pytest.raises(CutoutsStopped):
        cut_products(out, targets, request.filters(), stop=stop)
    assert not any(out.iterdir())
    first = cut_products(out, targets, request.filters())
    assert [r["content_type"] for r in first] == ["application/fits"] * 3
    (out / first[1]["name"]).unlink()  # an earlier attempt got as far as results 1 and 3
    stamps = {r["name"]: (out / r["name"]).stat().st_mtime_ns for r in (first[0], first[2])}
    again = cut_products(out, targets, request.filters())
    assert again == first
    assert {n: (out / n).stat().st_mtime_ns for n in stamps} == stamps  # kept, not cut again
    assert sorted(p.name for p in out.iterdir()) == sorted(r["name"] for r in first)  # no .part
