"""Creation limits in the memory of one API process: rates, and the active-job quota's tally.

Rates: a token bucket per caller. A bucket holds ``burst`` tokens and gains
``per_minute / 60`` a second; a job creation takes one. Callers are owners (an
authenticated name, an anonymous session) and, for anonymous callers, also their network
address, so that dropping the session cookie does not reset the count. Buckets idle long
enough to be full again are forgotten, and their number is bounded: memory does not grow
with the callers seen. The active-job quota: `ActiveJobTally`.
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


@dataclass
class _Tally:
    bound: int  # at least the owner's active jobs: the last count plus creations since
    counted: float


class ActiveJobTally:
    """Per owner, an upper bound of its active jobs, so that a creation well within the
    quota needs no count in the store.

    Jobs become active only by being created and leave that state by themselves (they
    finish, are aborted or deleted), so the last count plus the creations this process
    made since is never below the truth, as long as no other process creates jobs for
    the owner: each bound is trusted for ``trust_s`` after its count (other API
    processes' creations within that time are not seen). A creation that would bring the
    bound to the quota counts again: a refusal is always decided on a fresh count. A
    session minted for the request owns nothing yet: its count is 0 without asking.
    Memory is bounded: the least recently used owners are forgotten.
    """

    def __init__(self, trust_s: float = 10.0, max_owners: int = 50_000) -> None:
        self.trust_s = trust_s
        self.max_owners = max_owners
        self._tallies: OrderedDict[str, _Tally] = OrderedDict()

    def reserve(self, owner: str | None, quota: int, now: float | None = None) -> bool:
        """Count one more creation if the bound says it fits the quota (False: count)."""
        now = time.monotonic() if now is None else now
        tally = self._tallies.get(_owner_key(owner))
        if tally is None or now - tally.counted > self.trust_s or tally.bound + 1 > quota:
            return False
        tally.bound += 1
        self._tallies.move_to_end(_owner_key(owner))
        return True

    def counted(self, owner: str | None, active: int, now: float | None = None) -> None:
        """A fresh count of the owner's active jobs."""
        now = time.monotonic() if now is None else now
        key = _owner_key(owner)
        self._tallies[key] = _Tally(active, now)
        self._tallies.move_to_end(key)
        while len(self._tallies) > self.max_owners:
            self._tallies.popitem(last=False)

    def add(self, owner: str | None) -> None:
        """One more creation, admitted on a fresh count."""
        tally = self._tallies.get(_owner_key(owner))
        if tally is not None:
            tally.bound += 1

    def release(self, owner: str | None) -> None:
        """A reserved creation did not happen."""
        tally = self._tallies.get(_owner_key(owner))
        if tally is not None and tally.bound > 0:
            tally.bound -= 1


def _owner_key(owner: str | None) -> str:
    return owner if owner is not None else ""
