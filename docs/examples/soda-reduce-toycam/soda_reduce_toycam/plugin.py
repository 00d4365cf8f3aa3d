"""The ``toycam`` pipeline plug-in, named by the entry point in pyproject.toml."""

from __future__ import annotations

from pathlib import Path

from soda_reduce.pipelines.plugin import Pipeline
from soda_reduce.reduction.rules import kw
from soda_reduce_toycam.cascade import CASCADE
from soda_reduce_toycam.recipes import RECIPES

PIPELINE = Pipeline(
    name="toycam",
    version="1",
    # exactly one pipeline may claim a file: TOYCAM's own INSTRUME value, nothing broader
    claims=kw("INSTRUME").is_("TOYCAM"),
    cascade=CASCADE,
    recipes=RECIPES,
    image="ghcr.io/example/soda-reduce-toycam:0.1.0",
    description="TOYCAM imaging: master darks and dark-subtracted science frames.",
    static_dir=Path(__file__).resolve().parent / "static",
    requires=("numpy", "astropy"),
    instruments="TOYCAM, an imaginary camera (INSTRUME = 'TOYCAM')",
)
