"""The kast recipes: each runs one step of PypeIt itself, never a re-implementation.

For every step the recipe writes a PypeIt reduction file (``.pypeit``) naming
only that step's raw frames, with every type each frame has, places the
upstream steps' calibration files in ``Calibrations/`` under the names PypeIt
looks for (setup ``A``, calibration group ``0``), and runs PypeIt: a
calibration step through ``pypeit_steps.calib_one`` stopped at its step (as
``pypeit_run_to_calibstep`` does), a standard or science exposure through
``PypeIt.reduce_all`` with every calibration reused. The arc template
(``reid_arxiv``) is a static calibration input, the standard star's spec1d the
tracing crutch (``std_spec1d``); nothing is downloaded.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

from soda_reduce.recipe.contract import RecipeCall, RecipeFailure, RecipeInput, RecipeUsageError
from soda_reduce.recipe.products import FITS_TYPE, PNG_TYPE

log = logging.getLogger("soda_reduce.recipe")

WORK = "_pypeit"
SETUP, GROUP, DET = "A", "0", "DET01"
# our category -> PypeIt's calibration file type and suffix
CALIB_FILES = {
    "KAST_BIAS": ("Bias", ".fits"),
    "KAST_EDGES": ("Edges", ".fits.gz"),
    "KAST_SLITS": ("Slits", ".fits.gz"),
    "KAST_ARC": ("Arc", ".fits"),
    "KAST_TILTIMG": ("Tiltimg", ".fits"),
    "KAST_WAVECALIB": ("WaveCalib", ".fits"),
    "KAST_TILTS": ("Tilts", ".fits"),
    "KAST_FLAT": ("Flat", ".fits"),
}
RAW_TYPES = {  # our frame types -> PypeIt's
    "BIAS": "bias",
    "ARC": "arc",
    "TILT": "tilt",
    "PIXELFLAT": "pixelflat",
    "ILLUMFLAT": "illumflat",
    "TRACE": "trace",
    "STANDARD": "standard",
    "SCIENCE": "science",
}
SPECTROGRAPHS = {"kastb": "shane_kast_blue", "kastr": "shane_kast_red"}


def warm_up() -> None:
    """PypeIt's import (~3.6 s of CPU), done once in a warm runner for every step."""
    from soda_reduce.pipelines.kast.offline import install_site_registry

    install_site_registry()
    from pypeit import pypeit, pypeit_steps  # noqa: F401

    from soda_reduce.pipelines.kast import spectrum  # noqa: F401


def bias(call: RecipeCall) -> None:
    _calibrate(call, "bias", ("KAST_BIAS",))


def slits(call: RecipeCall) -> None:
    _calibrate(call, "slits", ("KAST_SLITS", "KAST_EDGES"))


def arc(call: RecipeCall) -> None:
    _calibrate(call, "tilts", ("KAST_WAVECALIB", "KAST_TILTS", "KAST_ARC", "KAST_TILTIMG"))


def flat(call: RecipeCall) -> None:
    _calibrate(call, "flats", ("KAST_FLAT", "KAST_SLITS"))


def standard(call: RecipeCall) -> None:
    redux = _reduce(call, "STANDARD")
    _exposure_products(call, redux, call.one("STANDARD"), main_category="KAST_SPEC1D")
    finish(call)


def science(call: RecipeCall) -> None:
    from soda_reduce.pipelines.kast.spectrum import write_spectrum

    redux = _reduce(call, "SCIENCE")
    frame = call.one("SCIENCE")
    spec1d = _exposure_products(call, redux, frame, main_category=None)
    write_spectrum(call, spec1d, frame)
    finish(call)


# --------------------------------------------------------------- PypeIt runs


def _start(call: RecipeCall) -> tuple[Path, Path]:
    """A clean work area in OUTDIR: (redux directory, .pypeit file)."""
    from soda_reduce.pipelines.kast.offline import install_site_registry

    install_site_registry()  # before PypeIt is imported
    work = call.out / WORK
    shutil.rmtree(work, ignore_errors=True)
    redux = work / "redux"
    (redux / "Calibrations").mkdir(parents=True)
    return redux, work / "step.pypeit"


