"""Target-driven planning (EDPS): from a request to the exact steps to run.

Only the target task's main inputs are selected by the request; everything
else is pulled in by association, upstream, job by job. Each job is resolved
once (memoised per task and group), so one bias group serving both the flat
and the science frames becomes one job with one step key.

The planner asks a frame source (``reduction/frame_source.py``) for what it needs:
the requested frames by ID, their groups whole, and each association's candidates
in its window. Over a list of frames that source is in memory; the service's is the
store's. A request without IDs reads the target's whole category.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from soda_reduce.reduction.association import Associator
from soda_reduce.reduction.cascade import DataSource
from soda_reduce.reduction.frame_source import FrameSource, MemoryFrames
from soda_reduce.reduction.index_model import RawFile
from soda_reduce.reduction.organisation import Frame, classify_all, frames_of
from soda_reduce.reduction.parameters import split_parameters
from soda_reduce.reduction.plan import (
    AssociationResult,
    Dataset,
    PlanInput,
    PlanJob,
    PlanRequestError,
    ReductionPlan,
    step_key,
)
from soda_reduce.reduction.rules import Rule, rule_from_mapping, show
from soda_reduce.reduction.static import StaticFile, StaticLibrary, library_of
from soda_reduce.reduction.tasks import Cascade, MainInput, Task
from soda_reduce.reduction.units import Selection, Unit, UnitFinder


@dataclass(frozen=True)
class PlanRequest:
    target: str | None = None
    ids: tuple[str, ...] = ()
    where: Mapping[str, Any] = field(default_factory=dict)
    parameters: Mapping[str, Any] = field(default_factory=dict)


class Planner:
    """One planning run over one frame source; not reusable across requests.

    Given ``files``, the frames are classified here and held in memory; given a
    ``source`` (the store's), the planner asks it and classifies nothing.
    """

    def __init__(
        self,
        cascade: Cascade,
        files: Iterable[RawFile] = (),
        static: Mapping[str, StaticFile] | StaticLibrary | None = None,
        *,
        source: FrameSource | None = None,
    ) -> None:
        self.cascade = cascade
        self.source: FrameSource = (
            source if source is not None else MemoryFrames(classify_all(cascade, files))
        )
        self.static = library_of(static)
        self.workflow: dict[str, Any] = {}
        self.overrides: dict[str, dict[str, Any]] = {}
        self._jobs: dict[tuple[str, str], PlanJob] = {}
        self._by_job_id: dict[str, PlanJob] = {}
        self._in_progress: set[tuple[str, str]] = set()
        self.finder = UnitFinder(self.source, self.resolve)
        self._associator = Associator(self)

    @property
    def frames(self) -> list[Frame]:
        """Every frame, for a planner over frames in memory (checks, small callers)."""
        if not isinstance(self.source, MemoryFrames):
            raise TypeError("a planner over the store has no list of frames; ask its source")
        return self.source.frames

    # ------------------------------------------------------------------ units

    def _units_for(self, item: Task, main: MainInput, selected: Selection | None) -> list[Unit]:
        source = main.source
        if isinstance(source, DataSource):
            return [Unit.of_frames(g) for g in self.finder.selected_groups(main, selected)]
        upstream = self._units_for(source, source.main, selected)
        jobs = [(unit, self.resolve(source, unit)) for unit in upstream]
        usable = [unit for unit, job in jobs if job.complete]
        return Unit.regroup(item.name, usable, main.grouping, main.clustering)

    # ------------------------------------------------------------------- jobs

    def resolve(self, item: Task, unit: Unit) -> PlanJob:
        memo_key = (item.name, unit.group_id)
        job = self._jobs.get(memo_key)
        if job is not None:
            return job
        if memo_key in self._in_progress:
            raise RuntimeError(f"association cycle at {item.name} {unit.label}")
        self._in_progress.add(memo_key)
        try:
            job = self._build_job(item, unit)
        finally:
            self._in_progress.discard(memo_key)
        self._jobs[memo_key] = job
        self._by_job_id.setdefault(job.job_id, job)
        return job

    def _build_job(self, item: Task, unit: Unit) -> PlanJob:
        inputs: list[PlanInput] = []
        depends: list[str] = []
        reasons: list[str] = []
        results: list[AssociationResult] = []
        main = item.main
        if unit.frames is not None:
            category = main.source.category if isinstance(main.source, DataSource) else ""
            members = unit.frames
            if len(members) < main.min_count:
                reasons.append(
                    f"only {len(members)} {category} frame(s) for {item.name} {unit.label}; "
                    f"at least {main.min_count} needed"
                )
            if main.max_count is not None and len(members) > main.max_count:
                members = unit.closest_frames(main.max_count)
            inputs.extend(_file_input(category, f, "main") for f in members)
        else:
            assert isinstance(main.source, Task)
            upstream_task = main.source
            members_units = unit.members or []
            if len(members_units) < main.min_count:
                reasons.append(
                    f"only {len(members_units)} {upstream_task.name} product(s) for "
                    f"{item.name} {unit.label}; at least {main.min_count} needed"
                )
            for member in members_units:
                upstream_job = self.resolve(upstream_task, member)
                depends.append(upstream_job.job_id)
                inputs.append(PlanInput(upstream_task.products, job=upstream_job.job_id))
        for spec in item.associated:
            result, chosen = self._associator.associate(item, spec, unit)
            results.append(result)
            if result.status == "missing":
                reasons.append(result.reason or f"no {spec.category}")
            for choice in chosen:
                if isinstance(choice, Frame):
                    inputs.append(_file_input(spec.category, choice, "associated"))
                else:
                    depends.append(choice.job_id)
                    inputs.extend(
                        PlanInput(category, job=choice.job_id, role="associated")
                        for category in spec.categories
                    )
        for static in item.static:
            if static.condition is not None and not static.condition.holds(self.workflow):
                continue
            found, why = self.static.choose(static.category, static.match, unit.reference)
            if found is None:
                status = "absent" if static.optional else "missing"
                if not static.optional:
                    reasons.append(why)
                results.append(
                    AssociationResult(
                        static.category, "static library", status, reason=why,
                        optional=static.optional,
                    )
                )  # fmt: skip
                continue
            results.append(
                AssociationResult(
                    static.category, "static library", "matched", level=0,
                    window="any time", chosen=(found.file_id or found.path,),
                    optional=static.optional,
                )
            )  # fmt: skip
            inputs.append(
                PlanInput(
                    static.category,
                    file_id=found.file_id or None,
                    path=found.path,
                    checksum=found.checksum,
                    role="static",
                )
            )
        parameters = {p.name: p.parse(p.default) for p in item.parameters}
        parameters.update(self.overrides.get(item.name, {}))
        complete = not reasons
        key = None
        if complete:
            keys = {j: self._by_job_id[j].step_key for j in depends}
            material = [i.key_material(keys) for i in inputs]
            key = step_key(item.recipe, item.recipe_version, parameters, material)
            job_id = f"{item.name}-{key[:12]}"
        else:
            digest = hashlib.sha256(unit.group_id.encode()).hexdigest()[:11]
            job_id = f"{item.name}-x{digest}"
        return PlanJob(
            job_id=job_id,
            task=item.name,
            recipe=item.recipe,
            recipe_version=item.recipe_version,
            group={"id": unit.group_id, **{k: _plain(v) for k, v in unit.keys}},
            inputs=tuple(inputs),
            parameters=parameters,
            depends_on=tuple(dict.fromkeys(depends)),
            associations=tuple(results),
            complete=complete,
            reasons=tuple(reasons),
            step_key=key,
            products=item.products,
            label=f"{item.name} {unit.label}",
            resources={
                "cpu": item.resources.cpu,
                "memory_mb": item.resources.memory_mb,
                "timeout_s": item.resources.timeout_s,
            },
        )

    # ------------------------------------------------------------------- plan

    def plan(self, request: PlanRequest) -> ReductionPlan:
        target_name = request.target or self.cascade.default_target
        if not target_name:
            raise PlanRequestError(f"cascade {self.cascade.name} has no default target")
        try:
            targets = self.cascade.targets(target_name)
        except KeyError as exc:
            raise PlanRequestError(str(exc.args[0])) from None
        self.overrides, self.workflow = split_parameters(self.cascade, request.parameters)
        meta = len(targets) > 1 or targets[0].name.lower() != target_name.strip().lower()
        datasets: list[Dataset] = []
        ordered: dict[str, PlanJob] = {}
        matched_any = False
        for target in targets:
            try:
                selected = self._selection(target, request, lenient=meta)
            except _NotThisTask:
                continue
            matched_any = True
            for unit in self._units_for(target, target.main, selected):
                job = self.resolve(target, unit)
                closure = self._closure(job)
                for item in closure:
                    ordered.setdefault(item.job_id, item)
                datasets.append(_dataset(job, closure, unit))
        if meta and request.ids and not matched_any:
            names = ", ".join(t.name for t in targets)
            raise PlanRequestError(
                f"none of the IDs is reduced by the tasks of {target_name} ({names})"
            )
        return ReductionPlan(
            cascade=self.cascade.name,
            cascade_version=self.cascade.version,
            target=targets[0].name if not meta else target_name.strip().lower(),
            parameters={
                f"{t}.{k}": v
                for t, values in sorted(self.overrides.items())
                for k, v in values.items()
            },
            workflow_parameters=dict(sorted(self.workflow.items())),
            selection={"ids": sorted(request.ids), "where": dict(request.where)},
            jobs=tuple(ordered.values()),
            datasets=tuple(datasets),
        )

    def _closure(self, job: PlanJob) -> list[PlanJob]:
        """The job and everything upstream of it, upstream first."""
        by_id = self._by_job_id
        seen: dict[str, PlanJob] = {}

        def visit(current: PlanJob) -> None:
            if current.job_id in seen:
                return
            for dep in current.depends_on:
                visit(by_id[dep])
            seen[current.job_id] = current

        visit(job)
        return list(seen.values())

    def _selection(
        self, target: Task, request: PlanRequest, lenient: bool = False
    ) -> Selection | None:
        """Frames the request selects for ``target``; with ``lenient`` (a meta-target),
        IDs of other categories are passed over and _NotThisTask says none was left."""
        if not request.ids and not request.where:
            return None
        bottom = target
        while isinstance(bottom.main.source, Task):
            bottom = bottom.main.source
        source = bottom.main.source
        assert isinstance(source, DataSource)
        found = self.source.by_ids(request.ids)
        chosen: dict[str, Frame] = {}
        for file_id in request.ids:
            frame = found.get(file_id)
            if frame is None:
                raise PlanRequestError(f"unknown ID {file_id}")
            if frame.raw.problem:
                raise PlanRequestError(f"{file_id} cannot be used: {frame.raw.problem}")
            if not frame.has(source.category):
                if lenient:
                    continue
                kind = f"a {'/'.join(frame.categories)}" if frame.categories else "an unclassified"
                raise PlanRequestError(
                    f"{file_id} is {kind} frame; task {target.name} reduces "
                    f"{source.category} frames"
                )
            chosen[file_id] = frame
        if lenient and request.ids and not chosen:
            raise _NotThisTask
        if not request.where:
            return Selection(set(chosen), list(chosen.values()))
        rule: Rule = rule_from_mapping(dict(request.where))
        pool = frames_of(source, self.finder.scan(source.category))  # grows with the archive
        matching = {f.file_id: f for f in pool if rule.matches(f)}
        ids = set(matching) if not request.ids else set(chosen) & set(matching)
        return Selection(ids, [matching[i] for i in sorted(ids)], scanned=True)


class _NotThisTask(Exception):
    """A meta-target's task that none of the requested IDs is for."""


def _dataset(job: PlanJob, closure: list[PlanJob], unit: Unit) -> Dataset:
    reasons = [r for j in closure for r in j.reasons]
    levels = [a.level for j in closure for a in j.associations if a.level is not None]
    return Dataset(
        target_job=job.job_id,
        label=job.label,
        jobs=tuple(j.job_id for j in closure),
        complete=all(j.complete for j in closure),
        quality_level=max(levels, default=0),
        reasons=tuple(dict.fromkeys(reasons)),
        main_inputs=tuple(unit.file_ids()),
    )


def _file_input(category: str, frame: Frame, role: str) -> PlanInput:
    several = len(frame.categories) > 1 or frame.overridden
    return PlanInput(
        category,
        file_id=frame.file_id,
        path=frame.raw.path,
        checksum=frame.raw.checksum,
        role=role,
        types=frame.categories if several else (),
    )


def _plain(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool) or value is None else show(value)


def plan_reduction(
    cascade: Cascade,
    files: Sequence[RawFile],
    target: str | None = None,
    ids: Sequence[str] = (),
    where: Mapping[str, Any] | None = None,
    parameters: Mapping[str, Any] | None = None,
    static: Mapping[str, StaticFile] | StaticLibrary | None = None,
    *,
    source: FrameSource | None = None,
) -> ReductionPlan:
    """Plan one request over ``files`` (classified here, in memory), or, given a
    ``source``, by asking it (``files`` is then ignored): the entry point of the service,
    the command line and the tests."""
    request = PlanRequest(target, tuple(ids), dict(where or {}), dict(parameters or {}))
    return Planner(cascade, files if source is None else (), static, source=source).plan(request)


__all__ = ["PlanRequest", "Planner", "StaticFile", "plan_reduction", "split_parameters"]
