"""The shared step cache: each step key is computed once, across plans and users.

One document per step key in the ``steps`` collection (unique index). Whoever
inserts it first runs the step and holds a lease, renewed by a heartbeat; a
runner that dies stops renewing, and once the lease has expired another runner
takes the step over with a compare-and-set on (state, owner, lease). Waiting
runners poll the document; nothing here relies on change streams, which the
embedded store does not have in standalone mode.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pymongo import ASCENDING, IndexModel

from soda_reduce.runtime.store import Store
from soda_reduce.runtime.store.errors import DuplicateKey, retrying
from soda_reduce.runtime.store.store import IN_CHUNK

RUNNING, DONE, FAILED, PENDING = "running", "done", "failed", "pending"
STEP_INDEXES = [IndexModel([("step_key", ASCENDING)], unique=True, name="step_key_unique")]
KEY_ONLY = {"_id": 0, "step_key": 1}


@dataclass(frozen=True)
class Claim:
    """What a runner may do with a step: ``run`` it, reuse it (``done``), or ``wait``."""

    action: str
    doc: dict[str, Any]


class LeaseLost(Exception):
    """Another runner took the step over (this one stalled past its lease)."""


class StepCache:
    def __init__(self, store: Store, owner: str, lease_s: float = 30.0, poll_s: float = 0.25):
        self._steps = store.steps
        self.owner = owner
        self.lease_s = lease_s
        self.poll_s = poll_s

    async def get(self, step_key: str) -> dict[str, Any] | None:
        return await retrying(lambda: self._steps.find_one({"step_key": step_key}))

    async def claim(self, step_key: str, info: dict[str, Any], rerun: bool = False) -> Claim:
        """Take the step if nobody holds a live lease on it; bounded retries on races."""
        for _ in range(20):
            now = time.time()
            fresh = {
                "step_key": step_key,
                "state": RUNNING,
                "owner": self.owner,
                "lease_until": now + self.lease_s,
                "attempts": 0,
                "created": now,
                "started": now,
                **info,
            }
            try:
                await retrying(lambda doc=fresh: self._steps.insert_one(doc))
                return Claim("run", fresh)
            except DuplicateKey:
                pass
            doc = await self.get(step_key)
            if doc is None:
                continue  # deleted between insert and read: try again
            if doc["state"] == DONE and not rerun:
                return Claim("done", doc)
            live = doc["state"] == RUNNING and doc.get("lease_until", 0) > now
            if live and doc.get("owner") != self.owner:
                return Claim("wait", doc)
            if await self._take_over(doc, info):
                return Claim("run", {**doc, "owner": self.owner})
        raise RuntimeError(f"step {step_key[:12]}: could not claim it after 20 races")

    async def _take_over(self, doc: dict[str, Any], info: dict[str, Any]) -> bool:
        now = time.time()
        result = await retrying(
            lambda: self._steps.update_one(
                {
                    "step_key": doc["step_key"],
                    "state": doc["state"],
                    "owner": doc.get("owner"),
                    "lease_until": doc.get("lease_until"),
                },
                {
                    "$set": {
                        "state": RUNNING,
                        "owner": self.owner,
                        "lease_until": now + self.lease_s,
                        "started": now,
                        "error": None,
                        **info,
                    }
                },
            )
        )
        return result.modified_count == 1

    async def wait(self, step_key: str, limit_s: float) -> Claim:
        """Until the step is done, failed, or free to take over (its owner died)."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            doc = await self.get(step_key)
            if doc is None or doc["state"] != RUNNING or doc.get("lease_until", 0) <= time.time():
                if doc is not None and doc["state"] in (DONE, FAILED):
                    return Claim(doc["state"], doc)
                return await self.claim(step_key, {})
            await asyncio.sleep(self.poll_s)
        raise TimeoutError(f"step {step_key[:12]} still running elsewhere after {limit_s:.0f} s")

    async def renew(self, step_key: str) -> None:
        result = await retrying(
            lambda: self._steps.update_one(
                {"step_key": step_key, "owner": self.owner, "state": RUNNING},
                {"$set": {"lease_until": time.time() + self.lease_s}},
            )
        )
        if result.matched_count == 0:
            raise LeaseLost(step_key)

    async def heartbeat(self, step_key: str) -> None:
        """Renew the lease every third of it until cancelled; raises LeaseLost."""
        while True:
            await asyncio.sleep(self.lease_s / 3)
            await self.renew(step_key)

    async def record_attempt(self, step_key: str, attempt: int) -> None:
        await retrying(
            lambda: self._steps.update_one(
                {"step_key": step_key, "owner": self.owner}, {"$set": {"attempts": attempt}}
            )
        )

    async def finish(self, step_key: str, fields: dict[str, Any]) -> bool:
        result = await retrying(
            lambda: self._steps.update_one(
                {"step_key": step_key, "owner": self.owner, "state": RUNNING},
                {"$set": {"state": DONE, "finished": time.time(), "lease_until": 0, **fields}},
            )
        )
        return result.modified_count == 1

    async def fail(self, step_key: str, error: str, fields: dict[str, Any] | None = None) -> None:
        await retrying(
            lambda: self._steps.update_one(
                {"step_key": step_key, "owner": self.owner, "state": RUNNING},
                {
                    "$set": {
                        "state": FAILED,
                        "finished": time.time(),
                        "lease_until": 0,
                        "error": error,
                        **(fields or {}),
                    }
                },
            )
        )

    async def release(self, step_key: str) -> None:
        """Give a step back untouched (cancelled): others may take it at once.

        A claim cancelled in flight may reach the server after this call, so a
        miss is retried briefly; past that, the lease still bounds the damage.
        """
        for _ in range(5):
            result = await retrying(
                lambda: self._steps.update_one(
                    {"step_key": step_key, "owner": self.owner, "state": RUNNING},
                    {"$set": {"state": PENDING, "lease_until": 0}},
                )
            )
            if result.matched_count:
                return
            doc = await self.get(step_key)
            if doc is not None and doc.get("owner") != self.owner:
                return  # never ours
            await asyncio.sleep(0.1)

    async def forget(self, step_key: str) -> None:
        """A done step whose products are gone: compute it again."""
        await retrying(
            lambda: self._steps.update_one(
                {"step_key": step_key, "state": DONE},
                {"$set": {"state": PENDING, "lease_until": 0}},
            )
        )


