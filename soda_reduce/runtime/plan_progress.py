"""A running plan's step states and counts, as the job document shows them.

The worker feeds it the runner's events and writes ``fields()`` into the job; when a plan
is stopped (ABORT, executionDuration) ``interrupted_fields()`` says what became of each
step: one in flight was aborted, one never started was skipped.
"""

from __future__ import annotations

from typing import Any

from soda_reduce.reduction.plan import ReductionPlan


class PlanProgress:
    """Step states and counts of one running plan, from the runner's events."""

    def __init__(self, plan: ReductionPlan) -> None:
        self.jobs = plan.runnable_jobs()
        self.steps: dict[str, dict[str, Any]] = {
            j.job_id: {
                "job_id": j.job_id,
                "task": j.task,
                "label": j.label,
                "step_key": j.step_key,
                "status": "pending",
                "attempts": 0,
                "error": None,
            }
            for j in self.jobs
        }
        self.progress: dict[str, Any] = {
            "done": 0,
            "failed": 0,
            "total": len(self.jobs),
            "running": [],
        }

    def update(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "progress":
            self.progress = {k: event[k] for k in ("done", "failed", "total", "running")}
            for job_id in event["running"]:
                if job_id in self.steps and self.steps[job_id]["status"] == "pending":
                    self.steps[job_id]["status"] = "running"
        elif kind == "step" and event.get("job_id") in self.steps:
            step = self.steps[event["job_id"]]
            step.update(
                status=event["status"], attempts=event.get("attempts", 0), error=event.get("error")
            )
        elif kind == "attempt" and event.get("job_id") in self.steps:
            step = self.steps[event["job_id"]]
            step.update(status="running", attempts=event["attempt"])

    def fields(self) -> dict[str, Any]:
        return {"progress": dict(self.progress), "steps": list(self.steps.values())}

    def interrupted_fields(self) -> dict[str, Any]:
        """The fields once the plan was stopped: nothing runs any more."""
        fields = self.fields()
        fields["progress"]["running"] = []
        fields["steps"] = [interrupted_step(step) for step in fields["steps"]]
        return fields


def interrupted_step(step: dict[str, Any]) -> dict[str, Any]:
    """A step of a stopped plan: in flight -> ``aborted``, not started -> ``skipped``."""
    status = {"running": "aborted", "pending": "skipped"}.get(step.get("status", ""))
    return {**step, "status": status} if status else dict(step)
