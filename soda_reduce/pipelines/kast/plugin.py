"""The ``kast`` pipeline plug-in: Lick Shane/Kast spectra reduced by PypeIt."""

from __future__ import annotations

from pathlib import Path

from soda_reduce.pipelines.kast.cascade import CASCADE
from soda_reduce.pipelines.kast.recipes import RECIPES
from soda_reduce.pipelines.plugin import Pipeline
from soda_reduce.reduction.rules import kw

PIPELINE = Pipeline(
    name="kast",
    version="1",
    claims=kw("VERSION").one_of("kastb", "kastr"),
    cascade=CASCADE,
    recipes=RECIPES,
    image="soda-reduce-kast:latest",
    description="Shane/Kast long-slit spectroscopy (blue and red), reduced by PypeIt 2.",
    static_dir=Path(__file__).resolve().parent / "static",
    requires=("pypeit",),
    warm="soda_reduce.pipelines.kast.pypeit_steps:warm_up",
    instruments="Lick Observatory Shane 3-m, Kast double spectrograph (VERSION kastb/kastr)",
)
