"""The ``ccd`` recipes against the demo generator's truth, run through the recipe contract.

A 3-night, 128-pixel demo archive is indexed and planned (target ``science``)
and every runnable job is run as ``python -m soda_reduce.recipe ...`` in a
subprocess, exactly as a plan runner would: inputs.json and params.json are
written here, upstream jobs are passed as the main product of their products.json.

The statistic tested for each reduced science frame, over the pixels that
neither the truth's MASK (saturated, cosmic-ray hit, hot) nor the product's
MASK flags:

    z = (reduced - truth) / UNCERT
    |median(z)| < 0.1   and   |1.4826 * MAD(z) - 1| < 0.1

i.e. the reduction is unbiased to a tenth of the noise and the uncertainty
extension is right to 10 %. The flat is normalised to its mean
(``flat.normalise=mean``) because that is the normalisation of the truth
(docs/demo-data.md); with the default median the whole frame scales by
median/mean of the flat (up to 0.3 % here), a convention, not an error.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.stats import mad_std
from PIL import Image

from soda_reduce.pipelines import get_cascade
from soda_reduce.pipelines.ccd.demo import generate_demo_archive
from soda_reduce.pipelines.ccd.demo_model import InstrumentModel
from soda_reduce.pipelines.ccd.recipes_calib import vignetting
from soda_reduce.pipelines.ccd.recipes_io import MASK_BITS, read_product
from soda_reduce.pipelines.ccd.recipes_stack import celestial_wcs, have_reproject, resample
from soda_reduce.reduction.plan import PlanJob, ReductionPlan
from soda_reduce.reduction.planner import plan_reduction
from soda_reduce.runtime.indexer import index_file, walk_archive

SEED = 5
SIZE = 128
AUTHORITY = "demo.test"
PARAMETERS = {"flat.normalise": "mean"}


@dataclass
class StepResult:
    job: PlanJob
    out: Path
    returncode: int
    log: str

    @property
    def manifest(self) -> dict:
        return json.loads((self.out / "products.json").read_text())

    @property
    def main_product(self) -> Path:
        main = next(p for p in self.manifest["products"] if p.get("main"))
        return self.out / main["file"]


class LocalDriver:
    """The smallest plan runner: jobs in dependency waves, two at a time, as subprocesses."""

    def __init__(self, archive: Path, work: Path) -> None:
        self.archive = archive
        self.work = work
        self.results: dict[str, StepResult] = {}

    def inputs_doc(self, job: PlanJob, plan: ReductionPlan) -> dict:
        entries = []
        for item in job.inputs:
            if item.job is not None:
                upstream = self.results[item.job]
                entries.append(
                    {
                        "category": item.category,
                        "role": item.role,
                        "path": str(upstream.main_product),
                        "file_id": None,
                        "checksum": None,
                        "step_key": plan.job(item.job).step_key,
                    }
                )
            else:
                assert item.path is not None
                entries.append(
                    {
                        "category": item.category,
                        "role": item.role,
                        "path": str(self.archive / item.path),
                        "file_id": item.file_id,
                        "checksum": item.checksum,
                        "step_key": None,
                    }
                )
        return {
            "step_key": job.step_key,
            "job_id": job.job_id,
            "recipe": job.recipe,
            "recipe_version": job.recipe_version,
            "inputs": entries,
        }

    def run_job(self, job: PlanJob, plan: ReductionPlan) -> StepResult:
        step = self.work / job.job_id
        step.mkdir(parents=True, exist_ok=True)
        (step / "inputs.json").write_text(json.dumps(self.inputs_doc(job, plan), indent=1))
        (step / "params.json").write_text(json.dumps(job.parameters))
        result = run_recipe(job.recipe, step / "inputs.json", step / "params.json", step / "out")
        return StepResult(job, step / "out", result.returncode, result.stderr + result.stdout)

    def run_plan(self, plan: ReductionPlan) -> dict[str, StepResult]:
        pending = list(plan.runnable_jobs())
        with ThreadPoolExecutor(max_workers=2) as pool:
            while pending:
                ready = [j for j in pending if all(d in self.results for d in j.depends_on)]
                assert ready, "dependency cycle"
                for result in pool.map(lambda j: self.run_job(j, plan), ready):
                    assert result.returncode == 0, f"{result.job.job_id} failed:\n{result.log}"
                    self.results[result.job.job_id] = result
                pending = [j for j in pending if j.job_id not in self.results]
        return self.results


def run_recipe(
    recipe: str, inputs: Path, params: Path | None, out: Path
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "soda_reduce.recipe", recipe, "--inputs", str(inputs)]
    if params is not None:
        argv += ["--params", str(params)]
    argv += ["--out", str(out)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)


@dataclass
class Reduction:
    archive: Path
    manifest: dict
    plan: ReductionPlan
    results: dict[str, StepResult]
    work: Path

    def jobs(self, task: str) -> list[StepResult]:
        return [r for r in self.results.values() if r.job.task == task]

    def truth_of(self, result: StepResult) -> Path:
        raw = next(i for i in result.job.inputs if i.category == "SCIENCE")
        entry = next(e for e in self.manifest["files"] if e["path"] == raw.path)
        return self.archive / entry["truth"]


@pytest.fixture(scope="module")
def reduction(tmp_path_factory: pytest.TempPathFactory) -> Reduction:
    root = tmp_path_factory.mktemp("demo")
    generate_demo_archive(root, nights=3, seed=SEED, size=SIZE)
    walk = walk_archive(root)
    files = [index_file(root, rel, stat, AUTHORITY, "full") for rel, stat in walk.files.items()]
    plan = plan_reduction(get_cascade("ccd"), files, target="science", parameters=PARAMETERS)
    work = tmp_path_factory.mktemp("steps")
    results = LocalDriver(root, work).run_plan(plan)
    manifest = json.loads((root / "_truth" / "manifest.json").read_text())
    return Reduction(root, manifest, plan, results, work)


def z_statistics(reduced: Path, truth: Path) -> tuple[float, float, int]:
    """(median z, 1.4826 MAD of z, pixels used) over pixels neither mask flags."""
    with fits.open(reduced) as red, fits.open(truth) as tru:
        good = (red["MASK"].data == 0) & (tru["MASK"].data == 0)
        z = (red[0].data - tru[0].data) / red["UNCERT"].data
        z = z[good & np.isfinite(z)]
    return float(np.median(z)), float(mad_std(z)), int(z.size)


def test_science_frames_agree_with_truth_within_the_noise(reduction: Reduction) -> None:
    """|median(z)| < 0.1 and 1.4826 MAD(z) within 10 % of 1, z = (reduced - truth) / UNCERT."""
    science = reduction.jobs("science")
    assert len(science) == 9  # 12 frames, 3 are R 2x2 without any flat (gap 4)
    rows = []
    for result in science:
        median, spread, n = z_statistics(result.main_product, reduction.truth_of(result))
        rows.append((result.main_product.name, median, spread, n))
    print("\nframe                              median(z)  MAD-sigma(z)  pixels")
    for name, median, spread, n in rows:
        print(f"{name:34s} {median:+9.4f} {spread:13.4f} {n:7d}")
    for name, median, spread, n in rows:
        assert n > 0.8 * (SIZE // 2) ** 2, name
        assert abs(median) < 0.1, (name, median)
        assert abs(spread - 1.0) < 0.1, (name, spread)


def test_cosmic_rays_are_found_and_stars_left_alone(reduction: Reduction) -> None:
    """Most hits off the stars are found; false detections stay a small fraction of a percent."""
    hits = true = false = pixels = 0
    for result in reduction.jobs("science"):
        with fits.open(result.main_product) as red, fits.open(reduction.truth_of(result)) as tru:
            ours = red["MASK"].data
            flagged = (ours & MASK_BITS["COSMIC"]) > 0
            # truth MASK = saturated | cosmic | hot: remove the saturated and hot pixels
            known = ours & (MASK_BITS["SATURATED"] | MASK_BITS["HOT"])
            cosmic = (tru["MASK"].data > 0) & (known == 0)
        hits += int((flagged & cosmic).sum())
        true += int(cosmic.sum())
        false += int((flagged & ~cosmic).sum())
        pixels += flagged.size
    print(f"\ncosmic-ray pixels: {hits} of {true} found, {false} false in {pixels} pixels")
    assert hits >= 0.7 * true
    assert false < 5e-4 * pixels


def binning_of(header: fits.Header) -> int:
    if "XBINNING" in header:
        return int(header["XBINNING"])
    return int(str(header.get("CCDSUM", "1 1")).split()[0])


def test_master_bias_matches_the_true_bias(reduction: Reduction) -> None:
    """Level within 1 ADU of the generator's bias frame, read noise within 5 % of 9 e-."""
    model = InstrumentModel(SEED, SIZE)
    results = reduction.jobs("bias")
    assert results
    for result in results:
        with fits.open(result.main_product) as hdul:
            data, header = hdul[0].data, hdul[0].header
        true = model.bias_adu(binning_of(header))
        qc = result.manifest["products"][0]["qc"]
        assert abs(np.median(data) - np.median(true)) < 1.0
        assert abs(qc["BIAS_LEVEL"] - np.median(true)) < 1.0
        assert np.std(data - true) < 4.0  # 9 e- / 1.4 * 1.25 / sqrt(5) = 3.6 ADU
        assert qc["READ_NOISE_E"] == pytest.approx(model.camera.read_noise, rel=0.05)
        assert qc["NFRAMES"] == 5


