"""Tasks, subworkflows and the cascade that holds them (EDPS vocabulary).

A task runs one recipe on a main input (a data source or another task's
products, regrouped) with associated inputs chosen by association rules.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property

from soda_reduce.reduction.cascade import (
    AssociationRule,
    Classification,
    DataSource,
    Param,
    TimeClustering,
    WhenParam,
)
from soda_reduce.reduction.keywords import Derivation, mjd, night


@dataclass(frozen=True)
class MainInput:
    """What a task reduces. For a task source, ``group_by`` regroups its jobs."""

    source: DataSource | Task
    group_by: tuple[str, ...] | None = None
    clustering: TimeClustering | None = None
    min_count: int = 1
    max_count: int | None = None

    @property
    def grouping(self) -> tuple[str, ...]:
        if self.group_by is not None:
            return self.group_by
        return self.source.group_by if isinstance(self.source, DataSource) else ()

    @property
    def time_clustering(self) -> TimeClustering | None:
        if self.clustering is not None:
            return self.clustering
        return self.source.clustering if isinstance(self.source, DataSource) else None


@dataclass(frozen=True)
class AssociatedInput:
    """A calibration (raw files or another task's products) chosen per main-input group."""

    source: DataSource | Task
    category: str
    rule: AssociationRule
    min_count: int = 1
    max_count: int = 1
    optional: bool = False
    condition: WhenParam | None = None
    also: tuple[str, ...] = ()  # further product categories taken from the same upstream step

    @property
    def categories(self) -> tuple[str, ...]:
        return (self.category, *self.also)


@dataclass(frozen=True)
class StaticCalibration:
    """A file not tied to an observation (arc template, bad-pixel mask, line list), chosen
    from the pipeline's static library by category and match keywords (``GRISM_N``...)."""

    category: str
    optional: bool = False
    condition: WhenParam | None = None
    match: tuple[str, ...] = ()


@dataclass(frozen=True)
class Resources:
    """What one run of the recipe needs (Kubernetes requests, local scheduling)."""

    cpu: float = 1.0
    memory_mb: int = 1024
    timeout_s: int = 3600


@dataclass(frozen=True)
class Task:
    name: str
    recipe: str
    recipe_version: str
    main: MainInput
    products: str
    associated: tuple[AssociatedInput, ...] = ()
    static: tuple[StaticCalibration, ...] = ()
    parameters: tuple[Param, ...] = ()
    description: str = ""
    science: bool = False
    resources: Resources = field(default_factory=Resources)
    also_produces: tuple[str, ...] = ()  # categories beyond the main product

    @property
    def outputs(self) -> tuple[str, ...]:
        """Every category the task's step produces, the main product first."""
        return (self.products, *self.also_produces)

    @property
    def group_by(self) -> tuple[str, ...]:
        return self.main.grouping

    def parameter(self, name: str) -> Param | None:
        lowered = name.lower()
        return next((p for p in self.parameters if p.name.lower() == lowered), None)

    def upstream(self) -> list[Task]:
        """Tasks this one consumes directly, main input first."""
        found: list[Task] = []
        sources = [self.main.source, *(a.source for a in self.associated)]
        for source in sources:
            if isinstance(source, Task) and source not in found:
                found.append(source)
        return found


class TaskBuilder:
    def __init__(self, name: str) -> None:
        self._name = name
        self._recipe = ""
        self._version = "1"
        self._main: MainInput | None = None
        self._products = name.upper()
        self._associated: list[AssociatedInput] = []
        self._static: list[StaticCalibration] = []
        self._params: list[Param] = []
        self._description = ""
        self._science = False
        self._resources = Resources()
        self._also: tuple[str, ...] = ()

    def recipe(self, name: str, version: str = "1") -> TaskBuilder:
        self._recipe, self._version = name, version
        return self

    def main_input(
        self,
        source: DataSource | Task,
        min: int = 1,
        max: int | None = None,
        group_by: Sequence[str] | None = None,
        cluster_hours: float | None = None,
    ) -> TaskBuilder:
        grouping = tuple(k.upper() for k in group_by) if group_by is not None else None
        clustering = TimeClustering(cluster_hours) if cluster_hours is not None else None
        self._main = MainInput(source, grouping, clustering, min, max)
        return self

    def input(
        self,
        source: DataSource | Task,
        category: str | Sequence[str] | None = None,
        match: AssociationRule | None = None,
        min: int = 1,
        max: int = 1,
        optional: bool = False,
        when: WhenParam | None = None,
    ) -> TaskBuilder:
        """An associated input; from a task, ``category`` may name several of its products."""
        rule = match or source_match(source)
        if rule is None:
            raise ValueError(f"task {self._name}: input {source.name} needs a match rule")
        if category is None:
            category = source.products if isinstance(source, Task) else source.category
        names = (category,) if isinstance(category, str) else tuple(category)
        if not names:
            raise ValueError(f"task {self._name}: input {source.name} names no category")
        if len(names) > 1 and not isinstance(source, Task):
            raise ValueError(f"task {self._name}: raw input {source.name} has one category")
        upper = tuple(n.upper() for n in names)
        self._associated.append(
            AssociatedInput(source, upper[0], rule, min, max, optional, when, upper[1:])
        )
        return self

    def static(
        self,
        category: str,
        match: Sequence[str] = (),
        optional: bool = False,
        when: WhenParam | None = None,
    ) -> TaskBuilder:
        """A static calibration from the library, the entry whose ``match`` keywords equal
        the frame's (e.g. the arc template of the grism in use)."""
        keys = tuple(k.upper() for k in match)
        self._static.append(StaticCalibration(category.upper(), optional, when, keys))
        return self

    def params(self, *specs: Param) -> TaskBuilder:
        self._params.extend(specs)
        return self

    def products(self, category: str, *others: str) -> TaskBuilder:
        """The main product's category, then any further categories the step produces."""
        self._products = category.upper()
        self._also = tuple(o.upper() for o in others)
        return self

    def describe(self, text: str) -> TaskBuilder:
        self._description = text
        return self

    def science(self, flag: bool = True) -> TaskBuilder:
        self._science = flag
        return self

    def resources(
        self, cpu: float = 1.0, memory_mb: int = 1024, timeout_s: int = 3600
    ) -> TaskBuilder:
        self._resources = Resources(cpu, memory_mb, timeout_s)
        return self

    def build(self) -> Task:
        if not self._recipe:
            raise ValueError(f"task {self._name} has no recipe")
        if self._main is None:
            raise ValueError(f"task {self._name} has no main input")
        return Task(
            self._name,
            self._recipe,
            self._version,
            self._main,
            self._products,
            tuple(self._associated),
            tuple(self._static),
            tuple(self._params),
            self._description,
            self._science,
            self._resources,
            self._also,
        )


def task(name: str) -> TaskBuilder:
    return TaskBuilder(name)


def source_match(source: DataSource | Task) -> AssociationRule | None:
    """The association a source carries by default (a task inherits its main source's)."""
    if isinstance(source, DataSource):
        return source.match
    return source_match(source.main.source)


@dataclass(frozen=True)
class Subworkflow:
    """A named set of tasks, shown together; no behaviour of its own (EDPS)."""

    name: str
    tasks: tuple[str, ...]
    description: str = ""


@dataclass(frozen=True)
class Cascade:
    name: str
    version: str
    tasks: tuple[Task, ...]
    derivations: tuple[Derivation, ...] = ()
    workflow_params: tuple[Param, ...] = ()
    subworkflows: tuple[Subworkflow, ...] = ()
    default_target: str = ""
    description: str = ""

    def task(self, name: str) -> Task:
        lowered = name.strip().lower()
        for candidate in self.tasks:
            if candidate.name.lower() == lowered:
                return candidate
        known = ", ".join(t.name for t in self.tasks)
        raise KeyError(f"no task {name!r} in cascade {self.name} (tasks: {known})")

    @cached_property
    def classifications(self) -> tuple[Classification, ...]:
        """Every category, in the order the tasks first mention them."""
        seen: dict[str, Classification] = {}
        for item in self.data_sources:
            seen.setdefault(item.category, item.classification)
        return tuple(seen.values())

    @cached_property
    def data_sources(self) -> tuple[DataSource, ...]:
        found: list[DataSource] = []
        for item in self.tasks:
            for source in [item.main.source, *(a.source for a in item.associated)]:
                if isinstance(source, DataSource) and source not in found:
                    found.append(source)
        return tuple(found)

    def targets(self, name: str) -> tuple[Task, ...]:
        """The tasks a target names: one task, or a meta-target (a subworkflow such as
        ``calibrations``; without one of that name, every task that is not science)."""
        lowered = name.strip().lower()
        for item in self.tasks:
            if item.name.lower() == lowered:
                return (item,)
        for flow in self.subworkflows:
            if flow.name.lower() == lowered:
                return tuple(self.task(t) for t in flow.tasks)
        if lowered == "calibrations":
            return tuple(t for t in self.tasks if not t.science)
        known = ", ".join([*(t.name for t in self.tasks), *self.meta_targets])
        raise KeyError(f"no task {name!r} in cascade {self.name} (targets: {known})")

    @property
    def meta_targets(self) -> tuple[str, ...]:
        names = [f.name for f in self.subworkflows]
        if "calibrations" not in {n.lower() for n in names}:
            names.append("calibrations")
        return tuple(names)

    def workflow_param(self, name: str) -> Param | None:
        lowered = name.lower()
        return next((p for p in self.workflow_params if p.name.lower() == lowered), None)


class CascadeBuilder:
    def __init__(self, name: str, version: str) -> None:
        self._cascade = Cascade(name, version, ())

    def derive(self, *derivations: Derivation) -> CascadeBuilder:
        self._cascade = replace(
            self._cascade, derivations=self._cascade.derivations + tuple(derivations)
        )
        return self

    def workflow_params(self, *specs: Param) -> CascadeBuilder:
        self._cascade = replace(
            self._cascade, workflow_params=self._cascade.workflow_params + tuple(specs)
        )
        return self

    def tasks(self, *items: Task) -> CascadeBuilder:
        self._cascade = replace(self._cascade, tasks=self._cascade.tasks + tuple(items))
        return self

    def subworkflow(
        self, name: str, tasks: Iterable[Task], description: str = ""
    ) -> CascadeBuilder:
        entry = Subworkflow(name, tuple(t.name for t in tasks), description)
        self._cascade = replace(self._cascade, subworkflows=(*self._cascade.subworkflows, entry))
        return self

    def default_target(self, target: Task) -> CascadeBuilder:
        self._cascade = replace(self._cascade, default_target=target.name)
        return self

    def describe(self, text: str) -> CascadeBuilder:
        self._cascade = replace(self._cascade, description=text)
        return self

    def build(self) -> Cascade:
        built = self._cascade
        declared = {d.name for d in built.derivations}
        # association by time needs MJD and NIGHT: derive them from DATE-OBS unless declared
        defaults = tuple(d for d in (mjd("MJD"), night("NIGHT")) if d.name not in declared)
        if defaults:
            built = replace(built, derivations=built.derivations + defaults)
        names = [t.name for t in built.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"cascade {built.name}: duplicate task names")
        for item in built.tasks:
            for upstream in item.upstream():
                if upstream.name not in names:
                    raise ValueError(f"task {item.name} uses {upstream.name}, not in the cascade")
        _check_acyclic(built.tasks)
        if built.default_target and built.default_target not in names:
            raise ValueError(f"default target {built.default_target} is not a task")
        return built


def _check_acyclic(tasks: Sequence[Task]) -> None:
    state: dict[str, int] = {}

    def visit(item: Task, path: tuple[str, ...]) -> None:
        if state.get(item.name) == 2:
            return
        if state.get(item.name) == 1:
            raise ValueError(f"cycle in cascade: {' -> '.join((*path, item.name))}")
        state[item.name] = 1
        for upstream in item.upstream():
            visit(upstream, (*path, item.name))
        state[item.name] = 2

    for item in tasks:
        visit(item, ())


def cascade(name: str, version: str = "1") -> CascadeBuilder:
    return CascadeBuilder(name, version)
