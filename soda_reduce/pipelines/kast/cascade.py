"""The Shane/Kast long-slit cascade, reduced step by step with PypeIt.

Frame types follow PypeIt's own rules for Kast (``shane_kast.check_frame_type``):
exposure time and lamp states decide, not ``OBSTYPE`` (biases say ``DARK``).
One frame may have several types: an arc is also a tilt frame, a dome flat is
pixel flat, illumination flat and slit trace. The setup is the arm
(``VERSION`` kastb/kastr), the disperser (``GRISM_N`` blue, ``GRATNG_N`` red)
and the dichroic (``BSPLIT_N``); the red grating tilt must match within a
tolerance. Biases serve an arm whatever the setup.

Each task is one PypeIt calibration step (``pypeit_steps.calib_one`` stopped
at bias, slits, tilts or flats) or one exposure's reduction, so calibrations
are cached steps reused by every science frame that needs them.
"""

from __future__ import annotations

from typing import Any

from soda_reduce.reduction.cascade import (
    SAME_NIGHT,
    WITHIN_3_NIGHTS,
    association,
    classification,
    data_source,
    param,
    same_setup,
)
from soda_reduce.reduction.keywords import Derivation, first_of, iso_time, mjd, night
from soda_reduce.reduction.rules import AllOf, AnyOf, Rule, kw
from soda_reduce.reduction.tasks import Cascade, cascade, task

LICK_LONGITUDE = -121.6429  # degrees east; Kast headers carry no site keywords
DOME_LAMPS = "12345"  # LAMPSTA1..5: the dome (flat) lamps
ARC_LAMPS = "ABCDEFGHIJK"  # LAMPSTAA..K: the arc lamps


def _any_on(lamps: str) -> Rule:
    return AnyOf(tuple(kw(f"LAMPSTA{c}").is_("on") for c in lamps))


def _all_off() -> Rule:
    return AllOf(tuple(~kw(f"LAMPSTA{c}").is_("on") for c in DOME_LAMPS + ARC_LAMPS))


def _arm(header: Any) -> str | None:
    version = str(header.get("VERSION") or "").strip().lower()
    return {"kastb": "blue", "kastr": "red"}.get(version)


def _dispname(header: Any) -> Any:
    arm = _arm(header)
    return header.get("GRISM_N") if arm == "blue" else header.get("GRATNG_N")


def _dispangle(header: Any) -> Any:
    value = header.get("GRTILT_P") if _arm(header) == "red" else None
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


ARM = Derivation("ARM", _arm, "blue or red, from VERSION (kastb, kastr)")
DISPNAME = Derivation("DISPNAME", _dispname, "GRISM_N (blue) or GRATNG_N (red)")
DISPANGLE = Derivation("DISPANGLE", _dispangle, "GRTILT_P, red arm only")

EXPOSURE = kw("EXPTIME")
BIAS = classification("BIAS", EXPOSURE.between(None, 0.001))
_ARCS = _any_on(ARC_LAMPS) & EXPOSURE.between(0.001, 61)
ARC = classification("ARC", _ARCS)
TILT = classification("TILT", _ARCS)
_DOME = _any_on(DOME_LAMPS) & EXPOSURE.between(0.001, None)
PIXELFLAT = classification("PIXELFLAT", _DOME)
ILLUMFLAT = classification("ILLUMFLAT", _DOME)
TRACE = classification("TRACE", _DOME)
# lamps off: a star; OBSTYPE must say OBJECT (a long dark is not science)
_SKY = _all_off() & kw("OBSTYPE").is_("OBJECT")
STANDARD = classification("STANDARD", _SKY & EXPOSURE.between(1, 61))
SCIENCE = classification("SCIENCE", _SKY & EXPOSURE.between(61.000001, None))

SETUP = ("ARM", "DISPNAME", "DICHROIC")
TILT_TOLERANCE = {"DISPANGLE": 25.0}  # GRTILT_P units; PypeIt: rtol 1e-3 of ~25,000


def _ladder(*keywords: str) -> Any:
    return same_setup(*keywords, near=TILT_TOLERANCE)


raw_bias = (
    data_source("raw_bias", BIAS)
    .group_by("ARM", "NIGHT")
    .match(same_setup("ARM"))  # biases serve an arm whatever the setup
    .build()
)
raw_trace = (
    data_source("raw_trace", TRACE)
    .group_by(*SETUP, "NIGHT", near=TILT_TOLERANCE)
    .match(_ladder(*SETUP))
    .build()
)
raw_pixelflat = (
    data_source("raw_pixelflat", PIXELFLAT)
    .group_by(*SETUP, "NIGHT", near=TILT_TOLERANCE)
    .match(_ladder(*SETUP))
    .build()
)
raw_illumflat = data_source("raw_illumflat", ILLUMFLAT).match(_ladder(*SETUP, "NIGHT")).build()
raw_arc = (
    data_source("raw_arc", ARC)
    .group_by(*SETUP, "NIGHT", near=TILT_TOLERANCE)
    .cluster_in_time(2.0)  # arcs taken hours apart are separate calibrations
    .match(_ladder(*SETUP))  # closest in time first
    .build()
)
raw_tilt = data_source("raw_tilt", TILT).match(_ladder(*SETUP, "NIGHT")).build()
STANDARD_WINDOW = (
    association()
    .level(0, SETUP, SAME_NIGHT, near=TILT_TOLERANCE)
    .level(1, SETUP, WITHIN_3_NIGHTS, near=TILT_TOLERANCE)
    .build()
)  # a standard star is valid for a few nights of the same setup, no longer
raw_standard = data_source("raw_standard", STANDARD).match(STANDARD_WINDOW).build()
raw_science = data_source("raw_science", SCIENCE).build()

