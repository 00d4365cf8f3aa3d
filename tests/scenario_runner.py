"""EDPS-style cascade scenarios: headers in, expected jobs out.

A scenario (JSON under tests/scenarios/) lists virtual files by their headers,
a request (target, IDs, header filter, parameters) and the jobs the planner
must produce, each named by its task and main input files, with the inputs it
must get by association and the quality level reached. The runner writes the
files as header-only FITS, indexes them through the real indexer and store,
plans, and compares. Unexpected jobs fail the scenario, as in EDPS.

A scenario names its pipeline (``ccd``, ``kast``...): it is planned with that
pipeline's own files (those the indexer recorded it claims) and its static
library, as the service does. ``overrides`` is the text of an operator's
overrides file, applied at index time. Besides jobs and datasets, ``expect`` may
state each file's ``types``, which files carry operator ``overridden`` types or
``calib`` groups, and which files the pipeline leaves ``unclaimed``.
``mutants`` derives a wrong expectation from every stated one, so a test can
show that each of them is able to fail. A scenario with ``known_bug`` states the
right behaviour of something the planner gets wrong: it is expected to fail.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from astropy.io import fits

from soda_reduce.pipelines import Pipeline, registry
from soda_reduce.reduction.index_model import RawFile, raw_file_id
from soda_reduce.reduction.organisation import Frame
from soda_reduce.reduction.plan import PlanJob, ReductionPlan
from soda_reduce.reduction.planner import Planner
from soda_reduce.runtime.archive_plans import files_of, plan_with
from soda_reduce.runtime.claims import Annotator, load_overrides
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
    """A raw file's path under the archive root, or a static file's name in its library."""
    if file_id.startswith("ivo://"):
        return file_id.split("?", 1)[1]
    return file_id.rsplit("/", 1)[-1]


STATIC_SOURCE = "static library"  # AssociationResult.source of a static calibration


@dataclass
class PlannedScenario:
    spec: dict[str, Any]
    plan: ReductionPlan
    pipeline: str = "ccd"
    frames: list[Frame] = field(default_factory=list)  # the pipeline's files, as classified
    files: list[RawFile] = field(default_factory=list)  # every indexed file, with its claim

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
        """Raw files, upstream jobs' main files or static file names chosen for ``category``."""
        for assoc in job.associations:
            if assoc.category != category:
                continue
            names: list[str] = []
            for chosen in assoc.chosen:
                if chosen.startswith("ivo://") or assoc.source == STATIC_SOURCE:
                    names.append(_name(chosen))
                else:
                    names.extend(self.job_main(self.plan.job(chosen)))
            return sorted(names)
        return None


def scenario_pipeline(spec: dict[str, Any]) -> Pipeline:
    return registry().get(spec.get("pipeline", "ccd"))


def scenario_annotator(spec: dict[str, Any], root: Path) -> Annotator | None:
    """The scenario's overrides written as an operator's file beside the archive, then
    loaded as the service loads it; None (the indexer's default) when there are none."""
    text = spec.get("overrides")
    if text is None:
        return None
    path = root.parent / f"{root.name}.overrides.txt"
    path.write_text(text, encoding="utf-8")
    return Annotator(registry(), load_overrides(path))


async def plan_scenario(
    store: Any, spec: dict[str, Any], root: Path, parameters: dict[str, Any] | None = None
) -> PlannedScenario:
    pipeline = scenario_pipeline(spec)
    annotator = scenario_annotator(spec, root)
    await index_archive(store, root, authority=AUTHORITY, annotator=annotator)
    files = await store.all_raw_files()
    plan = plan_with(  # the service's path: the pipeline's own files and static library
        pipeline,
        files,
        None,
        target=spec.get("target"),
        ids=[_fid(n) for n in spec.get("ids", [])],
        where=spec.get("where", {}),
        parameters=parameters if parameters is not None else spec.get("parameters", {}),
    )
    frames = Planner(pipeline.cascade, files_of(files, pipeline.name)).frames
    return PlannedScenario(spec, plan, pipeline.name, frames, files)


