"""Run each step attempt as a Pod of its pipeline's image, through ``kubernetes.aio``.

One pod per attempt, named after the step key and attempt so that a create
retried after an ambiguous failure finds its own pod (409) and follows it
instead of starting a twin. The executor waits on a watch of that one pod,
resuming from the last resourceVersion when the stream ends and re-listing
when the server answers 410 Gone; it then copies the log next to the products
and deletes the pod, whatever happened (grace 0 when cancelled). The Pod itself
is built in ``kubernetes_pod``, its status is read in ``kubernetes_status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from kubernetes.aio import client as k8s
from kubernetes.aio import config as k8s_config

from soda_reduce.runtime.executors.base import StepOutcome, StepRun, recipe_argv
from soda_reduce.runtime.executors.kubernetes_pod import (
    KubernetesConfig,
    build_pod,
    pod_name,
    same_attempt,
)
from soda_reduce.runtime.executors.kubernetes_status import CONTAINER, PodJudge

T = TypeVar("T")
logger = logging.getLogger(__name__)
# What a flaky network or an API server restart looks like from here.
NETWORK_ERRORS = (aiohttp.ClientError, TimeoutError, ConnectionError)


class _Unavailable(Exception):
    """The API server could not be reached or kept failing: the attempt is worth retrying."""


class _Gone(Exception):
    """The watch's resourceVersion is too old (410): list again, then watch from there."""


def _retryable(exc: k8s.ApiException) -> bool:
    return exc.status == 429 or (isinstance(exc.status, int) and exc.status >= 500)


