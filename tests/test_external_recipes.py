"""The external-recipe wrapper on a PypeIt-like tool: the main product is read from the headers.

The "tool" is a Python script that mimics ``run_pypeit``: one spec1d (a FITS table naming its raw
file in FILENAME) per science or standard frame, a spec2d without a datamodel class, QA PNGs,
text spectra, a log and a file nobody asked for. Every run goes through the recipe contract:
``execute`` in this process, or ``python -m soda_reduce.recipe`` as a plan runner does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.io import fits

from soda_reduce.recipe.contract import (
    EXIT_FAILURE,
    EXIT_OK,
    MANIFEST,
    MANIFEST_SCHEMA,
    Product,
    execute,
)
from soda_reduce.recipe.external import (
    DEFAULT_AUXILIARY,
    ENV_VAR,
    ESOREX_EXAMPLE,
    PYPEIT_EXAMPLE,
    ExternalSpec,
)
from soda_reduce.runtime.products import ProductStore, main_product

FAKE_PYPEIT = '''
"""A stand-in for run_pypeit: reduces every science and standard frame of the .sof."""
import os
import sys
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

sof, out = Path(sys.argv[1]), Path(sys.argv[2])
skip = os.environ.get("FAKE_SKIP", "").split(",")
twice = os.environ.get("FAKE_TWICE", "")
PNG = b"\\x89PNG\\r\\n\\x1a\\n"
print(f"fake run_pypeit: {sof}", flush=True)
(out / "Science").mkdir()
(out / "QA" / "PNGs" / "old").mkdir(parents=True)
for line in sof.read_text().splitlines():
    path, kind = line.rsplit(" ", 1)
    name = Path(path).name
    stem = name.split(".")[0]
    if kind not in ("science", "standard") or stem in skip:
        continue
    raw = name.removesuffix(".gz") if os.environ.get("FAKE_STRIP") else name
    for target in ["J1217p3905"] + (["SERENDIP"] if stem == twice else []):
        tag = f"{stem}-{target}_KASTb_20240105T0{stem[-2:]}1.560"
        table = Table({"OPT_WAVE": np.linspace(3500.0, 5500.0, 64), "OPT_COUNTS": np.ones(64)})
        spec1d = fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU(table)])
        spec1d[0].header["DMODCLS"] = "SpecObjs"
        spec1d[0].header["FILENAME"] = raw
        spec1d[0].header["HIERARCH ESO QC SNR"] = 12.5 if kind == "science" else 80.0
        spec1d.writeto(out / "Science" / f"spec1d_{tag}.fits")
        (out / "Science" / f"spec1d_{tag}.txt").write_text(f"# {raw}\\n1  OBJ0001  3.2\\n")
    fits.PrimaryHDU(np.zeros((8, 16), np.float32)).writeto(out / "Science" / f"spec2d_{stem}.fits")
    (out / "QA" / "PNGs" / f"{stem}_trace.png").write_bytes(PNG + stem.encode())
(out / "QA" / "PNGs" / "wavecalib.png").write_bytes(PNG + b"new")
(out / "QA" / "PNGs" / "old" / "wavecalib.png").write_bytes(PNG + b"old")
(out / "QA_PNGs_wavecalib.png").write_bytes(PNG + b"flat")
(out / "run_pypeit.log").write_text("[INFO] :: reduction complete\\n")
(out / "kast.calib").write_text("calibration groups\\n")
'''

MANIFEST_KEYS = {"schema", "recipe", "recipe_version", "step_key", "job_id", "software"}
MANIFEST_KEYS |= {"parameters", "inputs", "products", "started", "finished", "duration_s"}
SCI_ID = "ivo://example.org/raw?2015-05-20/{}"


def raw_frames(tmp: Path, science: str, standard: str, science_role: str = "main") -> list[dict]:
    """Two raw frames on disk, as the plan runner lists them in inputs.json."""
    raw = tmp / "raw"
    raw.mkdir()
    inputs = []
    for name, category, role in (
        (science, "SCIENCE", science_role),
        (standard, "STANDARD", "associated"),
    ):
        fits.PrimaryHDU(np.zeros((4, 4), np.uint16)).writeto(raw / name)
        inputs.append(
            {
                "category": category,
                "role": role,
                "path": str(raw / name),
                "file_id": SCI_ID.format(name),
                "types": [category],
                "checksum": None,
            }
        )
    return inputs


def config(tmp: Path, **changes: Any) -> dict[str, Any]:
    """PYPEIT_EXAMPLE with the fake tool as its command (and the changes given)."""
    tool = tmp / "fake_run_pypeit.py"
    tool.write_text(FAKE_PYPEIT)
    spec = {
        **PYPEIT_EXAMPLE,
        "command": [sys.executable, str(tool), "{sof}", "{out}"],
        "inputs": [
            {"category": "SCIENCE", "min": 0, "max": None},
            {"category": "STANDARD", "min": 0, "max": None},
        ],
        **changes,
    }
    return {k: v for k, v in spec.items() if v is not None}


def run(tmp: Path, spec: dict[str, Any], inputs: list[dict], out: str = "out") -> int:
    """One call through the recipe contract, in this process."""
    inputs_path = tmp / "inputs.json"
    inputs_path.write_text(json.dumps({"recipe": spec["name"], "inputs": inputs}))
    recipe = ExternalSpec.from_dict(spec).recipe()
    return execute(recipe, inputs_path, None, tmp / out)


def checked_manifest(out: Path, inputs: list[dict]) -> dict[str, Any]:
    """products.json as the contract writes it: every product exactly a ``Product.to_dict()``,
    with the size and sha256 of its file, and no file in OUTDIR it does not list."""
    manifest = json.loads((out / MANIFEST).read_text())
    assert set(manifest) == MANIFEST_KEYS
    assert manifest["schema"] == MANIFEST_SCHEMA
    assert manifest["inputs"] == [
        {k: i[k] for k in ("category", "role", "file_id", "checksum")} for i in inputs
    ]
    for item in manifest["products"]:
        data = (out / item["file"]).read_bytes()
        assert item["size"] == len(data)
        assert item["sha256"] == hashlib.sha256(data).hexdigest()
        rebuilt = Product(
            item["file"],
            item["category"],
            item["content_type"],
            item["size"],
            item["sha256"],
            item.get("qc", {}),
            item.get("main", False),
            item.get("preview_of"),
            tuple(item.get("serves", ())),
            item.get("auxiliary", False),
        )
        assert rebuilt.to_dict() == item
    listed = [item["file"] for item in manifest["products"]]
    assert len(set(listed)) == len(listed)
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST, *listed])
    return manifest


def by_file(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["file"]: item for item in manifest["products"]}


@pytest.mark.parametrize(
    ("science", "standard"),
    [("sci27.fits", "std24.fits"), ("b27.fits", "b24.fits")],  # b24: the standard sorts first
)
def test_science_spectrum_is_main_through_the_command(
    tmp_path: Path, science: str, standard: str
) -> None:
    inputs = raw_frames(tmp_path, science, standard)
    spec = config(tmp_path)
    (tmp_path / "external.json").write_text(json.dumps({"recipes": [spec]}))
    (tmp_path / "inputs.json").write_text(json.dumps({"recipe": spec["name"], "inputs": inputs}))
    argv = [sys.executable, "-m", "soda_reduce.recipe", spec["name"]]
    argv += ["--inputs", str(tmp_path / "inputs.json"), "--out", str(tmp_path / "out")]
    env = {**os.environ, ENV_VAR: str(tmp_path / "external.json")}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, env=env)
    assert done.returncode == 0, done.stderr
    assert "fake run_pypeit:" in done.stdout

    out = tmp_path / "out"
    products = by_file(checked_manifest(out, inputs))
    sci, std = science.split(".")[0], standard.split(".")[0]
    sci1d = f"spec1d_{sci}-J1217p3905_KASTb_20240105T0{sci[-2:]}1.560.fits"
    std1d = f"spec1d_{std}-J1217p3905_KASTb_20240105T0{std[-2:]}1.560.fits"
    mains = [item for item in products.values() if item.get("main")]
    assert [m["file"] for m in mains] == [sci1d]
    assert mains[0]["serves"] == [inputs[0]["file_id"]]
    assert mains[0]["category"] == "SPEC1D" and mains[0]["content_type"] == "application/fits"
    assert mains[0]["qc"] == {"SNR": 12.5}
    assert products[std1d] == {**products[std1d], "category": "SPEC1D", "qc": {"SNR": 80.0}}
    assert not {"main", "serves", "auxiliary"} & set(products[std1d])
    header = fits.getheader(out / sci1d)
    assert header["FILENAME"] == science and header["RECIPE"] == spec["name"]
    assert header["PROCATG"] == "SPEC1D" and header["PROV1"] == inputs[0]["file_id"]

    auxiliary = {name: item for name, item in products.items() if item.get("auxiliary")}
    expected = {
        f"{sci}_trace.png": ("QA_PLOT", "image/png"),
        f"{std}_trace.png": ("QA_PLOT", "image/png"),
        "wavecalib.png": ("QA_PLOT", "image/png"),  # QA/PNGs/old/ sorts first: its own name
        "QA_PNGs_wavecalib.png": ("QA_PLOT", "image/png"),  # then its path, flattened
        "QA_PNGs_wavecalib-2.png": ("QA_PLOT", "image/png"),  # then a number
        sci1d.replace(".fits", ".txt"): ("SPEC1D_LISTING", "text/plain"),
        std1d.replace(".fits", ".txt"): ("SPEC1D_LISTING", "text/plain"),
        "run_pypeit.log": ("LOG", "text/plain"),
    }
    assert {n: (i["category"], i["content_type"]) for n, i in auxiliary.items()} == expected
    assert (out / "wavecalib.png").read_bytes().endswith(b"old")
    assert (out / "QA_PNGs_wavecalib.png").read_bytes().endswith(b"new")
    assert (out / "QA_PNGs_wavecalib-2.png").read_bytes().endswith(b"flat")
    assert set(products) == {sci1d, std1d, *expected}  # spec2d: no DMODCLS, not a product
    assert f"spec2d_{sci}.fits has no DMODCLS: not a product, left out" in done.stderr
    assert "ignored 1 output(s) matching no auxiliary pattern: kast.calib" in done.stderr

    store = ProductStore(tmp_path / "store")  # what the runtime hands the science dataset
    store.step_dir("ab" * 32).parent.mkdir(parents=True)
    out.rename(store.step_dir("ab" * 32))
    found = main_product(store, "ab" * 32, [inputs[0]["file_id"]])
    assert found is not None and found.name == sci1d


def test_two_main_category_files_without_source_keyword_exit_1(tmp_path: Path) -> None:
    inputs = raw_frames(tmp_path, "sci27.fits", "std24.fits")
    spec = config(tmp_path, source_keyword=None)
    (tmp_path / "external.json").write_text(json.dumps({"recipes": [spec]}))
    (tmp_path / "inputs.json").write_text(json.dumps({"recipe": spec["name"], "inputs": inputs}))
    argv = [sys.executable, "-m", "soda_reduce.recipe", spec["name"]]
    argv += ["--inputs", str(tmp_path / "inputs.json"), "--out", str(tmp_path / "out")]
    env = {**os.environ, ENV_VAR: str(tmp_path / "external.json")}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, env=env)
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "ERROR failed:" in last and "wrote 2 SPEC1D files" in last
    assert "spec1d_sci27-" in last and "spec1d_std24-" in last
    assert "no source_keyword is configured" in last and "by file name" in last
    assert not (tmp_path / "out" / MANIFEST).exists()


def test_one_main_category_file_needs_no_source_keyword(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With the default auxiliary globs: the listing is TEXT, the log LOG, PNGs QA_PLOT."""
    caplog.set_level(logging.INFO, logger="soda_reduce.recipe")
    inputs = raw_frames(tmp_path, "sci27.fits", "std24.fits")
    spec = config(tmp_path, source_keyword=None, auxiliary=None, env={"FAKE_SKIP": "std24"})
    assert run(tmp_path, spec, inputs) == EXIT_OK, caplog.text
    products = by_file(checked_manifest(tmp_path / "out", inputs))
    (main,) = [item for item in products.values() if item.get("main")]
    assert main["file"].startswith("spec1d_sci27-") and "serves" not in main
    kinds = {(i["category"], i["content_type"]) for i in products.values() if i.get("auxiliary")}
    assert kinds == {("QA_PLOT", "image/png"), ("TEXT", "text/plain"), ("LOG", "text/plain")}
    assert "ignored 1 output(s) matching no auxiliary pattern: kast.calib" in caplog.text