def check_expectations(planned: PlannedScenario, expect: dict[str, Any]) -> list[str]:
    """Every difference between the plan and ``expect`` (jobs, datasets, frames), in words."""
    problems = check_jobs(planned, expect.get("jobs", []), exact=expect.get("exact", True))
    if "datasets" in expect:
        problems += check_datasets(planned, expect["datasets"])
    return problems + check_frames(planned, expect)


def check_jobs(
    planned: PlannedScenario, expected_jobs: list[dict[str, Any]], exact: bool | None = None
) -> list[str]:
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
    if exact is None:
        exact = planned.spec["expect"].get("exact", True)
    if exact:
        for ident in sorted(set(actual) - wanted):
            problems.append(f"unexpected job {ident}")
    return problems


def check_datasets(planned: PlannedScenario, expected: list[dict[str, Any]]) -> list[str]:
    """Datasets are named by their main files, and by their target task when two share them
    (a meta-target reduces the same dome flats as slits and as flat)."""
    problems: list[str] = []
    if len(expected) != len(planned.plan.datasets):
        problems.append(f"{len(planned.plan.datasets)} datasets, expected {len(expected)}")
    for item in expected:
        key = tuple(sorted(item["main"]))
        found = [
            d
            for d in planned.plan.datasets
            if tuple(sorted(_name(i) for i in d.main_inputs)) == key
            and item.get("task", planned.plan.job(d.target_job).task)
            == planned.plan.job(d.target_job).task
        ]
        what = f"{item['task']} {key}" if "task" in item else str(key)
        if len(found) != 1:
            have = sorted(
                (planned.plan.job(d.target_job).task, tuple(sorted(map(_name, d.main_inputs))))
                for d in planned.plan.datasets
            )
            problems.append(f"{len(found)} datasets for {what}; have {have}")
            continue
        dataset = found[0]
        if "complete" in item and dataset.complete != item["complete"]:
            problems.append(f"dataset {what}: complete={dataset.complete} {dataset.reasons}")
        if "quality_level" in item and dataset.quality_level != item["quality_level"]:
            problems.append(f"dataset {what}: quality level {dataset.quality_level}")
        for fragment in item.get("reasons", []):
            if not any(fragment in reason for reason in dataset.reasons):
                problems.append(f"dataset {what}: no reason containing {fragment!r}")
    return problems


def check_frames(planned: PlannedScenario, expect: dict[str, Any]) -> list[str]:
    """Types, operator marks and claims of the files, as the planner saw them.

    ``types`` (file -> types, any order) is checked on the frame and on every plan
    input of that file, which lists a frame's types when it has several or the
    operator set them; ``overridden``, ``calib`` and ``unclaimed`` are exact.
    """
    problems: list[str] = []
    frames = {_name(f.file_id): f for f in planned.frames}
    for name, types in expect.get("types", {}).items():
        frame = frames.get(name)
        if frame is None:
            problems.append(f"{name}: not a file of pipeline {planned.pipeline}")
            continue
        if sorted(frame.categories) != sorted(types):
            problems.append(f"{name}: types {list(frame.categories)}, expected {sorted(types)}")
        listed = sorted(types) if len(types) > 1 or frame.overridden else []
        for job in planned.plan.jobs:
            for item in job.inputs:
                if item.file_id == frame.file_id and sorted(item.types) != listed:
                    problems.append(
                        f"{name}: {item.category} input of {job.label} lists types "
                        f"{list(item.types)}, expected {listed}"
                    )
    if "overridden" in expect:
        got = sorted(name for name, frame in frames.items() if frame.overridden)
        if got != sorted(expect["overridden"]):
            problems.append(f"operator types on {got}, expected {sorted(expect['overridden'])}")
    if "calib" in expect:
        got_groups = {
            name: sorted(frame.calib_groups)
            for name, frame in frames.items()
            if frame.calib_groups is not None
        }
        want = {name: sorted(groups) for name, groups in expect["calib"].items()}
        if got_groups != want:
            problems.append(f"calibration groups {got_groups}, expected {want}")
    if "unclaimed" in expect:
        got = sorted(raw.path for raw in planned.files if raw.pipeline != planned.pipeline)
        if got != sorted(expect["unclaimed"]):
            problems.append(
                f"files {planned.pipeline} does not claim: {got}, "
                f"expected {sorted(expect['unclaimed'])}"
            )
    return problems