class KubernetesExecutor:
    """Runs recipe attempts as pods; one API client, at most ``concurrency`` pods at a time."""

    name = "kubernetes"

    def __init__(self, config: KubernetesConfig) -> None:
        self.config = config
        self._slots = asyncio.Semaphore(config.concurrency)
        self._client: k8s.ApiClient | None = None
        self._api: k8s.CoreV1Api | None = None
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------ interface

    def container_path(self, host_path: Path) -> str:
        return self.config.container_path(host_path)

    def recipe_command(self, run: StepRun) -> list[str]:
        return recipe_argv(
            self.config.python,
            run.recipe,
            self.container_path(run.workdir / "inputs.json"),
            self.container_path(run.workdir / "params.json"),
            self.container_path(run.workdir / "out"),
        )

    def pod_manifest(self, run: StepRun) -> dict[str, Any]:
        """The Pod this attempt would create (KeyError: no image for the pipeline).

        The image is the operator's ``SODA_REDUCE_K8S_IMAGE_<PIPELINE>``, else the one
        the pipeline plug-in names."""
        image = self.config.images.get(run.pipeline) or pipeline_image(run.pipeline)
        return build_pod(run, pod_name(run), image, self.recipe_command(run), self.config)

    async def run(self, run: StepRun) -> StepOutcome:
        async with self._slots:
            return await self._run(run)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = self._api = None

    # ------------------------------------------------------------ one attempt

    async def _run(self, run: StepRun) -> StepOutcome:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            manifest = self.pod_manifest(run)
        except KeyError:
            return StepOutcome(False, error=f"no container image configured for {run.pipeline!r}")
        except ValueError as exc:  # a path on neither volume
            return StepOutcome(False, error=str(exc))
        name = manifest["metadata"]["name"]
        try:
            api = await self._core()
        except (k8s_config.ConfigException, OSError) as exc:  # no cluster credentials here
            return StepOutcome(False, error=f"cannot configure the Kubernetes client: {exc}")
        grace: int | None = None
        try:
            outcome = await self._attempt(api, run, manifest, started)
            await self._save_log(api, run, manifest, outcome)
        except asyncio.CancelledError:
            grace = 0
            raise
        finally:
            await asyncio.shield(self._delete(api, name, grace))
        if not outcome.wall_seconds:
            outcome = replace(outcome, wall_seconds=loop.time() - started)
        return outcome

    async def _attempt(
        self, api: k8s.CoreV1Api, run: StepRun, manifest: dict[str, Any], started: float
    ) -> StepOutcome:
        image = manifest["spec"]["containers"][0]["image"]
        judge = PodJudge(run, image, self.config.pull_grace_s)
        try:
            pod = await self._create(api, manifest)
            limit = run.resources.timeout_s + self.config.deadline_margin_s
            return await self._follow(api, manifest["metadata"]["name"], judge, pod, started, limit)
        except _Unavailable as exc:
            return StepOutcome(False, error=f"Kubernetes API unavailable: {exc}", transient=True)
        except k8s.ApiException as exc:
            return StepOutcome(False, error=f"Kubernetes API refused: {_api_error(exc)}")

    async def _create(self, api: k8s.CoreV1Api, manifest: dict[str, Any]) -> dict[str, Any]:
        """Create the pod; on 409 adopt it if it is this very attempt, else replace it."""
        name, ns = manifest["metadata"]["name"], self.config.namespace
        body = k8s.V1Pod.from_dict(manifest)
        for _ in range(self.config.api_attempts):
            try:
                return self._dict(await self._call(api.create_namespaced_pod, ns, body))
            except k8s.ApiException as exc:
                if exc.status != 409:
                    raise
            existing = self._dict(await self._call(api.read_namespaced_pod, name, ns))
            if same_attempt(existing, manifest):
                return existing
            await self._delete(api, name, 0)
            await self._wait_gone(api, name)
        raise _Unavailable(f"pod {name} kept reappearing under our name")

    async def _follow(
        self,
        api: k8s.CoreV1Api,
        name: str,
        judge: PodJudge,
        pod: dict[str, Any],
        started: float,
        limit: float,
    ) -> StepOutcome:
        """Watch the pod until the judge has an outcome or our own deadline passes."""
        loop = asyncio.get_running_loop()
        deadline = started + limit
        version = (pod.get("metadata") or {}).get("resourceVersion")
        verdict = judge.update(pod, loop.time())
        failures = 0
        while verdict is None:
            if loop.time() >= deadline:  # a last look, for the freshest reason to give
                try:
                    pod = await self._call(api.read_namespaced_pod, name, self.config.namespace)
                except k8s.ApiException as exc:
                    if exc.status == 404:
                        return _vanished(name)
                    raise
                return judge.update(self._dict(pod), loop.time()) or judge.overdue(limit)
            try:
                verdict, version = await self._watch_once(api, name, judge, version, deadline)
                failures = 0
            except _Gone:
                listing = await self._call(
                    api.list_namespaced_pod,
                    self.config.namespace,
                    field_selector=f"metadata.name={name}",
                )
                version = listing.metadata.resource_version if listing.metadata else None
                if not listing.items:
                    return _vanished(name)
                verdict = judge.update(self._dict(listing.items[0]), loop.time())
            except (*NETWORK_ERRORS, k8s.ApiException, json.JSONDecodeError) as exc:
                if isinstance(exc, k8s.ApiException) and not _retryable(exc):
                    raise
                failures += 1
                if failures >= self.config.api_attempts:
                    raise _Unavailable(f"watching pod {name}: {_api_error(exc)}") from exc
                await asyncio.sleep(self.config.api_backoff_s * 2 ** (failures - 1))
        return verdict

    async def _watch_once(
        self, api: k8s.CoreV1Api, name: str, judge: PodJudge, version: str | None, deadline: float
    ) -> tuple[StepOutcome | None, str | None]:
        """One watch request, read until an outcome, its end (resume) or a 410 (re-list)."""
        loop = asyncio.get_running_loop()
        seconds = max(1, min(self.config.watch_timeout_s, round(deadline - loop.time()) + 1))
        response = await api.list_namespaced_pod_without_preload_content(
            self.config.namespace,
            field_selector=f"metadata.name={name}",
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=seconds,
            watch=True,
            _request_timeout=float(seconds + self.config.request_timeout_s),
        )
        try:
            if response.status != 200:
                text = await response.text()
                if response.status == 410:
                    raise _Gone()
                raise k8s.ApiException(status=response.status, reason=response.reason, body=text)
            events = 0
            while True:
                wake = min(deadline, judge.next_check() or deadline)
                try:
                    async with asyncio.timeout_at(wake) as timer:
                        line = await response.content.readline()
                except TimeoutError:
                    if not timer.expired():
                        raise
                    if loop.time() >= deadline:
                        return None, version
                    verdict = judge.check(loop.time())
                    if verdict is not None:
                        return verdict, version
                    continue
                if not line:
                    if not events:  # an empty stream: do not hammer a server that ends them at once
                        await asyncio.sleep(self.config.api_backoff_s)
                    return None, version  # the server ended the stream: resume from version
                events += 1
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise _Gone()
                    raise k8s.ApiException(status=obj.get("code"), reason=obj.get("message"))
                version = (obj.get("metadata") or {}).get("resourceVersion") or version
                if kind == "DELETED":
                    return _vanished(name), version
                if kind in ("ADDED", "MODIFIED"):
                    verdict = judge.update(obj, loop.time())
                    if verdict is not None:
                        return verdict, version
        finally:
            response.close()

    # ------------------------------------------------------------ after

    async def _save_log(
        self, api: k8s.CoreV1Api, run: StepRun, manifest: dict[str, Any], outcome: StepOutcome
    ) -> None:
        """Append the container's log to ``run.log_path``, and why the attempt failed."""
        name = manifest["metadata"]["name"]
        container = manifest["spec"]["containers"][0]
        run.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(run.log_path, "ab") as log:
            log.write(f"$ [pod {name}, {container['image']}] {' '.join(container['command'])}\n"
                      .encode())  # fmt: skip
            try:
                response = await api.read_namespaced_pod_log_without_preload_content(
                    name,
                    self.config.namespace,
                    container=CONTAINER,
                    limit_bytes=self.config.log_limit_bytes,
                    _request_timeout=float(self.config.request_timeout_s * 4),
                )
                try:
                    if response.status == 200:
                        async for chunk in response.content.iter_chunked(1 << 16):
                            log.write(chunk)
                    else:
                        detail = _status_message(await response.text())
                        log.write(f"[soda-reduce] no log ({response.status}: {detail})\n".encode())
                finally:
                    response.close()
            except NETWORK_ERRORS as exc:
                log.write(f"[soda-reduce] the log could not be read: {exc!r}\n".encode())
            if not outcome.ok:
                log.write(f"\n[soda-reduce] {outcome.error}\n".encode())

    async def _delete(self, api: k8s.CoreV1Api, name: str, grace: int | None) -> None:
        """Delete the pod; gone already is fine, and a failure here never masks the outcome."""
        try:
            await self._call(
                api.delete_namespaced_pod,
                name,
                self.config.namespace,
                grace_period_seconds=grace,
                propagation_policy="Background",
            )
        except k8s.ApiException as exc:
            if exc.status != 404:
                logger.warning(f"could not delete pod {name}: {_api_error(exc)}")
        except _Unavailable as exc:
            logger.warning(f"could not delete pod {name}: {exc}")

    async def _wait_gone(self, api: k8s.CoreV1Api, name: str) -> None:
        delay = self.config.api_backoff_s
        for _ in range(max(1, self.config.termination_grace_s * 4)):
            try:
                await self._call(api.read_namespaced_pod, name, self.config.namespace)
            except k8s.ApiException as exc:
                if exc.status == 404:
                    return
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    # ------------------------------------------------------------ plumbing

    async def _core(self) -> k8s.CoreV1Api:
        async with self._lock:
            if self._api is None:
                self._client = k8s.ApiClient(await self._configuration())
                self._api = k8s.CoreV1Api(self._client)
            return self._api

    async def _configuration(self) -> k8s.Configuration:
        cfg = self.config
        if cfg.api_host:
            configuration = k8s.Configuration(host=cfg.api_host)
        elif cfg.in_cluster:
            configuration = k8s.Configuration()
            k8s_config.load_incluster_config(client_configuration=configuration)
        else:
            configuration = k8s.Configuration()
            await k8s_config.load_kube_config(
                config_file=str(cfg.kubeconfig) if cfg.kubeconfig else None,
                context=cfg.context,
                client_configuration=configuration,
                persist_config=False,
            )
        configuration.connection_pool_maxsize = max(cfg.concurrency * 2 + 4, 16)  # a watch each
        return configuration

    async def _call(self, method: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """One API call, retried with backoff on 5xx, 429 and network errors."""
        delay = self.config.api_backoff_s
        for attempt in range(1, self.config.api_attempts + 1):
            try:
                return await method(
                    *args, _request_timeout=float(self.config.request_timeout_s), **kwargs
                )
            except k8s.ApiException as exc:
                if not _retryable(exc):
                    raise
                error: str = _api_error(exc)
            except NETWORK_ERRORS as exc:
                error = repr(exc)
            if attempt < self.config.api_attempts:
                await asyncio.sleep(delay)
                delay *= 2
        raise _Unavailable(f"{getattr(method, '__name__', 'call')}: {error}")

    def _dict(self, model: Any) -> dict[str, Any]:
        """Models as the API spells them (camelCase), which is what the judge reads."""
        assert self._client is not None
        return self._client.sanitize_for_serialization(model)


def _vanished(name: str) -> StepOutcome:
    return StepOutcome(
        False,
        error=f"pod {name} disappeared before it finished (node lost, or deleted by someone else)",
        transient=True,
    )


def _status_message(text: str) -> str:
    with contextlib.suppress(ValueError, AttributeError):
        return json.loads(text).get("message") or text
    return text.strip()[:300]


def _api_error(exc: BaseException) -> str:
    if isinstance(exc, k8s.ApiException):
        return f"{exc.status} {exc.reason or ''}: {_status_message(exc.body or '')}".strip(": ")
    return repr(exc)


def pipeline_image(name: str) -> str:
    """The container image a pipeline plug-in names (KeyError if none)."""
    from soda_reduce.pipelines import PipelineError, registry

    try:
        image = registry().get(name).image
    except (KeyError, PipelineError):
        image = ""
    if not image:
        raise KeyError(name)
    return image
