"""The recipe contract at its edges: bad calls fail clearly, and external pipelines fit in.

Every case runs ``python -m soda_reduce.recipe`` as a subprocess, as a plan
runner does: exit code 2 for a bad call or bad input (never worth retrying),
1 for a processing failure, and the reason in the log (stderr).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from astropy.io import fits

from soda_reduce.pipelines.ccd.demo import generate_demo_archive
from soda_reduce.recipe import get_recipe, recipe_names
from soda_reduce.recipe.external import ENV_VAR, ESOREX_EXAMPLE, external_recipes


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    generate_demo_archive(root, nights=1, seed=3, size=32, science_per_night=1)
    return root


def call(
    tmp: Path,
    recipe: str,
    inputs: list[dict],
    params: dict | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    (tmp / "inputs.json").write_text(json.dumps({"recipe": recipe, "inputs": inputs}))
    (tmp / "params.json").write_text(json.dumps(params or {}))
    argv = [
        sys.executable,
        "-m",
        "soda_reduce.recipe",
        recipe,
        "--inputs",
        str(tmp / "inputs.json"),
    ]
    argv += ["--params", str(tmp / "params.json"), "--out", str(tmp / "out")]
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **(env or {})},
    )


def biases(archive: Path, night: str = "2024-01-04") -> list[dict]:
    files = sorted((archive / night).glob("bias_1x1_*"))
    return [{"category": "BIAS", "path": str(f), "file_id": f"ivo://t/raw?{f.name}"} for f in files]


def test_registry_knows_the_ccd_recipes() -> None:
    names = recipe_names()
    for short in ("master_bias", "master_dark", "master_flat", "science", "stack"):
        name = f"ccd.{short}"
        assert name in names
        assert get_recipe(name).version == "1"
    with pytest.raises(KeyError, match="unknown recipe"):
        get_recipe("ccd.nothing")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"sigma_clip": 0.5}, "sigma_clip must be >= 1.0"),
        ({"combine": "mode"}, "combine must be one of median, average"),
        ({"sigma": 3}, "has no parameter 'sigma'"),
    ],
)
def test_bad_parameters_exit_2(archive: Path, tmp_path: Path, params: dict, message: str) -> None:
    done = call(tmp_path, "ccd.master_bias", biases(archive), params)
    assert done.returncode == 2
    assert message in done.stderr
    assert not (tmp_path / "out" / "products.json").exists()


def test_missing_input_file_exits_2(archive: Path, tmp_path: Path) -> None:
    inputs = [*biases(archive), {"category": "BIAS", "path": str(archive / "gone.fits")}]
    done = call(tmp_path, "ccd.master_bias", inputs)
    assert done.returncode == 2
    assert f"BIAS input {archive / 'gone.fits'} does not exist" in done.stderr


def test_unreadable_fits_exits_2(archive: Path, tmp_path: Path) -> None:
    notes = archive / "2024-01-04" / "notes.fits"
    inputs = [*biases(archive), {"category": "BIAS", "path": str(notes)}]
    done = call(tmp_path, "ccd.master_bias", inputs)
    assert done.returncode == 2
    assert "notes.fits: not a readable FITS image" in done.stderr


@pytest.mark.parametrize(
    ("recipe", "inputs", "message"),
    [
        ("ccd.master_dark", "biases", "ccd.master_dark does not take BIAS inputs"),
        ("ccd.master_bias", "none", "ccd.master_bias needs at least 1 BIAS input(s), got 0"),
        ("ccd.unknown", "biases", "unknown recipe 'ccd.unknown'"),
    ],
)
def test_wrong_inputs_exit_2(
    archive: Path, tmp_path: Path, recipe: str, inputs: str, message: str
) -> None:
    done = call(tmp_path, recipe, biases(archive) if inputs == "biases" else [])
    assert done.returncode == 2
    assert message in done.stderr


def test_inputs_for_another_recipe_or_version_exit_2(archive: Path, tmp_path: Path) -> None:
    (tmp_path / "inputs.json").write_text(
        json.dumps({"recipe": "ccd.master_bias", "recipe_version": "7", "inputs": biases(archive)})
    )
    argv = [sys.executable, "-m", "soda_reduce.recipe", "ccd.master_bias"]
    argv += ["--inputs", str(tmp_path / "inputs.json"), "--out", str(tmp_path / "out")]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert "asks for ccd.master_bias version 7, this is version 1" in done.stderr


def test_binning_mismatch_is_a_bad_input(archive: Path, tmp_path: Path) -> None:
    bias_out = tmp_path / "bias"
    bias_out.mkdir()
    assert call(bias_out, "ccd.master_bias", biases(archive)).returncode == 0
    dark = sorted((archive / "2024-01-04").glob("dark_300s_2x2_*"))
    inputs = [{"category": "DARK", "path": str(f)} for f in dark]
    inputs.append(
        {
            "category": "MASTER_BIAS",
            "path": str(bias_out / "out" / "master_bias.fits"),
            "step_key": "b" * 64,
        }
    )
    done = call(tmp_path, "ccd.master_dark", inputs)
    assert done.returncode == 2
    assert "MASTER_BIAS is 32x32 pixels, the frame is 16x16" in done.stderr


def test_processing_failure_exits_1_and_noop_succeeds(tmp_path: Path) -> None:
    failed = call(tmp_path, "core.noop", [], {"fail": "failure"})
    assert failed.returncode == 1 and "asked to fail" in failed.stderr
    done = call(tmp_path, "core.noop", [], {})
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "out" / "products.json").read_text())
    assert manifest["products"][0]["category"] == "NOOP"


# -- an external pipeline: a fake esorex, configured like the documented example

FAKE_ESOREX = """#!/bin/sh
# A stand-in for ESO's esorex: esorex [options] recipe [recipe options] file.sof
echo "fake esorex: $*"
printf '%s\\n' "$@" > "$(dirname "$0")/argv.txt"
for arg in "$@"; do
  case "$arg" in
    --output-dir=*) out="${arg#--output-dir=}" ;;
    *.sof) sof="$arg" ;;
  esac