def test_master_dark_is_the_true_dark_rate(reduction: Reduction) -> None:
    model = InstrumentModel(SEED, SIZE)
    for result in reduction.jobs("dark"):
        with fits.open(result.main_product) as hdul:
            header, rate = hdul[0].header, hdul[0].data
            hot = (hdul["MASK"].data & MASK_BITS["HOT"]) > 0
        b = binning_of(header)
        assert header["EXPTIME"] == 1.0 and header["DARKRATE"] is True
        gain = model.camera.gain
        assert abs(np.median(rate) * gain - np.median(model.dark_rate(b))) < 0.005  # e-/s
        true_hot = model.hot_mask(b)
        assert (hot & true_hot).sum() >= 0.9 * true_hot.sum()
        assert (hot & ~true_hot).sum() <= 2
        assert result.manifest["products"][0]["qc"]["HOT_PIXELS"] == hot.sum()


def test_master_flat_matches_the_true_flat_field(reduction: Reduction) -> None:
    """Pixel by pixel within 0.6 % rms (the photon noise of 5 flats) and unbiased to 0.1 %."""
    model = InstrumentModel(SEED, SIZE)
    results = reduction.jobs("flat")
    assert results
    for result in results:
        with fits.open(result.main_product) as hdul:
            data, header = hdul[0].data, hdul[0].header
        true = model.flat_field(header["FILTER"], binning_of(header))
        ratio = (data / data.mean()) / (true / true.mean())
        assert abs(np.median(ratio) - 1.0) < 0.001
        assert np.std(ratio) < 0.006
        assert header["FLATNORM"] == "mean" and abs(data.mean() - 1.0) < 1e-5
        qc = result.manifest["products"][0]["qc"]
        assert qc["VIGNETTING"] == pytest.approx(vignetting(true), abs=0.01)
        assert 0.75 < qc["VIGNETTING"] < 0.95  # ~20 % loss in the corners


