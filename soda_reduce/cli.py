"""soda-reduce: on-demand reduction of archival telescope data through IVOA standards.

Commands: serve, api, worker (the service); demo-data, index, plan, reduce, cascade.
Without --mongo-url the header index and the products live in a data directory
(--data-dir, SODA_REDUCE_DATA_DIR, else ~/.local/share/soda-reduce/<archive>), in an
embedded store that every command of that directory shares. Exit status: 0 when
everything asked for was done, 1 when something failed or was not done, 2 for usage
errors; errors are one line on stderr, starting "error:".
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from soda_reduce import cli_checks as checks
from soda_reduce.cli_checks import EXIT_FAILURE, EXIT_USAGE, CommandError
from soda_reduce.cli_help import EXAMPLES
from soda_reduce.config import ENV_PREFIX, Settings, default_data_dir

INTERRUPTED = 130


class Parser(argparse.ArgumentParser):
    """argparse, with one-line usage errors and examples kept as written."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"error: {message} (see {self.prog} --help)\n")
        sys.exit(EXIT_USAGE)


class _Progress:
    """A tqdm bar driven by (done, total) callbacks; silent when not on a terminal."""

    def __init__(self, description: str, enabled: bool) -> None:
        self._description = description
        self._enabled = enabled
        self._bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        if not self._enabled:
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=self._description, unit="file", file=sys.stderr)
        self._bar.total = total
        self._bar.n = done
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _settings(args: argparse.Namespace) -> Settings:
    """Settings from the environment, then the command line; the data directory checked."""
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        raise CommandError(f"a {ENV_PREFIX}* setting is not valid: {exc}") from None
    changes: dict[str, Any] = {}
    archive = getattr(args, "archive", None)
    if archive:
        changes["archive_dir"] = checks.directory("--archive", archive)
    elif settings.archive_dir is not None:
        changes["archive_dir"] = checks.directory(ENV_PREFIX + "ARCHIVE", str(settings.archive_dir))
    if getattr(args, "mongo_url", None):
        changes["mongo_url"] = checks.mongo_url(args.mongo_url)
    if getattr(args, "authority", None):
        changes["authority"] = args.authority
    if getattr(args, "checksum", None):
        changes["checksum_mode"] = args.checksum
    if getattr(args, "verify", False):
        changes["verify_checksums"] = True
    # the data directory is made when missing, parents included, as it always was
    if getattr(args, "data_dir", None):
        option, where = "--data-dir", Path(args.data_dir)
    elif os.environ.get(ENV_PREFIX + "DATA_DIR"):
        option, where = ENV_PREFIX + "DATA_DIR", settings.data_dir
    else:
        archive = changes.get("archive_dir", settings.archive_dir)
        option, where = "the data directory", default_data_dir(archive)
    changes["data_dir"] = checks.writable_directory(option, str(where), parents=True)
    checks.pipeline_name(getattr(args, "pipeline", None))
    return settings.with_(**changes)


@contextlib.contextmanager
def _early_store(settings: Settings) -> Iterator[Any]:
    """Hold the data directory's embedded store now, before the heavy imports, so that
    a keeper starting it (~0.4 s) and this process's imports overlap."""
    if settings.mongo_url:
        yield None
        return
    from soda_reduce.runtime.store.sharing import attach

    shared = attach(settings.data_dir, settings.store_linger_s)
    try:
        yield shared
    finally:
        shared.close()


def _check_archive_args(name: str, args: argparse.Namespace) -> None:
    for option in ("id", "where", "param"):
        checks.count(getattr(args, option, None), f"--{option}")
    checks.pairs(getattr(args, "where", None), "--where")
    checks.pairs(getattr(args, "param", None), "--param")
    if getattr(args, "graph", None):
        checks.output_file("--graph", args.graph)
    if name == "reduce":
        args.out = str(checks.writable_directory("--out", args.out))


def _archive_command(name: str) -> Any:
    """``index``, ``plan`` or ``reduce`` (soda_reduce/cli_archive.py), with the indexing bar."""

    def command(args: argparse.Namespace) -> int:
        settings = _settings(args)
        _check_archive_args(name, args)
        with _early_store(settings) as shared:
            from soda_reduce import cli_archive

            progress = _Progress("indexing", sys.stderr.isatty())
            try:
                return cli_archive.run(name, settings, args, progress, shared)
            finally:
                progress.close()

    return command