done
cp "$sof" "$(dirname "$0")/seen.sof"
while read -r path category; do
  [ -f "$path" ] || { echo "missing $path" >&2; exit 4; }
done < "$sof"
[ -n "$FAKE_ESOREX_EXIT" ] && exit "$FAKE_ESOREX_EXIT"
exec "$FAKE_PYTHON" - "$out" "$FAKE_CATEGORY" <<'EOF'
import sys
import numpy as np
from astropy.io import fits
out, category = sys.argv[1], sys.argv[2]
hdu = fits.PrimaryHDU(np.full((20, 30), 1000.0, np.float32))
hdu.header["HIERARCH ESO PRO CATG"] = category
hdu.header["HIERARCH ESO QC MASTER MEDIAN"] = 1000.0
hdu.writeto(f"{out}/{category.lower()}.fits")
fits.PrimaryHDU().writeto(f"{out}/scratch.fits")
EOF
"""


@pytest.fixture
def esorex(tmp_path: Path) -> dict[str, str]:
    """A fake esorex and a configuration declaring ESOREX_EXAMPLE with it as the command."""
    tool = tmp_path / "bin" / "esorex"
    tool.parent.mkdir()
    tool.write_text(FAKE_ESOREX)
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    spec = {**ESOREX_EXAMPLE, "command": [str(tool), *ESOREX_EXAMPLE["command"][1:]]}
    config = tmp_path / "external.json"
    config.write_text(json.dumps({"recipes": [spec]}))
    return {ENV_VAR: str(config), "FAKE_PYTHON": sys.executable, "FAKE_CATEGORY": "MASTER_BIAS"}


def test_external_pipeline_wrapped(archive: Path, tmp_path: Path, esorex: dict[str, str]) -> None:
    inputs = biases(archive)
    done = call(tmp_path, "eso.muse_bias", inputs, {"nifu": 3}, env=esorex)
    assert done.returncode == 0, done.stderr
    assert "fake esorex: --output-dir=" in done.stdout  # the tool's output is in the log
    argv = (tmp_path / "bin" / "argv.txt").read_text().split("\n")
    assert argv[2:5] == ["muse_bias", "--nifu=3", "--combine=sigclip"]
    sof = (tmp_path / "bin" / "seen.sof").read_text().splitlines()
    assert sof == [f"{i['path']} BIAS" for i in inputs]  # esorex's set-of-frames format

    out = tmp_path / "out"
    manifest = json.loads((out / "products.json").read_text())
    assert manifest["recipe"] == "eso.muse_bias" and manifest["recipe_version"] == "2.10.10"
    assert manifest["parameters"] == {"nifu": 3, "combine": "sigclip"}
    main, preview = manifest["products"]  # scratch.fits has no PRO.CATG: not a product
    assert main == {**main, "file": "master_bias.fits", "category": "MASTER_BIAS", "main": True}
    assert main["qc"] == {"MASTER_MEDIAN": 1000.0}
    assert preview["category"] == "PREVIEW" and (out / preview["file"]).is_file()
    header = fits.getheader(out / "master_bias.fits")
    assert header["RECIPE"] == "eso.muse_bias" and header["NPROV"] == len(inputs)
    assert header["PROV1"] == inputs[0]["file_id"] and header["PROVC1"] == "BIAS"
    assert not (out / "_external").exists()


@pytest.mark.parametrize(
    ("change", "code", "message"),
    [
        ({"FAKE_ESOREX_EXIT": "3"}, 1, "exited with status 3"),
        ({"FAKE_CATEGORY": "MASTER_DARK"}, 1, "did not produce a MASTER_BIAS"),
    ],
)
def test_external_failures(
    archive: Path, tmp_path: Path, esorex: dict[str, str], change: dict, code: int, message: str
) -> None:
    done = call(tmp_path, "eso.muse_bias", biases(archive), env={**esorex, **change})
    assert done.returncode == code
    assert message in done.stderr


def test_external_command_missing_exits_2(archive: Path, tmp_path: Path) -> None:
    config = tmp_path / "external.json"
    spec = {**ESOREX_EXAMPLE, "command": [str(tmp_path / "no-esorex"), "{sof}"]}
    config.write_text(json.dumps({"recipes": [spec]}))
    assert "eso.muse_bias" in external_recipes(str(config))
    done = call(tmp_path, "eso.muse_bias", biases(archive), env={ENV_VAR: str(config)})
    assert done.returncode == 2
    assert "command not found" in done.stderr
