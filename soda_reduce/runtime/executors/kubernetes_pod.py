"""The Kubernetes side of one step attempt, without I/O: its Pod, and how to read its status.

Kept apart from the executor so the rules (names, labels, volumes, which
status means which failure) can be read and tested on their own; the executor
only moves these dictionaries to and from the API server.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from soda_reduce.runtime.executors.base import StepOutcome, StepRun

CONTAINER = "recipe"
APP_LABEL = "app.kubernetes.io/name"
COMPONENT_LABEL = "app.kubernetes.io/component"
STEP_KEY_LABEL = "soda-reduce/step-key"
JOB_LABEL = "soda-reduce/job"
STEP_KEY_ANNOTATION = "soda-reduce/step-key"
REQUEST_ANNOTATION = "soda-reduce/request-id"

# Waiting reasons that will not cure themselves: fail at once.
FATAL_WAITING = frozenset({"InvalidImageName", "ErrImageNeverPull"})
# Waiting reasons that may be a passing registry or network hiccup: fail if they persist.
STUCK_WAITING = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "CreateContainerConfigError", "CreateContainerError"}
)
# Pod-level reasons for a failure that is the cluster's doing, not the recipe's.
TRANSIENT_POD_REASONS = frozenset(
    {
        "Evicted",
        "NodeLost",
        "Preempting",
        "Shutdown",
        "NodeShutdown",
        "Terminated",
        "UnexpectedAdmissionError",
        "OutOfcpu",
        "OutOfmemory",
        "OutOfpods",
        "NodeAffinity",
    }
)
_HEX = re.compile(r"[0-9a-f]{12,}")
_LABEL_BAD = re.compile(r"[^A-Za-z0-9_.-]+")
_DNS_BAD = re.compile(r"[^a-z0-9-]+")


@dataclass(frozen=True)
class PodLayout:
    """Where the two volumes live, for the worker and for the pod."""

    archive_claim: str
    archive_root: Path
    archive_mount: str
    products_claim: str
    products_root: Path
    products_mount: str

    def container_path(self, host_path: Path) -> str:
        """Map a worker path to the pod's path; the deeper root wins if one nests in the other."""
        path = os.path.abspath(host_path)
        roots = sorted(
            ((os.path.abspath(self.archive_root), self.archive_mount),
             (os.path.abspath(self.products_root), self.products_mount)),
            key=lambda item: len(item[0]),
            reverse=True,
        )  # fmt: skip
        for root, mount in roots:
            if path == root:
                return mount
            if path.startswith(root.rstrip("/") + "/"):
                return mount.rstrip("/") + "/" + os.path.relpath(path, root)
        raise ValueError(f"{host_path} is on neither the archive nor the product volume")


@dataclass(frozen=True)
class PodOptions:
    """Pod settings that are not about paths (see KubernetesConfig for their meaning)."""

    image_pull_policy: str = "IfNotPresent"
    service_account: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    priority_class: str | None = None
    run_as_user: int = 10001
    run_as_group: int = 10001
    fs_group: int | None = 10001
    cpu_limit: bool = True
    tmp_size_mb: int = 1024
    termination_grace_s: int = 10


def label_value(text: str) -> str:
    """A valid label value: at most 63 characters, alphanumeric at both ends."""
    return _LABEL_BAD.sub("-", text)[:63].strip("-_.")


def _dns_label(text: str) -> str:
    return re.sub("-+", "-", _DNS_BAD.sub("-", text.lower())).strip("-")


def pod_name(run: StepRun) -> str:
    """Deterministic per (step key, attempt): a retried create finds its own pod (409)."""
    key = run.step_key.lower()
    digest = key if _HEX.fullmatch(key) else hashlib.sha256(run.step_key.encode()).hexdigest()
    suffix = f"-{digest[:12]}-a{run.attempt}"
    job = _dns_label(run.job_id)[: 63 - len("sr-") - len(suffix)].strip("-")
    return f"sr-{job}{suffix}" if job else f"sr{suffix}"


def _cpu_quantity(cpu: float) -> str:
    return f"{max(1, round(cpu * 1000))}m"