class FinishedSteps:
    """What the step cache says to those who never claim a step: the job service (quotes),
    SODA sync (is every step of a plan cached?) and the sweeper (forgetting collected ones)."""

    def __init__(self, store: Store) -> None:
        self._steps = store.steps

    async def done(self, step_keys: Iterable[str]) -> set[str]:
        """Which of ``step_keys`` are done (by the unique index, in chunks: ``$in`` is
        quadratic on SecantusDB)."""
        wanted, found = sorted(set(step_keys)), set()
        for start in range(0, len(wanted), IN_CHUNK):
            query = {"step_key": {"$in": wanted[start : start + IN_CHUNK]}, "state": DONE}
            docs = await retrying(lambda q=query: self._steps.find(q, KEY_ONLY).to_list())
            found.update(d["step_key"] for d in docs)
        return found

    async def durations(self) -> dict[str, list[float]]:
        """recipe -> wall seconds of its finished steps. Reads every done step (their
        recipe and duration only): bounded by the step cache, which the sweeper keeps
        under its size cap."""
        pipeline = [
            {"$match": {"state": DONE}},
            {"$project": {"_id": 0, "recipe": 1, "wall_seconds": 1}},
        ]
        found: dict[str, list[float]] = {}

        async def read() -> None:
            found.clear()
            async for doc in await self._steps.aggregate(pipeline):
                if doc.get("wall_seconds") is not None and doc.get("recipe"):
                    found.setdefault(doc["recipe"], []).append(float(doc["wall_seconds"]))

        await retrying(read)
        return found

    async def forget(self, step_key: str) -> bool:
        """Remove a done step (its products are being collected): a plan that wants it
        again computes it again rather than reading half a directory."""
        query = {"step_key": step_key, "state": DONE}
        result = await retrying(lambda: self._steps.delete_one(query))
        return result.deleted_count == 1
