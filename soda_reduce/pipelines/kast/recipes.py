"""The kast recipes as the registry sees them: each one PypeIt step, imported on use."""

from __future__ import annotations

from soda_reduce.pipelines.kast import cascade as kast
from soda_reduce.pipelines.plugin import consumed
from soda_reduce.recipe.contract import InputSpec, Recipe
from soda_reduce.reduction.tasks import Task

_RUN = "soda_reduce.pipelines.kast.pypeit_steps"
_CALIBS = {
    "KAST_BIAS": (0, 1),
    "KAST_SLITS": (0, 1),
    "KAST_EDGES": (0, 1),
    "KAST_WAVECALIB": (0, 1),
    "KAST_TILTS": (0, 1),
    "KAST_ARC": (0, 1),
    "KAST_TILTIMG": (0, 1),
    "KAST_FLAT": (0, 1),
}


def _declare(task: Task, function: str, raw: dict[str, tuple[int, int | None]]) -> Recipe:
    needed = {c for c, _ in consumed(task)}  # calibrations this task always gives
    inputs = [InputSpec(c, lo, hi) for c, (lo, hi) in raw.items()]
    inputs += [InputSpec(c, 1 if c in needed else 0, hi) for c, (_, hi) in _CALIBS.items()]
    return Recipe(
        name=task.recipe,
        version=task.recipe_version,
        product=task.products,
        outputs=task.also_produces,
        run=f"{_RUN}:{function}",
        inputs=tuple(inputs),
        parameters=task.parameters,
        description=task.description,
    )


RECIPES: tuple[Recipe, ...] = (
    _declare(kast.bias, "bias", {"BIAS": (1, None)}),
    _declare(kast.slits, "slits", {"TRACE": (1, None)}),
    _declare(kast.arc, "arc", {"ARC": (1, None), "TILT": (0, None), "REID_ARXIV": (1, 1)}),
    _declare(kast.flat, "flat", {"PIXELFLAT": (1, None), "ILLUMFLAT": (0, None)}),
    _declare(kast.standard, "standard", {"STANDARD": (1, 1)}),
    _declare(
        kast.science,
        "science",
        {"SCIENCE": (1, 1), "KAST_SPEC1D": (0, 1), "KAST_SPEC2D": (0, 1)},
    ),
)