@pytest.mark.parametrize("compressed", [False, True])
def test_every_main_frame_gets_its_own_main_product(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, compressed: bool
) -> None:
    """Two main inputs: each spec1d is main and serves its own frame; .gz matches the name
    without it; and the same call gives the same file names."""
    caplog.set_level(logging.INFO, logger="soda_reduce.recipe")
    suffix = ".fits.gz" if compressed else ".fits"
    inputs = raw_frames(tmp_path, f"sci27{suffix}", "std24.fits")
    inputs[1]["role"] = "main"
    spec = config(tmp_path, env={"FAKE_STRIP": "1"} if compressed else {})
    assert run(tmp_path, spec, inputs) == EXIT_OK, caplog.text
    manifest = checked_manifest(tmp_path / "out", inputs)
    serves = {p["file"].split("-")[0]: p["serves"] for p in manifest["products"] if p.get("main")}
    assert serves == {
        "spec1d_sci27": [inputs[0]["file_id"]],
        "spec1d_std24": [inputs[1]["file_id"]],
    }
    header = fits.getheader(tmp_path / "out" / next(f for f in by_file(manifest) if "sci27" in f))
    assert header["FILENAME"] == "sci27.fits" and Path(inputs[0]["path"]).name == f"sci27{suffix}"
    assert run(tmp_path, spec, inputs, out="again") == EXIT_OK
    again = json.loads((tmp_path / "again" / MANIFEST).read_text())
    assert [p["file"] for p in again["products"]] == [p["file"] for p in manifest["products"]]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FAKE_SKIP": "sci27"}, "made no SPEC1D whose FILENAME names main input(s) sci27.fits"),
        ({"FAKE_TWICE": "sci27"}, "both say (FILENAME) they were made from sci27.fits"),
    ],
)
def test_main_frame_without_or_with_two_products_fails(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, env: dict[str, str], message: str
) -> None:
    """Never guessed: a frame with no product, or two, is a failure (the standard's is no
    substitute), and nothing is left for the runner to store."""
    inputs = raw_frames(tmp_path, "sci27.fits", "std24.fits")
    assert run(tmp_path, config(tmp_path, env=env), inputs) == EXIT_FAILURE
    assert message in caplog.text
    assert not (tmp_path / "out" / MANIFEST).exists()


