"""Command line: ``soda-reduce serve / api / worker / demo-data / index / plan / reduce / cascade``.

Every command works on embedded defaults: without ``--mongo-url`` the header
index lives in an embedded store under ``--data-dir``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from soda_reduce.config import Settings
from soda_reduce.pipelines import PIPELINES, get_cascade
from soda_reduce.reduction.graph import cascade_dot, plan_dot
from soda_reduce.reduction.index_model import RawFile
from soda_reduce.reduction.organisation import classify_all
from soda_reduce.reduction.plan import PlanRequestError
from soda_reduce.reduction.planner import plan_reduction
from soda_reduce.reduction.report import format_plan
from soda_reduce.runtime.render import write_graph


class _Progress:
    """A tqdm bar driven by (done, total) callbacks; silent when not on a terminal."""

    def __init__(self, description: str, enabled: bool) -> None:
        self._description = description
        self._enabled = enabled
        self._bar: tqdm | None = None

    def __call__(self, done: int, total: int) -> None:
        if not self._enabled:
            return
        if self._bar is None:
            self._bar = tqdm(total=total, desc=self._description, unit="file", file=sys.stderr)
        self._bar.total = total
        self._bar.n = done
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env()
    changes: dict[str, Any] = {}
    if getattr(args, "data_dir", None):
        changes["data_dir"] = Path(args.data_dir).resolve()
    if getattr(args, "mongo_url", None):
        changes["mongo_url"] = args.mongo_url
    if getattr(args, "authority", None):
        changes["authority"] = args.authority
    if getattr(args, "checksum", None):
        changes["checksum_mode"] = args.checksum
    if getattr(args, "archive", None):
        changes["archive_dir"] = Path(args.archive).resolve()
    return settings.with_(**changes) if changes else settings


async def _indexed_files(
    settings: Settings, archive: Path, show_progress: bool
) -> tuple[list[RawFile], Any]:
    from soda_reduce.runtime.indexer import index_archive
    from soda_reduce.runtime.store import open_store

    progress = _Progress("indexing", show_progress)
    async with open_store(settings) as store:
        report = await index_archive(
            store,
            archive,
            authority=settings.authority,
            checksum_mode=settings.checksum_mode,
            progress=progress,
        )
        progress.close()
        files = await store.all_raw_files()
    return files, report


def cmd_demo_data(args: argparse.Namespace) -> int:
    from soda_reduce.pipelines.ccd.demo import generate_demo_archive

    progress = _Progress("writing frames", sys.stderr.isatty())
    summary = generate_demo_archive(
        Path(args.dir),
        nights=args.nights,
        seed=args.seed,
        science_per_night=args.science_per_night,
        size=args.size,
        progress=progress,
    )
    progress.close()
    print(f"demo archive written to {Path(args.dir).resolve()}")
    print(summary.describe() if hasattr(summary, "describe") else summary)
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    settings = _settings(args)
    archive = Path(args.archive).resolve()
    files, report = asyncio.run(_indexed_files(settings, archive, sys.stderr.isatty()))
    cascade = get_cascade(args.pipeline)
    frames = classify_all(cascade, files)
    rows = [
        {
            "id": f.file_id,
            "path": f.raw.path,
            "category": f.category,
            "night": f.night,
            "problem": f.raw.problem,
        }
        for f in sorted(frames, key=lambda fr: fr.raw.path)
    ]
    if args.json:
        summary = {
            "added": report.added,
            "updated": report.updated,
            "removed": report.removed,
            "unchanged": report.unchanged,
        }
        print(json.dumps({"archive": str(archive), "report": summary, "files": rows}, indent=2))
        return 0
    width = max((len(r["id"]) for r in rows), default=10)
    for row in rows:
        status = row["category"] or ("-" if row["problem"] else "unclassified")
        note = f"  PROBLEM: {row['problem']}" if row["problem"] else ""
        print(f"{row['id']:<{width}}  {status:<12}{note}")
    counts: dict[str, int] = {}
    for row in rows:
        key = row["category"] or ("problem" if row["problem"] else "unclassified")
        counts[key] = counts.get(key, 0) + 1
    print(
        f"\n{len(rows)} files: "
        + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        + f"  (index: {report.added} added, {report.updated} updated, "
        f"{report.removed} removed, {report.unchanged} unchanged)"
    )
    return 0


def _parse_pairs(items: Sequence[str], what: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"{what} must be NAME=VALUE, got {item!r}")
        name, value = item.split("=", 1)
        pairs[name.strip()] = value.strip()
    return pairs


def _plan_from_args(cascade: Any, files: list[RawFile], args: argparse.Namespace) -> Any:
    """The plan the command line asks for, or None (reason printed) for a bad request."""
    try:
        return plan_reduction(
            cascade,
            files,
            target=args.target,
            ids=args.id or (),
            where=_parse_pairs(args.where or (), "--where"),
            parameters=_parse_pairs(args.param or (), "--param"),
        )
    except PlanRequestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def cmd_plan(args: argparse.Namespace) -> int:
    settings = _settings(args)
    archive = Path(args.archive).resolve()
    files, _ = asyncio.run(_indexed_files(settings, archive, sys.stderr.isatty()))
    cascade = get_cascade(args.pipeline)
    plan = _plan_from_args(cascade, files, args)
    if plan is None:
        return 2
    if args.graph:
        written = write_graph(plan_dot(plan), Path(args.graph))
        print(f"plan graph written to {written}", file=sys.stderr)
    if args.json:
        print(plan.to_json(indent=2))
    else:
        print(format_plan(plan, verbose=args.verbose), end="")
    return 0


async def _reduce(settings: Settings, args: argparse.Namespace) -> int:
    from soda_reduce.runtime.executors.local import LocalExecutor
    from soda_reduce.runtime.indexer import index_archive
    from soda_reduce.runtime.products import ProductStore
    from soda_reduce.runtime.runner import PlanRunner, RunnerConfig
    from soda_reduce.runtime.store import open_store

    archive = Path(args.archive).resolve()
    out = Path(args.out).resolve()
    show = sys.stderr.isatty()
    async with open_store(settings) as store:
        await index_archive(
            store, archive, authority=settings.authority, checksum_mode=settings.checksum_mode
        )
        files = await store.all_raw_files()
        plan = _plan_from_args(get_cascade(args.pipeline), files, args)
        if plan is None:
            return 2
        skipped = [d for d in plan.datasets if not d.complete]
        for dataset in skipped:
            print(f"not reduced: {dataset.label}: {'; '.join(dataset.reasons)}", file=sys.stderr)
        runnable = plan.runnable_jobs()
        bar = tqdm(
            total=len(runnable), desc="steps", unit="step", file=sys.stderr, disable=not show
        )

        def on_event(event: dict[str, Any]) -> None:
            if event["type"] == "progress":
                bar.n = event["done"] + event["failed"]
                bar.set_postfix_str(", ".join(event["running"])[:60])
                bar.refresh()

        if args.executor == "kubernetes":
            from soda_reduce.runtime.executors.kubernetes import (
                KubernetesConfig,
                KubernetesExecutor,
            )

            executor: Any = KubernetesExecutor(KubernetesConfig.from_env())
        else:
            executor = LocalExecutor(concurrency=args.jobs)
        runner = PlanRunner(
            store,
            executor,
            ProductStore(out),
            archive,
            config=RunnerConfig(max_attempts=args.max_attempts, rerun=args.rerun),
            on_event=on_event,
            pipeline=args.pipeline,
        )
        try:
            outcome = await runner.run(plan)
        finally:
            bar.close()
            await executor.close()
    products = ProductStore(out)
    results = []
    for dataset in plan.datasets:
        job = plan.job(dataset.target_job)
        state = outcome.jobs.get(job.job_id)
        entry: dict[str, Any] = {"dataset": dataset.label, "complete": dataset.complete}
        if state is not None:
            entry.update(status=state.status, step_key=job.step_key, error=state.error)
            if state.status in ("done", "cached") and job.step_key:
                entry["directory"] = str(products.step_dir(job.step_key))
        results.append(entry)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    cached, done = outcome.count("cached"), outcome.count("done")
    failed, skipped_jobs = outcome.count("failed"), outcome.count("skipped")
    print(
        f"{len(runnable)} steps in {outcome.wall_seconds:.1f} s: {done} computed, {cached} reused "
        f"from the cache, {failed} failed, {skipped_jobs} skipped"
    )
    if runnable and cached == len(runnable):
        print("all steps were cache hits: nothing was recomputed")
    for entry in results:
        where = entry.get("directory") or entry.get("error") or "not reduced"
        print(f"  {entry['dataset']}: {entry.get('status', 'incomplete')}  {where}")
    print(f"results: {out / 'results.json'}")
    return 0 if outcome.ok else 1


def cmd_reduce(args: argparse.Namespace) -> int:
    return asyncio.run(_reduce(_settings(args), args))


def cmd_cascade(args: argparse.Namespace) -> int:
    cascade = get_cascade(args.pipeline)
    dot = cascade_dot(cascade)
    if args.graph:
        written = write_graph(dot, Path(args.graph))
        print(f"cascade graph written to {written}")
    else:
        print(dot, end="")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from soda_reduce import cli_service

    return cli_service.main(_settings(args), args, api=True, worker=True, generate_demo=True)


def cmd_api(args: argparse.Namespace) -> int:
    from soda_reduce import cli_service

    return cli_service.main(_settings(args), args, api=True, worker=False, generate_demo=False)


def cmd_worker(args: argparse.Namespace) -> int:
    from soda_reduce import cli_service

    return cli_service.main(_settings(args), args, api=False, worker=True, generate_demo=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="soda-reduce", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def store_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", help="service data directory (embedded store lives here)")
        p.add_argument("--mongo-url", help="MongoDB URL; default: embedded store")
        p.add_argument("--authority", help="IVOA authority for raw-file identifiers")
        p.add_argument("--checksum", choices=("full", "fast"), help="file checksum mode")
        p.add_argument("--pipeline", default="ccd", choices=sorted(PIPELINES))

    demo = sub.add_parser("demo-data", help="write a realistic raw CCD archive")
    demo.add_argument("dir")
    demo.add_argument("--nights", type=int, default=3)
    demo.add_argument("--seed", type=int, default=1)
    demo.add_argument("--science-per-night", type=int, default=4)
    demo.add_argument("--size", type=int, default=256, help="unbinned frame side in pixels")
    demo.set_defaults(func=cmd_demo_data)

    index = sub.add_parser("index", help="index an archive and list its files")
    index.add_argument("--archive", required=True)
    index.add_argument("--json", action="store_true")
    store_options(index)
    index.set_defaults(func=cmd_index)

    plan = sub.add_parser("plan", help="plan a reduction and explain it")
    plan.add_argument("--archive", required=True)
    plan.add_argument("--target", help="task to reach (default: the cascade's science target)")
    plan.add_argument("--id", action="append", help="raw-file ID to reduce (repeatable)")
    plan.add_argument("--where", action="append", help="header filter KEYWORD=VALUE")
    plan.add_argument("--param", action="append", help="task.param=value or workflow param")
    plan.add_argument("--json", action="store_true")
    plan.add_argument("--graph", help="write the plan graph (.dot, or .svg with Graphviz)")
    plan.add_argument("-v", "--verbose", action="store_true")
    store_options(plan)
    plan.set_defaults(func=cmd_plan)

    serve = sub.add_parser("serve", help="run the service on embedded defaults")
    serve.add_argument("--archive", help="archive root (default: a generated demo archive)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    store_options(serve)
    serve.set_defaults(func=cmd_serve)

    api = sub.add_parser("api", help="run the UWS API (production: MongoDB + RabbitMQ)")
    api.add_argument("--archive", help="archive root (default: SODA_REDUCE_ARCHIVE)")
    api.add_argument("--host", default="0.0.0.0")
    api.add_argument("--port", type=int, default=8080)
    store_options(api)
    api.set_defaults(func=cmd_api)

    worker = sub.add_parser("worker", help="run plans from the queue (production)")
    worker.add_argument("--archive", help="archive root (default: SODA_REDUCE_ARCHIVE)")
    store_options(worker)
    worker.set_defaults(func=cmd_worker)

    red = sub.add_parser("reduce", help="plan and run a reduction locally")
    red.add_argument("--archive", required=True)
    red.add_argument("--out", required=True, help="product directory (content-addressed)")
    red.add_argument("--target")
    red.add_argument("--id", action="append")
    red.add_argument("--where", action="append")
    red.add_argument("--param", action="append")
    red.add_argument("--jobs", type=int, default=None, help="recipes at once (default: cores)")
    red.add_argument("--max-attempts", type=int, default=3)
    red.add_argument("--rerun", action="store_true", help="recompute even cached steps")
    red.add_argument(
        "--executor",
        choices=("local", "kubernetes"),
        default="local",
        help="where recipes run (kubernetes: SODA_REDUCE_K8S_* settings, docs/runtime.md)",
    )
    store_options(red)
    red.set_defaults(func=cmd_reduce)

    casc = sub.add_parser("cascade", help="show a pipeline's cascade as a graph")
    casc.add_argument("--graph", help="write to a file (.dot, or .svg with Graphviz)")
    casc.add_argument("--pipeline", default="ccd", choices=sorted(PIPELINES))
    casc.set_defaults(func=cmd_cascade)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
