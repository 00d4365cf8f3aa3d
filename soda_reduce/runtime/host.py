"""Assemble the runtime from settings: queue, events, job service, worker, sweeper.

One function serves the three shapes of the service: ``serve`` (API + worker
in one process, in-process queue), ``api`` (no worker) and ``worker`` (no
API). Only the queue and event implementations differ between embedded mode
and production; the job, worker and sweeper code is the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from soda_reduce.config import Settings
from soda_reduce.pipelines import registry
from soda_reduce.runtime.archive_plans import ArchivePipelines
from soda_reduce.runtime.broker import InProcessQueue, PlanQueue, RabbitPlanQueue
from soda_reduce.runtime.cutout_jobs import CutoutLimits
from soda_reduce.runtime.events import JobEvents, RabbitJobEvents
from soda_reduce.runtime.products import ProductStore
from soda_reduce.runtime.runner import RunnerConfig
from soda_reduce.runtime.service import JobService, Limits
from soda_reduce.runtime.store import Store
from soda_reduce.runtime.store.supervision import RestartHook
from soda_reduce.runtime.sweeper import Sweeper
from soda_reduce.runtime.worker import Worker, WorkerConfig
from soda_reduce.vo.job_request import RequestLimits

log = logging.getLogger(__name__)

QUEUE_GRACE_S = 3.0  # at shutdown, plans already settled get this long to finish


@dataclass
class Runtime:
    settings: Settings
    store: Store
    queue: PlanQueue
    events: JobEvents
    service: JobService
    products: ProductStore
    sweeper: Sweeper
    worker: Worker | None = None
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)


def make_executor(settings: Settings, concurrency: int | None = None) -> Any:
    if settings.executor == "kubernetes":
        from soda_reduce.runtime.executors.kubernetes import KubernetesConfig, KubernetesExecutor

        return KubernetesExecutor(KubernetesConfig.from_env())
    from soda_reduce.runtime.executors.local import LocalExecutor

    return LocalExecutor(concurrency=concurrency)


async def _requeue_after_restart(service: JobService) -> None:
    """After the embedded store's restart: a plan whose worker failed on the dead store was
    dead-lettered; republishing every QUEUED job (the worker drops duplicates) leaves none
    stranded. EXECUTING ones are republished by the sweeper once their lease ran out."""
    count = await service.jobs.unpublish_queued()
    if count:
        log.info("store restarted: %d queued jobs will be published again", count)


@asynccontextmanager
async def open_runtime(
    settings: Settings,
    store: Store,
    archive_root: Path,
    *,
    pipeline: str = "ccd",
    worker: bool,
    sweeper: bool,
    worker_config: WorkerConfig | None = None,
    executor: Any = None,
) -> AsyncIterator[Runtime]:
    """Start what this process runs; everything is stopped when the block ends."""
    if settings.amqp_url:
        queue: PlanQueue = RabbitPlanQueue(settings.amqp_url, settings.amqp_queue)
        events: JobEvents = RabbitJobEvents(settings.amqp_url, settings.amqp_exchange)
    else:
        queue, events = InProcessQueue(shutdown_grace=QUEUE_GRACE_S), JobEvents()
    await queue.start()
    await events.start()
    pipelines = ArchivePipelines(registry(), settings.static_root(archive_root), pipeline)
    products = ProductStore(settings.products_root)
    limits = Limits(
        execution_duration_s=settings.execution_duration_s,
        max_execution_duration_s=settings.max_execution_duration_s,
        destruction=timedelta(days=settings.destruction_days),
        max_destruction=timedelta(days=settings.max_destruction_days),
        concurrency=os.cpu_count() or 2,
        max_active_jobs=settings.max_active_jobs,
    )
    request_limits = RequestLimits(max_cutout_combinations=settings.max_cutout_combinations)
    service = JobService(
        store, pipelines, queue, events, limits, request_limits, authority=settings.authority
    )
    runtime = Runtime(
        settings,
        store,
        queue,
        events,
        service,
        products,
        Sweeper(
            service,
            products,
            cache_bytes=settings.step_cache_bytes,
            lost_after=timedelta(seconds=settings.queued_lost_after_s),
        ),
    )
    requeue: RestartHook | None = None
    if not settings.amqp_url and worker:
        # the in-process queue of the previous run is gone: the sweeper republishes its jobs
        requeued = await service.jobs.unpublish_queued()
        if requeued:
            log.info("%d queued jobs from the previous run will be published again", requeued)
        requeue = functools.partial(_requeue_after_restart, service)
        store.health.on_restart.append(requeue)
    own_executor = False
    try:
        if sweeper:
            runtime.tasks.append(asyncio.create_task(runtime.sweeper.run(settings.sweep_s)))
        if worker:
            if executor is None:
                executor = make_executor(settings)
                own_executor = True
            lease = settings.job_lease_s
            config = worker_config or WorkerConfig(
                lease_s=lease,
                runner=RunnerConfig(lease_s=lease),
                cutouts=CutoutLimits(settings.max_cutouts, settings.max_job_bytes),
                authority=settings.authority,
            )
            runtime.worker = Worker(
                store,
                queue,
                events,
                executor,
                products,
                archive_root,
                pipeline=pipeline,
                config=config,
                prefetch=settings.worker_jobs,
            )
            runtime.tasks.append(asyncio.create_task(runtime.worker.run()))
        yield runtime
    finally:
        if requeue is not None:
            store.health.on_restart.remove(requeue)
        for task in runtime.tasks:
            task.cancel()
        for task in runtime.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if own_executor:
            with contextlib.suppress(Exception):
                await executor.close()
        await events.close()
        await queue.close()
