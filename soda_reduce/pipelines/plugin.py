"""What a pipeline plug-in is, and the checks it must pass before it is used.

A pipeline is a Python package that exposes a ``Pipeline`` through the
entry-point group ``soda_reduce.pipelines`` (docs/plugins.md). It names the
raw files it claims (a header rule), its cascade, its recipes (Python
functions or wrapped external commands), its static calibrations, its
container image and its version. The engine never names a pipeline: the
built-in ``ccd`` and ``kast`` register themselves exactly as an archive's own
would.

``check_pipeline`` compares the cascade with the recipes (every category a task
consumes is accepted by its recipe and produced upstream, every parameter
declared on both sides): a pipeline with any problem is refused whole.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from soda_reduce.recipe.contract import ANY, Recipe
from soda_reduce.reduction.cascade import DataSource
from soda_reduce.reduction.rules import Rule
from soda_reduce.reduction.static import (
    PIPELINE_SCHEME,
    STATIC_SCHEME,
    StaticFile,
    StaticLibrary,
)
from soda_reduce.reduction.tasks import Cascade, Task

NAME = re.compile(r"[a-z][a-z0-9_]{0,31}\Z")
LIBRARY_INDEX = "library.json"
# target names with a meaning of their own in requests: TARGET=raw is the raw frame as
# archived, no reduction (soda_reduce/vo/job_request.py RAW_TARGET)
RESERVED_TARGETS = frozenset({"raw"})


class PipelineError(ValueError):
    """A pipeline that cannot be used; the message lists every problem found."""


@dataclass(frozen=True)
class Pipeline:
    """One pipeline plug-in. ``static_dir`` holds its shipped static calibrations,
    indexed by ``library.json`` (see ``read_library``)."""

    name: str
    version: str
    claims: Rule
    cascade: Cascade
    recipes: tuple[Recipe, ...]
    image: str = ""
    description: str = ""
    static_dir: Path | None = None
    requires: tuple[str, ...] = ()  # Python modules its recipes import (checked by /availability)
    instruments: str = ""  # in words, for pages and docs
    fallback: bool = False  # claims only files that no other pipeline claims (a generic one)
    warm: str = ""  # "module:function" doing the recipes' heavy imports once (warm runners)

    def recipe(self, name: str) -> Recipe:
        for item in self.recipes:
            if item.name == name:
                return item
        known = ", ".join(r.name for r in self.recipes)
        raise KeyError(f"pipeline {self.name} has no recipe {name!r} (recipes: {known})")

    def static_library(self, operator_dir: Path | None = None) -> StaticLibrary:
        """Shipped static calibrations, plus the operator's (``DIR/<name>/library.json``)."""
        files: list[StaticFile] = []
        if self.static_dir is not None:
            files += read_library(self.static_dir, self.name, "pipeline")
        if operator_dir is not None and (operator_dir / self.name / LIBRARY_INDEX).is_file():
            files += read_library(operator_dir / self.name, self.name, "operator")
        return StaticLibrary(tuple(files))

    def fingerprint(self) -> str:
        """Changes when what the pipeline claims or calls its categories changes."""
        material = {
            "name": self.name,
            "version": self.version,
            "claims": self.claims.describe(),
            "fallback": self.fallback,
            "cascade": self.cascade.version,
            "classes": [(c.category, c.rule.describe()) for c in self.cascade.classifications],
        }
        return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def read_library(directory: Path, pipeline: str, origin: str) -> list[StaticFile]:
    """The entries of ``directory/library.json``::

        {"files": [{"file": "shane_kast_blue_600.fits", "category": "REID_ARXIV",
                    "match": {"ARM": "blue", "DISPNAME": "600/4310"}, "description": "..."}]}

    A shipped file is named ``pipeline:NAME/FILE`` (found in the pipeline package by
    every process, local or pod); an operator's ``static:NAME/FILE``, with its absolute
    path (it must be on a volume the recipes see, such as the archive's ``_static/``).
    """
    index = directory / LIBRARY_INDEX
    try:
        doc = json.loads(index.read_text())
    except (OSError, ValueError) as exc:
        raise PipelineError(f"static library {index}: {exc}") from None
    files = []
    for n, entry in enumerate(doc.get("files", []), start=1):
        try:
            name = str(entry["file"])
            category = str(entry["category"]).upper()
            match = {str(k).upper(): v for k, v in dict(entry.get("match", {})).items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise PipelineError(f"static library {index}: entry {n}: {exc}") from None
        path = directory / name
        if "/" in name or name.startswith(".") or not path.is_file():
            raise PipelineError(f"static library {index}: entry {n}: no file {name!r} beside it")
        shipped = origin == "pipeline"
        reference = f"{PIPELINE_SCHEME if shipped else STATIC_SCHEME}{pipeline}/{name}"
        files.append(
            StaticFile(
                path=reference if shipped else str(path.resolve()),
                checksum=file_sha256(path),
                file_id=reference,
                category=category,
                match=match,
                description=str(entry.get("description", "")),
                origin=origin,
            )
        )
    return files


@cache
def _digest(path: str, size: int, mtime_ns: int) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_sha256(path: Path) -> str:
    st = path.stat()
    return _digest(str(path.resolve()), st.st_size, st.st_mtime_ns)


# ------------------------------------------------------------------- checks


def check_pipeline(pipeline: Pipeline) -> list[str]:
    """Every reason the pipeline cannot be used (empty: it can)."""
    problems: list[str] = []
    if not NAME.match(pipeline.name):
        problems.append(f"name {pipeline.name!r} must be lower-case letters, digits and _")
    recipes: dict[str, Recipe] = {}
    for item in pipeline.recipes:
        if item.name in recipes:
            problems.append(f"recipe {item.name} is declared twice")
        if not item.name.startswith(pipeline.name + "."):
            problems.append(f"recipe {item.name} must be named {pipeline.name}.<recipe>")
        recipes[item.name] = item
    cascade = pipeline.cascade
    for name in [*(t.name for t in cascade.tasks), *(f.name for f in cascade.subworkflows)]:
        if name.lower() in RESERVED_TARGETS:
            problems.append(
                f"task or subworkflow {name!r}: the name is reserved (TARGET={name.lower()} "
                "asks for the raw frame as archived, without reduction)"
            )
    try:
        library = pipeline.static_library()
    except PipelineError as exc:
        problems.append(str(exc))
        library = StaticLibrary()
    for task in pipeline.cascade.tasks:
        recipe = recipes.get(task.recipe)
        if recipe is None:
            problems.append(
                f"task {task.name} runs recipe {task.recipe}, which the pipeline does not provide"
            )
            continue
        problems += _check_task(task, recipe, recipes, library)
    return problems


def consumed(task: Task) -> list[tuple[str, Task | None]]:
    """(category, upstream task or None for raw/static files) of everything a task reads."""
    main = task.main.source
    items: list[tuple[str, Task | None]] = []
    if isinstance(main, DataSource):
        items.append((main.category, None))
    else:
        items.append((main.products, main))
    for spec in task.associated:
        upstream = spec.source if isinstance(spec.source, Task) else None
        items += [(category, upstream) for category in spec.categories]
    items += [(static.category, None) for static in task.static]
    return items


def _check_task(
    task: Task, recipe: Recipe, recipes: Mapping[str, Recipe], library: StaticLibrary
) -> list[str]:
    problems = []
    where = f"task {task.name} ({recipe.name})"
    if recipe.version != task.recipe_version:
        problems.append(
            f"{where}: the cascade asks for version {task.recipe_version}, "
            f"the recipe is version {recipe.version}"
        )
    for category in task.outputs:
        if category not in recipe.produces:
            problems.append(
                f"{where}: the cascade expects a {category} product, the recipe makes "
                f"{', '.join(recipe.produces)}"
            )
    reads = consumed(task)
    for category, upstream in reads:
        if not recipe.accepts(category):
            problems.append(f"{where}: consumes {category}, which the recipe does not accept")
        if upstream is not None:
            made = recipes.get(upstream.recipe)
            if made is not None and category not in made.produces:
                problems.append(
                    f"{where}: consumes {category} from task {upstream.name}, whose recipe "
                    f"{made.name} produces only {', '.join(made.produces)}"
                )
    given = {category for category, _ in reads}
    for spec in recipe.inputs:
        if spec.category != ANY and spec.minimum > 0 and spec.category not in given:
            problems.append(
                f"{where}: the recipe needs {spec.category}, which the task never gives it"
            )
    problems += _check_parameters(where, task, recipe)
    return problems


def _check_parameters(where: str, task: Task, recipe: Recipe) -> list[str]:
    problems = []
    declared = {p.name.lower(): p for p in recipe.parameters}
    for spec in task.parameters:
        other = declared.get(spec.name.lower())
        if other is None:
            problems.append(f"{where}: parameter {spec.name} is not declared by the recipe")
        elif other.type != spec.type:
            problems.append(
                f"{where}: parameter {spec.name} is {spec.type} in the cascade, "
                f"{other.type} in the recipe"
            )
    offered = {p.name.lower() for p in task.parameters}
    problems += [
        f"{where}: the recipe's parameter {p.name} is not offered by the cascade"
        for p in recipe.parameters
        if p.name.lower() not in offered
    ]
    return problems


def describe_claims(pipelines: Sequence[Pipeline]) -> str:
    return "; ".join(f"{p.name} claims {p.claims.describe()}" for p in pipelines) or "none"


def as_pipeline(value: Any, entry_point: str) -> Pipeline:
    """The Pipeline an entry point gives: the object itself or a function returning it."""
    if callable(value) and not isinstance(value, Pipeline):
        value = value()
    if not isinstance(value, Pipeline):
        raise PipelineError(
            f"entry point {entry_point} gives {type(value).__name__}, not a soda_reduce Pipeline"
        )
    return value
