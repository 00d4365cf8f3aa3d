"""A plan as a person reads it: datasets, jobs, quality reached, what is missing."""

from __future__ import annotations

from collections import Counter

from soda_reduce.reduction.plan import LEVEL_WORDS, PlanJob, ReductionPlan


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
    lines = []
    for assoc in job.associations:
        if assoc.status == "matched":
            chosen = ", ".join(
                by_id[c].label if c in by_id else c.rsplit("?", 1)[-1] for c in assoc.chosen
            )
            lines.append(
                f"{indent}{assoc.category}: {_level_text(assoc.level, assoc.window)} <- {chosen}"
            )
        elif assoc.status == "skipped":
            lines.append(f"{indent}{assoc.category}: not used ({assoc.reason})")
        elif assoc.status == "absent":
            lines.append(f"{indent}{assoc.category}: optional, none found ({assoc.reason})")
        else:
            lines.append(f"{indent}{assoc.category}: MISSING ({assoc.reason})")
    return lines


def _value(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
