"""A step attempt's Pod, without I/O: the settings, the name, the manifest.

Kept apart from the executor so the rules (names, labels, volumes, security
context) can be read and tested on their own; the executor only sends the
manifest and watches what becomes of it.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from soda_reduce.runtime.executors.base import StepRun
from soda_reduce.runtime.executors.kubernetes_status import CONTAINER

APP_LABEL = "app.kubernetes.io/name"
COMPONENT_LABEL = "app.kubernetes.io/component"
STEP_KEY_LABEL = "soda-reduce/step-key"
JOB_LABEL = "soda-reduce/job"
STEP_KEY_ANNOTATION = "soda-reduce/step-key"
REQUEST_ANNOTATION = "soda-reduce/request-id"
ENV_PREFIX = "SODA_REDUCE_K8S_"

_HEX = re.compile(r"[0-9a-f]{12,}")
_LABEL_BAD = re.compile(r"[^A-Za-z0-9_.-]+")
_DNS_BAD = re.compile(r"[^a-z0-9-]+")


@dataclass(frozen=True)
class KubernetesConfig:
    """Where step pods run and what they look like; the timing knobs are for tests and tuning."""

    namespace: str = "soda-reduce"
    images: Mapping[str, str] = field(default_factory=dict)  # pipeline -> image
    image_pull_policy: str = "IfNotPresent"
    service_account: str | None = "soda-reduce-step"
    archive_claim: str = "soda-reduce-archive"
    archive_root: Path = Path("/archive")  # the archive as the worker sees it
    archive_mount: str = "/archive"  # ... and as the pod sees it (read-only)
    products_claim: str = "soda-reduce-products"
    products_root: Path = Path("/products")
    products_mount: str = "/products"
    python: str = "python"  # the interpreter inside the pipeline image
    labels: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    priority_class: str | None = None
    run_as_user: int = 10001
    run_as_group: int = 10001
    fs_group: int | None = 10001
    cpu_limit: bool = True  # False: request CPU only, never throttle
    tmp_size_mb: int = 1024
    termination_grace_s: int = 10
    # how to reach the API server: explicit host (plain, no auth: tests), in-cluster, or kubeconfig
    api_host: str | None = None
    in_cluster: bool = False
    kubeconfig: Path | None = None
    context: str | None = None
    # behaviour
    concurrency: int = 32  # pods in flight; more attempts queue here, not in the cluster
    pull_grace_s: float = 60.0  # an image pull error must persist this long to fail a step
    deadline_margin_s: float = 60.0  # beyond timeout_s, before we stop waiting ourselves
    watch_timeout_s: int = 300  # one watch request; resumed from its resourceVersion after
    request_timeout_s: float = 30.0
    api_attempts: int = 4  # tries of each API call on 5xx, 429 or a network error
    api_backoff_s: float = 0.5  # doubled after each failed try
    log_limit_bytes: int = 64 * 1024 * 1024

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> KubernetesConfig:
        """``SODA_REDUCE_K8S_*`` settings; ``..._IMAGE_<PIPELINE>`` names each pipeline's image."""
        env = os.environ if environ is None else environ
        get = {k[len(ENV_PREFIX) :]: v for k, v in env.items() if k.startswith(ENV_PREFIX) and v}
        images = {k[len("IMAGE_") :].lower(): v for k, v in get.items() if k.startswith("IMAGE_")}
        images.pop("pull_policy", None)
        values: dict[str, Any] = {}
        for key, value in get.items():
            attr = key.lower()
            if attr in _TEXT:
                values[attr] = value
            elif attr in _NUMBERS:
                values[attr] = _NUMBERS[attr](value)
            elif attr in ("archive_root", "products_root", "kubeconfig"):
                values[attr] = Path(value)
        if "NODE_SELECTOR" in get:
            pairs = (p.split("=", 1) for p in get["NODE_SELECTOR"].split(",") if "=" in p)
            values["node_selector"] = {k.strip(): v.strip() for k, v in pairs}
        values["in_cluster"] = get.get("IN_CLUSTER", "").lower() in ("1", "true", "yes")
        return cls(images=images, **values)

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


_TEXT = {
    "namespace", "image_pull_policy", "service_account", "archive_claim", "archive_mount",
    "products_claim", "products_mount", "python", "api_host", "context", "priority_class",
}  # fmt: skip
_NUMBERS: dict[str, Any] = {
    "concurrency": int,
    "pull_grace_s": float,
    "deadline_margin_s": float,
    "watch_timeout_s": int,
    "run_as_user": int,
    "run_as_group": int,
}


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
    config: KubernetesConfig,
) -> dict[str, Any]:
    """The Pod for one attempt: the recipe's image and argv, confined as tightly as it can run."""
    res = run.resources
    limits = {"memory": f"{res.memory_mb}Mi"}
    if config.cpu_limit:
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
        **config.env,
    }
    labels = {
        **config.labels,
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
        "terminationGracePeriodSeconds": config.termination_grace_s,
        "automountServiceAccountToken": False,  # a recipe has no business with the API
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": config.run_as_user,
            "runAsGroup": config.run_as_group,
            "seccompProfile": {"type": "RuntimeDefault"},
            **({"fsGroup": config.fs_group} if config.fs_group is not None else {}),
        },
        "containers": [
            {
                "name": CONTAINER,
                "image": image,
                "imagePullPolicy": config.image_pull_policy,
                "command": argv,
                "workingDir": config.container_path(run.workdir),
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
                    {"name": "archive", "mountPath": config.archive_mount, "readOnly": True},
                    {"name": "products", "mountPath": config.products_mount},
                    {"name": "tmp", "mountPath": "/tmp"},
                ],
            }
        ],
        "volumes": [
            {
                "name": "archive",
                "persistentVolumeClaim": {"claimName": config.archive_claim, "readOnly": True},
            },
            {"name": "products", "persistentVolumeClaim": {"claimName": config.products_claim}},
            {"name": "tmp", "emptyDir": {"sizeLimit": f"{config.tmp_size_mb}Mi"}},
        ],
    }
    if config.service_account:
        spec["serviceAccountName"] = config.service_account
    if config.node_selector:
        spec["nodeSelector"] = dict(config.node_selector)
    if config.tolerations:
        spec["tolerations"] = [dict(t) for t in config.tolerations]
    if config.priority_class:
        spec["priorityClassName"] = config.priority_class
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
