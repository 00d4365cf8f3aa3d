"""The long-running commands: ``serve`` (embedded, all in one), ``api`` and ``worker``.

``serve`` is the laptop shape: API + worker + local executor in one process,
the embedded store and an in-process queue, a demo archive generated on first
start when no archive is given. ``api`` and ``worker`` are the production
shapes (MongoDB + RabbitMQ + local or Kubernetes executor), same code paths.

The embedded store is supervised (restarted when it dies, `runtime.store.supervision`);
if its supervision gives up, the command exits with status 1. SIGTERM or SIGINT stops
the command within `SHUTDOWN_S`, whatever is stuck: open WAITs are answered at once,
requests in flight get `HTTP_SHUTDOWN_S`, and a watchdog ends the process if the clean
shutdown overruns; a second signal ends it at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from aiohttp import web

from soda_reduce.cli_checks import CommandError
from soda_reduce.config import DEMO_ARCHIVE, Settings
from soda_reduce.runtime.host import open_runtime
from soda_reduce.runtime.indexer import index_with_claims
from soda_reduce.runtime.store import Store, StoreHealth, open_store
from soda_reduce.web.app import ServiceState, build_app, server_options
from soda_reduce.web.context import Services
from soda_reduce.web.middleware import AuthConfig


async def _archive(settings: Settings) -> Path:
    """The archive root; without one (``serve`` only: the command line checks), the demo
    archive, generated in the data directory on first start."""
    archive = settings.archive_dir
    if archive is not None:
        return archive
    from soda_reduce.pipelines.ccd.demo import generate_demo_archive

    archive = settings.data_dir / DEMO_ARCHIVE
    if not (archive / "_truth" / "manifest.json").exists():
        print(f"no --archive given: generating the demo archive in {archive}", flush=True)
        await asyncio.to_thread(generate_demo_archive, archive)
    return archive


async def _index(store: Store, settings: Settings, archive: Path) -> None:
    report = await index_with_claims(store, archive, settings)
    print(f"archive {archive}: {report.summary()}", flush=True)


log = logging.getLogger(__name__)

SHUTDOWN_S = 8.0  # signal to exit, at most (orchestrators' grace periods start at 10 s)
HTTP_SHUTDOWN_S = 3.0  # requests in flight when the signal came are given this long
STORE_KILL_GRACE_S = 0.3  # on overrun, the store's SIGTERM before its SIGKILL


class Shutdown:
    """The first SIGINT/SIGTERM asks for a clean shutdown and starts a watchdog; a second
    signal, or the watchdog after ``deadline_s``, ends the process at once.

    The watchdog is a thread, so a blocked event loop cannot hold it up. Recipes get
    SIGTERM when the process dies (runtime.process); so does the embedded store, but a
    hung one (stopped, deadlocked) ignores it (docs/store.md): it is killed first.
    """

    def __init__(self, deadline_s: float = SHUTDOWN_S) -> None:
        self.deadline_s = deadline_s
        self.requested = asyncio.Event()
        self.health: StoreHealth | None = None  # whose embedded server to kill on overrun
        self._timer: threading.Timer | None = None

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._signalled, sig)

    def _signalled(self, sig: signal.Signals) -> None:
        if self.requested.is_set():
            self._exit_now(f"second {sig.name}")
        log.info("%s: stopping (at most %.0f s)", sig.name, self.deadline_s)
        self.begin()

    def begin(self) -> None:
        """Shut down now, within the deadline."""
        if self._timer is None:
            why = f"shutdown took longer than {self.deadline_s:.0f} s"
            self._timer = threading.Timer(self.deadline_s, self._exit_now, (why,))
            self._timer.daemon = True
            self._timer.start()
        self.requested.set()

    def done(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _exit_now(self, why: str) -> None:
        print(f"soda-reduce: {why}: exiting now", file=sys.stderr, flush=True)
        pid = self.health.pid if self.health is not None else None
        if pid is not None:
            with contextlib.suppress(OSError):  # it exited: it stays a zombie, its pid ours
                os.kill(pid, signal.SIGCONT)  # a stopped store would lose the SIGTERM
                os.kill(pid, signal.SIGTERM)
                time.sleep(STORE_KILL_GRACE_S)
                os.kill(pid, signal.SIGKILL)
        os._exit(1)

    async def wait(self, health: StoreHealth) -> int:
        """Until a signal (exit status 0) or the store's supervision gave up (1)."""
        self.health = health
        signalled = asyncio.create_task(self.requested.wait())
        lost = asyncio.create_task(health.lost.wait())
        try:
            await asyncio.wait({signalled, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            signalled.cancel()
            lost.cancel()
        if self.requested.is_set():
            return 0
        log.error("stopping: %s", health.note)
        self.begin()
        return 1


async def run_service(
    settings: Settings,
    *,
    listener: socket.socket | None,
    pipeline: str,
    api: bool,
    worker: bool,
) -> int:
    """Run until a signal; the exit status (1: the embedded store could not be kept up).

    ``listener`` is the API's socket, bound by the command line before anything else; the
    store is opened next (a data directory another service owns is refused at once), then
    the demo archive is generated if needed, and the archive indexed.
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    owner = "serve" if api and worker else "api" if api else "worker"
    shutdown = Shutdown()
    try:
        async with open_store(settings, supervise=True, owner=owner) as store:
            archive = await _archive(settings)
            if api:
                await _index(store, settings, archive)
            async with open_runtime(
                settings, store, archive, pipeline=pipeline, worker=worker, sweeper=api
            ) as runtime:
                shutdown.install()
                if not api:
                    print(f"soda-reduce worker {runtime.worker.worker_id} consuming", flush=True)
                    return await shutdown.wait(store.health)
                services = Services.from_runtime(runtime, archive, pipeline)
                auth = AuthConfig.load(
                    settings.trusted_header, settings.tokens_file, settings.allow_anonymous
                )
                app = build_app(
                    ServiceState(store, runtime.service.pipelines, str(archive)), services, auth
                )
                options = {"shutdown_timeout": HTTP_SHUTDOWN_S, **server_options(settings)}
                runner = web.AppRunner(app, access_log=None, **options)
                await runner.setup()
                assert listener is not None
                try:
                    await web.SockSite(runner, listener).start()
                except OSError as exc:  # bound at start, taken since (SO_REUSEADDR): rare
                    host, port = listener.getsockname()[:2]
                    why = exc.strerror or str(exc)
                    raise CommandError(f"cannot listen on {host}:{port}: {why}", 1) from None
                host, port = listener.getsockname()[:2]
                url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
                what = "API + worker" if worker else "API"
                print(
                    f"soda-reduce ({what}) serving on {url}/  "
                    f"jobs: {url}/soda/async  (Ctrl-C to stop)",
                    flush=True,
                )
                try:
                    return await shutdown.wait(store.health)
                finally:
                    services.stop_waits()  # answer blocked WAITs now: shutdown stays short
                    await runner.cleanup()
    finally:
        shutdown.done()


def main(
    settings: Settings,
    args: argparse.Namespace,
    *,
    api: bool,
    worker: bool,
    listener: socket.socket | None = None,
) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        return asyncio.run(
            run_service(
                settings,
                listener=listener,
                pipeline=args.pipeline or "ccd",
                api=api,
                worker=worker,
            )
        )
    finally:
        if listener is not None:
            listener.close()