cmd_index = _archive_command("index")
cmd_plan = _archive_command("plan")
cmd_reduce = _archive_command("reduce")


def cmd_demo_data(args: argparse.Namespace) -> int:
    root = checks.writable_directory("demo-data DIR", args.dir)
    from soda_reduce.pipelines.ccd.demo import generate_demo_archive

    progress = _Progress("writing frames", sys.stderr.isatty())
    try:
        summary = generate_demo_archive(
            root,
            nights=args.nights,
            seed=args.seed,
            science_per_night=args.science_per_night,
            size=args.size,
            progress=progress,
        )
    finally:
        progress.close()
    print(f"demo archive written to {root}")
    print(summary.describe() if hasattr(summary, "describe") else summary)
    return 0


def cmd_cascade(args: argparse.Namespace) -> int:
    checks.pipeline_name(args.pipeline)
    graph = checks.output_file("--graph", args.graph) if args.graph else None
    from soda_reduce.pipelines import registry
    from soda_reduce.reduction.graph import cascade_dot

    try:
        cascade = registry().get(args.pipeline).cascade
    except (KeyError, ValueError) as exc:
        raise CommandError(str(exc.args[0])) from None
    dot = cascade_dot(cascade)
    if graph is not None:
        from soda_reduce.runtime.render import write_graph

        print(f"cascade graph written to {write_graph(dot, graph)}")
    else:
        print(dot, end="")
    return 0


def _service_command(*, api: bool, worker: bool) -> Any:
    def command(args: argparse.Namespace) -> int:
        settings = _settings(args)
        if not (api and worker) and settings.archive_dir is None:
            raise CommandError("set --archive or SODA_REDUCE_ARCHIVE")
        if api and not worker and not settings.amqp_url:
            raise CommandError(
                "soda-reduce api needs a broker: set SODA_REDUCE_AMQP_URL (without one, jobs "
                "would wait for a worker that never comes); for API and worker in one "
                "process, run soda-reduce serve"
            )
        listener = checks.bound_socket(args.host, args.port) if api else None
        from soda_reduce import cli_service

        return cli_service.main(settings, args, api=api, worker=worker, listener=listener)

    return command


