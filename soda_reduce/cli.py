"""Command line: ``soda-reduce serve / api / worker / demo-data / index / plan / reduce / cascade``.

Every command works on embedded defaults: without ``--mongo-url`` the header
index lives in an embedded store under ``--data-dir``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from soda_reduce.config import Settings
from soda_reduce.reduction.graph import cascade_dot
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


def _archive_command(name: str) -> Any:
    """``index``, ``plan`` or ``reduce`` (soda_reduce/cli_archive.py), with the indexing bar."""

    def command(args: argparse.Namespace) -> int:
        from soda_reduce import cli_archive

        progress = _Progress("indexing", sys.stderr.isatty())
        run = {
            "index": lambda s, a: cli_archive.cmd_index(s, a, progress),
            "plan": lambda s, a: cli_archive.cmd_plan(s, a, progress),
            "reduce": lambda s, a: asyncio.run(cli_archive.reduce_archive(s, a)),
        }[name]
        try:
            return cli_archive.run_command(run, _settings(args), args)
        finally:
            progress.close()

    return command


cmd_index = _archive_command("index")
cmd_plan = _archive_command("plan")
cmd_reduce = _archive_command("reduce")


def cmd_cascade(args: argparse.Namespace) -> int:
    from soda_reduce.pipelines import registry

    try:
        cascade = registry().get(args.pipeline).cascade
    except (KeyError, ValueError) as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2
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
        p.add_argument("--pipeline", help="only this pipeline (default: every installed one)")

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
    casc.add_argument("--pipeline", default="ccd", help="pipeline name (default: ccd)")
    casc.set_defaults(func=cmd_cascade)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
