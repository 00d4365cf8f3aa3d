"""The archive commands: ``index``, ``plan`` and ``reduce``, over every installed pipeline.

Each file belongs to the pipeline that claims it (recorded by the indexer);
``--pipeline NAME`` restricts a command to one. When nothing can be planned
the commands say how many files each pipeline claimed and classified, list
the files none claims with the reason, and exit non-zero. A plan with
incomplete datasets is a failure too (exit 1) unless ``--allow-incomplete``
accepts it; ``reduce`` then runs the complete ones.

With ``--id`` the planner asks the store for those frames' groups and candidates
only; without, it plans the whole index (``index`` lists it all anyway), which
grows with the archive.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from soda_reduce.cli_checks import EXIT_FAILURE, EXIT_USAGE, CommandError, pairs
from soda_reduce.config import Settings
from soda_reduce.pipelines import Pipeline, PipelineError, Registry, registry
from soda_reduce.reduction.graph import plan_dot
from soda_reduce.reduction.index_model import RawFile
from soda_reduce.reduction.overrides import OverridesError
from soda_reduce.reduction.plan import PlanRequestError, ReductionPlan
from soda_reduce.reduction.report import format_plan
from soda_reduce.runtime.archive_plans import ArchivePipelines, pipelines_for_ids, summarise
from soda_reduce.runtime.render import write_graph

EXIT_NOTHING = EXIT_FAILURE  # nothing could be planned or reduced
MAX_REASONS = 20  # incomplete datasets listed on stderr, at most

__all__ = ["EXIT_USAGE", "CommandError", "run"]


def run(name: str, settings: Settings, args: argparse.Namespace, progress: Any, shared: Any) -> int:
    """Run ``index``, ``plan`` or ``reduce``; ``shared`` is the store hold taken early."""
    if name == "index":
        return cmd_index(settings, args, progress, shared)
    if name == "plan":
        return cmd_plan(settings, args, progress, shared)
    return asyncio.run(reduce_archive(settings, args, shared))


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
    settings: Settings, archive: Path, progress: Any = None, shared: Any = None
) -> tuple[list[RawFile], Any]:
    """Index, then every file of the index (what ``index`` lists)."""
    from soda_reduce.runtime.store import open_store

    async with open_store(settings, shared=shared) as store:
        report = await index_into(store, settings, archive, progress)
        return await store.all_raw_files(), report


async def index_into(store: Any, settings: Settings, archive: Path, progress: Any = None) -> Any:
    """Bring the index up to date (claims, overrides and classification recorded)."""
    from soda_reduce.runtime.indexer import index_with_claims

    try:
        return await index_with_claims(store, archive, settings, progress)
    except OverridesError as exc:
        raise CommandError(f"overrides: {exc}") from None


def cmd_index(settings: Settings, args: argparse.Namespace, progress: Any, shared: Any) -> int:
    found = loaded_registry(args.pipeline)
    archive = Path(args.archive).resolve()
    files, report = asyncio.run(indexed_files(settings, archive, progress, shared))
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
                "reclassified": report.reclassified,
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
        raise _nothing(summary, archive)
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
    again = f", {report.reclassified} re-classified" if report.reclassified else ""
    print(
        f"index: {report.added} added, {report.updated} updated, {report.removed} removed, "
        f"{report.unchanged} unchanged{again}"
    )


def _nothing(summary: Any, archive: Path) -> CommandError:
    if not summary.total:
        return CommandError(
            f"no FITS files under {archive} (.fits, .fit, .fts, also .gz or .fz; "
            "folders starting with . or _ are skipped)",
            EXIT_NOTHING,
        )
    return CommandError("nothing can be planned", EXIT_NOTHING, details=summary.lines())


async def plans_for(
    settings: Settings, args: argparse.Namespace, found: Registry, store: Any
) -> list[tuple[Pipeline, ReductionPlan]]:
    """The plan of each pipeline the request concerns; CommandError when there is none.

    With IDs the store is asked (their groups and candidates); without, the whole
    index is read and planned in memory.
    """
    where = pairs(args.where, "--where")
    parameters = pairs(args.param, "--param")
    ids = list(args.id or ())
    files: list[RawFile] | None = None  # the whole index: only without IDs
    try:
        if args.pipeline:
            chosen = [found.get(args.pipeline)]
        elif ids:
            chosen = pipelines_for_ids(found, await store.raw_files_by_id(ids), ids)
        else:
            files = await store.all_raw_files()
            claimed = {raw.pipeline for raw in files if raw.pipeline}
            chosen = [p for p in found.selected(None) if p.name in claimed]
    except (PlanRequestError, PipelineError) as exc:
        raise CommandError(str(exc)) from None
    if not chosen:
        raise _nothing(await _summary(store, found, files, args.pipeline), Path(args.archive))
    if files is None and not ids:
        files = await store.all_raw_files()
    static_root = settings.static_root(Path(args.archive).resolve())
    pipelines = ArchivePipelines(found, static_root=static_root)
    request = {"target": args.target, "where": where, "parameters": parameters}
    plans = []
    for pipeline in chosen:
        if args.target and len(chosen) > 1:
            try:
                pipeline.cascade.targets(args.target)
            except KeyError:
                print(f"{pipeline.name}: has no target {args.target}: skipped", file=sys.stderr)
                continue
        try:
            if ids:
                plan = await asyncio.to_thread(
                    pipelines.plan_indexed, pipeline, store, ids=ids, **request
                )
            else:
                assert files is not None
                plan = await asyncio.to_thread(pipelines.plan, pipeline, files, **request)
        except PlanRequestError as exc:
            raise CommandError(f"{pipeline.name}: {exc}") from None
        plans.append((pipeline, plan))
    if not plans:
        raise CommandError(f"no pipeline has a target {args.target!r}")
    if not any(plan.datasets for _, plan in plans):  # say why when nothing is classified
        summary = await _summary(store, found, files, args.pipeline)
        if not summary.classified:
            raise _nothing(summary, Path(args.archive))
    return plans


async def _summary(
    store: Any, found: Registry, files: list[RawFile] | None, only: str | None
) -> Any:
    """How the index splits between pipelines (the whole index: only to explain a failure)."""
    return summarise(found, files if files is not None else await store.all_raw_files(), only)[0]


def incomplete_datasets(plans: list[tuple[Pipeline, ReductionPlan]]) -> list[str]:
    """``pipeline: dataset: reasons`` for every dataset that cannot be reduced."""
    return [
        f"{p.name}: {d.label}: {'; '.join(d.reasons)}"
        for p, plan in plans
        for d in plan.datasets
        if not d.complete
    ]


def check_plans(
    plans: list[tuple[Pipeline, ReductionPlan]], allow_incomplete: bool, list_reasons: bool
) -> None:
    """Raise unless the plans can be run as asked: something complete, and everything
    complete unless a partial plan is accepted."""
    total = sum(len(plan.datasets) for _, plan in plans)
    if not total:
        targets = ", ".join(f"{p.name}:{plan.target}" for p, plan in plans)
        raise CommandError(f"nothing to reduce: no dataset for {targets} in this selection", 1)
    missing = incomplete_datasets(plans)
    shown = [f"  incomplete: {line}" for line in missing[:MAX_REASONS]]
    if len(missing) > MAX_REASONS:
        shown.append(f"  ... and {len(missing) - MAX_REASONS} more")
    if len(missing) == total:
        raise CommandError(f"none of the {total} datasets can be reduced", 1, details=shown)
    if missing and not allow_incomplete:
        raise CommandError(
            f"{len(missing)} of {total} datasets are incomplete; --allow-incomplete accepts "
            "a partial plan",
            1,
            details=shown if list_reasons else (),
        )
    if missing and list_reasons:
        print("\n".join(line.strip() for line in shown), file=sys.stderr)


def cmd_plan(settings: Settings, args: argparse.Namespace, progress: Any, shared: Any) -> int:
    found = loaded_registry(args.pipeline)
    archive = Path(args.archive).resolve()
    plans = asyncio.run(_planned(settings, args, found, archive, progress, shared))
    if args.graph:
        for pipeline, plan in plans:
            path = Path(args.graph)
            if len(plans) > 1:
                path = path.with_name(f"{path.stem}-{pipeline.name}{path.suffix}")
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
    sys.stdout.flush()
    # the text report lists the reasons already; JSON on stdout needs them on stderr
    check_plans(plans, args.allow_incomplete, list_reasons=args.json)
    return 0


async def _planned(
    settings: Settings,
    args: argparse.Namespace,
    found: Registry,
    archive: Path,
    progress: Any,
    shared: Any,
) -> list[tuple[Pipeline, ReductionPlan]]:
    from soda_reduce.runtime.store import open_store

    async with open_store(settings, shared=shared) as store:
        await index_into(store, settings, archive, progress)
        return await plans_for(settings, args, found, store)


async def reduce_archive(settings: Settings, args: argparse.Namespace, shared: Any) -> int:
    from soda_reduce.cli_reduce import report, run_plans
    from soda_reduce.runtime.products import ProductStore
    from soda_reduce.runtime.store import open_store

    found = loaded_registry(args.pipeline)
    archive = Path(args.archive).resolve()
    out = Path(args.out)
    products = ProductStore(settings.products_root)
    async with open_store(settings, shared=shared) as store:  # once: starting it costs
        await index_into(store, settings, archive)
        plans = await plans_for(settings, args, found, store)
        check_plans(plans, args.allow_incomplete, list_reasons=True)
        outcomes = await run_plans(store, plans, args, archive, products)
    return report(outcomes, products, out)
