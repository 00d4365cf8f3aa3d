"""A realistic raw CCD archive, generated: the data the service is developed and tested on.

Real archives are not tidy, so neither is this one: several nights of one
camera (DEMOCAM on DEMO-0.6m), header conventions that change from night to
night, calibrations missing on purpose, compressed and broken files.  A
``_truth/`` directory (never indexed by the service) tells tests what each
file is and what a perfect reduction of each science frame gives.

Pixel model, in electrons (e-) per binned pixel, then converted to ADU::

    raw_ADU = bias(b) + [Poisson(flat(f, b) * S + dark(b) * t) + CR + N(0, RN)] / gain

* ``bias(b)``: level ~1000 ADU (1003 in 2x2) plus a fixed pattern (column
  offsets, a few warm columns, a row ramp, an amplifier edge at the start of
  each row), the same every night for a binning.
* ``dark(b)``: 0.02 e-/s per unbinned pixel plus ~0.05% hot pixels at fixed
  places (2-60 e-/s); summed over 2x2 blocks when binned.
* ``flat(f, b)``: vignetting (radial, ~20% in the corners) x 3-5 dust donuts
  that differ per filter x 1% pixel response; mean exactly 1, and the 2x2 flat
  is the block average of the 1x1 one.
* ``S``: zero for biases and darks; uniform ~28000 e- (~20000 ADU) for
  flats; for science, the noise-free sky (8 e-/s in V, 12 in R, per unbinned
  pixel) plus Moffat stars (beta 3, seeing 1.5-2.5" per frame) from a fixed
  sky catalogue per field, projected through the frame's own TAN WCS.
* ``CR``: cosmic rays, a few sharp 1-4 pixel tracks per exposure, added after
  the Poisson draw (not part of the truth).
* gain 1.4 e-/ADU, read noise 9 e-; values rounded, clipped to [0, 65535] and
  stored as 16-bit unsigned (BITPIX=16, BZERO=32768).

The truth of a science frame is ``S`` (electrons over the exposure): exactly
``(raw - bias - dark * t / gain) * gain / flat`` without the noise.  Everything
is derived from ``seed``, so the same arguments give the same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from soda_reduce.pipelines.ccd import demo_fits as df
from soda_reduce.pipelines.ccd.demo_model import CAMERA, Exposure, InstrumentModel, expose
from soda_reduce.pipelines.ccd.demo_plan import (
    FIELDS,
    Field,
    FrameSpec,
    Gap,
    build_schedule,
    local_to_utc,
    night_label,
    schedule_gaps,
)
from soda_reduce.pipelines.ccd.demo_sky import (
    SKY_RATE,
    Catalogue,
    airmass,
    catalogue,
    mjd,
    sky_signal,
    star_signal,
    wcs_cards,
    wcs_from_cards,
)

TRUTH_DIR = "_truth"
MANIFEST = f"{TRUTH_DIR}/manifest.json"
FIELDS_FILE = f"{TRUTH_DIR}/fields.json"
TAG_FRAME = 41
TAG_EXTRA = 42

# Broken files in the last night's directory, and what reading each should report.
MALFORMED = {
    "empty.fits": ("empty", "empty file (0 bytes)"),
    "truncated_header.fits": ("truncated_header", "header ends before its END card"),
    "truncated_data.fits": ("truncated_data", "complete header but data shorter than declared"),
    "notes.fits": ("not_fits", "not a FITS file (plain text)"),
    "focus_0001.fits": ("unclassifiable", "valid image without IMAGETYP or OBJECT (focus frame)"),
}


@dataclass
class DemoSummary:
    """What was written: counts per category, raw paths and truth paths relative to root."""

    root: Path
    counts: dict[str, int] = field(default_factory=dict)
    paths: list[str] = field(default_factory=list)
    truth_paths: list[str] = field(default_factory=list)
    malformed: dict[str, str] = field(default_factory=dict)  # path -> expected problem
    gaps: list[str] = field(default_factory=list)
    manifest: str = MANIFEST

    def describe(self) -> str:
        """A few lines for people: what was written and what is deliberately wrong."""
        counts = ", ".join(f"{n} {cat.lower()}" for cat, n in self.counts.items())
        lines = [
            f"{len(self.paths)} raw files ({counts}), {len(self.truth_paths)} truth files",
            f"manifest: {self.root / self.manifest}",
            "calibration gaps:",
            *(f"  {g}" for g in self.gaps),
            "broken files:",
            *(f"  {path}: {problem}" for path, problem in self.malformed.items()),
        ]
        return "\n".join(lines)


@dataclass(frozen=True)
class _Frame:
    adu: np.ndarray
    cards: list[df.Card]
    truth: np.ndarray | None = None
    truth_cards: list[df.Card] | None = None
    mask: np.ndarray | None = None


class _Generator:
    """Renders frames for one archive; keeps the instrument model and catalogues."""

    def __init__(self, seed: int, size: int) -> None:
        self.seed = seed
        self.size = size
        self.model = InstrumentModel(seed, size)
        self.catalogues: dict[str, Catalogue] = {f.name: catalogue(seed, f, size) for f in FIELDS}

    def frame(self, spec: FrameSpec, tag: int = TAG_FRAME) -> _Frame:
        rng = np.random.default_rng([self.seed, tag, spec.night_index, spec.seq])
        shape = self.model.shape(spec.binning)
        if spec.kind == "science":
            return self._science(spec, rng, shape)
        signal = spec.level_e if spec.category == "FLAT" else None
        exp = expose(self.model, rng, spec.binning, spec.exptime, spec.filter, signal)
        return _Frame(exp.adu, df.raw_cards(spec, shape))

    def _science(self, spec: FrameSpec, rng: np.random.Generator, shape: tuple[int, int]) -> _Frame:
        assert spec.field is not None and spec.filter is not None
        wcs = wcs_cards(spec.field, spec.binning, self.size, rng)
        seeing = round(float(rng.uniform(1.5, 2.5)), 2)
        truth, exp = self._sky_exposure(spec, rng, shape, wcs, seeing, spec.field)
        mask = exp.saturated | exp.cosmic | self.model.hot_mask(spec.binning)
        extra = [("AIRMASS", airmass(spec.field, spec.start), "airmass at start"), *wcs]
        cards = df.raw_cards(spec, shape, extra)
        truth_cards = [
            ("DATE-OBS", df.iso_utc(spec), "[UTC] start of exposure"),
            ("MJD-OBS", round(mjd(spec.start), 8), "[d] MJD at start of exposure"),
            ("RAWFILE", spec.path, "raw frame"),
            ("OBJECT", spec.field.name, "target field"),
            ("FILTER", spec.filter, "filter"),
            ("BINNING", spec.binning, "on-chip binning"),
            ("EXPTIME", spec.exptime, "[s] exposure duration"),
            ("SEEING", seeing, "[arcsec] FWHM of the Moffat PSF"),
            ("SKYLEVEL", sky_signal(spec.filter, spec.binning, spec.exptime), "[e-] sky"),
            ("GAIN", CAMERA.gain, "[e-/ADU] gain used to make the raw frame"),
            *wcs,
        ]
        return _Frame(exp.adu, cards, truth, truth_cards, mask)

    def _sky_exposure(
        self,
        spec: FrameSpec,
        rng: np.random.Generator,
        shape: tuple[int, int],
        wcs: list[df.Card],
        seeing: float,
        sky_field: Field,
    ) -> tuple[np.ndarray, Exposure]:
        """Noise-free sky + stars through this WCS, and its exposure through the camera."""
        assert spec.filter is not None
        cat = self.catalogues[sky_field.name]
        stars = star_signal(
            cat, wcs_from_cards(wcs), shape, spec.filter, spec.exptime, seeing, spec.binning
        )
        truth = sky_signal(spec.filter, spec.binning, spec.exptime) + stars
        exp = expose(self.model, rng, spec.binning, spec.exptime, spec.filter, truth)
        return truth, exp

    def focus(self, spec: FrameSpec) -> _Frame:
        """A defocused star field with neither IMAGETYP nor OBJECT nor WCS in its header."""
        rng = np.random.default_rng([self.seed, TAG_EXTRA, spec.night_index, 1])
        shape = self.model.shape(spec.binning)
        wcs = wcs_cards(FIELDS[1], spec.binning, self.size, rng)
        _, exp = self._sky_exposure(spec, rng, shape, wcs, 7.0, FIELDS[1])
        return _Frame(exp.adu, df.raw_cards(spec, shape, classified=False))


def _entry(spec: FrameSpec, truth: str | None) -> dict:
    return {
        "path": spec.path,
        "category": spec.category,
        "night": spec.night,
        "binning": spec.binning,
        "filter": spec.filter,
        "exptime": spec.exptime,
        "object": spec.field.name if spec.field else None,
        "date_obs": df.iso_utc(spec),
        "imagetyp": spec.style.imagetyp[spec.kind],
        "style": spec.style.name,
        "compression": spec.compression,
        "truth": truth,
        "malformed": None,
        "problem": None,
    }


def _malformed_entry(path: str, night: str, kind: str, problem: str) -> dict:
    """Same keys as a good frame; only the focus frame has a known setup."""
    focus = kind == "unclassifiable"
    return {
        "path": path,
        "category": None,
        "night": night,
        "binning": 1 if focus else None,
        "filter": "V" if focus else None,
        "exptime": 5.0 if focus else None,
        "object": None,
        "date_obs": None,
        "imagetyp": None,
        "style": None,
        "compression": None,
        "truth": None,
        "malformed": kind,
        "problem": problem,
    }


def _raw_bytes(spec: FrameSpec, frame: _Frame) -> bytes:
    if spec.compression == "rice":
        return df.rice_bytes(frame.adu, frame.cards)
    raw = df.frame_bytes(frame.adu, frame.cards)
    return df.gzip_bytes(raw) if spec.compression == "gzip" else raw


def _malformed_files(gen: _Generator, last: int) -> dict[str, bytes]:
    """The broken files of the last night, built from frames that would otherwise be valid."""
    bias = FrameSpec(last, "bias", 1, None, 0.0, local_to_utc(last, 16.9), seq=9001)
    bias_frame = gen.frame(bias, TAG_EXTRA)
    head_len = df.header_length(bias_frame.cards)
    science = FrameSpec(
        last, "science", 1, "V", 120.0, local_to_utc(last, 28.6), FIELDS[1], seq=9002
    )
    sci_frame = gen.frame(science, TAG_EXTRA)
    sci_bytes = df.frame_bytes(sci_frame.adu, sci_frame.cards)
    sci_head = df.header_length(sci_frame.cards)
    data_len = sci_frame.adu.size * 2
    focus = FrameSpec(last, "science", 1, "V", 5.0, local_to_utc(last, 20.6), seq=9003)
    focus_frame = gen.focus(focus)
    notes = (
        f"Observing log {night_label(last)}\n"
        "Clear, seeing ~2 arcsec. Focus run at 20:36 local.\n"
        "No flats tonight (clouds at dusk). R 2x2 filter slot flats still missing.\n"
    )
    return {
        "empty.fits": b"",
        "truncated_header.fits": df.frame_bytes(bias_frame.adu, bias_frame.cards)[
            : head_len // 2 + 37
        ],
        "truncated_data.fits": sci_bytes[: sci_head + data_len // 2],
        "notes.fits": notes.encode("utf-8"),
        "focus_0001.fits": df.frame_bytes(focus_frame.adu, focus_frame.cards),
    }


def generate_demo_archive(
    root: Path,
    nights: int = 3,
    seed: int = 1,
    science_per_night: int = 4,
    size: int = 256,
    progress: Callable[[int, int], None] | None = None,
) -> DemoSummary:
    """Write the demo archive under ``root``; same arguments, same bytes.

    ``progress(done, total)`` is called after each raw file.  Existing files
    with the same names are overwritten; nothing else under ``root`` is touched.
    """
    if nights < 1:
        raise ValueError("nights must be at least 1")
    if size < 32 or size % 2:
        raise ValueError("size must be an even number of pixels, at least 32")
    if not 1 <= science_per_night <= 100:
        raise ValueError("science_per_night must be between 1 and 100")
    if seed < 0:
        raise ValueError("seed must be non-negative")
    root = Path(root)
    schedule = build_schedule(nights, seed, science_per_night)
    gen = _Generator(seed, size)
    total = len(schedule) + len(MALFORMED)
    summary = DemoSummary(root=root, counts={c: 0 for c in ("BIAS", "DARK", "FLAT", "SCIENCE")})
    entries: list[dict] = []

    def done_one(path: str) -> None:
        summary.paths.append(path)
        if progress is not None:
            progress(len(summary.paths), total)

    for spec in schedule:
        frame = gen.frame(spec)
        df.write_bytes(root / spec.path, _raw_bytes(spec, frame))
        truth_path = None
        if frame.truth is not None:
            assert frame.mask is not None and frame.truth_cards is not None
            truth_path = f"{TRUTH_DIR}/{spec.night}/{spec.stem}_truth.fits"
            data = df.truth_bytes(frame.truth, frame.mask, frame.truth_cards)
            df.write_bytes(root / truth_path, data)
            summary.truth_paths.append(truth_path)
        summary.counts[spec.category] += 1
        entries.append(_entry(spec, truth_path))
        done_one(spec.path)

    last = nights - 1
    for name, data in _malformed_files(gen, last).items():
        rel = f"{night_label(last)}/{name}"
        df.write_bytes(root / rel, data)
        kind, problem = MALFORMED[name]
        summary.malformed[rel] = problem
        entries.append(_malformed_entry(rel, night_label(last), kind, problem))
        done_one(rel)
    summary.counts["MALFORMED"] = len(MALFORMED)

    gaps = schedule_gaps(nights)
    summary.gaps = [f"gap {g.id} ({g.kind}, {', '.join(g.nights)}): {g.description}" for g in gaps]
    _write_json(root / FIELDS_FILE, {"fields": [c.to_dict() for c in gen.catalogues.values()]})
    _write_json(
        root / MANIFEST,
        {
            "generator": "soda_reduce.pipelines.ccd.demo",
            "format": 1,
            "seed": seed,
            "nights": nights,
            "science_per_night": science_per_night,
            "size": size,
            "instrument": _instrument(gen.model),
            "fields": FIELDS_FILE,
            "gaps": [_gap_dict(g, entries) for g in gaps],
            "files": entries,
        },
    )
    return summary


def _instrument(model: InstrumentModel) -> dict:
    cam = model.camera
    return {
        "INSTRUME": "DEMOCAM",
        "TELESCOP": "DEMO-0.6m",
        "gain": cam.gain,
        "read_noise": cam.read_noise,
        "bias_level": {str(b): cam.bias_level(b) for b in (1, 2)},
        "dark_rate": cam.dark_rate,
        "saturate": cam.saturate,
        "pixel_scale": cam.pixel_scale,
        "sky_rate": SKY_RATE,
    }


def _gap_dict(gap: Gap, entries: list[dict]) -> dict:
    """A gap with the science frames it affects, so tests can check the planner's verdict."""
    science = [e for e in entries if e["category"] == "SCIENCE"]
    if gap.kind == "no_bias_2x2":
        hit = [e for e in science if e["night"] in gap.nights and e["binning"] == 2]
    elif gap.kind == "no_flat_R_2x2":
        hit = [e for e in science if e["filter"] == "R" and e["binning"] == 2]
    else:
        hit = [e for e in science if e["night"] in gap.nights]
    return {**asdict(gap), "affects": [e["path"] for e in hit]}


def _write_json(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
