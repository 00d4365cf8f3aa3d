"""Graphviz DOT of a cascade and of a plan (rendered to SVG by runtime.render).

The cascade graph follows EDPS's colour code: calibration tasks green, tasks
that can be science targets blue, raw data sources as folders.
"""

from __future__ import annotations

from soda_reduce.reduction.cascade import DataSource
from soda_reduce.reduction.plan import ReductionPlan
from soda_reduce.reduction.tasks import Cascade, Task


def _quote(text: str) -> str:
    """A DOT string: quotes and backslashes escaped, line breaks as DOT's ``\\n``."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _source_node(source: DataSource | Task) -> str:
    return _quote(f"task:{source.name}" if isinstance(source, Task) else f"raw:{source.name}")


def cascade_dot(cascade: Cascade) -> str:
    lines = [
        f"digraph {_quote(cascade.name)} {{",
        "  rankdir=LR;",
        '  node [fontname="Helvetica", fontsize=10];',
        '  edge [fontname="Helvetica", fontsize=9];',
    ]
    for source in cascade.data_sources:
        grouping = ", ".join(source.group_by) or "one per file"
        label = f"{source.category}\n({source.name})\ngroup: {grouping}"
        lines.append(f"  {_source_node(source)} [shape=folder, label={_quote(label)}];")
    in_subworkflow = {name for sub in cascade.subworkflows for name in sub.tasks}
    for index, sub in enumerate(cascade.subworkflows):
        lines.append(f"  subgraph cluster_{index} {{")
        lines.append(f"    label={_quote(sub.name)}; style=dashed;")
        lines.extend("    " + _task_node(cascade.task(name), cascade) for name in sub.tasks)
        lines.append("  }")
    for item in cascade.tasks:
        if item.name not in in_subworkflow:
            lines.append("  " + _task_node(item, cascade))
    for item in cascade.tasks:
        target = _source_node(item)
        lines.append(f'  {_source_node(item.main.source)} -> {target} [label="main", penwidth=2];')
        for spec in item.associated:
            style = "dashed" if spec.optional else "solid"
            extra = f" if {spec.condition.describe()}" if spec.condition else ""
            label = f"{spec.category}{extra}"
            lines.append(
                f"  {_source_node(spec.source)} -> {target} [label={_quote(label)}, style={style}];"
            )
    lines.append("}")
    return "\n".join(lines) + "\n"


def _task_node(item: Task, cascade: Cascade) -> str:
    colour = "lightblue" if item.science else "palegreen"
    target = " (default target)" if item.name == cascade.default_target else ""
    label = f"{item.name}{target}\n{item.recipe} v{item.recipe_version}\n-> {item.products}"
    return (
        f'{_source_node(item)} [shape=box, style="rounded,filled", fillcolor={colour}, '
        f"label={_quote(label)}];"
    )


def plan_dot(plan: ReductionPlan) -> str:
    lines = [
        f"digraph {_quote('plan ' + plan.target)} {{",
        "  rankdir=LR;",
        '  node [fontname="Helvetica", fontsize=10, shape=box, style="rounded,filled"];',
    ]
    targets = {d.target_job for d in plan.datasets}
    job_ids = {j.job_id for j in plan.jobs}
    for job in plan.jobs:
        colour = "palegreen" if job.complete else "lightpink"
        if job.complete and job.job_id in targets:
            colour = "lightblue"
        levels = [a.level for a in job.associations if a.level is not None]
        quality = f"\nlevel {max(levels)}" if levels and max(levels) > 0 else ""
        label = f"{job.label}{quality}\n{job.job_id}"
        lines.append(f"  {_quote(job.job_id)} [fillcolor={colour}, label={_quote(label)}];")
    for job in plan.jobs:
        for assoc in job.associations:
            for chosen in assoc.chosen:
                if chosen in job_ids:
                    edge_label = f"{assoc.category} L{assoc.level}"
                    lines.append(
                        f"  {_quote(chosen)} -> {_quote(job.job_id)} [label={_quote(edge_label)}];"
                    )
        for dep in job.depends_on:
            if not any(dep in a.chosen for a in job.associations):
                lines.append(f"  {_quote(dep)} -> {_quote(job.job_id)} [penwidth=2];")
    lines.append("}")
    return "\n".join(lines) + "\n"
