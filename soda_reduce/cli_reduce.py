"""``reduce``'s run and report: plans run into the shared product store, then placed.

Steps are computed into the data directory's product store, where every later run,
from any folder, finds them (the step cache is keyed by content, not by ``--out``);
the output folder gets links to them (`runtime.product_links`) and ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from soda_reduce.cli_checks import EXIT_FAILURE, CommandError
from soda_reduce.pipelines import Pipeline
from soda_reduce.reduction.plan import ReductionPlan
from soda_reduce.runtime.product_links import Placement, place
from soda_reduce.runtime.products import ProductStore, main_product

OK = ("done", "cached")


async def run_plans(
    store: Any,
    plans: list[tuple[Pipeline, ReductionPlan]],
    args: argparse.Namespace,
    archive: Path,
    products: ProductStore,
) -> list[tuple[ReductionPlan, Any]]:
    from tqdm import tqdm

    from soda_reduce.runtime.executors.local import LocalExecutor
    from soda_reduce.runtime.runner import PlanRunner, RunnerConfig

    show = sys.stderr.isatty()
    total = sum(len(plan.runnable_jobs()) for _, plan in plans)
    bar = tqdm(total=total, desc="steps", unit="step", file=sys.stderr, disable=not show)
    offset = 0

    def on_event(event: dict[str, Any]) -> None:
        if event["type"] == "progress":
            bar.n = offset + event["done"] + event["failed"]
            bar.set_postfix_str(", ".join(event["running"])[:60])
            bar.refresh()

    if args.executor == "kubernetes":
        from soda_reduce.runtime.executors.kubernetes import KubernetesConfig, KubernetesExecutor

        executor: Any = KubernetesExecutor(KubernetesConfig.from_env())
    else:
        executor = LocalExecutor(concurrency=args.jobs)
    outcomes = []
    try:
        for pipeline, plan in plans:
            runner = PlanRunner(
                store,
                executor,
                products,
                archive,
                config=RunnerConfig(max_attempts=args.max_attempts, rerun=args.rerun),
                on_event=on_event,
                pipeline=pipeline.name,
            )
            outcome = await runner.run(plan)
            outcomes.append((plan, outcome))
            offset += len(plan.runnable_jobs())
    finally:
        bar.close()
        await executor.close()
    return outcomes


def _placed(
    outcomes: list[tuple[ReductionPlan, Any]], products: ProductStore, out: Path
) -> Placement:
    """Every step that ran or was reused, in ``out/<job id>/``."""
    placed = Placement()
    for plan, outcome in outcomes:
        for job in plan.runnable_jobs():
            state = outcome.jobs.get(job.job_id)
            if state is not None and state.status in OK and job.step_key:
                placed.add(place(products, job.step_key, out / job.job_id))
    return placed


def _results(
    outcomes: list[tuple[ReductionPlan, Any]], products: ProductStore, out: Path
) -> list[dict[str, Any]]:
    results = []
    for plan, outcome in outcomes:
        for dataset in plan.datasets:
            job = plan.job(dataset.target_job)
            state = outcome.jobs.get(job.job_id)
            entry: dict[str, Any] = {
                "pipeline": plan.cascade,
                "dataset": dataset.label,
                "complete": dataset.complete,
            }
            if not dataset.complete:
                entry["reasons"] = list(dataset.reasons)
            if state is not None:
                entry.update(status=state.status, step_key=job.step_key, error=state.error)
                if state.status in OK and job.step_key:
                    folder = out / job.job_id
                    entry["directory"] = str(folder)
                    main = main_product(products, job.step_key, dataset.main_inputs)
                    if main is not None:
                        inside = main.relative_to(products.step_dir(job.step_key))
                        entry["main_product"] = str(folder / inside)
            results.append(entry)
    return results


def report(outcomes: list[tuple[ReductionPlan, Any]], products: ProductStore, out: Path) -> int:
    """Place the products, write ``results.json``, say what happened; raise unless every
    step that was to run is done (computed or reused)."""
    out.mkdir(parents=True, exist_ok=True)
    placed = _placed(outcomes, products, out)
    results = _results(outcomes, products, out)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    count = {s: sum(o.count(s) for _, o in outcomes) for s in ("cached", "done", "failed")}
    skipped = sum(o.count("skipped") for _, o in outcomes)
    steps = sum(len(p.runnable_jobs()) for p, _ in outcomes)
    wall = sum(o.wall_seconds for _, o in outcomes)
    print(
        f"{steps} steps in {wall:.1f} s: {count['done']} computed, {count['cached']} reused "
        f"from the cache, {count['failed']} failed, {skipped} skipped"
    )
    if steps and count["cached"] == steps:
        print("all steps were cache hits: nothing was recomputed")
    for entry in results:
        where = entry.get("main_product") or entry.get("directory") or entry.get("error")
        print(
            f"  {entry['dataset']}: {entry.get('status', 'incomplete')}  {where or 'not reduced'}"
        )
    print(f"products in {out}: {placed.describe()}")
    print(f"results: {out / 'results.json'}")
    sys.stdout.flush()
    bad = count["failed"] + skipped
    if bad:
        raise CommandError(
            f"{bad} of {steps} steps failed or were skipped (see {out / 'results.json'})",
            EXIT_FAILURE,
        )
    return 0
