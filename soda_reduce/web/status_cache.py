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

CacheKey = tuple[str, str | None]  # job id, owner: nothing a client chooses freely
# rendered documents hold this in place of the service's root URL: it is put in at
# serving time, so that one entry serves every Host a request may name
BASE_PLACEHOLDER = "http://soda-reduce-base.invalid"


class StatusCache:
    """Bounded in entries and in bytes; expired entries are dropped as new ones come."""

    def __init__(
        self, ttl_s: float = 1.0, max_entries: int = 10_000, max_bytes: int = 32 * 1024**2
    ) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[CacheKey, tuple[float, bytes]] = OrderedDict()
        self._keys: dict[str, set[CacheKey]] = {}
        self._generations: OrderedDict[str, int] = OrderedDict()
        self.hits = self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.ttl_s > 0

    def __len__(self) -> int:
        return len(self._entries)

    def on_event(self, event: dict[str, Any]) -> None:
        job_id = event.get("job_id")
        if not isinstance(job_id, str):
            return
        self._generations[job_id] = self._generations.pop(job_id, 0) + 1
        while len(self._generations) > 10 * self.max_entries:
            self._generations.popitem(last=False)
        for key in self._keys.pop(job_id, ()):
            self._drop(key)

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
        """Store unless the job changed since ``generation`` was read, or too large."""
        job_id = key[0]
        if generation != self.generation(job_id) or len(body) > self.max_bytes // 16:
            return
        self._drop(key)
        now = time.monotonic()
        self._entries[key] = (now + self.ttl_s, body)
        self.bytes += len(body)
        self._keys.setdefault(job_id, set()).add(key)
        # entries are in insertion order with one time-to-live: the oldest expire first
        while self._entries:
            old, (expires, _) = next(iter(self._entries.items()))
            full = len(self._entries) > self.max_entries or self.bytes > self.max_bytes
            if not full and expires >= now:
                break
            self._drop(old)

    def _drop(self, key: CacheKey) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self.bytes -= len(entry[1])
        keys = self._keys.get(key[0])
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._keys[key[0]]
