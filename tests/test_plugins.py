"""Pipeline plug-ins (docs/plugins.md): found through the entry point, checked at load.

- The worked example's shell commands run **as written** in docs/plugins.md: the out-of-tree
  package docs/examples/soda-reduce-toycam is pip-installed into this environment, its
  pipeline indexes, plans and reduces a generated night, then it is uninstalled (always,
  in a ``finally``). Only ``WORK=`` is replaced, by a temporary directory. It needs pip to
  build the package (setuptools from the package index): when that index cannot be reached
  the test skips, except in CI, where it fails.
- A pipeline whose cascade and recipes disagree (a category consumed but never produced, a
  parameter declared on one side only), or whose entry point cannot be imported, is refused
  whole when loaded through ``Registry.add_entry``, and ``soda-reduce index`` prints why.
- The built-in ``ccd`` and ``kast`` register through the same entry-point group and pass
  the same checks.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from soda_reduce.pipelines import GROUP, PipelineError, Registry
from soda_reduce.pipelines.plugin import Pipeline, as_pipeline, check_pipeline
from soda_reduce.recipe.contract import InputSpec, Recipe
from soda_reduce.reduction.cascade import Param, classification, data_source, param, same_setup
from soda_reduce.reduction.rules import kw
from soda_reduce.reduction.tasks import cascade, task
from tests.support.tools import missing

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "plugins.md"
EXAMPLE = REPO / "docs" / "examples" / "soda-reduce-toycam"
SNIPPET_MARK = "# test: plugins-example"
DISTRIBUTION = "soda-reduce-toycam"
SKY = 50.0  # ADU: the sky soda_reduce_toycam.demo puts in its science frames
DEAD_COLUMN = 17  # 1-based, in the example's static/bad_columns_toy1.txt
NO_INDEX = (  # pip could not get setuptools to build the example: no package index here
    "No matching distribution found for setuptools",
    "Could not find a version that satisfies the requirement setuptools",
)


def _environment() -> dict[str, str]:
    """This interpreter's bin first on PATH (as an activated virtualenv); no SODA_REDUCE_*
    settings of the caller, so the documented defaults apply, except two: the default data
    directory stays out of the real home (the session's XDG_DATA_HOME, tests/conftest.py)
    and a command's store stops with it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SODA_REDUCE_")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["SODA_REDUCE_STORE_LINGER_S"] = "0"
    return env


def doc_snippet() -> str:
    """The one fenced shell block of docs/plugins.md that starts with the test mark."""
    blocks = re.findall(r"^```(?:sh|bash)\n(.*?)^```", DOC.read_text(), re.S | re.M)
    marked = [b for b in blocks if b.startswith(SNIPPET_MARK + "\n")]
    assert len(marked) == 1, f"expected one block marked {SNIPPET_MARK!r} in {DOC}"
    return marked[0]


def with_work_dir(script: str, work: Path) -> str:
    """The script with its one ``WORK=...`` line pointing at ``work``, and nothing else changed."""
    line = re.compile(r"^WORK=.*$", re.M)
    assert len(line.findall(script)) == 1, "the snippet must set WORK exactly once"
    return line.sub(lambda _: f"WORK={shlex.quote(str(work))}", script)


def _uninstall_example() -> None:
    """Leave the environment as it was, whatever happened (harmless when not installed)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "uninstall", "-y", DISTRIBUTION],
        capture_output=True,
        env=_environment(),
        check=False,
        timeout=300,
    )


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_worked_example_runs_as_written(tmp_path: Path) -> None:
    if shutil.which("bash") is None:
        missing("bash is not installed")
    if importlib.util.find_spec("pip") is None:
        missing("pip is not installed in this environment")
    work = tmp_path / "work"
    script = with_work_dir(doc_snippet(), work)
    # a fresh working directory in which the snippet's relative docs/ path resolves
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "docs").symlink_to(REPO / "docs")
    example_before = _tree(EXAMPLE)
    try:
        done = subprocess.run(
            ["bash", "-e", "-c", script],
            cwd=cwd,
            env=_environment(),
            capture_output=True,
            text=True,
            timeout=900,
        )
    finally:
        _uninstall_example()
    log = f"--- stdout\n{done.stdout[-6000:]}\n--- stderr\n{done.stderr[-6000:]}"
    if done.returncode != 0 and any(marker in done.stderr for marker in NO_INDEX):
        missing("pip cannot reach a package index to get setuptools")
    assert done.returncode == 0, log

    # found: claimed and classified by the plug-in, and no pipeline refused
    assert "refused" not in done.stderr, log
    assert "toycam: 5 claimed, 5 classified (3 DARK, 2 SCIENCE)" in done.stdout, log
    # planned: one master dark and the shipped static list serve both exposures
    assert "2 dataset(s): 2 complete, 0 incomplete" in done.stdout, log
    assert "steps to run: 1 dark, 2 science" in done.stdout, log
    assert "pipeline:toycam/bad_columns_toy1.txt" in done.stdout, log
    # run: every dataset reduced, its main product listed in its step's products.json
    results = json.loads((work / "products" / "results.json").read_text())
    assert len(results) == 2, results
    for entry in results:
        assert (entry["pipeline"], entry["status"]) == ("toycam", "done"), entry
        main = Path(entry["main_product"])
        assert main.is_file(), entry
        manifest = json.loads((main.parent / "products.json").read_text())
        assert manifest["recipe"] == "toycam.science"
        mains = [p for p in manifest["products"] if p.get("main")]
        assert [(p["file"], p["category"]) for p in mains] == [(main.name, "REDUCED_SCIENCE")]
        assert abs(mains[0]["qc"]["SKY_MEDIAN"] - SKY) < 2.0, mains[0]["qc"]
        statics = [i for i in manifest["inputs"] if i["role"] == "static"]
        assert [i["file_id"] for i in statics] == ["pipeline:toycam/bad_columns_toy1.txt"]
        kinds = {p["category"] for p in manifest["products"]}
        assert {"REDUCED_SCIENCE", "PREVIEW", "SKY_STATISTICS"} <= kinds
        with fits.open(main) as hdul:
            assert hdul[0].header["RECIPE"] == "toycam.science"
            assert hdul[0].header["STEPKEY"] == entry["step_key"]
            assert np.isnan(hdul[0].data[:, DEAD_COLUMN - 1]).all()
    darks = list((work / "products").glob("dark-*/master_dark.fits"))  # placed per job
    assert len(darks) == 1 and fits.getheader(darks[0])["PROCATG"] == "MASTER_DARK"

    # everything went into WORK; the example in the repository was only read
    assert sorted(os.listdir(cwd)) == ["docs"]
    assert _tree(EXAMPLE) == example_before
    # the snippet uninstalled what it installed
    importlib.invalidate_caches()
    with pytest.raises(metadata.PackageNotFoundError):
        metadata.distribution(DISTRIBUTION)
    # ... and soda-reduce itself never names the plug-in
    named = [
        str(path.relative_to(REPO))
        for path in [REPO / "pyproject.toml", *(REPO / "soda_reduce").rglob("*.py")]
        if "toycam" in path.read_text().lower()
    ]
    assert named == []


# ------------------------------------------------------------------ refused at load

DARK = classification("DARK", kw("FRAMETYP").is_("dark"))
SCIENCE = classification("SCIENCE", kw("FRAMETYP").is_("object"))
RAW_DARK = data_source("raw_dark", DARK).group_by("NIGHT").match(same_setup("DETECTOR")).build()
RAW_SCIENCE = data_source("raw_science", SCIENCE).build()
SIGMA = param("sigma", float, 3.0, "clipping threshold")


def toy_pipeline(
    name: str = "toy",
    *,
    dark_outputs: tuple[str, ...] = ("HOT_PIXEL_MAP",),
    task_params: tuple[Param, ...] = (),
    recipe_params: tuple[Param, ...] = (),
    science_name: str = "science",
) -> Pipeline:
    """dark -> science, where science consumes both products of dark. The defaults agree;
    each keyword argument breaks one thing. The recipes are never run (nor imported)."""
    dark = (
        task("dark")
        .recipe(f"{name}.dark")
        .main_input(RAW_DARK, min=3)
        .products("MASTER_DARK", "HOT_PIXEL_MAP")
        .build()
    )
    science = (
        task(science_name)
        .recipe(f"{name}.science")
        .main_input(RAW_SCIENCE)
        .input(dark, ("MASTER_DARK", "HOT_PIXEL_MAP"))
        .params(*task_params)
        .products("REDUCED_SCIENCE")
        .science()
        .build()
    )
    recipes = (
        Recipe(
            name=f"{name}.dark",
            version="1",
            product="MASTER_DARK",
            outputs=dark_outputs,
            run="toy_steps_never_imported:dark",
            inputs=(InputSpec("DARK", 3, None),),
        ),
        Recipe(
            name=f"{name}.science",
            version="1",
            product="REDUCED_SCIENCE",
            run="toy_steps_never_imported:science",
            inputs=(InputSpec("SCIENCE"), InputSpec("MASTER_DARK"), InputSpec("HOT_PIXEL_MAP")),
            parameters=recipe_params,
        ),
    )
    return Pipeline(
        name=name,
        version="1",
        claims=kw("INSTRUME").is_(name.upper()),
        cascade=cascade(name).tasks(dark, science).default_target(science).build(),
        recipes=recipes,
    )


# entry-point targets, loaded by name as an installed package's would be
def agreeing_pipeline() -> Pipeline:
    return toy_pipeline("toy")


def pipeline_missing_product() -> Pipeline:
    return toy_pipeline("toybroken", dark_outputs=())


NOT_A_PIPELINE = {"name": "toyjunk"}


def _load(name: str, value: str, registry: Registry | None = None) -> Registry:
    """Register one entry point exactly as ``Registry.load`` does for an installed one."""
    registry = registry or Registry()
    entry = metadata.EntryPoint(name, value, GROUP)
    registry.add_entry(entry.name, entry.value, entry.load)
    return registry


def test_agreeing_pipeline_is_registered() -> None:
    registry = _load("toy", f"{__name__}:agreeing_pipeline")
    assert registry.refused == {}
    assert registry.names() == ["toy"]
    assert registry.recipe("toy.science").produces == ("REDUCED_SCIENCE",)


def test_category_consumed_but_not_produced_refuses_the_pipeline() -> None:
    registry = _load("toybroken", f"{__name__}:pipeline_missing_product")
    assert "toybroken" not in registry.pipelines
    why = registry.refused["toybroken"]
    assert (
        "task science (toybroken.science): consumes HOT_PIXEL_MAP from task dark, whose recipe "
        "toybroken.dark produces only MASTER_DARK"
    ) in why
    assert "task dark (toybroken.dark): the cascade expects a HOT_PIXEL_MAP product" in why
    with pytest.raises(PipelineError, match=r"toybroken was refused: .*HOT_PIXEL_MAP"):
        registry.get("toybroken")


@pytest.mark.parametrize(
    ("task_params", "recipe_params", "problem"),
    [
        ((SIGMA,), (), "parameter sigma is not declared by the recipe"),
        ((), (SIGMA,), "the recipe's parameter sigma is not offered by the cascade"),
        (
            (SIGMA,),
            (param("sigma", int, 3),),
            "parameter sigma is float in the cascade, int in the recipe",
        ),
    ],
)
def test_parameter_declared_on_one_side_refuses_the_pipeline(
    task_params: tuple[Param, ...], recipe_params: tuple[Param, ...], problem: str
) -> None:
    pipeline = toy_pipeline(task_params=task_params, recipe_params=recipe_params)
    registry = Registry()
    registry.add_entry("toy", "tests:toy", lambda: pipeline)
    assert registry.pipelines == {}
    assert registry.refused == {"toy": f"task science (toy.science): {problem}"}


def test_a_task_named_raw_refuses_the_pipeline() -> None:
    """TARGET=raw asks for the raw frame as archived: no task may take that name."""
    registry = Registry()
    registry.add_entry("toy", "tests:toy", lambda: toy_pipeline(science_name="Raw"))
    assert registry.pipelines == {}
    assert "task or subworkflow 'Raw': the name is reserved (TARGET=raw" in registry.refused["toy"]
    assert check_pipeline(toy_pipeline(science_name="rawer")) == []


def test_entry_point_that_cannot_be_used_is_refused_with_the_reason() -> None:
    registry = _load("toymissing", "toy_missing_module:PIPELINE")
    _load("toyjunk", f"{__name__}:NOT_A_PIPELINE", registry)
    _load("toyother", f"{__name__}:agreeing_pipeline", registry)  # gives pipeline "toy"
    _load("toy", f"{__name__}:agreeing_pipeline", registry)  # the others do not stop it
    assert registry.names() == ["toy"]
    assert registry.refused["toymissing"].startswith(
        "cannot load toy_missing_module:PIPELINE: ModuleNotFoundError: "
    )
    assert "gives dict, not a soda_reduce Pipeline" in registry.refused["toyjunk"]
    assert registry.refused["toyother"].startswith("entry point toyother gives pipeline toy")


def _fake_installed_plugins(site: Path) -> None:
    """A distribution's metadata with two broken entry points, as pip would leave it
    (importlib.metadata finds it on PYTHONPATH): nothing is installed in the environment."""
    info = site / "soda_reduce_toybroken-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: soda-reduce-toybroken\nVersion: 0.1\n"
    )
    (info / "entry_points.txt").write_text(
        f"[{GROUP}]\n"
        "toybroken = tests.test_plugins:pipeline_missing_product\n"
        "toymissing = toy_missing_module:PIPELINE\n"
    )


def test_index_prints_why_an_installed_pipeline_is_refused(tmp_path: Path) -> None:
    site = tmp_path / "site"
    _fake_installed_plugins(site)
    archive = tmp_path / "archive"
    archive.mkdir()
    bias = fits.PrimaryHDU(np.zeros((8, 8), dtype=np.uint16))
    bias.header["IMAGETYP"] = "BIAS"
    bias.header["DATE-OBS"] = "2024-03-02T01:00:00"
    bias.writeto(archive / "bias_001.fits")
    env = _environment()
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO)])
    command = [sys.executable, "-m", "soda_reduce.cli", "index", "--archive", str(archive)]
    command += ["--data-dir", str(tmp_path / "data")]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (
        "warning: pipeline toybroken refused: task dark (toybroken.dark): the cascade expects "
        "a HOT_PIXEL_MAP product"
    ) in done.stderr
    assert "consumes HOT_PIXEL_MAP from task dark" in done.stderr
    assert (
        "warning: pipeline toymissing refused: cannot load toy_missing_module:PIPELINE: "
        "ModuleNotFoundError"
    ) in done.stderr
    assert "ccd: 1 claimed, 1 classified (1 BIAS)" in done.stdout  # the others still serve
    # naming the refused pipeline repeats the reasons
    named = subprocess.run(
        [*command, "--pipeline", "toybroken"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert named.returncode == 2
    assert "error: pipeline toybroken was refused: " in named.stderr


# ------------------------------------------------------------------ built-in pipelines


@pytest.mark.parametrize("name", ["ccd", "kast"])
def test_builtin_pipeline_registers_through_the_entry_point_group(name: str) -> None:
    entries = {e.name: e for e in metadata.entry_points(group=GROUP)}
    assert entries[name].value == f"soda_reduce.pipelines.{name}.plugin:PIPELINE"
    pipeline = as_pipeline(entries[name].load(), name)
    assert pipeline.name == name
    assert check_pipeline(pipeline) == []
    loaded = Registry.load(only=name)
    assert loaded.refused == {}
    assert loaded.pipelines[name] is pipeline
    assert all(r.name.startswith(f"{name}.") for r in pipeline.recipes)


def test_loading_the_registry_imports_no_recipe_code() -> None:
    """Recipes name their functions as "module:function": every command loads every pipeline,
    and none of them may pay for (or need) PypeIt or ccdproc to do so."""
    code = (
        "import json, sys\n"
        "from soda_reduce.pipelines import registry\n"
        "found = registry()\n"
        "print(json.dumps({'names': found.names(), 'refused': found.refused,\n"
        "                  'imported': [m for m in ('pypeit', 'ccdproc') if m in sys.modules]}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=_environment(), capture_output=True, text=True, check=True
    )
    loaded = json.loads(done.stdout)
    assert {"ccd", "kast"} <= set(loaded["names"])
    assert "ccd" not in loaded["refused"] and "kast" not in loaded["refused"]
    assert loaded["imported"] == []
