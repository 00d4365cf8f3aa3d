"""Header conventions of four instruments, for the archive at scale (``scale_archive``).

Each instrument is two functions: the cards its files share on a night with one setup
(computed once per night and setup: archives repeat most cards word for word), and the
cards of one file (times, exposure, pointing, counters). The demo camera spells its
cards as ``demo_fits`` does (MaxIm DL); the others follow an observatory CCD with
``CCDSUM`` and a WCS, the Kast spectrograph of ``data/kast`` (150 cards, 5 blocks), and
an ESO imager (``HIERARCH ESO`` cards, the odd long string in CONTINUE cards).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from soda_reduce.pipelines.ccd.demo_plan import SITE_LAT, SITE_LONG

FIELDS = (("NGC 2244", 97.98, 4.94), ("M67", 132.825, 11.8), ("NGC 3532", 166.41, -58.75))
LONG_STRING_EVERY = 40  # one ESO file in this many has a title long enough for CONTINUE
MJD_EPOCH = datetime(1858, 11, 17, tzinfo=UTC)

Cards = list[str]


@dataclass(frozen=True)
class FileSpec:
    """One file of the archive: enough to write it again (``revision`` > 0: rewritten)."""

    path: Path
    instrument: str
    night: int
    seq: int
    kind: str
    setup: int
    shape: tuple[int, int]
    revision: int = 0


# -- cards ---------------------------------------------------------------------


def card(key: str, value: object, comment: str = "") -> str:
    """One fixed-format card (strings from column 11, numbers right-justified to 30)."""
    if isinstance(value, bool):
        text = f"{'T' if value else 'F':>20}"
    elif isinstance(value, str):
        quoted = "'" + value.replace("'", "''").ljust(8) + "'"
        text = f"{quoted:<20}"
    elif isinstance(value, float):
        text = f"{repr(value).upper():>20}"
    else:
        text = f"{value:>20}"
    image = f"{key:<8}= {text}" + (f" / {comment}" if comment else "")
    return image[:80].ljust(80)


def hierarch(key: str, value: object, comment: str = "") -> str:
    """``HIERARCH ESO ...`` card (ESO's convention for long keywords)."""
    if isinstance(value, bool):
        text = "T" if value else "F"
    elif isinstance(value, str):
        text = "'" + value.replace("'", "''") + "'"
    else:
        text = repr(value).upper() if isinstance(value, float) else str(value)
    image = f"HIERARCH {key} = {text}" + (f" / {comment}" if comment else "")
    return image[:80].ljust(80)


def long_string(key: str, value: str) -> Cards:
    """A value longer than a card, in the CONTINUE convention (no quotes in ``value``)."""
    parts = [value[i : i + 66] for i in range(0, len(value), 66)]
    cards = []
    for n, part in enumerate(parts):
        text = "'" + part + ("&" if n < len(parts) - 1 else "") + "'"
        cards.append((f"{key:<8}= " if n == 0 else "CONTINUE  ") + text)
    return [c.ljust(80) for c in cards]


def _iso(moment: datetime) -> str:
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}"


def structural(shape: tuple[int, int]) -> Cards:
    ny, nx = shape
    return [
        card("SIMPLE", True, "file does conform to FITS standard"),
        card("BITPIX", 16, "number of bits per data pixel"),
        card("NAXIS", 2, "number of data axes"),
        card("NAXIS1", nx, "length of data axis 1"),
        card("NAXIS2", ny, "length of data axis 2"),
        card("BZERO", 32768, "offset data range to that of unsigned short"),
        card("BSCALE", 1, "default scaling factor"),
    ]


# -- instruments: (static cards of a night and setup, cards of one file) ---------------

Style = tuple[Callable[[FileSpec], Cards], Callable[[FileSpec, datetime, float], Cards]]


def _pointing(spec: FileSpec) -> tuple[str, float, float]:
    name, ra, dec = FIELDS[(spec.night + spec.seq) % len(FIELDS)]
    return name, ra, dec


