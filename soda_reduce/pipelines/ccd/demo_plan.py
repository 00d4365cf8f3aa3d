"""The observing schedule of the demo archive: which frames, when, named how.

Kept apart from the pixel model so the calendar (nights, local times, header
conventions, deliberate calibration gaps) can be read on its own: it is what
the planner is tested against.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta

import numpy as np

SITE_LONG = -70.7375  # degrees east (negative = west)
SITE_LAT = -30.2407
FIRST_NIGHT = date(2024, 1, 4)
# Local mean solar time = UTC + longitude / 15 h (about UTC - 4h43m here).
UTC_OFFSET = timedelta(hours=SITE_LONG / 15.0)

FILTERS = ("V", "R")
BINNINGS = (1, 2)
# Science (filter, binning) cycle; with four frames a night every combination occurs.
SCIENCE_COMBOS = (("V", 1), ("R", 1), ("V", 2), ("R", 2))

N_BIAS = 5
N_DARK = 3
N_FLAT = 5
DARK_EXPTIME = 300.0
SCIENCE_EXPTIME = 120.0
READOUT_S = {1: 8.0, 2: 3.0}

# Tags keep the random streams of different purposes independent of each other.
TAG_TIME = 11


@dataclass(frozen=True)
class Field:
    """A real sky field the science frames point at."""

    name: str
    ra: float
    dec: float

    @property
    def slug(self) -> str:
        return self.name.replace(" ", "")


FIELDS = (
    Field("NGC 2244", 97.98, 4.94),
    Field("M67", 132.825, 11.8),
    Field("NGC 3532", 166.41, -58.75),
)


@dataclass(frozen=True)
class NightStyle:
    """How the software in use on a night spells its headers (archives mix these)."""

    name: str
    imagetyp: dict[str, str]
    exposure_key: str  # EXPTIME or EXPOSURE
    binning_key: str  # XBINNING (with YBINNING) or CCDSUM
    naming: str  # "maxim" (descriptive names) or "sequence" (running numbers)
    filter_on_darks: bool  # MaxIm writes the filter wheel position on every frame


STYLES = (
    NightStyle(
        "maxim",
        {
            "bias": "Bias Frame",
            "dark": "Dark Frame",
            "skyflat": "Flat Field",
            "domeflat": "Flat Field",
            "science": "Light Frame",
        },
        "EXPTIME",
        "XBINNING",
        "maxim",
        True,
    ),
    NightStyle(
        "observatory",
        {
            "bias": "BIAS",
            "dark": "DARK",
            "skyflat": "SKYFLAT",
            "domeflat": "DOMEFLAT",
            "science": "OBJECT",
        },
        "EXPTIME",
        "CCDSUM",
        "sequence",
        False,
    ),
    NightStyle(
        "observatory-lower",
        {
            "bias": " zero ",
            "dark": " dark ",
            "skyflat": " flat ",
            "domeflat": " flat ",
            "science": " object ",
        },
        "EXPOSURE",
        "XBINNING",
        "sequence",
        False,
    ),
)

CATEGORY = {
    "bias": "BIAS",
    "dark": "DARK",
    "skyflat": "FLAT",
    "domeflat": "FLAT",
    "science": "SCIENCE",
}


@dataclass(frozen=True)
class FrameSpec:
    """One raw frame to write; ``seq`` and ``name`` are set once the night is sorted."""

    night_index: int
    kind: str  # bias / dark / skyflat / domeflat / science
    binning: int
    filter: str | None
    exptime: float
    start: datetime  # UTC, start of exposure
    field: Field | None = None
    level_e: float = 0.0  # flats: mean illumination in electrons per binned pixel
    compression: str | None = None  # None, "gzip" or "rice"
    seq: int = 0
    name: str = ""

    @property
    def night(self) -> str:
        return night_label(self.night_index)

    @property
    def category(self) -> str:
        return CATEGORY[self.kind]

    @property
    def style(self) -> NightStyle:
        return style_for(self.night_index)

    @property
    def path(self) -> str:
        return f"{self.night}/{self.name}"

    @property
    def stem(self) -> str:
        return self.name.removesuffix(".gz").removesuffix(".fz").removesuffix(".fits")


@dataclass(frozen=True)
class Gap:
    """A deliberate hole in the calibrations, and what the planner should make of it."""

    id: int
    kind: str
    description: str
    nights: list[str]
    expect: str  # "fallback" (another night's calibration) or "incomplete"


def night_label(index: int) -> str:
    return (FIRST_NIGHT + timedelta(days=index)).isoformat()


def style_for(night_index: int) -> NightStyle:
    return STYLES[night_index % len(STYLES)]


def local_to_utc(night_index: int, local_hours: float) -> datetime:
    """UTC of a local mean solar time counted in hours from midnight starting the night label.

    Hours beyond 24 fall on the next calendar day (science at 02h is 26.0).
    """
    day = datetime.combine(FIRST_NIGHT + timedelta(days=night_index), datetime.min.time(), UTC)
    moment = day + timedelta(hours=local_hours) - UTC_OFFSET
    return moment.replace(microsecond=(moment.microsecond // 1000) * 1000)


def _seconds(rng: np.random.Generator, low: float, high: float) -> float:
    """A random duration rounded to milliseconds, so DATE-OBS strings are exact."""
    return round(float(rng.uniform(low, high)), 3)


def has_flats(night_index: int, nights: int) -> bool:
    """Gap 2: the third night (index 2) has no flats at all."""
    return not (nights >= 3 and night_index == 2)


def flat_kind(night_index: int, filt: str) -> str:
    """Sky flats at dusk or dome flats in the afternoon, alternating by night and filter."""
    return "skyflat" if (night_index + FILTERS.index(filt)) % 2 == 0 else "domeflat"


def _sequence(
    rng: np.random.Generator, t0: datetime, specs: list[FrameSpec], gap: tuple[float, float]
) -> list[FrameSpec]:
    """Lay frames back to back from ``t0``: exposure + readout + a little idle time."""
    out: list[FrameSpec] = []
    t = t0
    for spec in specs:
        out.append(replace(spec, start=t))
        t += timedelta(seconds=spec.exptime + READOUT_S[spec.binning] + _seconds(rng, *gap))
    return out


def _night_frames(
    night_index: int, nights: int, seed: int, science_per_night: int
) -> list[FrameSpec]:
    rng = np.random.default_rng([seed, TAG_TIME, night_index])
    epoch = local_to_utc(night_index, 0.0)
    frames: list[FrameSpec] = []

    def base(kind: str, binning: int, filt: str | None, exptime: float) -> FrameSpec:
        return FrameSpec(night_index, kind, binning, filt, exptime, epoch)

    # Afternoon: dome flats (15h), biases (16h), darks (16h30, first night only: gap 3).
    dome = [
        base("domeflat", b, f, 8.0 if f == "V" else 4.0)
        for f in FILTERS
        if has_flats(night_index, nights) and flat_kind(night_index, f) == "domeflat"
        for b in BINNINGS
        if not (f == "R" and b == 2)  # gap 4: never any R 2x2 flat
        for _ in range(N_FLAT)
    ]
    frames += _sequence(rng, local_to_utc(night_index, 15.0 + _seconds(rng, 0, 0.2)), dome, (2, 6))
    biases = [
        base("bias", b, None, 0.0)
        for b in BINNINGS
        if not (night_index == 1 and b == 2)  # gap 1: no 2x2 biases on night 1
        for _ in range(N_BIAS)
    ]
    frames += _sequence(
        rng, local_to_utc(night_index, 16.0 + _seconds(rng, 0, 0.15)), biases, (1, 3)
    )
    if night_index == 0:  # gap 3: darks only on the first night
        darks = [base("dark", b, None, DARK_EXPTIME) for b in BINNINGS for _ in range(N_DARK)]
        frames += _sequence(rng, local_to_utc(night_index, 16.5), darks, (1, 3))

    # Dusk (~19h05 local, just after sunset in January): sky flats, exposures lengthening.
    t = local_to_utc(night_index, 19.08 + _seconds(rng, 0, 0.05))
    for f in FILTERS:
        if not has_flats(night_index, nights) or flat_kind(night_index, f) != "skyflat":
            continue
        for b in BINNINGS:
            if f == "R" and b == 2:
                continue
            exptime = round(1.5 / b**2 + float(rng.uniform(0, 0.5)), 1)
            for _ in range(N_FLAT):
                frames.append(replace(base("skyflat", b, f, exptime), start=t))
                t += timedelta(seconds=exptime + READOUT_S[b] + _seconds(rng, 2, 5))
                exptime = round(exptime * 1.35, 1)

    # Night: science from 21h to 04h local, fields in order of right ascension.
    slot = 7.0 / science_per_night
    last = nights - 1
    for k in range(science_per_night):
        filt, binning = SCIENCE_COMBOS[k % len(SCIENCE_COMBOS)]
        if night_index == last and k == science_per_night - 1:
            filt, binning = "R", 2  # gap 4: an R 2x2 science frame that cannot be flat-fielded
        field = FIELDS[k * len(FIELDS) // science_per_night]
        jitter = float(rng.uniform(-0.2, 0.2)) * min(slot, 0.25)
        start = local_to_utc(night_index, 21.0 + (k + 0.5) * slot - 0.05 + jitter)
        frames.append(
            replace(base("science", binning, filt, SCIENCE_EXPTIME), start=start, field=field)
        )

    # Flat illumination levels (~20000 ADU at gain 1.4), drawn in time order.
    frames.sort(key=lambda s: s.start)
    return [
        replace(s, level_e=float(rng.uniform(25000, 31000))) if s.category == "FLAT" else s
        for s in frames
    ]


def _name(spec: FrameSpec, counters: dict[str, int]) -> str:
    style = spec.style
    if style.naming == "sequence":
        stamp = spec.night.replace("-", "")
        base = f"demo{stamp}_{spec.seq:04d}"
    else:
        b = f"{spec.binning}x{spec.binning}"
        if spec.kind == "bias":
            prefix = f"bias_{b}"
        elif spec.kind == "dark":
            prefix = f"dark_{int(spec.exptime)}s_{b}"
        elif spec.category == "FLAT":
            prefix = f"flat_{spec.filter}_{b}"
        else:
            assert spec.field is not None
            prefix = f"{spec.field.slug}_{spec.filter}_{b}"
        counters[prefix] = counters.get(prefix, 0) + 1
        base = f"{prefix}_{counters[prefix]:03d}"
    suffix = {None: ".fits", "gzip": ".fits.gz", "rice": ".fits.fz"}[spec.compression]
    return base + suffix


def build_schedule(nights: int, seed: int, science_per_night: int) -> list[FrameSpec]:
    """Every raw frame of the archive, in time order, named and numbered."""
    fz_night = min(1, nights - 1)
    out: list[FrameSpec] = []
    for n in range(nights):
        counters: dict[str, int] = {}
        fz_done = False
        for seq, spec in enumerate(_night_frames(n, nights, seed, science_per_night), start=1):
            compression = None
            if n == 0 and spec.kind == "bias" and spec.binning == 1:
                compression = "gzip"
            elif n == fz_night and spec.kind == "science" and not fz_done:
                compression, fz_done = "rice", True
            spec = replace(spec, seq=seq, compression=compression)
            out.append(replace(spec, name=_name(spec, counters)))
    return out


def schedule_gaps(nights: int) -> list[Gap]:
    """The deliberate calibration gaps present for this number of nights."""
    labels = [night_label(n) for n in range(nights)]
    gaps: list[Gap] = []
    if nights >= 2:
        gaps.append(
            Gap(
                1,
                "no_bias_2x2",
                "no 2x2 biases on this night; its 2x2 frames must use another night's bias",
                [labels[1]],
                "fallback",
            )
        )
    if nights >= 3:
        gaps.append(
            Gap(
                2,
                "no_flats",
                "no flats at all on this night; its science must use another night's flats",
                [labels[2]],
                "fallback",
            )
        )
    if nights >= 2:
        gaps.append(
            Gap(
                3,
                "darks_first_night_only",
                "darks exist only on the first night; later nights must fall back to them",
                labels[1:],
                "fallback",
            )
        )
    gaps.append(
        Gap(
            4,
            "no_flat_R_2x2",
            "no R-filter 2x2 flat on any night, yet R 2x2 science exists: incomplete",
            labels,
            "incomplete",
        )
    )
    return gaps
