"""Creation-rate limits: a token bucket per caller, in the memory of one API process.

A bucket holds ``burst`` tokens and gains ``per_minute / 60`` a second; a job creation
takes one. Callers are owners (an authenticated name, an anonymous session) and, for
anonymous callers, also their network address, so that dropping the session cookie
does not reset the count. Buckets idle long enough to be full again are forgotten,
and their number is bounded: memory does not grow with the callers seen.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self, per_minute: float, burst: int, max_callers: int = 100_000) -> None:
        self.rate = per_minute / 60.0
        self.burst = max(1, burst)
        self.max_callers = max_callers
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, keys: tuple[str, ...], now: float | None = None) -> float:
        """Take one token from every key's bucket; 0 if allowed, else the seconds to wait
        (nothing is taken then)."""
        if not self.enabled:
            return 0.0
        now = time.monotonic() if now is None else now
        buckets = [self._refill(key, now) for key in keys]
        short = [b for b in buckets if b.tokens < 1.0]
        if short:
            return max((1.0 - b.tokens) / self.rate for b in short)
        for bucket in buckets:
            bucket.tokens -= 1.0
        self._forget(now)
        return 0.0

    def retry_after(self, wait_s: float) -> int:
        return max(1, math.ceil(wait_s))

    def _refill(self, key: str, now: float) -> _Bucket:
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = _Bucket(float(self.burst), now)
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
        self._buckets[key] = bucket  # most recently used last
        return bucket

    def _forget(self, now: float) -> None:
        full_after = self.burst / self.rate
        while self._buckets:
            key, bucket = next(iter(self._buckets.items()))
            if len(self._buckets) <= self.max_callers and now - bucket.updated < full_after:
                break
            del self._buckets[key]
