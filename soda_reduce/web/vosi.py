"""VOSI /availability and /capabilities, and the service's VOResource record at /registry.

Both VOSI resources are served at the root and as siblings of the SODA endpoints
(/soda/capabilities, /soda/availability). /availability also carries, as notes that do not
make the service unavailable, what keeps the registry records from being harvestable.

/availability runs real checks: the store answers a ping, the plan queue's broker answers,
the executor could start a recipe (local: the recipe command runs; Kubernetes: the API server
answers), and the product store has the configured free space. Each check is bounded by a
timeout and the whole report is cached for a few seconds, so monitors polling it cost nothing;
the local executor check starts a Python process, so it is kept longer.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import shutil
import signal
import ssl
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
from aiohttp import web
from lxml import etree

from soda_reduce.config import Settings
from soda_reduce.runtime.store import is_outage
from soda_reduce.vo.vosi import CheckResult, availability_xml, capabilities_xml
from soda_reduce.web.context import SERVICES, Services, base_url
from soda_reduce.web.records import DEFAULT_TEMPLATE, publication_of, service_record

__all__ = ["DEFAULT_TEMPLATE", "MONITOR", "AvailabilityMonitor", "add_routes"]

log = logging.getLogger(__name__)

XML_TYPE = "text/xml"
CHECK_TIMEOUT_S = 5.0  # each check; a hung store or broker makes the check fail, not the page
REPORT_CACHE_S = 5.0
EXECUTOR_CACHE_S = 30.0
VOSI_PREFIXES = ("", "/soda")  # /capabilities, /soda/capabilities (and availability)
Check = Callable[[], Awaitable[str]]  # the detail when fine; raises (with the reason) when not


class CheckFailed(Exception):
    """A check's verdict, with the reason people should read in the availability note."""


# ----------------------------------------------------------------------------- the checks


def _settings(services: Services) -> Settings:
    return services.settings or Settings()


async def _store(services: Services) -> str:
    """What the embedded store's supervisor knows first (a dead store is not pinged for the
    whole server-selection timeout), then a ping."""
    store = services.jobs.store
    health = store.health
    if not health.up:
        raise CheckFailed(health.note)
    try:
        await store.ping()
    except Exception as exc:
        if is_outage(exc):
            raise CheckFailed("the store does not answer") from None
        raise
    return f"answers (restarted {health.restarts} times)" if health.restarts else "answers"


async def _broker(services: Services) -> str:
    if not await services.jobs.queue.ping():
        raise CheckFailed("the plan queue's broker does not answer")
    return "answers"