cmd_serve = _service_command(api=True, worker=True)
cmd_api = _service_command(api=True, worker=False)
cmd_worker = _service_command(api=False, worker=True)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="soda-reduce", description=__doc__, epilog=EXAMPLES["soda-reduce"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, help=help, description=help, epilog=EXAMPLES[name], prog=f"soda-reduce {name}"
        )

    def store_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--data-dir",
            help="data directory: index, products, embedded store (default: "
            "SODA_REDUCE_DATA_DIR, else ~/.local/share/soda-reduce/<archive>)",
        )
        p.add_argument("--mongo-url", help="MongoDB URL (default: the embedded store)")
        p.add_argument("--authority", type=checks.nonempty, help="IVOA authority of raw-file IDs")
        p.add_argument("--checksum", choices=("full", "fast"), help="file checksum mode")
        p.add_argument("--pipeline", help="only this pipeline (default: every installed one)")

    def selection(p: argparse.ArgumentParser) -> None:
        p.add_argument("--target", type=checks.nonempty, help="task to reach (default: science)")
        p.add_argument("--id", action="append", type=checks.nonempty, help="raw-file ID (repeat)")
        p.add_argument(
            "--where", action="append", type=checks.nonempty, help="KEYWORD=VALUE (repeat)"
        )
        p.add_argument(
            "--param", action="append", type=checks.nonempty, help="task.param=VALUE (repeat)"
        )
        p.add_argument(
            "--allow-incomplete",
            action="store_true",
            help="accept a partial plan: exit 0 although some datasets cannot be reduced",
        )

    demo = command("demo-data", "write a realistic raw CCD archive (with its truth)")
    demo.add_argument("dir", help="where to write it (made if missing)")
    demo.add_argument("--nights", type=checks.bounded_int(1, 366), default=3)
    demo.add_argument("--seed", type=checks.bounded_int(0), default=1)
    demo.add_argument("--science-per-night", type=checks.bounded_int(1, 100), default=4)
    demo.add_argument(
        "--size",
        type=checks.bounded_int(32, 8192, even=True),
        default=256,
        help="unbinned frame side in pixels (even, 32 to 8192)",
    )
    demo.set_defaults(func=cmd_demo_data)

    index = command("index", "index an archive and list its files")
    index.add_argument("--archive", required=True, help="archive root")
    index.add_argument("--json", action="store_true", help="JSON instead of a table")
    index.add_argument(
        "--verify",
        action="store_true",
        help="re-read every file and check its data against its DATASUM cards (reads all data)",
    )
    store_options(index)
    index.set_defaults(func=cmd_index)

    plan = command("plan", "plan a reduction and explain it (nothing runs)")
    plan.add_argument("--archive", required=True, help="archive root")
    selection(plan)
    plan.add_argument("--json", action="store_true", help="the plan as JSON")
    plan.add_argument("--graph", help="write the plan graph (.dot, or .svg with Graphviz)")
    plan.add_argument("-v", "--verbose", action="store_true")
    store_options(plan)
    plan.set_defaults(func=cmd_plan)

    red = command("reduce", "plan and run a reduction here; products linked into --out")
    red.add_argument("--archive", required=True, help="archive root")
    red.add_argument("--out", required=True, help="folder to place the products in")
    selection(red)
    red.add_argument("--jobs", type=checks.bounded_int(1, 1024), help="recipes at once (cores)")
    red.add_argument("--max-attempts", type=checks.bounded_int(1, 100), default=3)
    red.add_argument("--rerun", action="store_true", help="recompute even cached steps")
    red.add_argument(
        "--executor",
        choices=("local", "kubernetes"),
        default="local",
        help="where recipes run (kubernetes: SODA_REDUCE_K8S_* settings, docs/runtime.md)",
    )
    store_options(red)
    red.set_defaults(func=cmd_reduce)

    casc = command("cascade", "show a pipeline's cascade as a graph")
    casc.add_argument("--graph", help="write to a file (.dot, or .svg with Graphviz)")
    casc.add_argument("--pipeline", default="ccd", help="pipeline name (default: ccd)")
    casc.set_defaults(func=cmd_cascade)

    port = checks.bounded_int(0, 65535)
    serve = command("serve", "run the service on embedded defaults (API + worker)")
    serve.add_argument("--archive", help="archive root (default: a generated demo archive)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=port, default=8080)
    store_options(serve)
    serve.set_defaults(func=cmd_serve)

    api = command("api", "run the UWS API (production: MongoDB + RabbitMQ)")
    api.add_argument("--archive", help="archive root (default: SODA_REDUCE_ARCHIVE)")
    api.add_argument("--host", default="0.0.0.0")
    api.add_argument("--port", type=port, default=8080)
    store_options(api)
    api.set_defaults(func=cmd_api)

    worker = command("worker", "run plans from the queue (production)")
    worker.add_argument("--archive", help="archive root (default: SODA_REDUCE_ARCHIVE)")
    store_options(worker)
    worker.set_defaults(func=cmd_worker)
    return parser


def _failure(exc: BaseException) -> str | None:
    """The one-line message of an expected failure; None for a bug (its traceback shows)."""
    from soda_reduce.runtime.store.sharing import StoreOpenError

    if isinstance(exc, StoreOpenError):
        return str(exc)
    store = sys.modules.get("soda_reduce.runtime.store.errors")
    if store is not None and store.is_outage(exc):
        return "the store stopped answering during the command; retry"
    embedded = sys.modules.get("soda_reduce.runtime.store.embedded")
    if embedded is not None and isinstance(exc, embedded.EmbeddedMongoError):
        return str(exc).splitlines()[0]
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CommandError as exc:
        for line in exc.details:
            print(line, file=sys.stderr)
        print(f"error: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:  # e.g. `soda-reduce index | head`: stop quietly
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (no flush error at exit)
        return EXIT_FAILURE
    except Exception as exc:
        message = _failure(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
