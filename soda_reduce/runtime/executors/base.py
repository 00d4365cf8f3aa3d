"""What every executor does: run one recipe invocation somewhere, report how it went.

The plan runner decides *what* runs (and that it runs once); an executor only
decides *where*: a local subprocess or a Kubernetes pod. Paths inside the
command are the executor's own (``container_path``), since a pod sees the
archive and the product volume at its own mount points.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class StepResources:
    cpu: float = 1.0
    memory_mb: int = 1024
    timeout_s: float = 3600.0


@dataclass(frozen=True)
class StepRun:
    """One attempt at one step.

    ``workdir`` is a fresh directory on the product volume holding ``inputs.json``
    and ``params.json``; the recipe writes its products and ``products.json``
    into ``workdir / "out"``. ``log_path`` receives stdout and stderr.
    """

    step_key: str
    job_id: str  # the plan job (e.g. "flat-5ca1ed79754e")
    pipeline: str  # "ccd": chooses the container image on Kubernetes
    recipe: str  # "ccd.master_flat"
    workdir: Path
    log_path: Path
    resources: StepResources = field(default_factory=StepResources)
    request_id: str | None = None  # the UWS job asking, for labels and logs
    attempt: int = 1


@dataclass(frozen=True)
class StepOutcome:
    """How an attempt ended. ``transient`` failures are worth retrying."""

    ok: bool
    exit_code: int | None = None
    error: str | None = None
    transient: bool = False
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    queued_seconds: float = 0.0  # waiting for a free slot before starting


class Executor(Protocol):
    """Runs recipe commands. ``run`` must kill what it started when cancelled."""

    name: str

    def container_path(self, host_path: Path) -> str:
        """The path a running recipe sees for ``host_path`` (archive or product volume)."""
        ...

    def recipe_command(self, run: StepRun) -> list[str]:
        """The argv of the recipe entry point for this run, in the executor's paths."""
        ...

    async def run(self, run: StepRun) -> StepOutcome: ...

    async def close(self) -> None: ...


def recipe_argv(python: str, recipe: str, inputs: str, params: str, out: str) -> list[str]:
    """The recipe contract's command line (docs/recipes.md)."""
    return [
        python,
        "-m",
        "soda_reduce.recipe",
        recipe,
        "--inputs",
        inputs,
        "--params",
        params,
        "--out",
        out,
    ]
