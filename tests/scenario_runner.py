"""EDPS-style cascade scenarios: headers in, expected jobs out.

A scenario (JSON under tests/scenarios/) lists virtual files by their headers,
a request (target, IDs, header filter, parameters) and the jobs the planner
must produce, each named by its task and main input files, with the inputs it
must get by association and the quality level reached. The runner writes the
files as header-only FITS, indexes them through the real indexer and store,
plans, and compares. Unexpected jobs fail the scenario, as in EDPS.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from astropy.io import fits

from soda_reduce.pipelines import get_cascade
from soda_reduce.reduction.index_model import raw_file_id
from soda_reduce.reduction.plan import PlanJob, ReductionPlan
from soda_reduce.reduction.planner import plan_reduction
from soda_reduce.runtime.indexer import index_archive

AUTHORITY = "test.scenario"
SCENARIO_DIR = Path(__file__).parent / "scenarios"


def scenario_files() -> list[Path]:
    return sorted(SCENARIO_DIR.glob("*.json"))


def write_files(spec: dict[str, Any], root: Path) -> None:
    defaults = spec.get("defaults", {})
    for entry in spec["files"]:
        header = fits.Header()
        for key, value in {**defaults, **entry.get("header", {})}.items():
            if value is not None:
                header[key] = value
        path = root / entry["name"]
        path.parent.mkdir(parents=True, exist_ok=True)
        fits.PrimaryHDU(header=header).writeto(path, overwrite=True)


def _fid(name: str) -> str:
    return raw_file_id(name, AUTHORITY)


def _name(file_id: str) -> str:
    return file_id.split("?", 1)[1]


@dataclass
class PlannedScenario:
    spec: dict[str, Any]
    plan: ReductionPlan

    def job_main(self, job: PlanJob) -> tuple[str, ...]:
        """Main raw files of a job; for a job of jobs, the main files of its members."""
        names: list[str] = []
        for item in job.inputs:
            if item.role != "main":
                continue
            if item.file_id is not None:
                names.append(_name(item.file_id))
            elif item.job is not None:
                names.extend(self.job_main(self.plan.job(item.job)))
        return tuple(sorted(names))

    def identify(self, job: PlanJob) -> tuple[str, tuple[str, ...]]:
        return (job.task, self.job_main(job))

    def chosen_names(self, job: PlanJob, category: str) -> list[str] | None:
        for assoc in job.associations:
            if assoc.category != category:
                continue
            names: list[str] = []
            for chosen in assoc.chosen:
                if chosen.startswith("ivo://"):
                    names.append(_name(chosen))
                else:
                    names.extend(self.job_main(self.plan.job(chosen)))
            return sorted(names)
        return None


async def plan_scenario(
    store: Any, spec: dict[str, Any], root: Path, parameters: dict[str, Any] | None = None
) -> PlannedScenario:
    await index_archive(store, root, authority=AUTHORITY)
    files = await store.all_raw_files()
    plan = plan_reduction(
        get_cascade(spec.get("pipeline", "ccd")),
        files,
        target=spec.get("target"),
        ids=[_fid(n) for n in spec.get("ids", [])],
        where=spec.get("where", {}),
        parameters=parameters if parameters is not None else spec.get("parameters", {}),
    )
    return PlannedScenario(spec, plan)


def check_jobs(planned: PlannedScenario, expected_jobs: list[dict[str, Any]]) -> list[str]:
    """Every difference between the plan and the expectation, in words."""
    problems: list[str] = []
    actual = {planned.identify(job): job for job in planned.plan.jobs}
    wanted: set[tuple[str, tuple[str, ...]]] = set()
    for expected in expected_jobs:
        ident = (expected["task"], tuple(sorted(expected["main"])))
        wanted.add(ident)
        job = actual.get(ident)
        if job is None:
            problems.append(f"missing job {ident}; planned: {sorted(actual)}")
            continue
        if "complete" in expected and job.complete != expected["complete"]:
            problems.append(f"{ident}: complete={job.complete}, reasons={job.reasons}")
        for category, names in expected.get("associated", {}).items():
            got = planned.chosen_names(job, category)
            if got != sorted(names):
                problems.append(f"{ident}: {category} chose {got}, expected {sorted(names)}")
        for category, level in expected.get("levels", {}).items():
            got_level = next((a.level for a in job.associations if a.category == category), None)
            if got_level != level:
                problems.append(f"{ident}: {category} at level {got_level}, expected {level}")
        for category, status in expected.get("status", {}).items():
            got_status = next((a.status for a in job.associations if a.category == category), None)
            if got_status != status:
                problems.append(f"{ident}: {category} status {got_status}, expected {status}")
        for fragment in expected.get("reasons", []):
            if not any(fragment in reason for reason in job.reasons):
                problems.append(f"{ident}: no reason containing {fragment!r} in {job.reasons}")
        for name, value in expected.get("parameters", {}).items():
            if job.parameters.get(name) != value:
                problems.append(f"{ident}: parameter {name}={job.parameters.get(name)!r}")
    if planned.spec["expect"].get("exact", True):
        for ident in sorted(set(actual) - wanted):
            problems.append(f"unexpected job {ident}")
    return problems


def check_datasets(planned: PlannedScenario, expected: list[dict[str, Any]]) -> list[str]:
    problems: list[str] = []
    by_main = {tuple(sorted(_name(i) for i in d.main_inputs)): d for d in planned.plan.datasets}
    if len(expected) != len(planned.plan.datasets):
        problems.append(f"{len(planned.plan.datasets)} datasets, expected {len(expected)}")
    for item in expected:
        key = tuple(sorted(item["main"]))
        dataset = by_main.get(key)
        if dataset is None:
            problems.append(f"no dataset for {key}; have {sorted(by_main)}")
            continue
        if "complete" in item and dataset.complete != item["complete"]:
            problems.append(f"dataset {key}: complete={dataset.complete} {dataset.reasons}")
        if "quality_level" in item and dataset.quality_level != item["quality_level"]:
            problems.append(f"dataset {key}: quality level {dataset.quality_level}")
        for fragment in item.get("reasons", []):
            if not any(fragment in reason for reason in dataset.reasons):
                problems.append(f"dataset {key}: no reason containing {fragment!r}")
    return problems


def key_by_job(planned: PlannedScenario) -> dict[tuple[str, tuple[str, ...]], str | None]:
    return {planned.identify(job): job.step_key for job in planned.plan.jobs}


def copy_tree_reversed(source: Path, target: Path) -> None:
    """The same files written in the opposite order (new mtimes, new directory)."""
    files = sorted(p for p in source.rglob("*") if p.is_file())
    for path in reversed(files):
        destination = target / path.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, destination)


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())
