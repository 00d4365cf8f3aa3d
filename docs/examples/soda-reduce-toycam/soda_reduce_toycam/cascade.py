"""The TOYCAM cascade: a master dark per night and exposure time, then each science frame minus it.

TOYCAM writes its frame type in ``FRAMETYP`` (``dark``, ``object``) and no
``IMAGETYP``, so the built-in ``ccd`` pipeline (which claims every file with an
``IMAGETYP``) leaves its files alone. It has no shutter-closed bias: a dark of
the same exposure time carries both the bias level and the dark current, so
science frames are matched to darks of equal ``EXPTIME``.
"""

from __future__ import annotations

from soda_reduce.reduction.cascade import classification, data_source, param, same_setup
from soda_reduce.reduction.keywords import iso_time, mjd, night
from soda_reduce.reduction.rules import kw
from soda_reduce.reduction.tasks import Cascade, cascade, task

SITE_LONGITUDE = -70.7  # degrees east: the headers carry no site keyword, the night needs one

# -- classification: what each claimed file is
DARK = classification("DARK", kw("FRAMETYP").is_("dark"))
SCIENCE = classification("SCIENCE", kw("FRAMETYP").is_("object"))

# -- data sources: what is reduced together, and how a product is matched to a frame
raw_dark = (
    data_source("raw_dark", DARK)
    .group_by("DETECTOR", "NIGHT", "EXPTIME")
    # same detector and exposure time: the same night, else within 3 nights, else any time
    .match(same_setup("DETECTOR", "EXPTIME"))
    .build()
)
raw_science = data_source("raw_science", SCIENCE).build()  # no grouping: one job per frame

# -- tasks: each runs one recipe; the recipes in recipes.py are declared from these
dark = (
    task("dark")
    .recipe("toycam.master_dark", "1")
    .describe("Dark frames of one night and exposure time combined pixel by pixel.")
    .main_input(raw_dark, min=3)
    .params(
        param("combine", str, "median", "how the darks are combined", choices=("median", "mean")),
    )
    .products("MASTER_DARK")
    .resources(cpu=1, memory_mb=512, timeout_s=300)
    .build()
)
science = (
    task("science")
    .recipe("toycam.science", "1")
    .describe("The master dark of the same exposure time subtracted; dead columns blanked.")
    .main_input(raw_science)
    .input(dark, "MASTER_DARK")  # matched by raw_dark's rule: same DETECTOR and EXPTIME
    .static("BAD_COLUMNS", match=("DETECTOR",))  # from static/library.json
    .products("REDUCED_SCIENCE")
    .science()
    .resources(cpu=1, memory_mb=512, timeout_s=300)
    .build()
)


def build_cascade() -> Cascade:
    return (
        cascade("toycam", "1")
        .describe("TOYCAM imaging: master darks, dark-subtracted science frames.")
        .derive(
            mjd("MJD"),
            night("NIGHT", default_longitude=SITE_LONGITUDE),
            iso_time("DATE"),
        )
        .tasks(dark, science)
        .subworkflow("calibrations", (dark,), "master darks")
        .default_target(science)
        .build()
    )


CASCADE = build_cascade()