async def _kill(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    await process.wait()


async def _local_recipes(services: Services, timeout_s: float) -> str:
    """`python -m soda_reduce.recipe --list` runs and knows every recipe the cascade needs."""
    argv = [sys.executable, "-m", "soda_reduce.recipe", "--list"]
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # its own process group: killed whole on timeout
    )
    try:
        async with asyncio.timeout(timeout_s):
            out, err = await process.communicate()
    except TimeoutError:
        await _kill(process)
        raise CheckFailed(f"the recipe command did not answer within {timeout_s:g} s") from None
    except asyncio.CancelledError:  # the request went away: leave no process behind
        await _kill(process)
        raise
    if process.returncode != 0:
        last = (err.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        raise CheckFailed(f"the recipe command exited with {process.returncode}: {last}")
    known = set(out.decode(errors="replace").split())
    registry = services.jobs.pipelines.registry
    wanted = {t.recipe for p in registry.pipelines.values() for t in p.cascade.tasks}
    missing = sorted(wanted - known)
    if missing:
        raise CheckFailed(f"recipes not installed: {', '.join(missing)}")
    return f"local: the recipe command runs ({len(known)} recipes)"


SERVICE_ACCOUNT_CA = Path("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")


async def _kubernetes_endpoint() -> tuple[str, ssl.SSLContext | bool]:
    """The API server's URL, as the executor's settings name it, and how to check its TLS."""
    from soda_reduce.runtime.executors.kubernetes_pod import KubernetesConfig

    cfg = KubernetesConfig.from_env()
    if cfg.api_host:
        return cfg.api_host.rstrip("/"), True
    if cfg.in_cluster:
        host = os.environ.get("KUBERNETES_SERVICE_HOST", "")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise CheckFailed("in-cluster, but KUBERNETES_SERVICE_HOST is not set")
        host = f"[{host}]" if ":" in host else host
        # the API pod mounts no service-account token (k8s/api.yaml), hence maybe no CA either
        verify: ssl.SSLContext | bool = False
        if SERVICE_ACCOUNT_CA.is_file():
            verify = ssl.create_default_context(cafile=SERVICE_ACCOUNT_CA)
        return f"https://{host}:{port}", verify
    from kubernetes.aio import client as k8s
    from kubernetes.aio import config as k8s_config

    configuration = k8s.Configuration()
    await k8s_config.load_kube_config(
        config_file=str(cfg.kubeconfig) if cfg.kubeconfig else None,
        context=cfg.context,
        client_configuration=configuration,
        persist_config=False,
    )
    if configuration.ssl_ca_cert:
        return configuration.host, ssl.create_default_context(cafile=configuration.ssl_ca_cert)
    return configuration.host, bool(configuration.verify_ssl)


async def _kubernetes_api(timeout_s: float) -> str:
    """The API server answers GET /version.

    No credentials are sent: the API process has no rights in the cluster (only workers
    create pods), and any HTTP answer, even 401, shows the server is up and reachable.
    """
    url, verify = await _kubernetes_endpoint()
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(f"{url}/version", ssl=verify) as response,
        ):
            if response.status != 200:
                return f"kubernetes: the API server answers (HTTP {response.status})"
            info = await response.json(content_type=None)
    except aiohttp.ClientError as exc:
        log.warning("Kubernetes API server %s: %r", url, exc)
        raise CheckFailed(
            f"the Kubernetes API server does not answer ({type(exc).__name__})"
        ) from None
    version = info.get("gitVersion", "?") if isinstance(info, dict) else "?"
    return f"kubernetes: the API server answers (version {version})"


async def _pipelines(services: Services) -> str:
    """Every installed pipeline loaded; locally, the software its recipes import is here
    (a pod brings its own, in the pipeline's image)."""
    registry = services.jobs.pipelines.registry
    problems = [f"{name} refused ({why})" for name, why in sorted(registry.refused.items())]
    if _settings(services).executor == "local":
        for pipeline in registry.pipelines.values():
            missing = [m for m in pipeline.requires if importlib.util.find_spec(m) is None]
            if missing:
                problems.append(f"{pipeline.name} needs {', '.join(missing)} (not installed)")
    if problems:
        raise CheckFailed("; ".join(problems))
    names = ", ".join(f"{p.name} {p.version}" for p in registry.pipelines.values())
    return f"pipelines: {names}"


def _free_bytes(path: Path) -> int:
    while not path.exists() and path != path.parent:
        path = path.parent  # the product store is created on first use
    return shutil.disk_usage(path).free


async def _disk(services: Services) -> str:
    minimum = _settings(services).min_free_bytes
    free = await asyncio.to_thread(_free_bytes, services.products.root)
    if free < minimum:
        raise CheckFailed(
            f"{free / 1e9:.2f} GB free on the product store, below the minimum "
            f"{minimum / 1e9:.2f} GB (SODA_REDUCE_MIN_FREE_BYTES)"
        )
    return f"{free / 1e9:.2f} GB free on the product store"


