"""Benchmark: planning one science frame by asking the store, at growing archive sizes.

Indexes the demo archive (real FITS files, the real indexer) into an embedded SecantusDB,
then grows the index by cloning its records through the normal write path
(``Annotator.annotate`` + ``Store.upsert_raw_files``): clone ``k`` is shifted by whole
nights (4 nights a block, 900 blocks: ten years) and, past those, renamed to another
instrument, so nights fill up as a real archive's do. At each size, for a sample of
science frames:

  (a) the service's path: ``checked_request`` + ``plan_ids`` (the store asked, in a
      worker thread), wall time p50 / p95, and the store's queries and documents read
      (``StoreFrames.counts``);
  (b) the path before (``--before``): the whole index loaded, then planned in memory,
      as every RUN did (load and plan timed apart);
  (c) SecantusDB's ``explain`` of one association query (a bias slot, +-3 nights);
  (d) DataLink's view of a raw file (``raw_reduction``: its plan and the calibrations
      picked), as ``/datalink?ID=`` and the raw-file page compute it.

    .venv/bin/python bench/plan_query_bench.py --sizes 2000 20000 100000 --before
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from soda_reduce.pipelines import registry
from soda_reduce.pipelines.ccd.demo import generate_demo_archive
from soda_reduce.reduction.frame_source import key_values
from soda_reduce.reduction.index_model import RawFile, raw_file_id
from soda_reduce.reduction.overrides import Overrides
from soda_reduce.runtime.archive_plans import ArchivePipelines, files_of, indexer_of
from soda_reduce.runtime.broker import InProcessQueue
from soda_reduce.runtime.claims import Annotator
from soda_reduce.runtime.datalinks import raw_reduction
from soda_reduce.runtime.events import JobEvents
from soda_reduce.runtime.indexer import index_archive
from soda_reduce.runtime.service import JobService
from soda_reduce.runtime.store import EmbeddedMongo, Store
from soda_reduce.vo.job_request import parse_job_request

AUTHORITY = "bench.example"
BLOCK_NIGHTS = 4  # the demo archive spans 3 nights
BLOCKS = 900  # ten years of 4-night blocks, then another instrument
BATCH = 2000


def clone(raw: RawFile, k: int, annotator: Annotator) -> RawFile:
    """Record ``raw`` as if observed ``k`` blocks later (another instrument past BLOCKS)."""
    block, camera = k % BLOCKS, k // BLOCKS
    header = dict(raw.header)
    date = header.get("DATE-OBS")
    if isinstance(date, str):
        moment = datetime.fromisoformat(date) + timedelta(days=BLOCK_NIGHTS * block)
        header["DATE-OBS"] = moment.isoformat(timespec="milliseconds")
    if isinstance(header.get("MJD-OBS"), float):
        header["MJD-OBS"] += BLOCK_NIGHTS * block
    if camera:
        header["INSTRUME"] = f"{header.get('INSTRUME', 'cam')}-{camera}"
    path = f"clone{k:06d}/{raw.path}"
    copy = replace(
        raw,
        file_id=raw_file_id(path, AUTHORITY),
        path=path,
        header=header,
        checksum=f"{raw.checksum[:48]}{k:016x}",
        classified=None,
    )
    return annotator.annotate(copy)


async def grow(
    store: Store, seed: list[RawFile], size: int, have: int, annotator: Annotator
) -> int:
    """Clone ``seed`` until the index holds ``size`` records; the count reached."""
    k = have // len(seed)
    while have < size:
        batch = []
        while len(batch) < BATCH and have + len(batch) < size:
            batch.extend(clone(raw, k, annotator) for raw in seed)
            k += 1
        await store.upsert_raw_files(batch)
        have += len(batch)
    return have


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(
    store: Store, service: JobService, science: list[str], bias: RawFile, before: bool
) -> None:
    ccd = service.pipelines.get("ccd")
    walls, queries, documents, complete = [], [], [], 0
    for file_id in science:
        request = parse_job_request([("ID", file_id)])
        started = time.perf_counter()
        checked, pipeline = await service.checked_request(request)
        plan = await service.plan_ids(pipeline, checked.ids, checked.target, checked.parameters)
        walls.append(time.perf_counter() - started)
        complete += plan.complete
        source = service.pipelines.source(ccd, store)
        await asyncio.to_thread(service.pipelines.plan_from, ccd, source, ids=[file_id])
        queries.append(source.counts.queries)  # type: ignore[attr-defined]
        documents.append(source.counts.documents)  # type: ignore[attr-defined]
    print(
        f"  (a) store-backed: p50 {statistics.median(walls) * 1e3:.0f} ms, "
        f"p95 {percentile(walls, 0.95) * 1e3:.0f} ms over {len(walls)} frames "
        f"({complete} complete); queries p50 {statistics.median(queries):.0f}, "
        f"documents read p50 {statistics.median(documents):.0f} (max {max(documents)})",
        flush=True,
    )
    links = []
    for file_id in science:  # what DataLink's #proc / #calibration rows of a raw ID cost
        started = time.perf_counter()
        (raw,) = await store.raw_files_by_id([file_id])
        await asyncio.to_thread(raw_reduction, service.pipelines, store, raw)
        links.append(time.perf_counter() - started)
    print(
        f"  (d) DataLink's raw-file reduction view: p50 {statistics.median(links) * 1e3:.0f} ms, "
        f"p95 {percentile(links, 0.95) * 1e3:.0f} ms",
        flush=True,
    )
    if before:
        started = time.perf_counter()
        files = await store.all_raw_files()
        loaded = time.perf_counter() - started
        pipelines = ArchivePipelines(registry())
        from soda_reduce.reduction.planner import plan_reduction

        own = files_of(files, "ccd")
        plans = []
        for file_id in science[:5]:
            started = time.perf_counter()
            await asyncio.to_thread(
                plan_reduction, ccd.cascade, own, ids=[file_id], static=pipelines.static(ccd)
            )
            plans.append(time.perf_counter() - started)
        print(
            f"  (b) before: load the index {loaded:.2f} s, then classify + plan in memory "
            f"p50 {statistics.median(plans):.2f} s",
            flush=True,
        )
    await explain_bias_window(store, service, bias)


async def explain_bias_window(store: Store, service: JobService, bias: RawFile) -> None:
    """What SecantusDB does with one association question: a bias slot, +-3 nights."""
    indexer = indexer_of(service.pipelines.get("ccd"))
    frame = indexer.frame(bias)
    slot = indexer.slot("BIAS", key_values(frame, ("INSTRUME", "BINNING", "READOUT")))
    night = bias.classified.night if bias.classified and bias.classified.night else 0
    query = {"slots": slot, "night": {"$gte": night - 3, "$lte": night + 3}}
    explained = await store.db.command(
        "explain", {"find": "raw_files", "filter": query}, verbosity="executionStats"
    )
    stats = explained.get("executionStats", {})
    plan = explained["queryPlanner"]["winningPlan"]
    scan = plan.get("inputStage", plan)
    started = time.perf_counter()
    found = await store.raw_files.find(query).to_list()
    took = time.perf_counter() - started
    print(
        f"  (c) explain bias +-3 nights: {scan.get('stage')} {scan.get('indexName')}, "
        f"keys examined {stats.get('totalKeysExamined')}, documents examined "
        f"{stats.get('totalDocsExamined')}, returned {len(found)} in {took * 1e3:.1f} ms",
        flush=True,
    )


async def run(
    sizes: list[int], samples: int, before: bool, before_up_to: int, workdir: Path | None
) -> None:
    base = Path(tempfile.mkdtemp(prefix="plan_query_bench_", dir=workdir))
    try:
        await measure_sizes(base, sizes, samples, before, before_up_to)
    finally:
        shutil.rmtree(base, ignore_errors=True)  # 1,000,000 records: ~2.6 GB


async def measure_sizes(
    base: Path, sizes: list[int], samples: int, before: bool, before_up_to: int
) -> None:
    root = base / "demo"
    generate_demo_archive(root, nights=3, science_per_night=2, size=64)
    annotator = Annotator(registry(), Overrides())
    async with EmbeddedMongo(base / "mongo") as mongo:
        store = Store.connect(mongo.url, "plan_query_bench")
        await store.ensure_indexes()
        await index_archive(store, root, authority=AUTHORITY, annotator=annotator)
        seed = [raw for raw in await store.all_raw_files() if raw.pipeline]
        service = JobService(store, ArchivePipelines(registry()), InProcessQueue(), JobEvents())
        ccd = indexer_of(registry().get("ccd"))
        demo_science = [
            raw.file_id for raw in seed if raw.classified and "SCIENCE" in raw.classified.categories
        ]
        bias = next(r for r in seed if r.classified and "BIAS" in r.classified.categories)
        have = len(seed)
        for size in sizes:
            started = time.perf_counter()
            have = await grow(store, seed, size, have, annotator)
            print(
                f"{have} records (cloned in {time.perf_counter() - started:.0f} s; "
                f"rules {ccd.rules})",
                flush=True,
            )
            science = (demo_science * (samples // max(1, len(demo_science)) + 1))[:samples]
            await measure(store, service, science, bias, before and have <= before_up_to)
        await store.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--before", action="store_true", help="also time the path before")
    parser.add_argument(
        "--before-up-to", type=int, default=200_000, help="sizes beyond which (b) is skipped"
    )
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args(argv)
    asyncio.run(run(sorted(args.sizes), args.samples, args.before, args.before_up_to, args.workdir))


if __name__ == "__main__":
    main()
