"""The ccd recipes as the registry sees them: declarations only.

Each ``run`` names its function as ``module:function``, imported when the
recipe runs, so that loading the pipeline (every command, every recipe
process) does not import ccdproc and astropy.nddata.
"""

from __future__ import annotations

from soda_reduce.pipelines.ccd import cascade as ccd
from soda_reduce.recipe.contract import InputSpec, Recipe

_CALIB = "soda_reduce.pipelines.ccd.recipes_calib"

RECIPES: tuple[Recipe, ...] = (
    Recipe(
        name="ccd.master_bias",
        version=ccd.bias.recipe_version,
        product="MASTER_BIAS",
        run=f"{_CALIB}:master_bias",
        inputs=(InputSpec("BIAS", 1, None),),
        parameters=ccd.bias.parameters,
        description=ccd.bias.description,
    ),
    Recipe(
        name="ccd.master_dark",
        version=ccd.dark.recipe_version,
        product="MASTER_DARK",
        run=f"{_CALIB}:master_dark",
        inputs=(InputSpec("DARK", 1, None), InputSpec("MASTER_BIAS")),
        parameters=ccd.dark.parameters,
        description=ccd.dark.description,
    ),
    Recipe(
        name="ccd.master_flat",
        version=ccd.flat.recipe_version,
        product="MASTER_FLAT",
        run=f"{_CALIB}:master_flat",
        inputs=(
            InputSpec("FLAT", 1, None),
            InputSpec("MASTER_BIAS"),
            InputSpec("MASTER_DARK", 0, 1),
        ),
        parameters=ccd.flat.parameters,
        description=ccd.flat.description,
    ),
    Recipe(
        name="ccd.science",
        version=ccd.science.recipe_version,
        product="REDUCED_SCIENCE",
        run="soda_reduce.pipelines.ccd.recipes_science:science",
        inputs=(
            InputSpec("SCIENCE"),
            InputSpec("MASTER_BIAS"),
            InputSpec("MASTER_DARK", 0, 1),
            InputSpec("MASTER_FLAT"),
        ),
        parameters=ccd.science.parameters,
        description=ccd.science.description,
    ),
    Recipe(
        name="ccd.stack",
        version=ccd.stack.recipe_version,
        product="STACKED_SCIENCE",
        run="soda_reduce.pipelines.ccd.recipes_stack:stack",
        inputs=(InputSpec("REDUCED_SCIENCE", 1, None),),
        parameters=ccd.stack.parameters,
        description=ccd.stack.description,
    ),
)


def warm_up() -> None:
    """The recipes' imports, done once in a warm runner (runtime/executors/zygote.py)."""
    from importlib import import_module

    for module in ("recipes_calib", "recipes_science", "recipes_stack"):
        import_module(f"soda_reduce.pipelines.ccd.{module}")
