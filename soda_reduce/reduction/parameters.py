"""A request's parameters, split into recipe parameters per task and workflow parameters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from soda_reduce.reduction.plan import PlanRequestError
from soda_reduce.reduction.tasks import Cascade


def split_parameters(
    cascade: Cascade, raw: Mapping[str, Any]
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Typed (recipe parameters per task, workflow parameters); PlanRequestError if bad.

    ``task.param`` names a recipe parameter, a bare name a workflow parameter;
    names are case-insensitive, as IVOA parameters are.
    """
    per_task: dict[str, dict[str, Any]] = {}
    workflow = {p.name: p.parse(p.default) for p in cascade.workflow_params}
    for name, value in sorted(raw.items()):
        if "." in name:
            task_name, param_name = name.split(".", 1)
            try:
                item = cascade.task(task_name)
            except KeyError as exc:
                raise PlanRequestError(str(exc.args[0])) from None
            spec = item.parameter(param_name)
            if spec is None:
                known = ", ".join(p.name for p in item.parameters) or "none"
                raise PlanRequestError(
                    f"task {item.name} has no parameter {param_name!r} (parameters: {known})"
                )
            key = (item.name, spec.name)
        else:
            spec = cascade.workflow_param(name)
            if spec is None:
                known = ", ".join(p.name for p in cascade.workflow_params) or "none"
                raise PlanRequestError(f"unknown workflow parameter {name!r} (known: {known})")
            key = (None, spec.name)
        try:
            typed = spec.parse(value)
        except ValueError as exc:
            raise PlanRequestError(f"parameter {name}: {exc}") from None
        if key[0] is None:
            workflow[spec.name] = typed
        else:
            per_task.setdefault(key[0], {})[key[1]] = typed
    return per_task, workflow