def test_standard_is_not_main_when_no_input_is(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="soda_reduce.recipe")
    inputs = raw_frames(tmp_path, "sci27.fits", "std24.fits", science_role="associated")
    assert run(tmp_path, config(tmp_path), inputs) == EXIT_FAILURE
    assert "was made from std24.fits, not a main input: kept, not main" in caplog.text
    assert "was made from a main input (FILENAME)" in caplog.text


def test_spec_keys_defaults_and_validation() -> None:
    esorex = ExternalSpec.from_dict(ESOREX_EXAMPLE)
    assert esorex.source_keyword is None and esorex.auxiliary == DEFAULT_AUXILIARY
    assert DEFAULT_AUXILIARY == {
        "*.png": "QA_PLOT",
        "*.pdf": "QA_PLOT",
        "*.txt": "TEXT",
        "*.log": "LOG",
        "*.json": "AUXILIARY",
    }
    pypeit = ExternalSpec.from_dict({**PYPEIT_EXAMPLE, "auxiliary": {"QA/*.png": "qa_plot"}})
    assert pypeit.source_keyword == "FILENAME" and pypeit.auxiliary == {"QA/*.png": "QA_PLOT"}
    assert ExternalSpec.from_dict({**PYPEIT_EXAMPLE, "auxiliary": {}}).auxiliary == {}
    bad = [
        ({"source_keyword": ""}, "source_keyword must be a header keyword"),
        ({"source_keyword": 7}, "source_keyword must be a header keyword"),
        ({"auxiliary": ["*.png"]}, "auxiliary must be an object"),
        ({"auxiliary": {"*.png": ""}}, "is not a category"),
        ({"auxiliary": {"/tmp/*.png": "QA"}}, "is not a relative glob"),
        ({"auxiliary": {"../*.png": "QA"}}, "is not a relative glob"),
        ({"auxiliary": {"*.fits": "SPECTRUM"}}, "FITS outputs are products"),
    ]
    for change, message in bad:
        with pytest.raises(
            ValueError, match=r"external recipe pypeit\.kast_blue: bad entry"
        ) as exc:
            ExternalSpec.from_dict({**PYPEIT_EXAMPLE, **change})
        assert message in str(exc.value)