# ------------------------------------------------------------------ mutants

BOGUS = "__not_in_any_plan__"
_DELETE = object()


def _edited(expect: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    """A deep copy of ``expect`` with the item at ``path`` replaced (or deleted)."""
    mutated = copy.deepcopy(expect)
    *parents, last = path
    target: Any = mutated
    for key in parents:
        target = target[key]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return mutated


def _other_file(spec: dict[str, Any], listed: list[str]) -> str | None:
    return next((f["name"] for f in spec["files"] if f["name"] not in listed), None)


def mutants(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(what was changed, a wrong expectation) for every item ``spec["expect"]`` states.

    A scenario whose plan also satisfies one of these has a check that cannot fail.
    """
    expect = spec["expect"]
    exact = expect.get("exact", True)
    for n, job in enumerate(expect.get("jobs", [])):
        at: tuple[Any, ...] = ("jobs", n)
        ident = f"job {job['task']} {sorted(job['main'])[:1]}"
        if exact:
            yield f"{ident} left out", _edited(expect, at, _DELETE)
        if "complete" in job:
            yield (
                f"{ident} complete flipped",
                _edited(expect, (*at, "complete"), not job["complete"]),
            )
        for category, names in job.get("associated", {}).items():
            wrong = sorted(names)[:-1] if names else [BOGUS]
            yield (
                f"{ident} {category} {wrong}",
                _edited(expect, (*at, "associated", category), wrong),
            )
        for category, level in job.get("levels", {}).items():
            wrong_level = 0 if level is None else level + 1
            yield (
                f"{ident} {category} level {wrong_level}",
                _edited(expect, (*at, "levels", category), wrong_level),
            )
        for category in job.get("status", {}):
            yield f"{ident} {category} status", _edited(expect, (*at, "status", category), BOGUS)
        for i, fragment in enumerate(job.get("reasons", [])):
            yield f"{ident} reason {fragment!r}", _edited(expect, (*at, "reasons", i), BOGUS)
        for name in job.get("parameters", {}):
            yield f"{ident} parameter {name}", _edited(expect, (*at, "parameters", name), BOGUS)
    for n, item in enumerate(expect.get("datasets", [])):
        at = ("datasets", n)
        ident = f"dataset {item.get('task', '')} {sorted(item['main'])[:1]}"
        yield f"{ident} left out", _edited(expect, at, _DELETE)
        if "task" in item:
            yield f"{ident} task", _edited(expect, (*at, "task"), BOGUS)
        if "complete" in item:
            yield (
                f"{ident} complete flipped",
                _edited(expect, (*at, "complete"), not item["complete"]),
            )
        if "quality_level" in item:
            wrong_level = item["quality_level"] + 1
            yield f"{ident} quality level", _edited(expect, (*at, "quality_level"), wrong_level)
        for i, fragment in enumerate(item.get("reasons", [])):
            yield f"{ident} reason {fragment!r}", _edited(expect, (*at, "reasons", i), BOGUS)
    for name, types in expect.get("types", {}).items():
        yield f"{name} also {BOGUS}", _edited(expect, ("types", name), [*types, BOGUS])
        if len(types) > 1:
            yield f"{name} without {types[-1]}", _edited(expect, ("types", name), types[:-1])
    for key in ("overridden", "unclaimed"):
        listed = expect.get(key)
        if listed is None:
            continue
        for i, name in enumerate(listed):
            yield f"{key} without {name}", _edited(expect, (key, i), _DELETE)
        other = _other_file(spec, listed)
        if other is not None:
            yield f"{key} with {other}", _edited(expect, (key,), [*listed, other])
    if "calib" in expect:
        calib = expect["calib"]
        for name in calib:
            yield f"calib of {name}", _edited(expect, ("calib", name), [BOGUS])
            yield f"calib without {name}", _edited(expect, ("calib", name), _DELETE)
        other = _other_file(spec, list(calib))
        if other is not None:
            yield f"calib of {other}", _edited(expect, ("calib",), {**calib, other: [BOGUS]})


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