class AvailabilityMonitor:
    """Runs the checks at most every `cache_s`; concurrent requests share one run.

    A change of the store's health (its supervisor saw it die or come back) makes the
    cached report stale at once.
    """

    def __init__(
        self,
        services: Services,
        *,
        cache_s: float = REPORT_CACHE_S,
        timeout_s: float = CHECK_TIMEOUT_S,
        executor_cache_s: float = EXECUTOR_CACHE_S,
    ) -> None:
        self.services = services
        self.cache_s, self.timeout_s, self.executor_cache_s = cache_s, timeout_s, executor_cache_s
        self.up_since = datetime.now(UTC)
        self.runs = 0  # how many times the checks really ran (tests, debugging)
        self._report: tuple[float, list[CheckResult]] | None = None
        self._health_version = self._store_health_version()
        self._executor: tuple[float, CheckResult] | None = None
        self._lock = asyncio.Lock()

    def checks(self) -> dict[str, Check]:
        services = self.services
        return {
            "store": lambda: _store(services),
            "broker": lambda: _broker(services),
            "executor": self._executor_check,
            "disk": lambda: _disk(services),
            "pipelines": lambda: _pipelines(services),
        }

    def _store_health_version(self) -> int:
        return self.services.jobs.store.health.version

    async def report(self) -> list[CheckResult]:
        async with self._lock:
            now = time.monotonic()
            version = self._store_health_version()
            cached = self._report
            if cached and now - cached[0] < self.cache_s and version == self._health_version:
                return cached[1]
            self._health_version = version
            self.runs += 1
            results = await asyncio.gather(*(self._run(n, c) for n, c in self.checks().items()))
            self._report = (time.monotonic(), list(results))
            return self._report[1]

    async def _run(self, name: str, check: Check) -> CheckResult:
        try:
            async with asyncio.timeout(self.timeout_s):
                return CheckResult(name, True, await check())
        except TimeoutError:
            return CheckResult(name, False, f"no answer within {self.timeout_s:g} s")
        except CheckFailed as exc:
            return CheckResult(name, False, str(exc))
        except Exception as exc:
            # the document is public: the exception's text (host names...) goes to the log only
            log.warning("availability check %s failed", name, exc_info=True)
            return CheckResult(name, False, f"failed ({type(exc).__name__}; see the service log)")

    async def _executor_check(self) -> str:
        cached = self._executor
        if cached is not None and time.monotonic() - cached[0] < self.executor_cache_s:
            if not cached[1].ok:
                raise CheckFailed(cached[1].detail)
            return cached[1].detail
        kind = _settings(self.services).executor
        # a little under the check's own timeout, so the process is killed by us, not orphaned
        budget = max(0.5, self.timeout_s - 0.5)
        try:
            if kind == "kubernetes":
                detail = await _kubernetes_api(budget)
            elif kind == "local":
                detail = await _local_recipes(self.services, budget)
            else:
                raise CheckFailed(f"unknown executor {kind!r} (SODA_REDUCE_EXECUTOR)")
        except CheckFailed as exc:
            self._executor = (time.monotonic(), CheckResult("executor", False, str(exc)))
            raise
        self._executor = (time.monotonic(), CheckResult("executor", True, detail))
        return detail


MONITOR = web.AppKey("vosi_monitor", AvailabilityMonitor)


# ----------------------------------------------------------------------------- handlers


async def availability(request: web.Request) -> web.Response:
    """Always 200: a degraded service says so in the document (VOSI), not in the status."""
    monitor = request.app[MONITOR]
    advisories = publication_of(request.app[SERVICES]).advisories()  # not failures
    body = availability_xml(await monitor.report(), monitor.up_since, advisories)
    return web.Response(body=body, content_type=XML_TYPE, charset="utf-8")


async def capabilities(request: web.Request) -> web.Response:
    body = capabilities_xml(base_url(request))
    return web.Response(body=body, content_type=XML_TYPE, charset="utf-8")


async def registry(request: web.Request) -> web.Response:
    """The VOResource record a publishing registry harvests (docs/operators.md)."""
    record = await service_record(request)
    body = etree.tostring(record, xml_declaration=True, encoding="UTF-8", pretty_print=True)
    return web.Response(body=body, content_type=XML_TYPE, charset="utf-8")


def add_routes(app: web.Application) -> None:
    publication_of(app[SERVICES])  # a bad identifier setting stops the start, not a request
    app[MONITOR] = AvailabilityMonitor(app[SERVICES])
    # at the root, and as siblings of the SODA endpoints (DALI 1.1 section 2: a client
    # given {base}/soda looks for {base}/soda/capabilities)
    for prefix in VOSI_PREFIXES:
        app.router.add_get(f"{prefix}/availability", availability)
        app.router.add_get(f"{prefix}/capabilities", capabilities)
    app.router.add_get("/registry", registry)