ARC_PRODUCTS = ("KAST_WAVECALIB", "KAST_TILTS", "KAST_ARC", "KAST_TILTIMG")  # PypeIt loads all 4

bias = (
    task("bias")
    .recipe("kast.bias", "1")
    .describe("PypeIt's combined bias of one arm and night.")
    .main_input(raw_bias, min=1)
    .products("KAST_BIAS")
    .resources(cpu=1, memory_mb=2048, timeout_s=1800)
    .build()
)
slits = (
    task("slits")
    .recipe("kast.slits", "1")
    .describe("PypeIt's slit edges traced on the dome flats.")
    .main_input(raw_trace, min=1)
    .input(bias, "KAST_BIAS")
    .products("KAST_SLITS", "KAST_EDGES")
    .resources(cpu=1, memory_mb=4096, timeout_s=1800)
    .build()
)
arc = (
    task("arc")
    .recipe("kast.arc", "1")
    .describe("PypeIt's wavelength solution (template-matched) and line tilts from the arcs.")
    .main_input(raw_arc, min=1)
    .input(raw_tilt, "TILT", max=20, optional=True)
    .input(bias, "KAST_BIAS")
    .input(slits, ("KAST_SLITS", "KAST_EDGES"))
    .static("REID_ARXIV", match=("ARM", "DISPNAME"))
    .products(*ARC_PRODUCTS)
    .resources(cpu=1, memory_mb=4096, timeout_s=1800)
    .build()
)
flat = (
    task("flat")
    .recipe("kast.flat", "1")
    .describe("PypeIt's pixel and illumination flat; slit edges tweaked on it.")
    .main_input(raw_pixelflat, min=1)
    .input(raw_illumflat, "ILLUMFLAT", max=20, optional=True)
    .input(bias, "KAST_BIAS")
    .input(slits, ("KAST_SLITS", "KAST_EDGES"))
    .input(arc, ARC_PRODUCTS)
    .products("KAST_FLAT", "KAST_SLITS")
    .resources(cpu=1, memory_mb=4096, timeout_s=1800)
    .build()
)
_EXTRACTION = (
    param(
        "snr_thresh",
        float,
        10.0,
        "object detection threshold (PypeIt findobj)",
        minimum=1.0,
        maximum=1000.0,
    ),
    param(
        "boxcar_radius",
        float,
        1.5,
        "boxcar extraction radius in arcsec",
        minimum=0.1,
        maximum=20.0,
    ),
)
standard = (
    task("standard")
    .recipe("kast.standard", "1")
    .describe("The standard star reduced by PypeIt: 2-D and extracted 1-D spectra.")
    .main_input(raw_standard)
    .input(bias, "KAST_BIAS")
    .input(flat, ("KAST_FLAT", "KAST_SLITS"))
    .input(arc, ARC_PRODUCTS)
    .params(*_EXTRACTION)
    .products("KAST_SPEC1D", "KAST_SPEC2D")
    .resources(cpu=1, memory_mb=4096, timeout_s=3600)
    .build()
)
science = (
    task("science")
    .recipe("kast.science", "1")
    .describe(
        "The science exposure reduced by PypeIt (sky subtraction, extraction, the standard's "
        "trace as a crutch); the target's 1-D spectrum as a FITS table with a plot."
    )
    .main_input(raw_science)
    .input(bias, "KAST_BIAS")
    .input(flat, ("KAST_FLAT", "KAST_SLITS"))
    .input(arc, ARC_PRODUCTS)
    .input(standard, ("KAST_SPEC1D", "KAST_SPEC2D"), match=STANDARD_WINDOW, optional=True)
    .params(*_EXTRACTION)
    .products("SPECTRUM_1D", "KAST_SPEC1D", "KAST_SPEC2D")
    .science()
    .resources(cpu=1, memory_mb=4096, timeout_s=3600)
    .build()
)


def build_cascade() -> Cascade:
    return (
        cascade("kast", "1")
        .describe("Shane/Kast long-slit spectroscopy (blue and red arms), reduced by PypeIt.")
        .derive(
            ARM,
            DISPNAME,
            DISPANGLE,
            first_of("DICHROIC", "BSPLIT_N"),
            first_of("SLIT", "SLIT_N"),
            mjd("MJD"),
            night("NIGHT", default_longitude=LICK_LONGITUDE),
            iso_time("DATE"),
        )
        .tasks(bias, slits, arc, flat, standard, science)
        .subworkflow("calibrations", (bias, slits, arc, flat), "PypeIt calibration steps")
        .default_target(science)
        .build()
    )


CASCADE = build_cascade()
