"""The reduction plan: what the planner decides, as plain JSON-able values.

The plan is the message a worker receives, so it carries everything needed to
run each step (recipe, parameters, inputs with paths and checksums, upstream
steps) and everything a person needs to trust it (quality level reached for
every association, reasons when a dataset is incomplete).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PLAN_SCHEMA = "soda-reduce/plan/1"

LEVEL_WORDS = {0: "same night and setup", 1: "within 3 nights", 2: "any valid"}


@dataclass(frozen=True)
class PlanInput:
    """One input of a step: a raw or static file, or the products of another step."""

    category: str
    file_id: str | None = None
    path: str | None = None
    checksum: str | None = None
    job: str | None = None  # upstream job id
    role: str = "main"  # main | associated | static
    types: tuple[str, ...] = ()  # every type of a raw frame, when it has several or was overridden

    def key_material(self, keys: Mapping[str, str | None]) -> list[str]:
        if self.job is not None:
            return [self.category, "step", keys.get(self.job) or "incomplete"]
        material = [self.category, "file", self.checksum or ""]
        if self.types:  # a frame's other types change what the pipeline does with it
            material.append(",".join(self.types))
        return material


@dataclass(frozen=True)
class AssociationResult:
    """How one associated input of one job was resolved."""

    category: str
    source: str  # data source or task name
    status: str  # matched | missing | absent (optional, none found) | skipped (condition)
    level: int | None = None
    window: str | None = None
    chosen: tuple[str, ...] = ()  # file ids or job ids
    reason: str | None = None
    optional: bool = False


@dataclass(frozen=True)
class PlanJob:
    job_id: str
    task: str
    recipe: str
    recipe_version: str
    group: dict[str, Any]
    inputs: tuple[PlanInput, ...]
    parameters: dict[str, Any]
    depends_on: tuple[str, ...]
    associations: tuple[AssociationResult, ...]
    complete: bool
    reasons: tuple[str, ...] = ()
    step_key: str | None = None
    products: str = ""
    label: str = ""
    resources: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Dataset:
    """One requested main-input group with every job its reduction needs."""

    target_job: str
    label: str
    jobs: tuple[str, ...]
    complete: bool
    quality_level: int
    reasons: tuple[str, ...] = ()
    main_inputs: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReductionPlan:
    cascade: str
    cascade_version: str
    target: str
    parameters: dict[str, Any]
    workflow_parameters: dict[str, Any]
    selection: dict[str, Any]
    jobs: tuple[PlanJob, ...]
    datasets: tuple[Dataset, ...]
    schema: str = PLAN_SCHEMA

    @property
    def complete(self) -> bool:
        return bool(self.datasets) and all(d.complete for d in self.datasets)

    def job(self, job_id: str) -> PlanJob:
        for item in self.jobs:
            if item.job_id == job_id:
                return item
        raise KeyError(job_id)

    def runnable_jobs(self) -> list[PlanJob]:
        """Jobs of complete datasets, upstream first."""
        wanted = {j for d in self.datasets if d.complete for j in d.jobs}
        return [j for j in self.jobs if j.job_id in wanted]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (hand-written: dataclasses.asdict deep-copies, 3x slower)."""
        return {
            "schema": self.schema,
            "cascade": self.cascade,
            "cascade_version": self.cascade_version,
            "target": self.target,
            "parameters": dict(self.parameters),
            "workflow_parameters": dict(self.workflow_parameters),
            "selection": {k: _plain(v) for k, v in self.selection.items()},
            "jobs": [_job_dict(j) for j in self.jobs],
            "datasets": [_dataset_dict(d) for d in self.datasets],
            "complete": self.complete,
        }

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True, default=str)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReductionPlan:
        if data.get("schema") != PLAN_SCHEMA:
            raise ValueError(f"unsupported plan schema {data.get('schema')!r}")
        jobs = tuple(
            PlanJob(
                **{
                    **job,
                    "inputs": tuple(
                        PlanInput(**{**i, "types": tuple(i.get("types") or ())})
                        for i in job["inputs"]
                    ),
                    "depends_on": tuple(job["depends_on"]),
                    "associations": tuple(
                        AssociationResult(**{**a, "chosen": tuple(a["chosen"])})
                        for a in job["associations"]
                    ),
                    "reasons": tuple(job["reasons"]),
                }
            )
            for job in data["jobs"]
        )
        datasets = tuple(
            Dataset(
                **{
                    **d,
                    "jobs": tuple(d["jobs"]),
                    "reasons": tuple(d["reasons"]),
                    "main_inputs": tuple(d["main_inputs"]),
                }
            )
            for d in data["datasets"]
        )
        return cls(
            cascade=data["cascade"],
            cascade_version=data["cascade_version"],
            target=data["target"],
            parameters=dict(data["parameters"]),
            workflow_parameters=dict(data["workflow_parameters"]),
            selection=dict(data["selection"]),
            jobs=jobs,
            datasets=datasets,
            schema=data["schema"],
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> ReductionPlan:
        return cls.from_dict(json.loads(text))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _job_dict(job: PlanJob) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "task": job.task,
        "recipe": job.recipe,
        "recipe_version": job.recipe_version,
        "group": dict(job.group),
        "inputs": [
            {
                "category": i.category,
                "file_id": i.file_id,
                "path": i.path,
                "checksum": i.checksum,
                "job": i.job,
                "role": i.role,
                **({"types": list(i.types)} if i.types else {}),
            }
            for i in job.inputs
        ],
        "parameters": dict(job.parameters),
        "depends_on": list(job.depends_on),
        "associations": [
            {
                "category": a.category,
                "source": a.source,
                "status": a.status,
                "level": a.level,
                "window": a.window,
                "chosen": list(a.chosen),
                "reason": a.reason,
                "optional": a.optional,
            }
            for a in job.associations
        ],
        "complete": job.complete,
        "reasons": list(job.reasons),
        "step_key": job.step_key,
        "products": job.products,
        "label": job.label,
        "resources": dict(job.resources),
    }


def _dataset_dict(dataset: Dataset) -> dict[str, Any]:
    return {
        "target_job": dataset.target_job,
        "label": dataset.label,
        "jobs": list(dataset.jobs),
        "complete": dataset.complete,
        "quality_level": dataset.quality_level,
        "reasons": list(dataset.reasons),
        "main_inputs": list(dataset.main_inputs),
    }


def step_key(
    recipe: str,
    recipe_version: str,
    parameters: Mapping[str, Any],
    inputs: list[list[str]],
) -> str:
    """sha256 over what determines a step's result: same key, same products.

    Inputs are sorted so that the order files were listed in never matters.
    """
    material = {
        "recipe": recipe,
        "version": recipe_version,
        "parameters": {k: parameters[k] for k in sorted(parameters)},
        "inputs": sorted(inputs),
    }
    encoded = json.dumps(material, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(encoded.encode()).hexdigest()


class PlanRequestError(ValueError):
    """The request itself is wrong (unknown task, parameter or ID): a usage error."""
