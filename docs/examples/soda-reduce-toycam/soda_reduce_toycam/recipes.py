"""The TOYCAM recipes as the registry sees them: declarations only.

Each ``run`` names its function as ``"module:function"``: ``steps`` (and with
it astropy.io.fits) is imported only in the process that runs the recipe, not
by every command that loads the pipeline. Versions and parameters are taken
from the tasks, so the cascade and the recipes cannot disagree about them;
``check_pipeline`` refuses the pipeline if they ever do.
"""

from __future__ import annotations

from soda_reduce.recipe.contract import InputSpec, Recipe
from soda_reduce_toycam import cascade

RECIPES: tuple[Recipe, ...] = (
    Recipe(
        name=cascade.dark.recipe,  # "toycam.master_dark": recipes are named PIPELINE.RECIPE
        version=cascade.dark.recipe_version,
        product="MASTER_DARK",
        run="soda_reduce_toycam.steps:master_dark",
        inputs=(InputSpec("DARK", 3, None),),
        parameters=cascade.dark.parameters,
        description=cascade.dark.description,
    ),
    Recipe(
        name=cascade.science.recipe,
        version=cascade.science.recipe_version,
        product="REDUCED_SCIENCE",
        run="soda_reduce_toycam.steps:science",
        inputs=(InputSpec("SCIENCE"), InputSpec("MASTER_DARK"), InputSpec("BAD_COLUMNS")),
        parameters=cascade.science.parameters,
        description=cascade.science.description,
    ),
)
