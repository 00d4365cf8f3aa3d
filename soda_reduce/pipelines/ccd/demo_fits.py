"""FITS bytes of the demo archive: headers in each night's convention, raw and truth files.

Raw frames are serialised by hand (header cards in camera order, BZERO right
after NAXIS2, big-endian int16 data) so the files look like a camera wrote
them and are byte-for-byte reproducible; astropy is used for the parts a
camera would not write itself (tile compression, the truth files).
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
from astropy.io import fits

from soda_reduce.pipelines.ccd.demo_model import CAMERA
from soda_reduce.pipelines.ccd.demo_plan import SITE_LAT, SITE_LONG, FrameSpec
from soda_reduce.pipelines.ccd.demo_sky import mjd, sexagesimal

Card = tuple[str, object, str]
BLOCK = 2880
STRUCTURAL = {"SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "BZERO", "BSCALE", "EXTEND"}


def iso_utc(spec: FrameSpec) -> str:
    t = spec.start
    return f"{t:%Y-%m-%dT%H:%M:%S}.{t.microsecond // 1000:03d}"


def raw_cards(
    spec: FrameSpec,
    shape: tuple[int, int],
    extra: list[Card] | None = None,
    classified: bool = True,
) -> list[Card]:
    """Header cards of one raw frame, spelled the way that night's software spells them.

    ``classified=False`` leaves out IMAGETYP and OBJECT (a focus frame).
    """
    style = spec.style
    ny, nx = shape
    b = spec.binning
    cards: list[Card] = [
        ("SIMPLE", True, "file does conform to FITS standard"),
        ("BITPIX", 16, "number of bits per data pixel"),
        ("NAXIS", 2, "number of data axes"),
        ("NAXIS1", nx, "length of data axis 1"),
        ("NAXIS2", ny, "length of data axis 2"),
        ("BZERO", 32768, "offset data range to that of unsigned short"),
        ("BSCALE", 1, "default scaling factor"),
        ("DATE-OBS", iso_utc(spec), "[UTC] start of exposure"),
        ("MJD-OBS", round(mjd(spec.start), 8), "[d] MJD at start of exposure"),
        (style.exposure_key, spec.exptime, "[s] exposure duration"),
    ]
    if classified:
        cards.append(("IMAGETYP", style.imagetyp[spec.kind], "type of image"))
    if spec.field is not None:
        if classified:
            cards.append(("OBJECT", spec.field.name, "target field"))
        cards += [
            ("RA", spec.field.ra, "[deg] requested pointing"),
            ("DEC", spec.field.dec, "[deg] requested pointing"),
        ]
        if style.name == "maxim":
            cards += [
                ("OBJCTRA", sexagesimal(spec.field.ra, hours=True), "nominal RA"),
                ("OBJCTDEC", sexagesimal(spec.field.dec, hours=False), "nominal Dec"),
            ]
    filt = spec.filter if spec.filter is not None else ("V" if style.filter_on_darks else None)
    if filt is not None:
        cards.append(("FILTER", filt, "filter wheel position"))
    if style.binning_key == "CCDSUM":
        cards.append(("CCDSUM", f"{b} {b}", "on-chip binning"))
    else:
        cards += [
            ("XBINNING", b, "binning factor in width"),
            ("YBINNING", b, "binning factor in height"),
        ]
    cards += [
        ("XPIXSZ", CAMERA.pixel_size_um * b, "[um] pixel width including binning"),
        ("YPIXSZ", CAMERA.pixel_size_um * b, "[um] pixel height including binning"),
        ("INSTRUME", "DEMOCAM", "camera"),
        ("TELESCOP", "DEMO-0.6m", "telescope"),
        ("OBSERVAT", "Demo Observatory", "observatory"),
        ("SITELAT", SITE_LAT, "[deg] site latitude"),
        ("SITELONG", SITE_LONG, "[deg] site longitude, east positive"),
        ("GAIN", CAMERA.gain, "[e-/ADU] detector gain"),
        ("RDNOISE", CAMERA.read_noise, "[e-] readout noise"),
        ("READOUTM", "Normal", "readout mode"),
        ("CCD-TEMP", CAMERA.ccd_temp, "[C] CCD temperature"),
        ("SET-TEMP", CAMERA.ccd_temp, "[C] CCD temperature setpoint"),
        ("SATURATE", CAMERA.saturate, "[ADU] saturation level"),
    ]
    cards += extra or []
    if style.name == "maxim":
        cards.append(("SWCREATE", "MaxIm DL Version 6.40", "software that created this file"))
    else:
        cards.append(("ORIGIN", "Demo Observatory DAQ", "software that created this file"))
    return cards


def header_of(cards: list[Card]) -> fits.Header:
    return fits.Header([fits.Card(k, v, c) for k, v, c in cards])


def frame_bytes(adu: np.ndarray, cards: list[Card]) -> bytes:
    """A primary-HDU FITS file: header, then unsigned 16-bit data stored as int16 - 32768."""
    head = header_of(cards).tostring(padding=True).encode("ascii")
    data = (adu.astype(np.int32) - 32768).astype(">i2").tobytes()
    pad = (-len(data)) % BLOCK
    return head + data + b"\0" * pad


def header_length(cards: list[Card]) -> int:
    return len(header_of(cards).tostring(padding=True))


def rice_bytes(adu: np.ndarray, cards: list[Card]) -> bytes:
    """Tile-compressed (fpack-style) file: empty primary HDU, image in a RICE_1 extension."""
    header = header_of([c for c in cards if c[0] not in STRUCTURAL])
    hdu = fits.CompImageHDU(data=adu, header=header, compression_type="RICE_1")
    return _hdul_bytes(fits.HDUList([fits.PrimaryHDU(), hdu]))


def gzip_bytes(raw: bytes) -> bytes:
    """Whole-file gzip with no timestamp or name, so the bytes depend on the content only."""
    return gzip.compress(raw, compresslevel=6, mtime=0)


def truth_bytes(truth: np.ndarray, mask: np.ndarray, cards: list[Card]) -> bytes:
    """Noise-free signal in electrons (primary) and the MASK of untrustworthy pixels."""
    primary = fits.PrimaryHDU(truth.astype(np.float32), header_of(cards))
    primary.header["BUNIT"] = ("electron", "signal over the exposure, per pixel")
    mask_hdu = fits.ImageHDU(mask.astype(np.uint8), name="MASK")
    mask_hdu.header["COMMENT"] = "1 = saturated, cosmic-ray hit or hot pixel in the raw frame"
    return _hdul_bytes(fits.HDUList([primary, mask_hdu]))


def _hdul_bytes(hdul: fits.HDUList) -> bytes:
    buf = io.BytesIO()
    hdul.writeto(buf)
    return buf.getvalue()


def write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
