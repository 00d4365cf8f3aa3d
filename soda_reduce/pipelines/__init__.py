"""The pipeline registry: every plug-in of the entry-point group ``soda_reduce.pipelines``.

Loaded once per process. A pipeline that fails to import or fails its checks
(``plugin.check_pipeline``) is refused whole and listed with its reasons;
the others serve. The recipe subprocess and the Kubernetes pod find recipes
through the same registry (``python -m soda_reduce.recipe kast.science``
loads only the ``kast`` entry point).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from soda_reduce.pipelines.plugin import (
    Pipeline,
    PipelineError,
    as_pipeline,
    check_pipeline,
    describe_claims,
)
from soda_reduce.recipe.contract import Recipe
from soda_reduce.reduction.static import PIPELINE_SCHEME, STATIC_SCHEME
from soda_reduce.reduction.tasks import Cascade

GROUP = "soda_reduce.pipelines"
ENABLE_VAR = "SODA_REDUCE_PIPELINES"  # comma-separated names; empty: every installed one
CORE_RECIPES = {"core.noop": "soda_reduce.recipe.noop"}

log = logging.getLogger(__name__)


class _HeaderView:
    """A raw header as a rule's keyword source (claims look at raw headers only)."""

    def __init__(self, header: Mapping[str, Any]) -> None:
        self.header = header

    def get(self, keyword: str) -> Any:
        return self.header.get(keyword)


@dataclass
class Registry:
    pipelines: dict[str, Pipeline] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # name -> why
    disabled: list[str] = field(default_factory=list)  # installed, not enabled

    @classmethod
    def load(cls, only: str | None = None, group: str = GROUP) -> Registry:
        """Every installed pipeline, or those ``SODA_REDUCE_PIPELINES`` (comma-separated)
        enables; ``only`` loads one (the recipe process)."""
        registry = cls()
        enabled = {n.strip() for n in os.environ.get(ENABLE_VAR, "").split(",") if n.strip()}
        for entry in sorted(metadata.entry_points(group=group), key=lambda e: e.name):
            if only is not None and entry.name != only:
                continue
            if enabled and entry.name not in enabled and only is None:
                registry.disabled.append(entry.name)
                continue
            registry.add_entry(entry.name, entry.value, entry.load)
        return registry

    def add_entry(self, name: str, where: str, load: Any) -> None:
        """Load, check and register one entry point; refuse it whole on any problem."""
        try:
            pipeline = as_pipeline(load(), f"{name} = {where}")
        except Exception as exc:  # any import error of a third-party package
            self.refused[name] = f"cannot load {where}: {type(exc).__name__}: {exc}"
            log.error("pipeline %s refused: %s", name, self.refused[name])
            return
        self.add(pipeline, entry_name=name)

    def add(self, pipeline: Pipeline, entry_name: str | None = None) -> None:
        problems = check_pipeline(pipeline)
        if entry_name is not None and entry_name != pipeline.name:
            problems.insert(0, f"entry point {entry_name} gives pipeline {pipeline.name}")
        if pipeline.name in self.pipelines:
            problems.insert(0, f"a pipeline named {pipeline.name} is already registered")
        if problems:
            self.refused[entry_name or pipeline.name] = "; ".join(problems)
            log.error("pipeline %s refused: %s", pipeline.name, "; ".join(problems))
            return
        self.pipelines[pipeline.name] = pipeline

    # ---------------------------------------------------------------- lookups

    def names(self) -> list[str]:
        return list(self.pipelines)

    def get(self, name: str) -> Pipeline:
        found = self.pipelines.get(name.lower())
        if found is not None:
            return found
        if name.lower() in self.refused:
            raise PipelineError(f"pipeline {name} was refused: {self.refused[name.lower()]}")
        if name.lower() in self.disabled:
            raise PipelineError(f"pipeline {name} is installed but not in {ENABLE_VAR}")
        raise KeyError(f"unknown pipeline {name!r} (known: {', '.join(self.names()) or 'none'})")

    def selected(self, name: str | None) -> list[Pipeline]:
        """Every pipeline, or only ``name`` (``--pipeline NAME``)."""
        return [self.get(name)] if name else list(self.pipelines.values())

    def recipe(self, name: str) -> Recipe:
        pipeline_name = name.split(".", 1)[0]
        return self.get(pipeline_name).recipe(name)

    def static_path(self, reference: str, operator_dir: Path | None = None) -> Path:
        """The file behind ``pipeline:NAME/FILE`` (or ``static:NAME/FILE`` in the operator's
        directory); ValueError for anything else, so a reference never escapes its folder."""
        for scheme in (PIPELINE_SCHEME, STATIC_SCHEME):
            if reference.startswith(scheme):
                break
        else:
            raise ValueError(f"{reference!r} is not a static calibration reference")
        name, _, file = reference[len(scheme) :].partition("/")
        pipeline = self.get(name)
        folder = pipeline.static_dir if scheme == PIPELINE_SCHEME else None
        if scheme == STATIC_SCHEME and operator_dir is not None:
            folder = operator_dir / pipeline.name
        bad = not file or "/" in file or "\\" in file or file.startswith(".")
        if folder is None or bad or not (folder / file).is_file():
            raise ValueError(f"no static calibration {file!r} for pipeline {name}")
        return folder / file

    def claim(self, header: Mapping[str, Any]) -> tuple[str | None, str | None]:
        """(pipeline, None) for the one pipeline that claims a header, else (None, why).

        Instrument pipelines come first; a generic ``fallback`` one (ccd) claims only
        what none of them does. Two claimants of the same rank are a conflict to fix."""
        view = _HeaderView(header)
        for fallback in (False, True):
            claimants = [
                p.name
                for p in self.pipelines.values()
                if p.fallback == fallback and p.claims.matches(view)
            ]
            if len(claimants) == 1:
                return claimants[0], None
            if claimants:
                return None, f"claimed by several pipelines ({', '.join(claimants)})"
        return None, "no pipeline claims it: " + describe_claims(list(self.pipelines.values()))

    def fingerprint(self) -> str:
        parts = sorted(p.fingerprint() for p in self.pipelines.values())
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()


@cache
def registry() -> Registry:
    """This process's registry (every installed pipeline)."""
    return Registry.load()


@cache
def _registry_for(name: str) -> Registry:
    return Registry.load(only=name)


def find_recipe(name: str) -> Recipe:
    """A recipe by name, loading only its pipeline's entry point (the recipe process)."""
    module = CORE_RECIPES.get(name)
    if module is not None:
        from importlib import import_module

        return import_module(module).RECIPES[name]
    if "." not in name:
        raise KeyError(f"unknown recipe {name!r}: recipes are named PIPELINE.RECIPE")
    return _registry_for(name.split(".", 1)[0]).recipe(name)


def recipe_names() -> list[str]:
    pipelines = registry().pipelines.values()
    return sorted({*CORE_RECIPES, *(r.name for p in pipelines for r in p.recipes)})


def get_cascade(name: str = "ccd") -> Cascade:
    """The cascade of a pipeline by name (KeyError with the known names if unknown)."""
    return registry().get(name).cascade


__all__ = [
    "GROUP",
    "Pipeline",
    "PipelineError",
    "Registry",
    "find_recipe",
    "get_cascade",
    "recipe_names",
    "registry",
]
