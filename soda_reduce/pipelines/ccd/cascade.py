"""The reference CCD imaging cascade: bias, dark, flat, science, stack.

Header conventions are those of observatory software (IRAF, most facility
cameras) and of amateur capture programs (MaxIm DL, N.I.N.A., SharpCap):
see docs/pipelines/ccd.md. Quality levels follow Reflex/EDPS: level 0 is the
same night and setup, level 1 within 3 nights, level 2 anything valid.
"""

from __future__ import annotations

from soda_reduce.reduction.cascade import (
    Param,
    classification,
    data_source,
    param,
    same_setup,
    when,
)
from soda_reduce.reduction.keywords import binning, first_of, iso_time, mjd, night
from soda_reduce.reduction.rules import kw
from soda_reduce.reduction.tasks import Cascade, cascade, task

# -- classification: IMAGETYP as written by observatory and amateur software, any case
BIAS = classification("BIAS", kw("IMAGETYP").one_of("bias", "zero", "bias frame"))
DARK = classification("DARK", kw("IMAGETYP").one_of("dark", "dark frame"))
FLAT = classification(
    "FLAT",
    kw("IMAGETYP").one_of("flat", "flat field", "flat frame", "domeflat", "skyflat", "twiflat"),
)
SCIENCE = classification(
    "SCIENCE", kw("IMAGETYP").one_of("object", "light", "light frame", "science")
)

SETUP = ("INSTRUME", "BINNING", "READOUT")

# -- data sources: what is reduced together
raw_bias = (
    data_source("raw_bias", BIAS)
    .group_by("INSTRUME", "NIGHT", "BINNING", "READOUT")
    .match(same_setup(*SETUP))
    .build()
)
raw_dark = (
    data_source("raw_dark", DARK)
    .group_by("INSTRUME", "NIGHT", "BINNING", "READOUT", "EXPTIME")
    .match(same_setup(*SETUP, closest_by="EXPTIME"))  # scalable: nearest exposure time
    .build()
)
raw_flat = (
    data_source("raw_flat", FLAT)
    .group_by("INSTRUME", "NIGHT", "BINNING", "FILTER")
    .match(same_setup("INSTRUME", "BINNING", "FILTER"))
    .build()
)
raw_science = data_source("raw_science", SCIENCE).build()  # one job per frame

# -- tasks
COMBINE = ("median", "average")


def combining(default: str) -> tuple[Param, Param]:
    """The two parameters of every combining recipe."""
    return (
        param("combine", str, default, "how frames are combined", choices=COMBINE),
        param("sigma_clip", float, 3.0, "clipping threshold in sigma", minimum=1.0, maximum=10.0),
    )


bias = (
    task("bias")
    .recipe("ccd.master_bias", "1")
    .describe("Sigma-clipped combination of bias frames into a master bias.")
    .main_input(raw_bias, min=3)
    .params(
        *combining("median"),
    )
    .products("MASTER_BIAS")
    .resources(cpu=1, memory_mb=2048, timeout_s=1800)
    .build()
)
dark = (
    task("dark")
    .recipe("ccd.master_dark", "1")
    .describe("Bias-subtracted darks combined into a dark-current rate, scalable in time.")
    .main_input(raw_dark, min=3)
    .input(bias, "MASTER_BIAS")
    .params(
        *combining("median"),
    )
    .products("MASTER_DARK")
    .resources(cpu=1, memory_mb=2048, timeout_s=1800)
    .build()
)
flat = (
    task("flat")
    .recipe("ccd.master_flat", "1")
    .describe("Bias- and dark-corrected flats, normalised and combined per filter.")
    .main_input(raw_flat, min=3)
    .input(bias, "MASTER_BIAS")
    .input(dark, "MASTER_DARK", optional=True, when=when("use_dark"))
    .params(
        *combining("median"),
        param(
            "normalise",
            str,
            "median",
            "statistic the flat is scaled to 1 by",
            choices=("median", "mean"),
        ),
    )
    .products("MASTER_FLAT")
    .resources(cpu=1, memory_mb=2048, timeout_s=1800)
    .build()
)
science = (
    task("science")
    .recipe("ccd.science", "1")
    .describe("Bias, scaled dark and flat correction, gain to electrons, optional CR cleaning.")
    .main_input(raw_science)
    .input(bias, "MASTER_BIAS")
    .input(dark, "MASTER_DARK", optional=True, when=when("use_dark"))
    .input(flat, "MASTER_FLAT")
    .params(
        param("cosmic_rays", bool, True, "clean cosmic rays (L.A.Cosmic)"),
        param("cr_sigma", float, 4.5, "cosmic-ray detection threshold", minimum=2.0, maximum=20.0),
    )
    .products("REDUCED_SCIENCE")
    .science()
    .resources(cpu=1, memory_mb=2048, timeout_s=1800)
    .build()
)
stack = (
    task("stack")
    .recipe("ccd.stack", "1")
    .describe("WCS-aligned co-add of the reduced frames of one object, filter and night.")
    .main_input(science, min=2, group_by=("INSTRUME", "OBJECT", "FILTER", "NIGHT"))
    .params(
        *combining("average"),
    )
    .products("STACKED_SCIENCE")
    .science()
    .resources(cpu=2, memory_mb=4096, timeout_s=3600)
    .build()
)


def build_cascade() -> Cascade:
    return (
        cascade("ccd", "1")
        .describe("CCD imaging: master bias, dark, flat; reduced science frames; stacks.")
        .derive(
            first_of("EXPTIME", "EXPTIME", "EXPOSURE", "EXPOSURE_TIME"),
            binning("BINNING"),
            first_of("READOUT", "READOUTM", "READMODE", "READOUT_MODE", default="default"),
            first_of("INSTRUME", "INSTRUME", "CAMERA", default="unknown"),
            mjd("MJD"),
            night("NIGHT"),
            iso_time("DATE"),
        )
        .workflow_params(
            param("use_dark", bool, True, "subtract scaled master darks when available"),
        )
        .tasks(bias, dark, flat, science, stack)
        .subworkflow("calibrations", (bias, dark, flat), "master calibrations")
        .default_target(science)
        .build()
    )


CASCADE = build_cascade()