def test_products_carry_provenance(reduction: Reduction) -> None:
    result = reduction.jobs("science")[0]
    job = result.job
    manifest = result.manifest
    assert manifest["recipe"] == "ccd.science" and manifest["recipe_version"] == "1"
    assert manifest["step_key"] == job.step_key and manifest["job_id"] == job.job_id
    assert {"soda_reduce", "astropy", "numpy", "ccdproc", "python"} <= set(manifest["software"])
    assert manifest["parameters"] == job.parameters
    refs = []
    for item, entry in zip(job.inputs, manifest["inputs"], strict=True):
        assert entry["category"] == item.category and entry["role"] == item.role
        if item.job is not None:
            ref = reduction.plan.job(item.job).step_key
            assert entry["step_key"] == ref
        else:
            ref = item.file_id
            assert entry["file_id"] == ref and entry["checksum"] == item.checksum
        refs.append(ref)

    main, preview = manifest["products"]
    path = result.out / main["file"]
    assert main["category"] == "REDUCED_SCIENCE" and main["content_type"] == "application/fits"
    assert main["main"] is True and main["size"] == path.stat().st_size
    assert main["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert {"SKY_MEDIAN", "SKY_NOISE", "NCOSMIC"} <= set(main["qc"])
    assert preview["category"] == "PREVIEW" and preview["content_type"] == "image/png"
    assert preview["preview_of"] == main["file"]
    with Image.open(result.out / preview["file"]) as png:
        png.load()
        assert png.format == "PNG" and png.size == (SIZE, SIZE) and png.mode == "L"
        assert len(np.unique(np.asarray(png))) > 50  # zscale spreads the sky over the grey levels

    raw = next(i for i in job.inputs if i.category == "SCIENCE")
    with fits.open(path) as hdul, fits.open(reduction.archive / raw.path) as raw_hdul:
        header = hdul[0].header
        assert [h.name for h in hdul] == ["PRIMARY", "MASK", "UNCERT"]
        raw_header = next(h.header for h in raw_hdul if h.data is not None)
    assert header["PROCSOFT"].startswith("soda-reduce ")
    assert header["RECIPE"] == "ccd.science" and header["RECIPEV"] == "1"
    assert header["STEPKEY"] == job.step_key and header["BUNIT"] == "electron"
    assert datetime.fromisoformat(header["DATE"])
    assert header["NPROV"] == len(job.inputs)
    for n, (item, ref) in enumerate(zip(job.inputs, refs, strict=True), start=1):
        assert header[f"PROV{n}"] == ref and header[f"PROVC{n}"] == item.category
    history = "\n".join(str(h) for h in header["HISTORY"])
    for stage in ("MASTER_BIAS", "MASTER_DARK", "electrons", "MASTER_FLAT", "L.A.Cosmic"):
        assert stage in history
    for key in ("CTYPE1", "CRVAL1", "CRVAL2", "CRPIX1", "CD1_1", "CD2_2", "OBJECT", "DATE-OBS"):
        assert header[key] == raw_header[key]
    for result in reduction.results.values():  # every step: its product category, a preview
        categories = [p["category"] for p in result.manifest["products"]]
        assert categories == [result.job.products, "PREVIEW"]


def test_stack_aligns_frames_on_the_first_frame_wcs(reduction: Reduction) -> None:
    """Three frames of one field with pointing offsets of several pixels, co-added."""
    chosen = [
        r
        for r in reduction.jobs("science")
        if fits.getval(r.main_product, "OBJECT") == "NGC 2244"
        and fits.getval(r.main_product, "FILTER") == "V"
    ]
    assert len(chosen) == 3
    step = reduction.work / "stack"
    step.mkdir()
    entries = [
        {
            "category": "REDUCED_SCIENCE",
            "role": "main",
            "path": str(r.main_product),
            "step_key": r.job.step_key,
        }
        for r in chosen
    ]
    (step / "inputs.json").write_text(json.dumps({"recipe": "ccd.stack", "inputs": entries}))
    (step / "params.json").write_text(json.dumps({"combine": "average", "sigma_clip": 3}))
    done = run_recipe("ccd.stack", step / "inputs.json", step / "params.json", step / "out")
    assert done.returncode == 0, done.stderr
    manifest = json.loads((step / "out" / "products.json").read_text())
    product = manifest["products"][0]
    assert product["category"] == "STACKED_SCIENCE" and product["qc"]["NFRAMES"] == 3
    assert product["qc"]["DEPTH"] == 3

    # What a perfect stack of the truths is, resampled the same way (the fallback path).
    frames = [read_product(r.main_product) for r in chosen]
    truths = [read_product(reduction.truth_of(r)) for r in chosen]
    wcs_out = celestial_wcs(frames[0])
    expected = []
    for frame, truth in zip(frames, truths, strict=True):
        wcs_in = celestial_wcs(frame)
        fallback = resample(truth.data, wcs_in, wcs_out, truth.data.shape, use_reproject=False)
        if have_reproject():
            other = resample(truth.data, wcs_in, wcs_out, truth.data.shape, use_reproject=True)
            both = np.isfinite(fallback) & np.isfinite(other)
            assert np.abs(fallback - other)[both].max() < 1e-3 * np.abs(other[both]).max()
        expected.append(fallback)
    with fits.open(step / "out" / product["file"]) as hdul:
        stacked, error = hdul[0].data, hdul["UNCERT"].data
        coverage = hdul["COVERAGE"].data
        for key in ("CRVAL1", "CRVAL2", "CRPIX1", "CD1_1"):
            assert hdul[0].header[key] == frames[0].header[key]
    truth_mask = sum(
        resample(t.mask.astype(float), celestial_wcs(f), wcs_out, t.data.shape, False)
        for f, t in zip(frames, truths, strict=True)
    )
    good = (coverage == 3) & (truth_mask == 0)
    z = (stacked - np.mean(expected, axis=0))[good] / error[good]
    print(f"\nstack: median z {np.median(z):+.3f}, spread {mad_std(z):.3f}, {z.size} pixels")
    assert good.sum() > 0.5 * stacked.size
    assert abs(np.median(z)) < 0.1
    assert 0.5 < mad_std(z) < 1.1  # bilinear resampling smooths noise: the error is an upper bound
    assert np.percentile(np.abs(z), 99.5) < 5  # misaligned stars would leave huge residuals