def build_pod(
    run: StepRun,
    name: str,
    image: str,
    argv: list[str],
    layout: PodLayout,
    options: PodOptions,
) -> dict[str, Any]:
    """The Pod for one attempt: the recipe's image and argv, confined as tightly as it can run."""
    res = run.resources
    limits = {"memory": f"{res.memory_mb}Mi"}
    if options.cpu_limit:
        limits["cpu"] = _cpu_quantity(res.cpu)
    threads = str(max(1, math.floor(res.cpu)))
    env = {
        "HOME": "/tmp",
        "MPLCONFIGDIR": "/tmp/matplotlib",
        "XDG_CACHE_HOME": "/tmp/.cache",
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "OMP_NUM_THREADS": threads,  # numpy/BLAS threads match the CPU we asked for
        "OPENBLAS_NUM_THREADS": threads,
        "SODA_REDUCE_STEP_KEY": run.step_key,
        "SODA_REDUCE_ATTEMPT": str(run.attempt),
        **options.env,
    }
    labels = {
        **options.labels,
        APP_LABEL: "soda-reduce",
        COMPONENT_LABEL: "step",
        "app.kubernetes.io/managed-by": "soda-reduce-worker",
        STEP_KEY_LABEL: label_value(run.step_key),
        JOB_LABEL: label_value(run.job_id),
        "soda-reduce/pipeline": label_value(run.pipeline),
        "soda-reduce/attempt": str(run.attempt),
    }
    annotations = {STEP_KEY_ANNOTATION: run.step_key, "soda-reduce/recipe": run.recipe}
    if run.request_id:
        annotations[REQUEST_ANNOTATION] = run.request_id
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "activeDeadlineSeconds": max(1, math.ceil(res.timeout_s)),
        "terminationGracePeriodSeconds": options.termination_grace_s,
        "automountServiceAccountToken": False,  # a recipe has no business with the API
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": options.run_as_user,
            "runAsGroup": options.run_as_group,
            "seccompProfile": {"type": "RuntimeDefault"},
            **({"fsGroup": options.fs_group} if options.fs_group is not None else {}),
        },
        "containers": [
            {
                "name": CONTAINER,
                "image": image,
                "imagePullPolicy": options.image_pull_policy,
                "command": argv,
                "workingDir": layout.container_path(run.workdir),
                "env": [{"name": k, "value": v} for k, v in env.items()],
                "resources": {
                    "requests": {"cpu": _cpu_quantity(res.cpu), "memory": f"{res.memory_mb}Mi"},
                    "limits": limits,
                },
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "runAsNonRoot": True,
                    "capabilities": {"drop": ["ALL"]},
                },
                "volumeMounts": [
                    {"name": "archive", "mountPath": layout.archive_mount, "readOnly": True},
                    {"name": "products", "mountPath": layout.products_mount},
                    {"name": "tmp", "mountPath": "/tmp"},
                ],
            }
        ],
        "volumes": [
            {
                "name": "archive",
                "persistentVolumeClaim": {"claimName": layout.archive_claim, "readOnly": True},
            },
            {"name": "products", "persistentVolumeClaim": {"claimName": layout.products_claim}},
            {"name": "tmp", "emptyDir": {"sizeLimit": f"{options.tmp_size_mb}Mi"}},
        ],
    }
    if options.service_account:
        spec["serviceAccountName"] = options.service_account
    if options.node_selector:
        spec["nodeSelector"] = dict(options.node_selector)
    if options.tolerations:
        spec["tolerations"] = [dict(t) for t in options.tolerations]
    if options.priority_class:
        spec["priorityClassName"] = options.priority_class
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": spec,
    }


