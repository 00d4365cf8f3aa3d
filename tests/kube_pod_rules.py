"""What a step pod must be, checked on every Pod the executor sends to the fake API server.

The rules of issue 3 (labels, restartPolicy, deadline, limits, security
context, volumes, container paths) plus the Kubernetes schema itself, strict:
a pod the executor builds wrongly is refused with 422, as a cluster would.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import kubernetes_validate

K8S_VERSION = "1.31"


@dataclass(frozen=True)
class Expect:
    """What every step pod must carry; the fake refuses (422) pods that do not."""

    archive_claim: str
    archive_mount: str
    products_claim: str
    products_mount: str


def check_pod(pod: Any, ex: Expect) -> list[str]:
    """Everything a step pod must carry; empty when it does."""
    if not isinstance(pod, dict) or pod.get("kind") != "Pod" or pod.get("apiVersion") != "v1":
        return ["POST body is not a v1 Pod"]
    problems: list[str] = []
    try:
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        problems.append(f"schema: {'.'.join(map(str, exc.path))}: {exc.message}")
    meta, spec = pod.get("metadata", {}), pod.get("spec", {})
    name = meta.get("name", "")

    def need(ok: object, what: str) -> None:
        if not ok:
            problems.append(f"pod {name}: {what}")

    need(re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", name), "name not a DNS label")
    labels, notes = meta.get("labels", {}), meta.get("annotations", {})
    need(labels.get("app.kubernetes.io/name") == "soda-reduce", "app label")
    key = notes.get("soda-reduce/step-key", "")
    need(key, "step key annotation")
    need(labels.get("soda-reduce/step-key") == key[:63], "step-key label")
    need(labels.get("soda-reduce/job"), "job label")
    need(spec.get("restartPolicy") == "Never", "restartPolicy Never")
    deadline = spec.get("activeDeadlineSeconds")
    need(isinstance(deadline, int) and deadline > 0, "activeDeadlineSeconds")
    need(spec.get("automountServiceAccountToken") is False, "no service account token")
    need(spec.get("securityContext", {}).get("runAsNonRoot") is True, "pod runAsNonRoot")
    containers = spec.get("containers", [])
    need(len(containers) == 1, "exactly one container")
    if not containers:
        return problems
    c = containers[0]
    limits = c.get("resources", {}).get("limits", {})
    need("memory" in limits and "cpu" in limits, "cpu and memory limits")
    need(c.get("resources", {}).get("requests"), "resource requests")
    sc = c.get("securityContext", {})
    need(sc.get("allowPrivilegeEscalation") is False, "no privilege escalation")
    need(sc.get("capabilities", {}).get("drop") == ["ALL"], "drop ALL capabilities")
    need(sc.get("readOnlyRootFilesystem") is True, "read-only root filesystem")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    archive = mounts.get(ex.archive_mount, {})
    claim = volumes.get(archive.get("name"), {}).get("persistentVolumeClaim", {})
    need(archive.get("readOnly") is True, "archive mounted read-only")
    need(claim == {"claimName": ex.archive_claim, "readOnly": True}, "archive PVC read-only")
    products = mounts.get(ex.products_mount, {})
    claim = volumes.get(products.get("name"), {}).get("persistentVolumeClaim", {})
    need(claim.get("claimName") == ex.products_claim, "products PVC")
    need(not products.get("readOnly") and not claim.get("readOnly"), "products writable")
    need("emptyDir" in volumes.get(mounts.get("/tmp", {}).get("name"), {}), "/tmp emptyDir")
    argv = c.get("command", [])
    need(argv[1:3] == ["-m", "soda_reduce.recipe"], "recipe entry point")
    for flag in ("--inputs", "--params", "--out"):
        value = argv[argv.index(flag) + 1] if flag in argv[:-1] else ""
        need(value.startswith(ex.products_mount + "/"), f"{flag} in the products mount")
    return problems
