"""A small Kubernetes API server for the executor's tests: pods in one namespace, nothing else.

It speaks the real wire format (JSON objects, watch streams of one JSON event
per line, Status bodies for errors, resourceVersions that grow) so the
official client runs unmodified against it. Every request is recorded, every
Pod created is checked against what a step pod must look like (and against
the Kubernetes 1.31 schema), and each pod plays a scripted lifecycle. Faults
are queued per request: a create answering 500, a watch that ends early,
answers 410 Gone or drops the connection.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.kube_pod_rules import Expect, check_pod

STAMP = "2026-01-01T00:00:00Z"
Pod = dict[str, Any]


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    body: Any = None
    sent: list[int] = field(default_factory=list)  # resourceVersions a watch delivered


@dataclass
class Step:
    """One scripted change to a pod, ``delay_s`` after the previous one."""

    delay_s: float
    change: Callable[[Pod], None] | None = None  # None: the pod disappears (node lost)
    when: Callable[[], bool] | None = None  # wait for this first (e.g. a watch to be open)


# ---------------------------------------------------------------- pod states


def _container(state: dict[str, Any], ready: bool = False, image: str = "") -> dict[str, Any]:
    return {
        "name": "recipe",
        "image": image,
        "imageID": "",
        "ready": ready,
        "restartCount": 0,
        "started": ready,
        "state": state,
    }


def _set(phase: str, state: dict[str, Any] | None, **status: Any) -> Callable[[Pod], None]:
    def change(pod: Pod) -> None:
        image = pod["spec"]["containers"][0]["image"]
        new = {"phase": phase, "qosClass": "Guaranteed", **status}
        if phase != "Pending" or state is not None:
            new.setdefault("startTime", STAMP)
        if state is not None:
            new["containerStatuses"] = [_container(state, phase == "Running", image)]
        pod["status"] = new

    return change


def _terminated(code: int, reason: str) -> dict[str, Any]:
    return {
        "terminated": {
            "exitCode": code,
            "reason": reason,
            "startedAt": STAMP,
            "finishedAt": "2026-01-01T00:00:02Z",
        }
    }


def waiting(reason: str, message: str = "") -> Callable[[Pod], None]:
    return _set("Pending", {"waiting": {"reason": reason, "message": message}})


def unschedulable() -> Callable[[Pod], None]:
    condition = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "0/3 nodes are available: 3 Insufficient memory.",
    }
    return _set("Pending", None, conditions=[condition])


running = _set("Running", {"running": {"startedAt": STAMP}})
succeeded = _set("Succeeded", _terminated(0, "Completed"))


def exited(code: int) -> Callable[[Pod], None]:
    return _set("Failed", _terminated(code, "Error"))


oom_killed = _set("Failed", _terminated(137, "OOMKilled"))
evicted = _set(
    "Failed",
    _terminated(137, "Error"),
    reason="Evicted",
    message="The node was low on resource: memory.",
)
deadline_exceeded = _set(
    "Failed",
    _terminated(137, "Error"),
    reason="DeadlineExceeded",
    message="Pod was active on the node longer than the specified deadline",
)
pending = waiting("ContainerCreating")


def lifecycle(*changes: Callable[[Pod], None] | None, every_s: float = 0.02) -> list[Step]:
    """Changes spaced ``every_s`` apart, the first one immediately after creation."""
    return [Step(0.0 if i == 0 else every_s, c) for i, c in enumerate(changes)]


# ---------------------------------------------------------------- the server


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _error(code: int, reason: str, message: str) -> web.Response:
    return web.json_response(_status(code, reason, message), status=code)


class FakeKube:
    """The fake API server; ``url`` once started. Tests script it through its attributes."""

    def __init__(self, namespace: str, expect: Expect) -> None:
        self.namespace = namespace
        self.expect = expect
        self.requests: list[Recorded] = []
        self.problems: list[str] = []
        self.pods: dict[str, Pod] = {}
        self.logs: dict[str, str] = {}
        self.default_log = ""
        self.lifecycle: list[Step] = lifecycle(pending, running, succeeded)
        self.create_faults: list[str] = []  # "500" or "500-after-create", one per create
        self.watch_faults: list[str] = []  # "end_after:N", "gone", "gone_http", "reset"
        self._history: list[tuple[int, str, Pod]] = []
        self._rv = itertools.count(1000)
        self._changed = asyncio.Event()
        self._scripts: dict[str, asyncio.Task[None]] = {}
        self._streams: set[asyncio.Task[object]] = set()
        self._runner: web.AppRunner | None = None
        self.url = ""

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        app = web.Application()
        base = "/api/v1/namespaces/{ns}/pods"
        app.router.add_post(base, self._create)
        app.router.add_get(base, self._list)
        app.router.add_get(base + "/{name}", self._read)
        app.router.add_get(base + "/{name}/log", self._log)
        app.router.add_delete(base + "/{name}", self._delete)
        app.router.add_route("*", "/{tail:.*}", self._unknown)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def stop(self) -> None:
        for task in [*self._scripts.values(), *self._streams]:
            task.cancel()  # open watch streams too: a client that left does not end them
        if self._runner is not None:
            await self._runner.cleanup()

    async def until(self, predicate: Callable[[], bool], timeout: float = 3.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.005)

    def add_pod(self, pod: Pod, steps: list[Step] | None = None) -> Pod:
        """Put a pod in place as if an earlier worker had created it."""
        stored = self._store(copy.deepcopy(pod))
        self._play(stored["metadata"]["name"], steps if steps is not None else self.lifecycle)
        return stored

    # ------------------------------------------------------------ queries for the tests

    def calls(self, method: str, suffix: str = "") -> list[Recorded]:
        return [r for r in self.requests if r.method == method and r.path.endswith(suffix)]

    def watches(self) -> list[Recorded]:
        return [r for r in self.calls("GET", "/pods") if r.query.get("watch") in ("true", "1")]

    def relists(self) -> list[Recorded]:
        return [r for r in self.calls("GET", "/pods") if r.query.get("watch") is None]

    # ------------------------------------------------------------ state

    def _emit(self, kind: str, pod: Pod) -> None:
        version = next(self._rv)
        pod["metadata"]["resourceVersion"] = str(version)
        self._history.append((version, kind, copy.deepcopy(pod)))
        self._changed.set()
        self._changed = asyncio.Event()

    def _store(self, pod: Pod) -> Pod:
        name = pod["metadata"]["name"]
        pod["metadata"].update(namespace=self.namespace, uid=f"uid-{name}", creationTimestamp=STAMP)
        pod.setdefault("status", {"phase": "Pending", "qosClass": "Guaranteed"})
        self.pods[name] = pod
        self._emit("ADDED", pod)
        return pod

    def _play(self, name: str, steps: list[Step]) -> None:
        async def script() -> None:
            for step in steps:
                while step.when is not None and not step.when():
                    await asyncio.sleep(0.002)
                await asyncio.sleep(step.delay_s)
                pod = self.pods.get(name)
                if pod is None:
                    return
                if step.change is None:
                    self._remove(name)
                    return
                step.change(pod)
                self._emit("MODIFIED", pod)

        self._scripts[name] = asyncio.get_running_loop().create_task(script())

    def _remove(self, name: str) -> Pod | None:
        pod = self.pods.pop(name, None)
        if pod is not None:
            pod["metadata"]["deletionTimestamp"] = STAMP
            self._emit("DELETED", pod)
        return pod

    # ------------------------------------------------------------ handlers

    async def _record(self, request: web.Request) -> Recorded:
        body = None
        if request.can_read_body:
            text = await request.text()
            try:
                body = json.loads(text) if text else None
            except ValueError:
                self.problems.append(f"{request.method} {request.path}: body is not JSON")
        entry = Recorded(request.method, request.path, dict(request.query), body)
        self.requests.append(entry)
        if request.match_info.get("ns", self.namespace) != self.namespace:
            self.problems.append(f"{request.method} {request.path}: wrong namespace")
        return entry

    async def _unknown(self, request: web.Request) -> web.Response:
        await self._record(request)
        self.problems.append(f"unexpected request {request.method} {request.path}")
        return _error(404, "NotFound", "the fake knows only pods")

    async def _create(self, request: web.Request) -> web.Response:
        entry = await self._record(request)
        pod = entry.body
        problems = check_pod(pod, self.expect)
        if problems:
            self.problems.extend(problems)
            return _error(422, "Invalid", "; ".join(problems))
        fault = self.create_faults.pop(0) if self.create_faults else ""
        if fault == "500":
            return _error(500, "InternalError", "etcdserver: request timed out")
        name = pod["metadata"]["name"]
        if name in self.pods:
            return _error(409, "AlreadyExists", f'pods "{name}" already exists')
        stored = self._store(pod)
        self._play(name, self.lifecycle)
        if fault == "500-after-create":
            return _error(500, "InternalError", "etcdserver: leader changed")
        return web.json_response(stored, status=201)

    async def _read(self, request: web.Request) -> web.Response:
        await self._record(request)
        pod = self.pods.get(request.match_info["name"])
        if pod is None:
            return _error(404, "NotFound", f'pods "{request.match_info["name"]}" not found')
        return web.json_response(pod)

    def _selected(self, request: web.Request) -> str | None:
        match = re.fullmatch(
            r"metadata\.name=([a-z0-9.-]+)", request.query.get("fieldSelector", "")
        )
        if match is None:
            self.problems.append(f"list/watch without a field selector on the pod name: {request}")
            return None
        return match.group(1)

    async def _list(self, request: web.Request) -> web.StreamResponse:
        entry = await self._record(request)
        name = self._selected(request)
        if request.query.get("watch") in ("true", "1"):
            return await self._watch(request, entry, name)
        items = [self.pods[name]] if name in self.pods else []
        version = str(self._history[-1][0]) if self._history else "1"
        listing = {
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": version},
            "items": items,
        }
        return web.json_response(listing)

    async def _watch(
        self, request: web.Request, entry: Recorded, name: str | None
    ) -> web.StreamResponse:
        fault = self.watch_faults.pop(0) if self.watch_faults else ""
        if "resourceVersion" not in request.query:
            self.problems.append("a watch without resourceVersion (would miss or replay events)")
        if fault == "gone_http":
            return _error(410, "Expired", "too old resource version")
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        task = asyncio.current_task()
        assert task is not None
        self._streams.add(task)
        try:
            return await self._stream(request, response, entry, name, fault)
        finally:
            self._streams.discard(task)

    async def _stream(
        self,
        request: web.Request,
        response: web.StreamResponse,
        entry: Recorded,
        name: str | None,
        fault: str,
    ) -> web.StreamResponse:
        if fault == "gone":
            event = {"type": "ERROR", "object": _status(410, "Expired", "too old resource version")}
            await response.write(json.dumps(event).encode() + b"\n")
            return response
        end_after = int(fault.split(":")[1]) if fault.startswith("end_after:") else None
        cursor = int(request.query.get("resourceVersion") or 0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(request.query.get("timeoutSeconds", "1800"))
        while True:
            changed = self._changed
            for version, kind, pod in [h for h in self._history if h[0] > cursor]:
                cursor = version
                if pod["metadata"]["name"] != name:
                    continue
                if fault == "reset":
                    assert request.transport is not None
                    request.transport.close()  # a connection reset mid-stream
                    return response
                event = {"type": kind, "object": pod}
                await response.write(json.dumps(event).encode() + b"\n")
                entry.sent.append(version)
                if end_after is not None and len(entry.sent) >= end_after:
                    return response  # the stream ends early: the client must resume
            remaining = deadline - loop.time()
            if remaining <= 0:
                return response
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                return response

    async def _log(self, request: web.Request) -> web.Response:
        await self._record(request)
        name = request.match_info["name"]
        pod = self.pods.get(name)
        if pod is None:
            return _error(404, "NotFound", f'pods "{name}" not found')
        if request.query.get("container") != "recipe":
            self.problems.append(f"log request without container=recipe: {request.query}")
        statuses = pod.get("status", {}).get("containerStatuses") or [{}]
        state = statuses[0].get("state") or {}
        if "running" not in state and "terminated" not in state:
            message = f'container "recipe" in pod "{name}" is waiting to start'
            return _error(400, "BadRequest", message)
        return web.Response(text=self.logs.get(name, self.default_log))

    async def _delete(self, request: web.Request) -> web.Response:
        await self._record(request)
        name = request.match_info["name"]
        task = self._scripts.pop(name, None)
        if task is not None:
            task.cancel()
        pod = self._remove(name)
        if pod is None:
            return _error(404, "NotFound", f'pods "{name}" not found')
        return web.json_response(pod)
