"""The pure parts of the Kubernetes executor: paths, names, settings, status reading.

Also proves that the fake API server's pod rules bite: the executor tests that
pass against it are only worth something if a broken pod would be refused.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from soda_reduce.runtime.executors.base import StepRun
from soda_reduce.runtime.executors.kubernetes import KubernetesConfig, KubernetesExecutor
from soda_reduce.runtime.executors.kubernetes_pod import label_value, pod_name
from soda_reduce.runtime.executors.kubernetes_status import PodJudge
from tests.kube_pod_rules import check_pod
from tests.test_kubernetes_executor import EXPECT, IMAGE, make_run


def config(tmp_path: Path) -> KubernetesConfig:
    return KubernetesConfig(
        images={"ccd": IMAGE},
        archive_claim=EXPECT.archive_claim,
        archive_root=tmp_path / "archive",
        products_claim=EXPECT.products_claim,
        products_root=tmp_path / "products",
    )


def test_paths_map_to_the_mounts(tmp_path: Path) -> None:
    executor = KubernetesExecutor(config(tmp_path))
    run = make_run(tmp_path)
    raw = tmp_path / "archive" / "2024-01-05" / "r0001.fits"
    assert executor.container_path(raw) == "/archive/2024-01-05/r0001.fits"
    assert executor.container_path(tmp_path / "products") == "/products"
    argv = executor.recipe_command(run)
    assert argv[:4] == ["python", "-m", "soda_reduce.recipe", "ccd.master_flat"]
    assert argv[argv.index("--out") + 1] == f"/products/scratch/{run.workdir.name}/out"
    with pytest.raises(ValueError, match="neither"):
        executor.container_path(tmp_path / "elsewhere" / "x.fits")
    with pytest.raises(ValueError):
        executor.container_path(tmp_path / "archive-other" / "x.fits")  # a prefix is not a root


def test_names_and_labels_fit_the_limits(tmp_path: Path) -> None:
    long = StepRun("Not/Hex key!" * 10, "Science_" * 20, "ccd", "ccd.science", tmp_path, tmp_path)
    name = pod_name(long)
    assert len(name) <= 63 and name.startswith("sr-science-") and name.endswith("-a1")
    assert pod_name(long) == name  # deterministic
    assert label_value("x" * 70 + "!") == "x" * 63
    assert label_value("-a b-") == "a-b"


def test_config_from_environment() -> None:
    config = KubernetesConfig.from_env(
        {
            "SODA_REDUCE_K8S_NAMESPACE": "astro",
            "SODA_REDUCE_K8S_IMAGE_CCD": IMAGE,
            "SODA_REDUCE_K8S_IMAGE_PULL_POLICY": "Always",
            "SODA_REDUCE_K8S_PRODUCTS_ROOT": "/srv/products",
            "SODA_REDUCE_K8S_CONCURRENCY": "8",
            "SODA_REDUCE_K8S_IN_CLUSTER": "true",
            "SODA_REDUCE_K8S_NODE_SELECTOR": "pool=reduce, disk=ssd",
            "SODA_REDUCE_MONGO_URL": "ignored",
        }
    )
    assert config.namespace == "astro" and config.images == {"ccd": IMAGE}
    assert config.image_pull_policy == "Always" and config.concurrency == 8
    assert config.products_root == Path("/srv/products") and config.in_cluster
    assert config.node_selector == {"pool": "reduce", "disk": "ssd"}


def _break(pod: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    """A copy of ``pod`` with one field (dotted path, list indexes as numbers) changed."""
    pod = copy.deepcopy(pod)
    *parents, last = path.split(".")
    node = pod
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if value is _DROP:
        del node[int(last) if last.isdigit() else last]
    else:
        node[int(last) if last.isdigit() else last] = value
    return pod


_DROP = object()


@pytest.mark.parametrize(
    ("path", "value", "problem"),
    [
        ("spec.restartPolicy", "Always", "restartPolicy Never"),
        ("spec.containers.0.volumeMounts.0.readOnly", False, "archive mounted read-only"),
        ("spec.volumes.0.persistentVolumeClaim.readOnly", _DROP, "archive PVC read-only"),
        ("spec.containers.0.resources.limits", {"memory": "1Gi"}, "cpu and memory limits"),
        ("spec.containers.0.securityContext.capabilities", _DROP, "drop ALL capabilities"),
        ("spec.containers.0.command.5", "/data/products/x/inputs.json", "--inputs in the"),
        ("spec.activeDeadlineSeconds", _DROP, "activeDeadlineSeconds"),
        ("metadata.labels.soda-reduce/job", _DROP, "job label"),
        ("spec.containers.0.imagePulPolicy", "Always", "schema"),  # a typo: strict schema
    ],
)
def test_the_fake_refuses_pods_that_break_the_rules(
    tmp_path: Path, path: str, value: object, problem: str
) -> None:
    """The checks above are only worth something if the fake's validation bites."""
    pod = KubernetesExecutor(config(tmp_path)).pod_manifest(make_run(tmp_path))
    assert check_pod(pod, EXPECT) == []
    problems = check_pod(_break(pod, path, value), EXPECT)
    assert any(problem in p for p in problems), problems


@pytest.mark.parametrize(
    ("status", "transient", "error"),
    [
        (  # preempted by a higher-priority pod: the cluster's doing
            {
                "phase": "Failed",
                "conditions": [
                    {"type": "DisruptionTarget", "status": "True", "reason": "Preemption"}
                ],
            },
            True,
            "pod disrupted",
        ),
        (  # the command is not in the image: a build or configuration error
            {
                "phase": "Failed",
                "containerStatuses": [
                    {
                        "name": "recipe",
                        "state": {
                            "terminated": {
                                "exitCode": 128,
                                "reason": "StartError",
                                "message": 'exec: "python": executable file not found',
                            }
                        },
                    }
                ],
            },
            False,
            f"cannot start the container {IMAGE} (StartError): exec",
        ),
    ],
)
def test_judge_reads_less_common_failures(
    tmp_path: Path, status: dict[str, Any], transient: bool, error: str
) -> None:
    judge = PodJudge(make_run(tmp_path), IMAGE, pull_grace_s=60)
    outcome = judge.update({"status": status}, now=0.0)
    assert outcome is not None and not outcome.ok and outcome.transient is transient
    assert outcome.error is not None and outcome.error.startswith(error)


def test_image_from_settings_else_from_the_pipeline_plugin(tmp_path: Path) -> None:
    """SODA_REDUCE_K8S_IMAGE_<NAME> wins; without it, the image the plug-in names."""
    from dataclasses import replace

    from soda_reduce.pipelines import registry

    executor = KubernetesExecutor(config(tmp_path))
    run = make_run(tmp_path)
    assert executor.pod_manifest(run)["spec"]["containers"][0]["image"] == IMAGE
    kast = replace(run, pipeline="kast", recipe="kast.science")
    image = executor.pod_manifest(kast)["spec"]["containers"][0]["image"]
    assert image == registry().get("kast").image and "kast" in image
    with pytest.raises(KeyError):
        executor.pod_manifest(replace(run, pipeline="nosuchpipeline"))