def _calibrate(call: RecipeCall, step: str, made: Sequence[str]) -> None:
    redux, pypeit_file = _start(call)
    _place_calibrations(call, redux / "Calibrations")
    write_pypeit_file(call, pypeit_file)
    from pypeit import pypeit, pypeit_steps

    log.info("PypeIt: calibrations up to %r", step)
    run = pypeit.PypeIt(str(pypeit_file), redux_path=str(redux), calib_only=True)
    run.reuse_calibs = True
    # as pypeit_run_to_calibstep --calib_group 0 does: the group of the first frame
    calib_id = run.fitstbl.find_frame_calib_groups(0)[0]
    for det in run.spectrograph.select_detectors(run.par["rdx"]["detnum"]):
        pypeit_steps.calib_one(
            run.spectrograph,
            run.fitstbl,
            run.par,
            det,
            calib_id,
            run.calibrations_path,
            stop_at_step=step,
        )
    for n, category in enumerate(made):
        kind, suffix = CALIB_FILES[category]
        path = redux / "Calibrations" / f"{kind}_{SETUP}_{GROUP}_{DET}{suffix}"
        if not path.is_file():  # (an input re-written in place counts: the flat step
            # tweaks the slit edges it was given)
            raise RecipeFailure(f"PypeIt made no {kind} calibration (step {step})")
        target = call.out / path.name
        shutil.copyfile(path, target)
        call.add_product(target.name, category, FITS_TYPE, main=(n == 0))
    _qa_plots(call, redux)
    shutil.rmtree(call.out / WORK, ignore_errors=True)


def _reduce(call: RecipeCall, frame_type: str) -> Path:
    redux, pypeit_file = _start(call)
    _place_calibrations(call, redux / "Calibrations")
    extra: dict[str, str] = {}
    std = call.maybe("KAST_SPEC1D")
    if std is not None:
        extra["std_spec1d"] = str(std.path)
        log.info("standard star trace as crutch: %s", std.path.name)
    write_pypeit_file(call, pypeit_file, findobj=extra)
    from pypeit import pypeit

    log.info("PypeIt: reducing the %s exposure", frame_type.lower())
    run = pypeit.PypeIt(str(pypeit_file), redux_path=str(redux), reuse_calibs=True)
    run.reduce_all()
    return redux


def _place_calibrations(call: RecipeCall, directory: Path) -> dict[str, tuple[Path, ...]]:
    """Upstream calibration files, copied where and as PypeIt looks for them (copies:
    PypeIt may rewrite one, and a product of another step must never change)."""
    placed: dict[str, tuple[Path, ...]] = {}
    for item in call.inputs:
        if item.category not in CALIB_FILES:
            continue
        kind, suffix = CALIB_FILES[item.category]
        target = directory / f"{kind}_{SETUP}_{GROUP}_{DET}{suffix}"
        shutil.copyfile(item.path, target)
        placed[item.category] = (target,)
    return placed


