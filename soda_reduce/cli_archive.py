"""The archive commands: ``index``, ``plan`` and ``reduce``, over every installed pipeline.

Each file belongs to the pipeline that claims it (recorded by the indexer);
``--pipeline NAME`` restricts a command to one. When nothing can be planned
the commands say how many files each pipeline claimed and classified, list
the files none claims with the reason, and exit non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from soda_reduce.config import Settings
from soda_reduce.pipelines import Pipeline, PipelineError, Registry, registry
from soda_reduce.reduction.graph import plan_dot
from soda_reduce.reduction.index_model import RawFile
from soda_reduce.reduction.overrides import OverridesError
from soda_reduce.reduction.plan import PlanRequestError, ReductionPlan
from soda_reduce.reduction.report import format_plan
from soda_reduce.runtime.archive_plans import pipelines_for_ids, plan_with, summarise
from soda_reduce.runtime.render import write_graph

EXIT_NOTHING = 1  # nothing could be planned or reduced
EXIT_USAGE = 2


class CommandError(Exception):
    """A one-line error for the user, with the exit status."""

    def __init__(self, message: str, status: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.status = status


def loaded_registry(only: str | None) -> Registry:
    found = registry()
    for name, why in found.refused.items():
        print(f"warning: pipeline {name} refused: {why}", file=sys.stderr)
    if only is not None:
        try:
            found.get(only)
        except (KeyError, PipelineError) as exc:
            raise CommandError(str(exc.args[0])) from None
    return found


async def indexed_files(
    settings: Settings, archive: Path, found: Registry, progress: Any = None
) -> tuple[list[RawFile], Any]:
    from soda_reduce.runtime.store import open_store

    async with open_store(settings) as store:
        return await index_into(store, settings, archive, found, progress)


async def index_into(
    store: Any, settings: Settings, archive: Path, found: Registry, progress: Any = None
) -> tuple[list[RawFile], Any]:
    """Bring the index up to date (claims and overrides recorded); every file after."""
    from soda_reduce.runtime.indexer import index_with_claims

    try:
        report = await index_with_claims(store, archive, settings, progress)
    except OverridesError as exc:
        raise CommandError(f"overrides: {exc}") from None
    return await store.all_raw_files(), report


def cmd_index(settings: Settings, args: argparse.Namespace, progress: Any) -> int:
    found = loaded_registry(args.pipeline)
    archive = Path(args.archive).resolve()
    files, report = asyncio.run(indexed_files(settings, archive, found, progress))
    summary, frames = summarise(found, files, args.pipeline)
    by_path = {f.raw.path: (name, f) for name, items in frames.items() for f in items}
    rows = []
    for raw in files:
        if args.pipeline and raw.pipeline != args.pipeline:
            continue
        name, frame = by_path.get(raw.path, (None, None))
        rows.append(
            {
                "id": raw.file_id,
                "path": raw.path,
                "pipeline": name,
                "types": list(frame.categories) if frame else [],
                "category": frame.category if frame else None,
                "override": dict(raw.override) if raw.override else None,
                "night": frame.night if frame else None,
                "claim": raw.claim if name is None else None,
                "problem": raw.problem,
                "note": frame.note if frame else None,
            }
        )
    if args.json:
        doc = {
            "archive": str(archive),
            "report": {
                "added": report.added,
                "updated": report.updated,
                "removed": report.removed,
                "unchanged": report.unchanged,
                "outside": [{"path": p, "problem": why} for p, why in report.outside],
            },
            "pipelines": {
                name: {"claimed": c.claimed, "classified": c.classified, "types": dict(c.types)}
                for name, c in summary.per_pipeline.items()
            },
            "files": rows,
        }
        print(json.dumps(doc, indent=2))
    else:
        _print_index(rows, summary, report)
    if not summary.classified:
        print(_nothing_message(summary), file=sys.stderr)
        return EXIT_NOTHING
    return 0


def _print_index(rows: list[dict[str, Any]], summary: Any, report: Any) -> None:
    width = max((len(r["id"]) for r in rows), default=10)
    for row in rows:
        if row["problem"]:
            status, note = "-", f"  PROBLEM: {row['problem']}"
        elif row["pipeline"] is None:
            status, note = "unclaimed", f"  ({row['claim']})"
        else:
            status = f"{row['pipeline']}: " + (",".join(row["types"]) or "unclassified")
            note = "  [override]" if row["override"] else ""
            if row["note"]:
                note += f"  NOTE: {row['note']}"
        print(f"{row['id']:<{width}}  {status}{note}")
    for path, why in report.outside:  # links leaving the archive: reported, never indexed
        print(f"{path:<{width}}  -  PROBLEM: {why}")
    print()
    for line in summary.lines():
        if not line.startswith("  "):
            print(line)
    print(
        f"index: {report.added} added, {report.updated} updated, {report.removed} removed, "
        f"{report.unchanged} unchanged"
    )


def _nothing_message(summary: Any) -> str:
    lines = ["error: nothing can be planned:"] + [f"  {line}" for line in summary.lines()]
    return "\n".join(lines)


def parse_pairs(items: Any, what: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in items or ():
        if "=" not in item:
            raise CommandError(f"{what} must be NAME=VALUE, got {item!r}")
        name, value = item.split("=", 1)
        pairs[name.strip()] = value.strip()
    return pairs


def plans_for(
    settings: Settings, args: argparse.Namespace, found: Registry, files: list[RawFile]
) -> list[tuple[Pipeline, ReductionPlan]]:
    """The plan of each pipeline the request concerns; CommandError when there is none."""
    where = parse_pairs(args.where, "--where")
    parameters = parse_pairs(args.param, "--param")
    ids = args.id or ()
    try:
        if args.pipeline:
            chosen = [found.get(args.pipeline)]
        elif ids:
            chosen = pipelines_for_ids(found, files, ids)
        else:
            claimed = {raw.pipeline for raw in files if raw.pipeline}
            chosen = [p for p in found.selected(None) if p.name in claimed]
    except (PlanRequestError, PipelineError) as exc:
        raise CommandError(f"error: {exc}") from None
    summary, _ = summarise(found, files, args.pipeline)
    if not chosen or not summary.classified:
        raise CommandError(_nothing_message(summary), EXIT_NOTHING)
    static_root = settings.static_root(Path(args.archive).resolve())
    plans = []
    for pipeline in chosen:
        if args.target and len(chosen) > 1:
            try:
                pipeline.cascade.targets(args.target)
            except KeyError:
                print(f"{pipeline.name}: has no target {args.target}: skipped", file=sys.stderr)
                continue
        try:
            plan = plan_with(
                pipeline,
                files,
                static_root,
                target=args.target,
                ids=ids,
                where=where,
                parameters=parameters,
            )
        except PlanRequestError as exc:
            raise CommandError(f"error: {pipeline.name}: {exc}") from None
        plans.append((pipeline, plan))
    if not plans:
        raise CommandError(f"error: no pipeline has a target {args.target!r}")
    return plans


def nothing_reducible(plans: list[tuple[Pipeline, ReductionPlan]]) -> str | None:
    """Why no dataset of any plan can run, or None when something can."""
    if any(d.complete for _, plan in plans for d in plan.datasets):
        return None
    if not any(plan.datasets for _, plan in plans):
        targets = ", ".join(f"{p.name}:{plan.target}" for p, plan in plans)
        return f"error: nothing to reduce: no dataset for {targets} in this selection"
    reasons = [
        f"  {p.name}: {d.label}: {'; '.join(d.reasons)}"
        for p, plan in plans
        for d in plan.datasets[:20]
    ]
    return "error: no dataset can be reduced:\n" + "\n".join(reasons)


def cmd_plan(settings: Settings, args: argparse.Namespace, progress: Any) -> int:
    found = loaded_registry(args.pipeline)
    archive = Path(args.archive).resolve()
    files, _ = asyncio.run(indexed_files(settings, archive, found, progress))
    plans = plans_for(settings, args, found, files)
    if args.graph:
        for pipeline, plan in plans:
            path = Path(args.graph)
            if len(plans) > 1:
                path = path.with_name(f"{path.stem}-{pipeline.name}{path.suffix}")
            if not path.parent.is_dir():
                raise CommandError(f"error: --graph: no folder {path.parent}")
            written = write_graph(plan_dot(plan), path)
            print(f"plan graph written to {written}", file=sys.stderr)
    if args.json:
        if len(plans) == 1:
            print(plans[0][1].to_json(indent=2))
        else:
            print(json.dumps({"plans": [plan.to_dict() for _, plan in plans]}, indent=2))
    else:
        for pipeline, plan in plans:
            if len(plans) > 1:
                print(f"== pipeline {pipeline.name} ==")
            print(format_plan(plan, verbose=args.verbose), end="")
    why = nothing_reducible(plans)
    if why is not None:
        print(why, file=sys.stderr)
        return EXIT_NOTHING
    return 0


async def reduce_archive(settings: Settings, args: argparse.Namespace) -> int:
    from soda_reduce.runtime.products import ProductStore
    from soda_reduce.runtime.store import open_store

    found = loaded_registry(args.pipeline)
    archive = Path(args.archive).resolve()
    out = Path(args.out).resolve()
    if not out.parent.is_dir():
        raise CommandError(f"error: --out: no folder {out.parent}")
    async with open_store(settings) as store:  # once: starting the embedded store costs
        files, _ = await index_into(store, settings, archive, found)
        plans = plans_for(settings, args, found, files)
        for _, plan in plans:
            for dataset in plan.datasets:
                if not dataset.complete:
                    reasons = "; ".join(dataset.reasons)
                    print(f"not reduced: {dataset.label}: {reasons}", file=sys.stderr)
        why = nothing_reducible(plans)
        if why is not None:
            print(why, file=sys.stderr)
            return EXIT_NOTHING
        outcomes = await _run_plans(store, plans, args, archive, out)
    return _report(outcomes, ProductStore(out), out)


async def _run_plans(
    store: Any,
    plans: list[tuple[Pipeline, ReductionPlan]],
    args: argparse.Namespace,
    archive: Path,
    out: Path,
) -> list[tuple[ReductionPlan, Any]]:
    from soda_reduce.runtime.executors.local import LocalExecutor
    from soda_reduce.runtime.products import ProductStore
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
    products = ProductStore(out)
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


def _report(outcomes: list[tuple[ReductionPlan, Any]], products: Any, out: Path) -> int:
    from soda_reduce.runtime.products import main_product

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
            if state is not None:
                entry.update(status=state.status, step_key=job.step_key, error=state.error)
                if state.status in ("done", "cached") and job.step_key:
                    entry["directory"] = str(products.step_dir(job.step_key))
                    main = main_product(products, job.step_key, dataset.main_inputs)
                    entry["main_product"] = str(main) if main else None
            results.append(entry)
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
    print(f"results: {out / 'results.json'}")
    return 0 if all(o.ok for _, o in outcomes) else 1


def run_command(command: Any, settings: Settings, args: argparse.Namespace) -> int:
    """Run an archive command; CommandError becomes its message and exit status."""
    try:
        return command(settings, args)
    except CommandError as exc:
        message = str(exc)
        print(message if message.startswith("error:") else f"error: {message}", file=sys.stderr)
        return exc.status
