"""Benchmark of plan execution, each figure measured in one run.

(a) orchestration overhead per step with the no-op recipe ``core.noop``:
    per step, the runner's time from claim to record minus the recipe
    process's own lifetime (median and 90th percentile, ms). Goal <= 20 ms.
(b) PAWS scale: N science frames (default 960) of the demo archive with the
    real ``ccd`` recipes: wall time / (sum of recipe CPU seconds / cores).
    Goal <= 1.15.
(c) smart re-run: the identical request again / the first run (goal <= 0.02),
    and a run with one changed flat parameter, which must recompute only the
    flat and science steps.

  .venv/bin/python bench/reduce_bench.py --science 960 --size 128
  .venv/bin/python bench/reduce_bench.py --quick        # 96 frames, for a smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from soda_reduce.pipelines import get_cascade
from soda_reduce.pipelines.ccd.demo import generate_demo_archive
from soda_reduce.reduction.cascade import classification, data_source, param
from soda_reduce.reduction.planner import plan_reduction
from soda_reduce.reduction.rules import kw
from soda_reduce.reduction.tasks import cascade, task
from soda_reduce.runtime.executors.local import LocalExecutor
from soda_reduce.runtime.indexer import index_archive
from soda_reduce.runtime.products import ProductStore
from soda_reduce.runtime.runner import PlanOutcome, PlanRunner, RunnerConfig
from soda_reduce.runtime.store import EmbeddedMongo, Store

GOALS = {"(a) overhead median ms": 20.0, "(b) wall/(cpu/cores)": 1.15, "(c) rerun/first": 0.02}


def noop_cascade():
    """One no-op job per raw file: pure orchestration, nothing to compute."""
    anything = classification("ANY", kw("IMAGETYP").exists())
    raw = data_source("raw_any", anything).build()
    noop = (
        task("noop")
        .recipe("core.noop", "1")
        .main_input(raw)
        .params(
            param("sleep_s", float, 0.0, minimum=0.0),
            param("fail", str, "no", choices=("no", "failure", "kill")),
        )
        .products("NOOP")
        .build()
    )
    return cascade("noop").tasks(noop).default_target(noop).build()


async def run_plan(store: Store, plan, products: Path, archive: Path, jobs: int) -> PlanOutcome:
    runner = PlanRunner(
        store,
        LocalExecutor(concurrency=jobs),
        ProductStore(products),
        archive,
        config=RunnerConfig(max_attempts=1),
    )
    return await runner.run(plan)


async def bench(args: argparse.Namespace) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="reduce_bench_"))
    cores = os.cpu_count() or 1
    figures: dict[str, float] = {}
    # a quarter of the demo's science frames cannot be reduced (no R 2x2 flats, on
    # purpose): generate enough nights, then ask for exactly N reducible frames
    nights = max(1, math.ceil(args.science / (0.75 * args.per_night)) + 1)
    print(f"generating {nights} nights x {args.per_night} science frames, {args.size} px ...")
    started = time.perf_counter()
    summary = generate_demo_archive(
        work / "archive", nights=nights, seed=3, science_per_night=args.per_night, size=args.size
    )
    print(f"  {sum(summary.counts.values())} files in {time.perf_counter() - started:.1f} s")
    server = EmbeddedMongo(work / "db")
    await server.start()
    store = Store.connect(server.url, "bench")
    try:
        await store.ensure_indexes()
        await index_archive(store, work / "archive", authority="bench", checksum_mode="fast")
        files = await store.all_raw_files()

        # (a) orchestration overhead with the no-op recipe: one step at a time,
        # so that nothing but the runner's own work separates claim from record
        noop_plan = plan_reduction(noop_cascade(), files[: args.noop_steps])
        overhead = []
        for job in noop_plan.jobs:
            single = dataclasses.replace(
                noop_plan,
                jobs=(job,),
                datasets=(dataclasses.replace(noop_plan.datasets[0], jobs=(job.job_id,)),),
            )
            outcome = await run_plan(store, single, work / "noop", work / "archive", 1)
            (result,) = outcome.jobs.values()
            assert result.status == "done", result.error
            overhead.append((result.total_seconds - result.wall_seconds) * 1000)
        overhead.sort()
        figures["(a) overhead median ms"] = statistics.median(overhead)
        figures["(a) overhead p90 ms"] = overhead[int(0.9 * (len(overhead) - 1))]
        figures["(a) steps"] = len(overhead)
        # and the same steps as one plan on every core: throughput, queueing included
        many = await run_plan(store, noop_plan, work / "noop-all", work / "archive", cores)
        assert many.ok
        figures["(a) one plan, no-op steps/s"] = len(many.jobs) / many.wall_seconds

        # (b) PAWS scale with the real recipes
        ccd = get_cascade("ccd")
        everything = plan_reduction(ccd, files, target="science")
        chosen = [d.main_inputs[0] for d in everything.datasets if d.complete][: args.science]
        plan = plan_reduction(ccd, files, target="science", ids=chosen)
        runnable = plan.runnable_jobs()
        science = sum(1 for j in runnable if j.task == "science")
        print(f"(b) running {len(runnable)} steps ({science} science frames) on {cores} cores ...")
        first = await run_plan(store, plan, work / "products", work / "archive", args.jobs or cores)
        assert first.ok, [o.error for o in first.jobs.values() if o.error][:3]
        cpu = sum(o.cpu_seconds for o in first.jobs.values())
        figures["(b) science frames"] = science
        figures["(b) steps"] = len(runnable)
        figures["(b) wall s"] = first.wall_seconds
        figures["(b) recipe cpu s"] = cpu
        figures["(b) wall/(cpu/cores)"] = first.wall_seconds / (cpu / cores)

        # (c) smart re-runs
        again = await run_plan(store, plan, work / "products", work / "archive", cores)
        figures["(c) rerun s"] = again.wall_seconds
        figures["(c) rerun/first"] = again.wall_seconds / first.wall_seconds
        changed_plan = plan_reduction(
            ccd, files, target="science", ids=chosen, parameters={"flat.sigma_clip": "4"}
        )
        changed = await run_plan(store, changed_plan, work / "products", work / "archive", cores)
        recomputed = Counter(o.task for o in changed.jobs.values() if o.status == "done")
        reused = Counter(o.task for o in changed.jobs.values() if o.status == "cached")
        print(f"(c) flat.sigma_clip=4: recomputed {dict(recomputed)}, reused {dict(reused)}")
        assert set(recomputed) <= {"flat", "science"}, recomputed
        figures["(c) changed-flat recomputed steps"] = sum(recomputed.values())
    finally:
        await store.close()
        await server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--science", type=int, default=960, help="science frames (b)")
    parser.add_argument("--per-night", type=int, default=96)
    parser.add_argument("--size", type=int, default=128, help="unbinned frame side, pixels")
    parser.add_argument("--noop-steps", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="96 frames, 60 no-op steps")
    parser.add_argument("--jobs", type=int, default=None, help="recipes at once (default: cores)")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.science, args.per_night, args.noop_steps = 96, 48, 60
    figures = asyncio.run(bench(args))
    print(f"\nframes {args.size}x{args.size} (1x1) and {args.size // 2}x{args.size // 2} (2x2)")
    for name, value in figures.items():
        goal = GOALS.get(name)
        verdict = (
            "" if goal is None else ("  ok" if value <= goal else "  MISSED") + f" (<= {goal})"
        )
        print(f"{name:<36} {value:>10.3f}{verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
