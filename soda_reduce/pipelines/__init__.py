"""Pipelines: one package each, with its cascade (rules + tasks) and recipes."""

from __future__ import annotations

from importlib import import_module

from soda_reduce.reduction.tasks import Cascade

PIPELINES = {"ccd": "soda_reduce.pipelines.ccd.cascade"}


def get_cascade(name: str = "ccd") -> Cascade:
    """The cascade of a pipeline by name (KeyError with the known names if unknown)."""
    try:
        module = PIPELINES[name.lower()]
    except KeyError:
        raise KeyError(f"unknown pipeline {name!r} (known: {', '.join(PIPELINES)})") from None
    return import_module(module).CASCADE
