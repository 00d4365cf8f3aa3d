"""Rendered job documents, kept until the job changes.

Clients poll job documents far more often than jobs change; each poll would
otherwise cost a store round trip and an XML rendering. Every change of a job
is published as a job event (phase changes, progress, parameters, deletion),
and every event drops that job's entries here. Two guards keep it correct:

- a generation per job, read before the store read and checked when storing,
  so a document read before an event cannot be stored after it;
- a short time-to-live, and no caching at all while the events of other
  processes may be lost (RabbitMQ disconnected): a lost event costs at most
  ``ttl_s`` of staleness.

WAIT requests never use it: they read the store.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

CacheKey = tuple[str, str | None, str]  # job id, owner, base URL


class StatusCache:
    def __init__(self, ttl_s: float = 1.0, max_entries: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: OrderedDict[CacheKey, tuple[float, bytes]] = OrderedDict()
        self._keys: dict[str, set[CacheKey]] = {}
        self._generations: OrderedDict[str, int] = OrderedDict()
        self.hits = self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.ttl_s > 0

    def on_event(self, event: dict[str, Any]) -> None:
        job_id = event.get("job_id")
        if not isinstance(job_id, str):
            return
        self._generations[job_id] = self._generations.pop(job_id, 0) + 1
        while len(self._generations) > 10 * self.max_entries:
            self._generations.popitem(last=False)
        for key in self._keys.pop(job_id, ()):
            self._entries.pop(key, None)

    def generation(self, job_id: str) -> int:
        return self._generations.get(job_id, 0)

    def get(self, key: CacheKey) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] < time.monotonic():
            self.misses += 1
            return None
        self.hits += 1
        return entry[1]

    def put(self, key: CacheKey, generation: int, body: bytes) -> None:
        """Store unless the job changed since ``generation`` was read."""
        job_id = key[0]
        if generation != self.generation(job_id):
            return
        self._entries[key] = (time.monotonic() + self.ttl_s, body)
        self._entries.move_to_end(key)
        self._keys.setdefault(job_id, set()).add(key)
        while len(self._entries) > self.max_entries:
            old, _ = self._entries.popitem(last=False)
            keys = self._keys.get(old[0])
            if keys is not None:
                keys.discard(old)
                if not keys:
                    del self._keys[old[0]]
