"""External pipelines as recipes: esorex, 2dFdr's aaorun, PypeIt... wrapped by configuration.

A JSON file named in ``SODA_REDUCE_EXTERNAL_RECIPES`` (several: separated by
``os.pathsep``) declares recipes that run a command. The wrapper honours the
recipe contract for them: it writes the inputs as a set-of-frames file (one
``path CATEGORY`` line per input, which is exactly esorex's .sof format), runs
the command with the recipe parameters as options, then takes every FITS file
the command wrote, categorises it by a header keyword (ESO's ``PRO.CATG``),
stamps our provenance keywords into it, makes its preview and lists it in
products.json. The command's stdout and stderr pass straight into the step log.

``ESOREX_EXAMPLE`` below is the documented example (docs/recipes.md). In a
command, ``{sof}``, ``{out}`` (the directory the command writes to) and
``{workdir}`` are replaced by paths; an argument that is exactly ``{params}``
becomes one argument per parameter (``param_format``), and ``{inputs}``
becomes the input paths, for tools that take files on the command line.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from soda_reduce.recipe.contract import (
    InputSpec,
    Recipe,
    RecipeCall,
    RecipeFailure,
    RecipeUsageError,
)
from soda_reduce.reduction.cascade import Param, param

ENV_VAR = "SODA_REDUCE_EXTERNAL_RECIPES"
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz")
WORK = "_external"  # scratch directory inside OUTDIR, removed after success

log = logging.getLogger("soda_reduce.recipe")

ESOREX_EXAMPLE: dict[str, Any] = {
    "name": "eso.muse_bias",
    "version": "2.10.10",
    "description": "MUSE master bias by ESO's muse_bias recipe, run through esorex.",
    "product": "MASTER_BIAS",
    "command": [
        "esorex",
        "--output-dir={out}",
        "--log-dir={out}",
        "muse_bias",
        "{params}",
        "{sof}",
    ],
    "param_format": "--{name}={value}",
    "bool_values": ["TRUE", "FALSE"],
    "inputs": [
        {"category": "BIAS", "min": 3, "max": None},
        {"category": "BADPIX_TABLE", "min": 0, "max": 1},
    ],
    "parameters": [
        {"name": "nifu", "type": "int", "default": 0, "minimum": -1, "maximum": 24},
        {
            "name": "combine",
            "type": "str",
            "default": "sigclip",
            "choices": ["average", "median", "minmax", "sigclip"],
        },
    ],
    "category_keyword": "HIERARCH ESO PRO CATG",
    "categories": {"MASTER_BIAS": "MASTER_BIAS"},
    "qc_prefix": "ESO QC ",
    "env": {"OMP_NUM_THREADS": "1"},
}


@dataclass(frozen=True)
class ExternalSpec:
    """One configured external recipe (the keys of ESOREX_EXAMPLE)."""

    name: str
    version: str
    product: str
    command: tuple[str, ...]
    inputs: tuple[InputSpec, ...]
    parameters: tuple[Param, ...] = ()
    description: str = ""
    param_format: str = "--{name}={value}"
    bool_values: tuple[str, str] = ("TRUE", "FALSE")
    sof_categories: dict[str, str] = field(default_factory=dict)  # ours -> the tool's
    category_keyword: str = "HIERARCH ESO PRO CATG"
    categories: dict[str, str] = field(default_factory=dict)  # the tool's -> ours
    qc_prefix: str = "ESO QC "
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ExternalSpec:
        try:
            command = tuple(str(a) for a in doc["command"])
            if not command:
                raise ValueError("empty command")
            return cls(
                name=str(doc["name"]),
                version=str(doc["version"]),
                product=str(doc["product"]),
                command=command,
                inputs=tuple(
                    InputSpec(str(i["category"]), int(i.get("min", 1)), i.get("max", 1))
                    for i in doc["inputs"]
                ),
                parameters=tuple(
                    param(
                        p["name"],
                        p["type"],
                        p["default"],
                        p.get("description", ""),
                        p.get("choices", ()),
                        p.get("minimum"),
                        p.get("maximum"),
                    )
                    for p in doc.get("parameters", ())
                ),
                description=str(doc.get("description", "")),
                param_format=str(doc.get("param_format", "--{name}={value}")),
                bool_values=tuple(doc.get("bool_values", ("TRUE", "FALSE"))),  # type: ignore[arg-type]
                sof_categories=dict(doc.get("sof_categories", {})),
                category_keyword=str(doc.get("category_keyword", "HIERARCH ESO PRO CATG")),
                categories=dict(doc.get("categories", {})),
                qc_prefix=str(doc.get("qc_prefix", "ESO QC ")),
                env={str(k): str(v) for k, v in doc.get("env", {}).items()},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"external recipe {doc.get('name', '?')}: bad entry ({exc})") from exc

    def recipe(self) -> Recipe:
        return Recipe(
            name=self.name,
            version=self.version,
            product=self.product,
            run=partial(run_external, self),
            inputs=self.inputs,
            parameters=self.parameters,
            description=self.description,
        )


def external_recipes(config: str | None = None) -> dict[str, Recipe]:
    """The recipes declared by the files in ``config`` (default: $SODA_REDUCE_EXTERNAL_RECIPES)."""
    value = os.environ.get(ENV_VAR, "") if config is None else config
    found: dict[str, Recipe] = {}
    for name in filter(None, value.split(os.pathsep)):
        path = Path(name)
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{ENV_VAR}: cannot read {path}: {exc}") from None
        for entry in doc.get("recipes", []):
            spec = ExternalSpec.from_dict(entry)
            found[spec.name] = spec.recipe()
    return found


def write_sof(call: RecipeCall, spec: ExternalSpec, path: Path) -> None:
    lines = [f"{i.path} {spec.sof_categories.get(i.category, i.category)}" for i in call.inputs]
    path.write_text("\n".join(lines) + "\n")


def command_line(call: RecipeCall, spec: ExternalSpec, sof: Path, out: Path) -> list[str]:
    options = []
    for name, value in call.params.items():
        if isinstance(value, bool):
            value = spec.bool_values[0] if value else spec.bool_values[1]
        options.append(spec.param_format.format(name=name, value=value))
    places = {"sof": str(sof), "out": str(out), "workdir": str(out.parent)}
    argv: list[str] = []
    for arg in spec.command:
        if arg == "{params}":
            argv += options
        elif arg == "{inputs}":
            argv += [str(i.path) for i in call.inputs]
        else:
            argv.append(arg.format(**places))
    return argv


def run_external(spec: ExternalSpec, call: RecipeCall) -> None:
    from astropy.io import fits

    from soda_reduce.recipe.products import write_fits

    work = call.out / WORK
    shutil.rmtree(work, ignore_errors=True)
    tool_out = work / "out"
    tool_out.mkdir(parents=True)
    sof = work / "input.sof"
    write_sof(call, spec, sof)
    argv = command_line(call, spec, sof, tool_out)
    log.info("set of frames %s: %d line(s); running %s", sof, len(call.inputs), " ".join(argv))
    env = {**os.environ, **spec.env}
    try:
        done = subprocess.run(argv, cwd=work, env=env, check=False)
    except FileNotFoundError:
        raise RecipeUsageError(
            f"{argv[0]}: command not found (is the pipeline installed?)"
        ) from None
    except PermissionError:
        raise RecipeUsageError(f"{argv[0]}: not executable") from None
    if done.returncode != 0:
        raise RecipeFailure(f"{argv[0]} exited with status {done.returncode}")

    products = sorted(p for p in tool_out.rglob("*") if p.name.lower().endswith(FITS_SUFFIXES))
    main_done = False
    for path in products:
        with fits.open(path) as hdul:
            header = hdul[0].header
            tool_category = header.get(spec.category_keyword)
            if tool_category is None:
                log.warning(
                    "%s has no %s: not a product, left out", path.name, spec.category_keyword
                )
                continue
            category = spec.categories.get(str(tool_category), str(tool_category))
            qc = {
                key[len(spec.qc_prefix) :].replace(" ", "_"): value
                for key, value in header.items()
                if key.startswith(spec.qc_prefix) and isinstance(value, int | float)
            }
            main = category == spec.product and not main_done
            main_done = main_done or main
            history = [f"made by {argv[0]} ({spec.name} {spec.version}), wrapped by soda-reduce"]
            write_fits(call, path.name, hdul, category, history, qc, main=main)
        log.info(
            "product %s: %s = %s -> %s, %d QC value(s)",
            path.name,
            spec.category_keyword,
            tool_category,
            category,
            len(qc),
        )
    if not main_done:
        raise RecipeFailure(
            f"{argv[0]} did not produce a {spec.product} (found {len(products)} FITS)"
        )
    shutil.rmtree(work, ignore_errors=True)