def _democam_night(spec: FileSpec) -> Cards:
    b = 1 + spec.setup % 2
    return [
        card("XBINNING", b, "binning factor in width"),
        card("YBINNING", b, "binning factor in height"),
        card("XPIXSZ", 9.0 * b, "[um] pixel width including binning"),
        card("YPIXSZ", 9.0 * b, "[um] pixel height including binning"),
        card("INSTRUME", "DEMOCAM", "camera"),
        card("TELESCOP", "DEMO-0.6m", "telescope"),
        card("OBSERVAT", "Demo Observatory", "observatory"),
        card("SITELAT", SITE_LAT, "[deg] site latitude"),
        card("SITELONG", SITE_LONG, "[deg] site longitude, east positive"),
        card("GAIN", 1.4, "[e-/ADU] detector gain"),
        card("RDNOISE", 9.0, "[e-] readout noise"),
        card("READOUTM", "Normal", "readout mode"),
        card("SET-TEMP", -20.0, "[C] CCD temperature setpoint"),
        card("SATURATE", 65535, "[ADU] saturation level"),
        card("SWCREATE", "MaxIm DL Version 6.40", "software that created this file"),
    ]


def _democam_file(spec: FileSpec, start: datetime, exptime: float) -> Cards:
    kind = {"bias": "Bias Frame", "dark": "Dark Frame", "flat": "Flat Field"}
    cards = [
        card("DATE-OBS", _iso(start), "[UTC] start of exposure"),
        card("MJD-OBS", round((start - MJD_EPOCH).total_seconds() / 86400, 8), "[d] MJD"),
        card("EXPTIME", exptime, "[s] exposure duration"),
        card("IMAGETYP", kind.get(spec.kind, "Light Frame"), "type of image"),
        card("FILTER", "VR"[spec.setup // 2 % 2], "filter wheel position"),
        card("CCD-TEMP", round(-20 + (spec.seq % 7 - 3) * 0.05, 2), "[C] CCD temperature"),
    ]
    if spec.kind in ("science", "arc"):
        name, ra, dec = _pointing(spec)
        cards[4:4] = [card("OBJECT", name, "target field"), card("RA", ra), card("DEC", dec)]
    return cards


def _obscam_night(spec: FileSpec) -> Cards:
    b = 1 + spec.setup % 2
    return [
        card("CCDSUM", f"{b} {b}", "on-chip binning"),
        card("INSTRUME", "OBSCAM", "instrument"),
        card("TELESCOP", "OBS-1.0m", "telescope"),
        card("OBSERVAT", "Example Observatory", "observatory"),
        card("DETECTOR", "e2v CCD231-84", "detector"),
        card("DETSIZE", "[1:4096,1:4112]", "detector size"),
        card("DATASEC", "[51:4146,1:4112]", "data section"),
        card("BIASSEC", "[4147:4196,1:4112]", "overscan section"),
        card("TRIMSEC", "[51:4146,2:4111]", "useful section"),
        card("GAIN", 1.52, "[e-/ADU]"),
        card("RDNOISE", 4.1, "[e-]"),
        card("EQUINOX", 2000.0),
        card("RADESYS", "ICRS"),
        card("PROPID", f"2024A-{100 + spec.night % 20:03d}", "proposal"),
        card("OBSERVER", ("A. Smith", "B. O'Neil", "C. Wu")[spec.night % 3]),
        "COMMENT   Example Observatory data acquisition system v4.2".ljust(80),
        "HISTORY   dewar filled at start of night".ljust(80),
    ]


def _obscam_file(spec: FileSpec, start: datetime, exptime: float) -> Cards:
    kind = {"bias": "BIAS", "dark": "DARK", "flat": "DOMEFLAT", "arc": "SKYFLAT"}
    name, ra, dec = _pointing(spec)
    cards = [
        card("DATE-OBS", _iso(start), "[UTC] start of exposure"),
        card("MJD-OBS", round((start - MJD_EPOCH).total_seconds() / 86400, 8)),
        card("EXPTIME", exptime, "[s] exposure"),
        card("IMAGETYP", kind.get(spec.kind, "OBJECT")),
        card("FILTER", "ugriz"[spec.setup % 5], "filter"),
        card("OBJECT", name if spec.kind == "science" else spec.kind),
        card("AIRMASS", round(1.0 + (spec.seq % 50) / 40, 4)),
        card("DOMETEMP", round(12.0 + (spec.seq % 9) / 10, 1), "[C]"),
        card("EXPID", spec.night * 10000 + spec.seq, "exposure number"),
    ]
    if spec.kind == "science":
        cards += [
            card("CTYPE1", "RA---TAN"),
            card("CTYPE2", "DEC--TAN"),
            card("CRVAL1", ra),
            card("CRVAL2", dec),
            card("CRPIX1", 2048.5),
            card("CRPIX2", 2056.5),
            card("CD1_1", -7.5e-05),
            card("CD1_2", 1.2e-07),
            card("CD2_1", 1.1e-07),
            card("CD2_2", 7.5e-05),
        ]
    return cards


def _kast_night(spec: FileSpec) -> Cards:
    arm = "kastb" if spec.setup % 2 == 0 else "kastr"
    cards = [
        card("CRVAL1U", 0, "COLUMN ORIGIN"),
        card("CRVAL2U", 1260, "ROW ORIGIN"),
        card("CDELT1U", 1, "COLUMN CHANGE PER PIXEL"),
        card("CDELT2U", -1, "ROW CHANGE PER PIXEL"),
        card("UGEOM", 6, "UCAM READOUT GEOMETRY"),
        card("DGEOM", 6, "DESCRAMBLE GEOMETRY"),
        card("AMPSROW", 2, "AMPLIFIERS PER ROW"),
        card("AMPSCOL", 1, "AMPLIFIERS PER COLUMN"),
        "COMMENT    Real Value = FITS*BSCALE+BZERO".ljust(80),
        card("PROGRAM", "NEWCAM", "New Lick Camera"),
        card("VERSION", arm, "Data acquisition version"),
        card("DATASEC", "[1:2048,1:350]", "IRAF/NOAO-style data section"),
        "COMMENT End of cards hard-coded in fits_cards".ljust(80),
        "COMMENT Begin of cards from other times".ljust(80),
    ]
    # the controller and telescope state Kast writes with every frame
    cards += [card(f"TCPR{i}", i % 5, "CONTROLLER REGISTER") for i in range(1, 41)]
    cards += [
        card(f"VOLT{i:02d}", round(-12.5 + i * 0.25, 2), "[V] BIAS VOLTAGE") for i in range(30)
    ]
    cards += [
        card("GRISM_N", ("600/4310", "452/3306")[spec.setup // 2 % 2], "grism"),
        card("GRATNG_N", ("600/7500", "830/8460")[spec.setup // 2 % 2], "grating"),
        card("SLIT_N", ("1.0 arcsec", "2.0 arcsec")[spec.setup // 4 % 2], "slit"),
        card("BSPLIT_N", "d55", "dichroic"),
        card("OBSERVAT", "Lick", "observatory"),
        card("TELESCOP", "Shane 3m", "telescope"),
    ]
    return cards


def _kast_file(spec: FileSpec, start: datetime, exptime: float) -> Cards:
    obstype = {"bias": "BIAS", "dark": "DARK", "flat": "FLAT", "arc": "ARC"}
    name, ra, dec = _pointing(spec)
    cards = [
        card("OBSNUM", spec.seq + 1, "OBSERVATION NUMBER"),
        card("IDNUM", spec.night, "IMAGE ID"),
        card("OBSTYPE", obstype.get(spec.kind, "OBJECT"), "IMAGE TYPE"),
        card("EXPTIME", round(exptime), "Exp time (not counting shutter error)"),
        card("TSEC", 1432085758 + spec.night * 86400 + spec.seq * 90, "CLOCK TICK - SECONDS"),
        card("DATE", _iso(start)[:-1], "UT of CCD readout & descramble"),
        card("DATE-OBS", _iso(start), "UT of exposure start"),
        card("OBJECT", name if spec.kind == "science" else spec.kind.title()),
        card("RA", f"{int(ra / 15):02d}:{int(ra * 4 % 60):02d}:{ra * 240 % 60:05.2f}"),
        card("DEC", f"{int(dec):+03d}:{int(abs(dec) * 60 % 60):02d}:00.0"),
        card("AIRMASS", round(1.0 + (spec.seq % 40) / 30, 3)),
        card("LAMPSTAC", "1" if spec.kind == "arc" else "0", "ARC LAMP STATUS"),
    ]
    return cards


def _eso_night(spec: FileSpec) -> Cards:
    b = 1 + spec.setup % 2
    cards = [
        card("EXTEND", True),
        card("ORIGIN", "ESO-LASILLA", "European Southern Observatory"),
        card("TELESCOP", "ESO-3.6", "ESO Telescope designation"),
        card("INSTRUME", "EFOSC", "Instrument used"),
        card("PI-COI", "UNKNOWN", "PI-COI name"),
        card("EQUINOX", 2000.0),
        card("RADESYS", "FK5"),
        hierarch("ESO DET BITS", 16, "Bits per pixel readout"),
        hierarch("ESO DET CHIP1 ID", "ccd40", "Detector chip identification"),
        hierarch("ESO DET CHIP1 NX", 2048, "# of pixels along X"),
        hierarch("ESO DET CHIP1 NY", 2048, "# of pixels along Y"),
        hierarch("ESO DET WIN1 BINX", b, "Binning factor along X"),
        hierarch("ESO DET WIN1 BINY", b, "Binning factor along Y"),
        hierarch("ESO DET OUT1 GAIN", 1.18, "Conversion from electrons to ADU"),
        hierarch("ESO DET OUT1 RON", 8.2, "Readout noise per output (e-)"),
        hierarch("ESO INS FILT1 NAME", ("B#639", "V#641", "R#642")[spec.setup // 2 % 3]),
        hierarch("ESO INS GRIS1 NAME", "Free", "Grism name"),
        hierarch("ESO INS SLIT1 NAME", "Free", "Slit name"),
        hierarch("ESO OBS PROG ID", f"0{110 + spec.night % 4}.C-{spec.night % 900:04d}(A)"),
    ]
    cards += [hierarch(f"ESO TEL AMBI WINDSP{i}", round(3.5 + i / 10, 2)) for i in range(20)]
    cards += [hierarch(f"ESO INS TEMP{i} VAL", round(11.2 + i / 7, 2), "[C]") for i in range(30)]
    return cards


def _eso_file(spec: FileSpec, start: datetime, exptime: float) -> Cards:
    dpr = {"bias": "BIAS", "dark": "DARK", "flat": "FLAT,SKY", "arc": "STD"}
    name, ra, dec = _pointing(spec)
    cards = [
        card("DATE-OBS", _iso(start), "Observing date"),
        card("MJD-OBS", round((start - MJD_EPOCH).total_seconds() / 86400, 8), "Obs start"),
        card("EXPTIME", exptime, "Integration time"),
        card("RA", ra, "[deg] telescope pointing"),
        card("DEC", dec, "[deg] telescope pointing"),
        card("OBJECT", name if spec.kind == "science" else spec.kind.upper()),
        card("ARCFILE", f"EFOSC.{_iso(start)}.fits", "Archive File Name"),
        hierarch("ESO DPR CATG", "SCIENCE" if spec.kind == "science" else "CALIB"),
        hierarch("ESO DPR TYPE", dpr.get(spec.kind, "OBJECT"), "Observation type"),
        hierarch("ESO DPR TECH", "IMAGE", "Observation technique"),
        hierarch("ESO TEL AIRM START", round(1.0 + (spec.seq % 45) / 35, 3)),
        hierarch("ESO OBS ID", 200000000 + spec.night * 1000 + spec.seq, "Observation block ID"),
    ]
    if spec.seq % LONG_STRING_EVERY == 0:
        title = f"Monitoring of open clusters, night {spec.night}, " + "deep multi-band " * 5
        cards += long_string("PROGTITL", title.strip())
    return cards


STYLES: dict[str, Style] = {
    "DEMOCAM": (_democam_night, _democam_file),
    "OBSCAM": (_obscam_night, _obscam_file),
    "KAST": (_kast_night, _kast_file),
    "EFOSC": (_eso_night, _eso_file),
}
