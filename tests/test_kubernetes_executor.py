"""KubernetesExecutor against the fake API server: lifecycles, failures, the pod always deleted.

The fake checks each Pod the executor sends (schema, labels, volumes, limits,
security context, container paths); these tests check what the executor made
of the pod's fate and which requests it took to get there.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from soda_reduce.runtime.executors.base import StepResources, StepRun
from soda_reduce.runtime.executors.kubernetes import KubernetesConfig, KubernetesExecutor
from soda_reduce.runtime.executors.kubernetes_pod import pod_name
from tests import fake_kube as fk

NAMESPACE = "soda-test"
IMAGE = "ghcr.io/example/soda-reduce-ccd:0.1.0"
STEP_KEY = "5ca1ed79754e" + "0123456789abcdef" * 3 + "0123"  # 64 hex characters
EXPECT = fk.Expect("archive-pvc", "/archive", "products-pvc", "/products")


@pytest.fixture
async def fake() -> AsyncIterator[fk.FakeKube]:
    server = fk.FakeKube(NAMESPACE, EXPECT)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
    assert server.problems == []
    # whatever happened, no pod is left behind, and each one was deleted by the executor
    assert server.pods == {}
    created = {r.body["metadata"]["name"] for r in server.calls("POST", "/pods")}
    deleted = {r.path.rsplit("/", 1)[-1] for r in server.calls("DELETE")}
    assert created <= deleted


def make_config(fake: fk.FakeKube, tmp_path: Path, **changes: object) -> KubernetesConfig:
    settings: dict[str, object] = {
        "namespace": NAMESPACE,
        "images": {"ccd": IMAGE},
        "archive_claim": "archive-pvc",
        "archive_root": tmp_path / "archive",
        "products_claim": "products-pvc",
        "products_root": tmp_path / "products",
        "api_host": fake.url,
        "pull_grace_s": 0.15,
        "deadline_margin_s": 5.0,
        "watch_timeout_s": 5,
        "request_timeout_s": 5.0,
        "api_attempts": 3,
        "api_backoff_s": 0.01,
        **changes,
    }
    return KubernetesConfig(**settings)  # type: ignore[arg-type]


@pytest.fixture
async def executor(fake: fk.FakeKube, tmp_path: Path) -> AsyncIterator[KubernetesExecutor]:
    ex = KubernetesExecutor(make_config(fake, tmp_path))
    try:
        yield ex
    finally:
        await ex.close()


def make_run(tmp_path: Path, attempt: int = 1, **resources: float) -> StepRun:
    workdir = tmp_path / "products" / "scratch" / f"{STEP_KEY[:16]}-{attempt}-x"
    workdir.mkdir(parents=True, exist_ok=True)
    return StepRun(
        step_key=STEP_KEY,
        job_id="flat-5ca1ed79754e",
        pipeline="ccd",
        recipe="ccd.master_flat",
        workdir=workdir,
        log_path=workdir / "recipe.log",
        resources=StepResources(**{"cpu": 2.0, "memory_mb": 512, "timeout_s": 60.0, **resources}),
        request_id="uws-job-42",
        attempt=attempt,
    )


def assert_deleted(fake: fk.FakeKube, name: str, grace: str | None = None) -> None:
    deletes = fake.calls("DELETE", f"/pods/{name}")
    assert deletes, "the pod was not deleted"
    assert deletes[-1].query.get("gracePeriodSeconds") == grace
    assert name not in fake.pods


# ---------------------------------------------------------------- success


async def test_success_reads_the_log_and_deletes_the_pod(
    fake: fk.FakeKube, executor: KubernetesExecutor, tmp_path: Path
) -> None:
    run = make_run(tmp_path)
    name = pod_name(run)
    fake.logs[name] = "master flat: 5 frames combined\n"
    outcome = await executor.run(run)
    assert outcome.ok and outcome.exit_code == 0 and not outcome.error
    assert outcome.wall_seconds == 2.0  # from the container's own start and finish
    (create,) = fake.calls("POST", "/pods")
    pod = create.body
    assert pod["metadata"]["labels"]["soda-reduce/job"] == "flat-5ca1ed79754e"
    assert pod["metadata"]["annotations"]["soda-reduce/request-id"] == "uws-job-42"
    container = pod["spec"]["containers"][0]
    assert container["resources"] == {
        "requests": {"cpu": "2000m", "memory": "512Mi"},
        "limits": {"cpu": "2000m", "memory": "512Mi"},
    }
    assert pod["spec"]["activeDeadlineSeconds"] == 60
    assert container["command"] == executor.recipe_command(run)
    assert [r.method for r in fake.requests] == ["POST", "GET", "GET", "DELETE"]
    (log_request,) = fake.calls("GET", "/log")
    assert log_request.query["container"] == "recipe"
    text = run.log_path.read_text()
    assert "master flat: 5 frames combined" in text and "[soda-reduce]" not in text
    assert_deleted(fake, name)


# ---------------------------------------------------------------- recipe failures


@pytest.mark.parametrize(
    ("final", "error", "exit_code"),
    [
        (fk.exited(3), "the recipe exited with code 3", 3),
        (fk.exited(139), "the recipe exited with code 139 (SIGSEGV)", 139),
        (fk.oom_killed, "out of memory (limit 512 MiB)", 137),
    ],
)
async def test_recipe_failures_are_not_retried(
    fake: fk.FakeKube,
    executor: KubernetesExecutor,
    tmp_path: Path,
    final: fk.Step,
    error: str,
    exit_code: int,
) -> None:
    fake.lifecycle = fk.lifecycle(fk.pending, fk.running, final)
    run = make_run(tmp_path)
    outcome = await executor.run(run)
    assert not outcome.ok and not outcome.transient
    assert outcome.error == error and outcome.exit_code == exit_code
    assert error in run.log_path.read_text()
    assert_deleted(fake, pod_name(run))


async def test_deadline_exceeded_is_a_timeout(
    fake: fk.FakeKube, executor: KubernetesExecutor, tmp_path: Path
) -> None:
    fake.lifecycle = fk.lifecycle(fk.pending, fk.running, fk.deadline_exceeded)
    outcome = await executor.run(make_run(tmp_path))
    assert not outcome.ok and not outcome.transient
    assert outcome.error is not None and outcome.error.startswith("timed out after 60 s")
    assert_deleted(fake, pod_name(make_run(tmp_path)))


# ---------------------------------------------------------------- the cluster's failures


async def test_eviction_is_transient(
    fake: fk.FakeKube, executor: KubernetesExecutor, tmp_path: Path
) -> None:
    fake.lifecycle = fk.lifecycle(fk.pending, fk.running, fk.evicted)
    outcome = await executor.run(make_run(tmp_path))
    assert not outcome.ok and outcome.transient
    assert outcome.error == "pod Evicted: The node was low on resource: memory."
    assert_deleted(fake, pod_name(make_run(tmp_path)))


async def test_pod_deleted_from_outside_is_transient(
    fake: fk.FakeKube, executor: KubernetesExecutor, tmp_path: Path
) -> None:
    fake.lifecycle = fk.lifecycle(fk.pending, fk.running, None)  # the node went away
    run = make_run(tmp_path)
    outcome = await executor.run(run)
    assert not outcome.ok and outcome.transient
    assert outcome.error is not None and "disappeared before it finished" in outcome.error
    assert fake.calls("DELETE", f"/pods/{pod_name(run)}")  # asked anyway: 404 is fine
    assert "no log (404" in run.log_path.read_text()


async def test_image_pull_backoff_that_persists_fails_naming_the_image(
    fake: fk.FakeKube, executor: KubernetesExecutor, tmp_path: Path
) -> None:
    fake.lifecycle = fk.lifecycle(
        fk.waiting("ErrImagePull", "manifest unknown"),
        fk.waiting("ImagePullBackOff", 'Back-off pulling image "x"'),
    )  # ... and then no event at all: the executor's own timer must fire
    run = make_run(tmp_path)
    loop = asyncio.get_running_loop()
    started = loop.time()
    outcome = await executor.run(run)
    assert loop.time() - started >= 0.15
    assert not outcome.ok and not outcome.transient
    assert outcome.error is not None and outcome.error.startswith(f"cannot start the image {IMAGE}")
    assert "ImagePullBackOff" in outcome.error
    assert "no log (400" in run.log_path.read_text()
    assert_deleted(fake, pod_name(run))


async def test_a_pull_error_seen_once_is_not_fatal(
    fake: fk.FakeKube, executor: KubernetesExecutor, tmp_path: Path
) -> None:
    fake.lifecycle = fk.lifecycle(
        fk.waiting("ErrImagePull", "i/o timeout"), fk.running, fk.succeeded, every_s=0.05
    )
    patient = KubernetesExecutor(make_config(fake, tmp_path, pull_grace_s=2.0))
    try:
        outcome = await patient.run(make_run(tmp_path))
    finally:
        await patient.close()
    assert outcome.ok


async def test_invalid_image_name_fails_at_once(
    fake: fk.FakeKube, executor: KubernetesExecutor, tmp_path: Path
) -> None:
    fake.lifecycle = fk.lifecycle(fk.waiting("InvalidImageName", "invalid reference format"))
    outcome = await executor.run(make_run(tmp_path))
    assert not outcome.ok and not outcome.transient
    assert outcome.error == (
        f"cannot start the image {IMAGE} (InvalidImageName): invalid reference format"
    )
    assert_deleted(fake, pod_name(make_run(tmp_path)))


async def test_a_pod_never_scheduled_is_given_up_after_the_deadline(
    fake: fk.FakeKube, tmp_path: Path
) -> None:
    fake.lifecycle = fk.lifecycle(fk.unschedulable())
    ex = KubernetesExecutor(make_config(fake, tmp_path, deadline_margin_s=0.1))
    try:
        outcome = await ex.run(make_run(tmp_path, timeout_s=0.1))
    finally:
        await ex.close()
    assert not outcome.ok and outcome.transient
    assert outcome.error is not None and "did not start within" in outcome.error
    assert "Insufficient memory" in outcome.error
    assert_deleted(fake, pod_name(make_run(tmp_path)))


async def test_missing_image_for_the_pipeline(
    fake: fk.FakeKube, executor: KubernetesExecutor, tmp_path: Path
) -> None:
    run = make_run(tmp_path)
    outcome = await executor.run(StepRun(**{**run.__dict__, "pipeline": "spectro"}))
    assert not outcome.ok and outcome.error == "no container image configured for 'spectro'"
    assert fake.requests == []


# ---------------------------------------------------------------- the watch


async def test_watch_that_ends_early_is_resumed_from_its_resource_version(
    fake: fk.FakeKube, executor: KubernetesExecutor, tmp_path: Path
) -> None:
    fake.watch_faults = ["end_after:1", "end_after:1"]
    assert (await executor.run(make_run(tmp_path))).ok
    first, second, third = fake.watches()[:3]
    assert second.query["resourceVersion"] == str(first.sent[-1])
    assert third.query["resourceVersion"] == str(second.sent[-1])
    assert fake.relists() == []


@pytest.mark.parametrize("fault", ["gone", "gone_http"])
async def test_watch_answering_410_gone_relists_then_watches_again(
    fake: fk.FakeKube, executor: KubernetesExecutor, tmp_path: Path, fault: str
) -> None:
    fake.watch_faults = [fault]
    fake.lifecycle = [  # changes while the executor re-lists, and after it watches again
        fk.Step(0, fk.pending),
        fk.Step(0, fk.running, when=fake.relists),
        fk.Step(0.01, fk.succeeded, when=lambda: len(fake.watches()) >= 2),
    ]
    assert (await executor.run(make_run(tmp_path))).ok
    (relist,) = fake.relists()
    assert relist.query["fieldSelector"] == f"metadata.name={pod_name(make_run(tmp_path))}"
    assert len(fake.watches()) >= 2
    assert fake.watches()[1].query["resourceVersion"].isdigit()


async def test_connection_reset_during_the_watch_is_retried(
    fake: fk.FakeKube, executor: KubernetesExecutor, tmp_path: Path
) -> None:
    fake.watch_faults = ["reset"]
    assert (await executor.run(make_run(tmp_path))).ok
    assert len(fake.watches()) >= 2


# ---------------------------------------------------------------- create, adopt, API trouble


async def test_a_500_on_create_is_retried(
    fake: fk.FakeKube, executor: KubernetesExecutor, tmp_path: Path
) -> None:
    fake.create_faults = ["500"]
    run = make_run(tmp_path)
    assert (await executor.run(run)).ok
    assert len(fake.calls("POST", "/pods")) == 2
    assert_deleted(fake, pod_name(run))


async def test_a_create_that_succeeded_behind_a_500_is_adopted(
    fake: fk.FakeKube, executor: KubernetesExecutor, tmp_path: Path
) -> None:
    fake.create_faults = ["500-after-create"]
    # the pod must still be running when the retried create meets it
    fake.lifecycle = [fk.Step(0, fk.running), fk.Step(0.01, fk.succeeded, when=fake.watches)]
    run = make_run(tmp_path)
    assert (await executor.run(run)).ok
    assert len(fake.calls("POST", "/pods")) == 2  # the second one met 409
    assert len(fake.calls("GET", f"/pods/{pod_name(run)}")) == 1  # read, then adopted
    assert len(fake.calls("DELETE")) == 1


async def test_the_same_attempt_already_running_is_adopted(
    fake: fk.FakeKube, executor: KubernetesExecutor, tmp_path: Path
) -> None:
    run = make_run(tmp_path)
    steps = [fk.Step(0, fk.running), fk.Step(0.01, fk.succeeded, when=fake.watches)]
    fake.add_pod(executor.pod_manifest(run), steps)
    fake.logs[pod_name(run)] = "adopted\n"
    outcome = await executor.run(run)
    assert outcome.ok and "adopted" in run.log_path.read_text()
    assert len(fake.calls("POST", "/pods")) == 1
    assert len(fake.calls("DELETE")) == 1


async def test_a_stale_pod_under_our_name_is_replaced(
    fake: fk.FakeKube, executor: KubernetesExecutor, tmp_path: Path
) -> None:
    run = make_run(tmp_path)
    old = executor.pod_manifest(run)
    old["spec"]["containers"][0]["command"][-1] = "/products/scratch/old-workdir/out"
    fake.add_pod(old, fk.lifecycle(fk.running))  # an earlier worker's pod, writing elsewhere
    assert (await executor.run(run)).ok
    posts = fake.calls("POST", "/pods")
    assert len(posts) == 2 and posts[-1].body["spec"]["containers"][0]["command"][-1].endswith(
        f"{run.workdir.name}/out"
    )
    assert fake.calls("DELETE")[0].query.get("gracePeriodSeconds") == "0"


async def test_an_api_server_that_keeps_failing_gives_a_transient_outcome(
    fake: fk.FakeKube, executor: KubernetesExecutor, tmp_path: Path
) -> None:
    fake.create_faults = ["500"] * 3
    outcome = await executor.run(make_run(tmp_path))
    assert not outcome.ok and outcome.transient
    assert outcome.error is not None and "Kubernetes API unavailable" in outcome.error
    assert len(fake.calls("POST", "/pods")) == 3
    assert fake.calls("DELETE")  # in case one of them did create it


async def test_an_unreachable_api_server_is_transient(tmp_path: Path) -> None:
    server = fk.FakeKube(NAMESPACE, EXPECT)
    await server.start()
    url = server.url
    await server.stop()  # nothing listens there any more
    config = make_config(server, tmp_path, api_host=url)
    ex = KubernetesExecutor(config)
    try:
        outcome = await ex.run(make_run(tmp_path))
    finally:
        await ex.close()
    assert not outcome.ok and outcome.transient


# ---------------------------------------------------------------- cancellation


async def test_cancellation_deletes_the_pod_at_once(
    fake: fk.FakeKube, executor: KubernetesExecutor, tmp_path: Path
) -> None:
    fake.lifecycle = fk.lifecycle(fk.pending, fk.running)  # runs until stopped
    run = make_run(tmp_path)
    name = pod_name(run)
    task = asyncio.create_task(executor.run(run))
    await fake.until(lambda: fake.pods.get(name, {}).get("status", {}).get("phase") == "Running")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert_deleted(fake, name, grace="0")


async def test_concurrency_is_bounded(fake: fk.FakeKube, tmp_path: Path) -> None:
    fake.lifecycle = fk.lifecycle(fk.pending, fk.running, fk.succeeded, every_s=0.03)
    ex = KubernetesExecutor(make_config(fake, tmp_path, concurrency=2))
    seen: list[int] = []
    runs = [make_run(tmp_path, attempt=i) for i in range(1, 5)]

    async def sample() -> None:
        while True:
            seen.append(len(fake.pods))
            await asyncio.sleep(0.005)

    sampler = asyncio.create_task(sample())
    try:
        outcomes = await asyncio.gather(*(ex.run(r) for r in runs))
    finally:
        sampler.cancel()
        await ex.close()
    assert all(o.ok for o in outcomes) and max(seen) == 2
    assert len(fake.calls("DELETE")) == 4