def write_pypeit_file(call: RecipeCall, path: Path, findobj: dict[str, str] | None = None) -> None:
    """The PypeIt reduction file of this step: its raw frames with all their types."""
    from astropy.io import fits

    frames = _raw_frames(call.inputs)
    if not frames:
        raise RecipeUsageError("no raw frames among the inputs")
    header = fits.getheader(frames[0][0].path)
    version = str(header.get("VERSION", "")).strip()
    spectrograph = SPECTROGRAPHS.get(version)
    if spectrograph is None:
        raise RecipeUsageError(f"{frames[0][0].path.name}: VERSION {version!r} is not Kast")
    disperser = header.get("GRISM_N") if version == "kastb" else header.get("GRATNG_N")
    lines = ["# written by soda-reduce for one step", "[rdx]", f"    spectrograph = {spectrograph}"]
    # calibrations arrive processed, from upstream steps: PypeIt's check that raw arc,
    # tilt and trace frames are listed does not apply (it only warns, then)
    lines += ["[calibrations]", "    raise_chk_error = False", "    [[wavelengths]]"]
    template = call.maybe("REID_ARXIV")
    if template is not None:
        lines.append(f"        reid_arxiv = {template.path}")
    lines += ["[reduce]", "    [[findobj]]"]
    lines.append(f"        snr_thresh = {call.params.get('snr_thresh', 10.0)}")
    for key, value in sorted((findobj or {}).items()):
        lines.append(f"        {key} = {value}")
    lines += ["    [[extraction]]"]
    lines.append(f"        boxcar_radius = {call.params.get('boxcar_radius', 1.5)}")
    lines += ["", "setup read", f"Setup {SETUP}:", f"  dispname: {disperser}"]
    lines += [f"  dichroic: {header.get('BSPLIT_N')}"]
    if version == "kastr":
        lines.append(f"  dispangle: {header.get('GRTILT_P')}")
    lines += ["setup end", "", "data read"]
    for directory in sorted({str(item.path.parent) for item, _ in frames}):
        lines.append(f" path {directory}")
    lines.append("filename | frametype | calib")
    for item, types in frames:
        lines.append(f"{item.path.name} | {','.join(types)} | {GROUP}")
    lines += ["data end", ""]
    path.write_text("\n".join(lines))
    log.info("PypeIt file %s:\n%s", path.name, "\n".join(lines))


def _raw_frames(inputs: Sequence[RecipeInput]) -> list[tuple[RecipeInput, list[str]]]:
    """Each raw file once, with every PypeIt type it has (from every input naming it)."""
    seen: dict[Path, tuple[RecipeInput, list[str]]] = {}
    for item in inputs:
        if item.category not in RAW_TYPES:
            continue
        entry = seen.setdefault(item.path, (item, []))
        for kind in item.all_types:
            name = RAW_TYPES.get(kind)
            if name is not None and name not in entry[1]:
                entry[1].append(name)
    names = [p.name for p in seen]
    if len(set(names)) != len(names):
        raise RecipeUsageError("two raw inputs have the same file name: PypeIt cannot tell them")
    return list(seen.values())


def _exposure_products(
    call: RecipeCall, redux: Path, frame: RecipeInput, main_category: str | None
) -> Path:
    """spec1d, spec2d and the text listing of this exposure; QA plots as auxiliary."""
    stem = frame.path.name.split(".")[0]
    science = redux / "Science"
    spec1d = sorted(science.glob(f"spec1d_{stem}-*.fits"))
    spec2d = sorted(science.glob(f"spec2d_{stem}-*.fits"))
    if not spec2d:
        raise RecipeFailure(f"PypeIt wrote no spec2d for {frame.path.name}")
    if not spec1d:
        raise RecipeFailure(f"PypeIt extracted no object from {frame.path.name}")
    serves = (frame.file_id,) if frame.file_id else ()
    for path, category in ((spec1d[0], "KAST_SPEC1D"), (spec2d[0], "KAST_SPEC2D")):
        shutil.copyfile(path, call.out / path.name)
        main = category == main_category
        call.add_product(path.name, category, FITS_TYPE, main=main, serves=serves if main else ())
    listing = spec1d[0].with_suffix(".txt")
    if listing.is_file():
        shutil.copyfile(listing, call.out / listing.name)
        call.add_product(listing.name, "SPEC1D_LISTING", "text/plain", auxiliary=True)
    _qa_plots(call, redux)
    result = call.out / spec1d[0].name
    return result


def _qa_plots(call: RecipeCall, redux: Path) -> None:
    """PypeIt's QA plots, kept as auxiliary products."""
    for path in sorted((redux / "QA" / "PNGs").glob("*.png")):
        target = call.out / f"qa_{path.name}"
        shutil.copyfile(path, target)
        call.add_product(target.name, "QA_PLOT", PNG_TYPE, auxiliary=True)


def finish(call: RecipeCall) -> None:
    shutil.rmtree(call.out / WORK, ignore_errors=True)