def same_attempt(existing: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Whether a pod found under our name (409) runs exactly this attempt and can be adopted.

    Work directories are fresh per attempt, so a pod left by an earlier worker
    writes where nobody will look: such a pod is replaced, not adopted.
    """
    meta = existing.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return False
    if (existing.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return False
    ours = wanted["spec"]["containers"][0]
    theirs = ((existing.get("spec") or {}).get("containers") or [{}])[0]
    return (
        (meta.get("annotations") or {}).get(STEP_KEY_ANNOTATION)
        == wanted["metadata"]["annotations"][STEP_KEY_ANNOTATION]
        and theirs.get("image") == ours["image"]
        and theirs.get("command") == ours["command"]
    )


def _signal_hint(code: int) -> str:
    """Exit codes above 128 are a signal's number plus 128: name it for the reader."""
    try:
        return f" ({signal.Signals(code - 128).name})" if code > 128 else ""
    except ValueError:
        return ""


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    try:
        return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    except ValueError:
        return None


@dataclass
class PodJudge:
    """Turns the pod states seen so far into an outcome, or None while it is still going.

    Stateful only for image pulls: a pull error seen once may be a registry
    hiccup, so it fails the attempt only after persisting for ``pull_grace_s``.
    """

    run: StepRun
    image: str
    pull_grace_s: float
    pod: dict[str, Any] = field(default_factory=dict)
    stuck_since: float | None = None
    stuck_reason: str = ""

    def update(self, pod: dict[str, Any], now: float) -> StepOutcome | None:
        self.pod = pod
        return self.check(now)

    def next_check(self) -> float | None:
        """When a persisting waiting reason turns into a failure, for the watch's timer."""
        return None if self.stuck_since is None else self.stuck_since + self.pull_grace_s

    def _container(self) -> dict[str, Any]:
        statuses = (self.pod.get("status") or {}).get("containerStatuses") or []
        return next((s for s in statuses if s.get("name") == CONTAINER), {})

    def check(self, now: float) -> StepOutcome | None:
        status = self.pod.get("status") or {}
        phase = status.get("phase")
        if phase == "Succeeded":
            return StepOutcome(True, 0, wall_seconds=self._wall())
        if phase == "Failed":
            return self._failed(status)
        waiting = (self._container().get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason") or ""
        if reason in FATAL_WAITING:
            return self._cannot_start(reason, waiting.get("message"))
        if reason in STUCK_WAITING:
            if self.stuck_since is None:
                self.stuck_since, self.stuck_reason = now, reason
            if now - self.stuck_since >= self.pull_grace_s:
                return self._cannot_start(reason, waiting.get("message"))
            return None
        self.stuck_since = None
        return None

    def _cannot_start(self, reason: str, message: str | None) -> StepOutcome:
        what = "image" if "Image" in reason else "container"
        detail = f": {message}" if message else ""
        return StepOutcome(False, error=f"cannot start the {what} {self.image} ({reason}){detail}")

    def _wall(self) -> float:
        terminated = (self._container().get("state") or {}).get("terminated") or {}
        return _seconds(terminated.get("startedAt"), terminated.get("finishedAt")) or 0.0

    def _failed(self, status: dict[str, Any]) -> StepOutcome:
        reason, message = status.get("reason") or "", status.get("message") or ""
        wall = self._wall()
        if reason == "DeadlineExceeded":
            return StepOutcome(
                False,
                error=f"timed out after {self.run.resources.timeout_s:g} s and was killed "
                "(activeDeadlineSeconds)",
                wall_seconds=wall,
            )
        disrupted = any(
            c.get("type") == "DisruptionTarget" and c.get("status") == "True"
            for c in status.get("conditions") or []
        )
        if reason in TRANSIENT_POD_REASONS or disrupted:
            why = reason or "disrupted"
            return StepOutcome(
                False, error=f"pod {why}: {message}".rstrip(": "), transient=True, wall_seconds=wall
            )
        state = self._container().get("state") or {}
        terminated = state.get("terminated") or {}
        code = terminated.get("exitCode")
        if terminated.get("reason") == "OOMKilled":
            limit = self.run.resources.memory_mb
            return StepOutcome(False, code, f"out of memory (limit {limit} MiB)", wall_seconds=wall)
        if terminated.get("reason") in ("ContainerCannotRun", "StartError"):
            return self._cannot_start(terminated["reason"], terminated.get("message"))
        if isinstance(code, int) and code != 0:
            error = f"the recipe exited with code {code}{_signal_hint(code)}"
            return StepOutcome(False, code, error, wall_seconds=wall)
        summary = f"pod failed ({reason or 'no reason given'}): {message}".rstrip(": ")
        return StepOutcome(False, code, summary, transient=True, wall_seconds=wall)

    def overdue(self, waited_s: float) -> StepOutcome:
        """Our own bound passed: the kubelet never enforced a deadline (not started, node gone)."""
        status = self.pod.get("status") or {}
        if not status.get("startTime"):
            hint = next(
                (c.get("message") for c in status.get("conditions") or [] if c.get("message")),
                "",
            )
            return StepOutcome(
                False,
                error=f"pod did not start within {waited_s:.0f} s{': ' + hint if hint else ''}",
                transient=True,
            )
        return StepOutcome(
            False, error=f"pod did not finish within {waited_s:.0f} s and was deleted"
        )
