"""Reading a step pod's status: which state means success, which failure, and whether to retry.

Kept apart from the executor so the mapping can be read in one place; the
executor only feeds it the pod states its watch delivers.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from soda_reduce.runtime.executors.base import StepOutcome, StepRun

CONTAINER = "recipe"

# Waiting reasons that will not cure themselves: fail at once.
FATAL_WAITING = frozenset({"InvalidImageName", "ErrImageNeverPull"})
# Waiting reasons that may be a passing registry or network hiccup: fail if they persist.
STUCK_WAITING = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "CreateContainerConfigError", "CreateContainerError"}
)
# Pod-level reasons for a failure that is the cluster's doing, not the recipe's.
TRANSIENT_POD_REASONS = frozenset(
    {
        "Evicted",
        "NodeLost",
        "Preempting",
        "Shutdown",
        "NodeShutdown",
        "Terminated",
        "UnexpectedAdmissionError",
        "OutOfcpu",
        "OutOfmemory",
        "OutOfpods",
        "NodeAffinity",
    }
)


def _signal_hint(code: int) -> str:
    """Exit codes above 128 are a signal's number plus 128: name it for the reader."""
    try:
        return f" ({signal.Signals(code - 128).name})" if code > 128 else ""
    except ValueError:
        return ""


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    try:
        return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    except ValueError:
        return None


@dataclass
class PodJudge:
    """Turns the pod states seen so far into an outcome, or None while it is still going.

    Stateful only for image pulls: a pull error seen once may be a registry
    hiccup, so it fails the attempt only after persisting for ``pull_grace_s``.
    """

    run: StepRun
    image: str
    pull_grace_s: float
    pod: dict[str, Any] = field(default_factory=dict)
    stuck_since: float | None = None

    def update(self, pod: dict[str, Any], now: float) -> StepOutcome | None:
        self.pod = pod
        return self.check(now)

    def next_check(self) -> float | None:
        """When a persisting waiting reason turns into a failure, for the watch's timer."""
        return None if self.stuck_since is None else self.stuck_since + self.pull_grace_s

    def _container(self) -> dict[str, Any]:
        statuses = (self.pod.get("status") or {}).get("containerStatuses") or []
        return next((s for s in statuses if s.get("name") == CONTAINER), {})

    def check(self, now: float) -> StepOutcome | None:
        status = self.pod.get("status") or {}
        phase = status.get("phase")
        if phase == "Succeeded":
            return StepOutcome(True, 0, wall_seconds=self._wall())
        if phase == "Failed":
            return self._failed(status)
        waiting = (self._container().get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason") or ""
        if reason in FATAL_WAITING:
            return self._cannot_start(reason, waiting.get("message"))
        if reason in STUCK_WAITING:
            if self.stuck_since is None:
                self.stuck_since = now
            if now - self.stuck_since >= self.pull_grace_s:
                return self._cannot_start(reason, waiting.get("message"))
            return None
        self.stuck_since = None
        return None

    def _cannot_start(self, reason: str, message: str | None) -> StepOutcome:
        what = "image" if "Image" in reason else "container"
        detail = f": {message}" if message else ""
        return StepOutcome(False, error=f"cannot start the {what} {self.image} ({reason}){detail}")

    def _wall(self) -> float:
        terminated = (self._container().get("state") or {}).get("terminated") or {}
        return _seconds(terminated.get("startedAt"), terminated.get("finishedAt")) or 0.0

    def _failed(self, status: dict[str, Any]) -> StepOutcome:
        reason, message = status.get("reason") or "", status.get("message") or ""
        wall = self._wall()
        if reason == "DeadlineExceeded":
            return StepOutcome(
                False,
                error=f"timed out after {self.run.resources.timeout_s:g} s and was killed "
                "(activeDeadlineSeconds)",
                wall_seconds=wall,
            )
        disrupted = any(
            c.get("type") == "DisruptionTarget" and c.get("status") == "True"
            for c in status.get("conditions") or []
        )
        if reason in TRANSIENT_POD_REASONS or disrupted:
            why = reason or "disrupted"
            return StepOutcome(
                False, error=f"pod {why}: {message}".rstrip(": "), transient=True, wall_seconds=wall
            )
        state = self._container().get("state") or {}
        terminated = state.get("terminated") or {}
        code = terminated.get("exitCode")
        if terminated.get("reason") == "OOMKilled":
            limit = self.run.resources.memory_mb
            return StepOutcome(False, code, f"out of memory (limit {limit} MiB)", wall_seconds=wall)
        if terminated.get("reason") in ("ContainerCannotRun", "StartError"):
            return self._cannot_start(terminated["reason"], terminated.get("message"))
        if isinstance(code, int) and code != 0:
            error = f"the recipe exited with code {code}{_signal_hint(code)}"
            return StepOutcome(False, code, error, wall_seconds=wall)
        summary = f"pod failed ({reason or 'no reason given'}): {message}".rstrip(": ")
        return StepOutcome(False, code, summary, transient=True, wall_seconds=wall)

    def overdue(self, waited_s: float) -> StepOutcome:
        """Our own bound passed without the kubelet ending the pod: not started, or node trouble.

        Either way the recipe is not to blame (a hanging recipe is killed by
        activeDeadlineSeconds well before), so the attempt is worth retrying.
        """
        status = self.pod.get("status") or {}
        if status.get("startTime"):
            error = f"pod did not finish within {waited_s:.0f} s (its node stopped reporting?)"
        else:
            hint = next(
                (c["message"] for c in status.get("conditions") or [] if c.get("message")), ""
            )
            error = f"pod did not start within {waited_s:.0f} s" + (f": {hint}" if hint else "")
        return StepOutcome(False, error=error, transient=True)
