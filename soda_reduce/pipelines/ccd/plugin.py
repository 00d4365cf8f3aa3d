"""The ``ccd`` pipeline plug-in: registered through the entry point like any other."""

from __future__ import annotations

from soda_reduce.pipelines.ccd.cascade import CASCADE
from soda_reduce.pipelines.ccd.recipes import RECIPES
from soda_reduce.pipelines.plugin import Pipeline
from soda_reduce.reduction.rules import kw

PIPELINE = Pipeline(
    name="ccd",
    version="1",
    # the reference cascade classifies by IMAGETYP: it claims files that have one, when no
    # instrument pipeline claims them
    claims=kw("IMAGETYP").exists(),
    cascade=CASCADE,
    recipes=RECIPES,
    image="soda-reduce:latest",
    description="CCD imaging: master bias, dark, flat; reduced science frames; stacks.",
    requires=("ccdproc",),
    warm="soda_reduce.pipelines.ccd.recipes:warm_up",
    instruments="any CCD camera writing IMAGETYP (observatory and amateur software)",
    fallback=True,  # generic: an instrument's own pipeline claims its files first
)
