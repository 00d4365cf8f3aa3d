"""A whole plan through PlanRunner + KubernetesExecutor, against the fake API server.

The fake plays kubelet too: each pod's command really runs, on this machine,
with the pod's mount points mapped back to the test's directories, so the
products a pod writes are the ones the next step's pod reads.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from soda_reduce.runtime.executors.kubernetes import KubernetesConfig, KubernetesExecutor
from soda_reduce.runtime.products import ProductStore
from soda_reduce.runtime.runner import PlanRunner, RunnerConfig
from tests import fake_kube as fk
from tests.support.fakes import FAKE_RECIPE
from tests.test_runner import PLAN, STEPS, finished

NAMESPACE = "reduce"
EXPECT = fk.Expect("archive-pvc", "/archive", "products-pvc", "/products")


class KubeletFake(fk.FakeKube):
    """Runs each created pod's recipe command locally (the fake recipe, for speed)."""

    def __init__(self, roots: dict[str, Path]) -> None:
        super().__init__(NAMESPACE, EXPECT)
        self.roots = roots

    def _play(self, name: str, steps: list[fk.Step]) -> None:
        pod = self.pods[name]
        argv = pod["spec"]["containers"][0]["command"]
        assert argv[1:3] == ["-m", "soda_reduce.recipe"], argv
        local = [sys.executable, str(FAKE_RECIPE), *(self._host(a) for a in argv[3:])]
        finished: dict[str, int] = {}

        async def kubelet() -> None:
            process = await asyncio.create_subprocess_exec(
                *local,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, "FAKE_PATH_MAP": self._path_map()},
            )
            output, _ = await process.communicate()
            self.logs[name] = output.decode()
            finished["code"] = process.returncode or 0

        task = asyncio.get_running_loop().create_task(kubelet())
        self._streams.add(task)  # type: ignore[arg-type]

        def outcome(current: fk.Pod) -> None:
            code = finished["code"]
            (fk.succeeded if code == 0 else fk.exited(code))(current)

        script = [
            fk.Step(0.0, fk.pending),
            fk.Step(0.01, fk.running),
            fk.Step(0.0, outcome, when=lambda: "code" in finished),
        ]
        super()._play(name, script)

    def _host(self, arg: str) -> str:
        for mount, root in self.roots.items():
            if arg == mount or arg.startswith(mount + "/"):
                return str(root) + arg[len(mount) :]
        return arg

    def _path_map(self) -> str:
        return ",".join(f"{mount}={root}" for mount, root in self.roots.items())


@pytest.fixture
async def kubelet(tmp_path: Path) -> AsyncIterator[KubeletFake]:
    server = KubeletFake({"/archive": tmp_path / "archive", "/products": tmp_path / "products"})
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_plan_runs_as_pods_and_is_cached(store, kubelet, tmp_path: Path, monkeypatch) -> None:
    ledger = tmp_path / "ledger.txt"
    ledger.touch()
    monkeypatch.setenv("FAKE_LEDGER", str(ledger))
    config = KubernetesConfig(
        namespace=NAMESPACE,
        images={"ccd": "registry.example.org/soda-reduce-ccd:0.1.0"},
        archive_claim="archive-pvc",
        archive_root=tmp_path / "archive",
        products_claim="products-pvc",
        products_root=tmp_path / "products",
        api_host=kubelet.url,
        concurrency=3,
    )
    executor = KubernetesExecutor(config)
    try:
        runner = PlanRunner(
            store,
            executor,
            ProductStore(tmp_path / "products"),
            tmp_path / "archive",
            config=RunnerConfig(lease_s=5.0, poll_s=0.05),
        )
        outcome = await runner.run(PLAN)
        assert outcome.ok, [o.error for o in outcome.jobs.values() if o.error]
        assert outcome.count("done") == STEPS
        again = await runner.run(PLAN)
        assert again.count("cached") == STEPS
    finally:
        await executor.close()
    assert len(finished(ledger)) == STEPS
    assert not kubelet.problems, kubelet.problems
    created = kubelet.calls("POST")
    assert len(created) == STEPS  # one pod per step, none on the cached run
    assert not kubelet.pods  # every pod deleted
    products = ProductStore(tmp_path / "products")
    for job in PLAN.runnable_jobs():
        log = (products.step_dir(job.step_key) / "recipe.log").read_text()
        assert "wrote" in log  # the pod's log became the step's log
