"""A real worker (local executor, the ccd recipes) consuming a test harness's queue."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from soda_reduce.runtime.cutout_jobs import CutoutLimits
from soda_reduce.runtime.executors.local import LocalExecutor
from soda_reduce.runtime.runner import RunnerConfig
from soda_reduce.runtime.worker import Worker, WorkerConfig
from tests.support.uws_harness import Harness


def worker_config(**changes: object) -> WorkerConfig:
    """The harness's worker settings (short lease, fast polls), with ``changes``."""
    base = {
        "lease_s": 6.0,
        "check_s": 0.5,
        "runner": RunnerConfig(backoff_s=0.2),
        "cutouts": CutoutLimits(max_cutouts=5000),
    }
    return WorkerConfig(**{**base, **changes})  # type: ignore[arg-type]


@asynccontextmanager
async def running_worker(
    svc: Harness,
    config: WorkerConfig | None = None,
    worker_id: str = "w1",
    before: Callable[[Worker], None] | None = None,
) -> AsyncIterator[Worker]:
    """A worker consuming until the block ends; ``before`` sees it before it consumes."""
    executor = LocalExecutor()
    runtime = svc.runtime
    worker = Worker(
        runtime.store,
        runtime.queue,
        runtime.events,
        executor,
        runtime.products,
        svc.archive,
        config=config or worker_config(),
        worker_id=worker_id,
    )
    if before is not None:
        before(worker)
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await executor.close()
