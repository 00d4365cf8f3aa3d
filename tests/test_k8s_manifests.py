"""Deployment files: every k8s/ manifest valid for a pinned Kubernetes, and safe; Dockerfiles sane.

No cluster and no Docker engine exist here, so the schemas stand in for the API
server (``kubernetes-validate``, strict: unknown fields are errors) and the
checks below stand in for a security review.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from soda_reduce.runtime.executors.kubernetes import KubernetesConfig

K8S_VERSION = "1.31"
ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
DOCKER = ROOT / "docker"
MANIFEST_FILES = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


ALL = [(p.name, d) for p in MANIFEST_FILES for d in _documents(p)]


def _kind(kind: str) -> list[dict[str, Any]]:
    return [d for _, d in ALL if d["kind"] == kind]


def _one(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in _kind(kind) if d["metadata"]["name"] == name]
    return doc


def _dockerfile_label(path: Path, label: str) -> str:
    match = re.search(rf'{re.escape(label)}="([^"]+)"', path.read_text())
    assert match, f"{path.name} has no {label} label"
    return match.group(1)


@pytest.mark.parametrize(("name", "doc"), ALL, ids=[f"{n}:{d['kind']}" for n, d in ALL])
def test_manifest_is_valid_kubernetes(name: str, doc: dict[str, Any]) -> None:
    assert kubernetes_validate.validate(doc, K8S_VERSION, strict=True) == K8S_VERSION
    assert doc["metadata"].get("namespace", "soda-reduce") == "soda-reduce"


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [p.name for p in MANIFEST_FILES]
    assert kustomization["namespace"] == "soda-reduce"


def test_the_worker_may_only_run_pods_in_its_namespace() -> None:
    assert not _kind("ClusterRole") and not _kind("ClusterRoleBinding")
    (role,) = _kind("Role")
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): set(r["verbs"]) for r in role["rules"]}
    assert rules == {
        (("",), ("pods",)): {"create", "get", "list", "watch", "delete"},
        (("",), ("pods/log",)): {"get"},
    }
    assert all("resourceNames" not in r and "nonResourceURLs" not in r for r in role["rules"])
    (binding,) = _kind("RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "soda-reduce-worker", "namespace": "soda-reduce"}
    ]
    worker = _one("Deployment", "soda-reduce-worker")["spec"]["template"]["spec"]
    assert worker["serviceAccountName"] == "soda-reduce-worker"
    api = _one("Deployment", "soda-reduce-api")["spec"]["template"]["spec"]
    assert api["automountServiceAccountToken"] is False


@pytest.mark.parametrize("deployment", _kind("Deployment"), ids=lambda d: d["metadata"]["name"])
def test_every_container_is_limited_and_unprivileged(deployment: dict[str, Any]) -> None:
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod["containers"] + pod.get("initContainers", []):
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["limits"]), container["name"]
        assert {"cpu", "memory"} <= set(resources["requests"]), container["name"]
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert not context.get("privileged")
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts["/archive"]["readOnly"] is True
        assert "/tmp" in mounts  # the only writable place on a read-only root
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_images_are_those_the_dockerfiles_build() -> None:
    service = _dockerfile_label(DOCKER / "Dockerfile", "org.opencontainers.image.title")
    ccd = _dockerfile_label(DOCKER / "ccd-pipeline.Dockerfile", "org.opencontainers.image.title")
    user = re.findall(r"^USER (\d+)", (DOCKER / "Dockerfile").read_text(), re.M)[-1]
    for deployment in _kind("Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        repository, _, tag = container["image"].rpartition(":")
        assert repository.rsplit("/", 1)[-1] == service and tag and tag != "latest"
        assert "command" not in container  # the image's ENTRYPOINT (soda-reduce) stays
        role = deployment["metadata"]["labels"]["app.kubernetes.io/component"]
        assert container["args"][0] == role  # soda-reduce api / soda-reduce worker
        assert str(pod["securityContext"]["runAsUser"]) == user
    config = _one("ConfigMap", "soda-reduce")["data"]
    repository, _, tag = config["SODA_REDUCE_K8S_IMAGE_CCD"].rpartition(":")
    assert repository.rsplit("/", 1)[-1] == ccd and tag and tag != "latest"
    # every installed pipeline has an image, built by its own Dockerfile
    from soda_reduce.pipelines import registry

    for name in registry().names():
        dockerfile = DOCKER / f"{name}-pipeline.Dockerfile"
        title = _dockerfile_label(dockerfile, "org.opencontainers.image.title")
        repository, _, tag = config[f"SODA_REDUCE_K8S_IMAGE_{name.upper()}"].rpartition(":")
        assert repository.rsplit("/", 1)[-1] == title and tag and tag != "latest"


def test_the_executor_settings_match_the_manifests() -> None:
    """The ConfigMap read the way the worker reads it names the PVCs and accounts that exist."""
    data = _one("ConfigMap", "soda-reduce")["data"]
    assert all(key.startswith("SODA_REDUCE_") for key in data)
    assert all(isinstance(value, str) for value in data.values())
    config = KubernetesConfig.from_env(data)
    claims = {
        d["metadata"]["name"]: d["spec"]["accessModes"] for d in _kind("PersistentVolumeClaim")
    }
    assert claims[config.archive_claim] == ["ReadOnlyMany"]
    assert claims[config.products_claim] == ["ReadWriteMany"]
    accounts = {d["metadata"]["name"]: d for d in _kind("ServiceAccount")}
    assert accounts[config.service_account]["automountServiceAccountToken"] is False
    assert config.in_cluster and set(config.images) == {"ccd", "kast"}
    worker = _one("Deployment", "soda-reduce-worker")["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in worker["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in worker["volumes"]
               if "persistentVolumeClaim" in v}  # fmt: skip
    by_claim = {claim: mounts[name] for name, claim in volumes.items()}
    assert str(config.archive_root) == by_claim[config.archive_claim]
    assert str(config.products_root) == by_claim[config.products_claim]
    env = {e["name"]: e for e in worker["containers"][0]["env"]}
    assert env["SODA_REDUCE_K8S_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.namespace"
    )
    for name in ("SODA_REDUCE_MONGO_URL", "SODA_REDUCE_AMQP_URL"):
        assert "secretKeyRef" in env[name]["valueFrom"]  # credentials never in the ConfigMap


def test_api_probes_and_service_use_its_port() -> None:
    api = _one("Deployment", "soda-reduce-api")["spec"]["template"]["spec"]["containers"][0]
    (port,) = api["ports"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert api[probe]["httpGet"] == {"path": "/availability", "port": port["name"]}
    service = _one("Service", "soda-reduce-api")
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    assert api["args"][-1] == str(port["containerPort"])


def test_network_policies() -> None:
    policies = {p["metadata"]["name"]: p["spec"] for p in _kind("NetworkPolicy")}
    api = policies["soda-reduce-api"]
    assert api["policyTypes"] == ["Ingress"]
    assert [p["port"] for rule in api["ingress"] for p in rule["ports"]] == [8080]
    worker = policies["soda-reduce-worker"]
    assert worker["policyTypes"] == ["Ingress", "Egress"] and worker["ingress"] == []
    ports = {p["port"] for rule in worker["egress"] for p in rule["ports"]}
    assert ports == {53, 27017, 5672, 5671, 443, 6443}  # DNS, MongoDB, RabbitMQ, API server
    assert all(rule.get("ports") for rule in worker["egress"])  # no rule open on every port
    steps = policies["soda-reduce-steps"]
    assert steps["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "step"
    assert steps["ingress"] == [] and steps["egress"] == []


def test_disruption_budgets_select_the_deployments() -> None:
    budgets = {b["metadata"]["name"]: b["spec"] for b in _kind("PodDisruptionBudget")}
    for deployment in _kind("Deployment"):
        name = deployment["metadata"]["name"]
        assert budgets[name]["selector"] == deployment["spec"]["selector"]


# ---------------------------------------------------------------- Dockerfiles


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    rows = [line.strip() for line in text.splitlines()]
    return [
        (row.split(None, 1)[0].upper(), row.split(None, 1)[1] if " " in row else "")
        for row in rows
        if row and not row.startswith("#")
    ]


@pytest.mark.parametrize(
    "name", ["Dockerfile", "ccd-pipeline.Dockerfile", "kast-pipeline.Dockerfile"]
)
def test_dockerfile_sanity(name: str) -> None:
    steps = _instructions(DOCKER / name)
    args = dict(a.split("=", 1) for kind, a in steps if kind == "ARG" and "=" in a)
    stages = [i for i, (kind, _) in enumerate(steps) if kind == "FROM"]
    assert len(stages) == 2, "a build stage and a runtime stage"
    for i in stages:
        image = steps[i][1].split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        repository, _, tag = image.partition(":")
        assert tag and tag != "latest" and not tag.startswith("latest"), image
        assert repository == "python" and tag.startswith("3.11"), image
    final = steps[stages[-1] :]
    users = [value for kind, value in final if kind == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert users[-1].split(":")[0].isdigit()  # numeric: runAsNonRoot can check it
    runs = " ".join(value for kind, value in final if kind == "RUN")
    assert not re.search(r"apt-get install|build-essential|gcc", runs), "build tools in the image"
    assert "--no-index" in runs  # only the wheels built in the first stage
    assert any(kind == "ENTRYPOINT" for kind, _ in final)
    assert args["PYTHON_IMAGE"].endswith("-slim-bookworm")


def test_dockerignore_keeps_the_context_small() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", "tests", "k8s"} <= ignored
    assert not {"soda_reduce", "pyproject.toml", "README.md"} & ignored
