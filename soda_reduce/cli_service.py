"""The long-running commands: ``serve`` (embedded, all in one), ``api`` and ``worker``.

``serve`` is the laptop shape: API + worker + local executor in one process,
the embedded store and an in-process queue, a demo archive generated on first
start when no archive is given. ``api`` and ``worker`` are the production
shapes (MongoDB + RabbitMQ + local or Kubernetes executor), same code paths.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

from aiohttp import web

from soda_reduce.config import Settings
from soda_reduce.runtime.host import open_runtime
from soda_reduce.runtime.indexer import index_with_claims
from soda_reduce.runtime.store import Store, open_store
from soda_reduce.web.app import ServiceState, build_app
from soda_reduce.web.context import Services
from soda_reduce.web.middleware import AuthConfig


async def _archive(settings: Settings, generate: bool) -> Path:
    archive = settings.archive_dir
    if archive is not None:
        return archive
    if not generate:
        print("error: set --archive or SODA_REDUCE_ARCHIVE", file=sys.stderr)
        raise SystemExit(2)
    from soda_reduce.pipelines.ccd.demo import generate_demo_archive

    archive = settings.data_dir / "demo-archive"
    if not (archive / "_truth" / "manifest.json").exists():
        print(f"no --archive given: generating the demo archive in {archive}", flush=True)
        await asyncio.to_thread(generate_demo_archive, archive)
    return archive


async def _index(store: Store, settings: Settings, archive: Path) -> None:
    report = await index_with_claims(store, archive, settings)
    print(f"archive {archive}: {report.summary()}", flush=True)


async def _until_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def run_service(
    settings: Settings,
    *,
    host: str,
    port: int,
    pipeline: str,
    api: bool,
    worker: bool,
    generate_demo: bool,
) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    archive = await _archive(settings, generate_demo)
    async with open_store(settings) as store:
        if api:
            await _index(store, settings, archive)
        async with open_runtime(
            settings, store, archive, pipeline=pipeline, worker=worker, sweeper=api
        ) as runtime:
            if not api:
                print(f"soda-reduce worker {runtime.worker.worker_id} consuming", flush=True)
                await _until_signal()
                return
            services = Services.from_runtime(runtime, archive, pipeline)
            auth = AuthConfig.load(
                settings.trusted_header, settings.tokens_file, settings.allow_anonymous
            )
            app = build_app(
                ServiceState(store, runtime.service.pipelines, str(archive)), services, auth
            )
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, host, port)
            await site.start()
            what = "API + worker" if worker else "API"
            print(
                f"soda-reduce ({what}) serving on http://{host}:{port}/  "
                f"jobs: http://{host}:{port}/soda/async  (Ctrl-C to stop)",
                flush=True,
            )
            try:
                await _until_signal()
            finally:
                services.stop_waits()  # answer blocked WAITs now: shutdown stays short
                await runner.cleanup()


def main(settings: Settings, args, *, api: bool, worker: bool, generate_demo: bool) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(
        run_service(
            settings,
            host=getattr(args, "host", "127.0.0.1"),
            port=getattr(args, "port", 0),
            pipeline=args.pipeline or "ccd",
            api=api,
            worker=worker,
            generate_demo=generate_demo,
        )
    )
    return 0
