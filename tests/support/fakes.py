"""Test doubles that still run real processes: the fake recipe through LocalExecutor."""

from __future__ import annotations

import sys
from pathlib import Path

from soda_reduce.runtime.executors.base import StepRun
from soda_reduce.runtime.executors.local import LocalExecutor

FAKE_RECIPE = Path(__file__).with_name("fake_recipe.py")


class FakeRecipeExecutor(LocalExecutor):
    """A LocalExecutor whose recipe entry point is tests/support/fake_recipe.py."""

    def recipe_command(self, run: StepRun) -> list[str]:
        return [
            sys.executable,
            str(FAKE_RECIPE),
            run.recipe,
            "--inputs",
            str(run.workdir / "inputs.json"),
            "--params",
            str(run.workdir / "params.json"),
            "--out",
            str(run.workdir / "out"),
        ]
