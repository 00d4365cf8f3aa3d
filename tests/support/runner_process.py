"""Run one plan in a process of its own (for kill and concurrency tests).

python -m tests.support.runner_process MONGO_URL DATABASE PLAN_JSON PRODUCTS ARCHIVE LEASE_S
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from soda_reduce.reduction.plan import ReductionPlan
from soda_reduce.runtime.products import ProductStore
from soda_reduce.runtime.runner import PlanRunner, RunnerConfig
from soda_reduce.runtime.store import Store
from tests.support.fakes import FakeRecipeExecutor


async def main(url: str, database: str, plan_path: str, products: str, archive: str, lease: str):
    store = Store.connect(url, database)
    plan = ReductionPlan.from_json(Path(plan_path).read_text())
    runner = PlanRunner(
        store,
        FakeRecipeExecutor(concurrency=2),
        ProductStore(Path(products)),
        Path(archive),
        config=RunnerConfig(lease_s=float(lease), poll_s=0.1, backoff_s=0.1),
        on_event=lambda e: print(json.dumps(e, default=str), flush=True),
    )
    outcome = await runner.run(plan)
    await store.close()
    statuses = {job_id: o.status for job_id, o in outcome.jobs.items()}
    print(json.dumps({"result": statuses}), flush=True)
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(*sys.argv[1:7])))
