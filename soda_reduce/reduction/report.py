"""A plan as a person reads it: datasets, jobs, quality reached, what is missing."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from soda_reduce.reduction.plan import LEVEL_WORDS, AssociationResult, PlanJob, ReductionPlan


@dataclass(frozen=True)
class AssociationView:
    """One association of one job as a person reads it: the text report prints it as a
    line, the job page as a table row with links (one wording for both)."""

    category: str
    status: str  # matched | missing | absent | skipped
    level: int | None
    quality: str  # "level 0 (same night)"; "-" when no level was reached
    chosen: tuple[tuple[str, str], ...]  # (job id or file id, what to call it)
    reason: str | None

    @property
    def summary(self) -> str:
        """Everything after the category: the quality reached, or why there is none."""
        if self.status == "matched":
            return f"{self.quality} <- {', '.join(label for _, label in self.chosen)}"
        if self.status == "skipped":
            return f"not used ({self.reason})"
        if self.status == "absent":
            return f"optional, none found ({self.reason})"
        return f"MISSING ({self.reason})"

    @property
    def line(self) -> str:
        return f"{self.category}: {self.summary}"


def association_view(assoc: AssociationResult, jobs: Mapping[str, PlanJob]) -> AssociationView:
    """A chosen job is named by its label, a chosen file by the part of its ID after "?"."""
    chosen = tuple((c, jobs[c].label if c in jobs else c.rsplit("?", 1)[-1]) for c in assoc.chosen)
    quality = _level_text(assoc.level, assoc.window)
    return AssociationView(assoc.category, assoc.status, assoc.level, quality, chosen, assoc.reason)


def _level_text(level: int | None, window: str | None) -> str:
    if level is None:
        return "-"
    words = f"within {window}" if window and window != "any time" else (window or "")
    if window == "the same night":
        words = "same night"
    return f"level {level} ({words or LEVEL_WORDS.get(level, '')})"


def format_plan(plan: ReductionPlan, verbose: bool = False) -> str:
    by_id = {j.job_id: j for j in plan.jobs}
    complete = sum(1 for d in plan.datasets if d.complete)
    incomplete = len(plan.datasets) - complete
    tasks = Counter(j.task for j in plan.jobs if j.complete)
    lines = [
        f"Plan: target '{plan.target}' of cascade {plan.cascade} v{plan.cascade_version}",
        f"  {len(plan.datasets)} dataset(s): {complete} complete, {incomplete} incomplete",
        "  steps to run: " + (", ".join(f"{n} {t}" for t, n in tasks.items()) if tasks else "none"),
    ]
    if plan.workflow_parameters:
        shown = ", ".join(f"{k}={_value(v)}" for k, v in plan.workflow_parameters.items())
        lines.append(f"  workflow parameters: {shown}")
    if plan.parameters:
        shown = ", ".join(f"{k}={_value(v)}" for k, v in plan.parameters.items())
        lines.append(f"  recipe parameters: {shown}")
    fallbacks = [
        (job, a)
        for job in plan.jobs
        for a in job.associations
        if a.level is not None and a.level > 0
    ]
    lines.append(f"  associations at a fallback level: {len(fallbacks)}")
    lines.append("")
    lines.append("Datasets")
    for dataset in plan.datasets:
        status = "complete" if dataset.complete else "INCOMPLETE"
        quality = f", quality level {dataset.quality_level}" if dataset.complete else ""
        lines.append(f"  [{status}] {dataset.label}{quality}")
        target = by_id.get(dataset.target_job)
        if target is not None:
            lines.extend(_association_lines(target, by_id, "      "))
        for reason in dataset.reasons:
            lines.append(f"      ! {reason}")
    lines.append("")
    lines.append("Jobs (upstream first)")
    for job in plan.jobs:
        mark = "" if job.complete else "  [incomplete]"
        n_main = sum(1 for i in job.inputs if i.role == "main")
        lines.append(f"  {job.job_id}  {job.label}  ({n_main} main input(s)){mark}")
        if verbose:
            key = job.step_key or "-"
            lines.append(f"      recipe {job.recipe} v{job.recipe_version}, step key {key}")
            if job.parameters:
                shown = ", ".join(f"{k}={_value(v)}" for k, v in job.parameters.items())
                lines.append(f"      parameters: {shown}")
            lines.extend(_association_lines(job, by_id, "      "))
    return "\n".join(lines) + "\n"


def _association_lines(job: PlanJob, by_id: dict[str, PlanJob], indent: str) -> list[str]:
    return [f"{indent}{association_view(a, by_id).line}" for a in job.associations]


def _value(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
