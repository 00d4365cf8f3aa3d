"""The fast header reader agrees with astropy and names every problem instead of raising."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.io import fits

from soda_reduce.reduction.fits_headers import (
    BLOCK,
    data_size,
    is_fits_name,
    parse_cards,
    read_header,
)

# astropy, the reference here, warns about the odd cards on purpose in VARIED.
pytestmark = [
    pytest.mark.filterwarnings("ignore::astropy.io.fits.verify.VerifyWarning"),
    pytest.mark.filterwarnings("ignore:The following header keyword is invalid"),
]

VARIED = [
    "SIMPLE  =                    T / conforms to FITS standard",
    "BITPIX  =                   16",
    "NAXIS   =                    0",
    "EXTEND  =                    T",
    "OBJECT  = 'M31 ''core'''        / quotes inside",
    "OBSERVER= 'O''Neil  '",
    "EMPTY   = ''",
    "BLANKS  = '        '",
    "LEADING = '  lead'",
    "SLASH   = 'a/b = c'           / comment with a 'quote'",
    "imagetyp= 'flat'               / lower-case keyword",
    "FILTER  = 'r'                  / lower-case value",
    "EXPTIME =              1.5D+01 / D exponent",
    "GAIN    =                 2d-1",
    "DARK    =                  1.E3",
    "HALF    =                   .5",
    "NEGINT  =                  -42",
    "PLUSINT =                +0012",
    "BIGINT  = 12345678901234567890123",
    "SMALLE  =             1.25e-05",
    "FLAG    =                    F",
    "UNDEF   =",
    "UNDEFC  =                      / only a comment",
    "COMPLEX = (1.5, -2.0)",
    "HIERARCH ESO DET CHIP1 ID = 'ccd42' / chip",
    "HIERARCH ESO TEL AIRM START = 1.234",
    "COMMENT   a comment",
    "HISTORY   some history",
    "",
    "DUP     =                    1",
    "DUP     =                    2",
    "NOVALUE   text without a value indicator",
]


def header_bytes(cards: list[str]) -> bytes:
    assert all(len(c) <= 80 for c in cards)
    text = "".join(c.ljust(80) for c in cards) + "END".ljust(80)
    return text.ljust(-(-len(text) // BLOCK) * BLOCK).encode("ascii")


def write_fits(path: Path, cards: list[str], data: bytes = b"") -> Path:
    path.write_bytes(header_bytes(cards) + data)
    return path


def astropy_dict(header: fits.Header) -> dict[str, Any]:
    """What read_header should give, built from astropy's own parse."""
    out: dict[str, Any] = {}
    for card in header.cards:
        key = card.keyword.upper()
        if key in ("", "COMMENT", "HISTORY") or key in out:
            continue
        if not card.image.startswith("HIERARCH") and card.image[8:9] != "=":
            continue  # no value indicator: commentary
        value = card.value
        if isinstance(value, fits.card.Undefined):
            value = None
        elif isinstance(value, complex):
            value = str(value)
        out[key] = value
    return out


def assert_same(ours: dict[str, Any], theirs: dict[str, Any]) -> None:
    assert list(ours) == list(theirs)
    for key, value in theirs.items():
        assert ours[key] == value, key
        assert type(ours[key]) is type(value), key


def test_varied_cards_match_astropy(tmp_path: Path) -> None:
    path = write_fits(tmp_path / "varied.fits", VARIED)
    read = read_header(path)
    assert read.problem is None
    assert_same(read.header, astropy_dict(fits.getheader(path)))
    assert read.header["OBJECT"] == "M31 'core'"
    assert read.header["OBSERVER"] == "O'Neil"
    assert read.header["LEADING"] == "  lead"
    assert read.header["BLANKS"] == ""
    assert read.header["IMAGETYP"] == "flat"
    assert read.header["EXPTIME"] == 15.0
    assert read.header["ESO DET CHIP1 ID"] == "ccd42"
    assert read.header["UNDEF"] is None
    assert read.header["DUP"] == 1
    assert read.header["COMPLEX"] == "(1.5-2j)"
    assert "NOVALUE" not in read.header and "COMMENT" not in read.header


def test_long_strings_via_continue_match_astropy(tmp_path: Path) -> None:
    header = fits.Header()
    header["LONGSTR"] = "a long value that needs CONTINUE cards, with 'quotes' " * 3
    header["OBJECT"] = "NGC 891"
    header["HIERARCH ESO INS MODE"] = "imaging"
    header["AFTER"] = 3.25
    path = tmp_path / "long.fits"
    fits.PrimaryHDU(header=header).writeto(path)
    assert b"CONTINUE" in path.read_bytes()
    read = read_header(path)
    assert read.problem is None
    assert_same(read.header, astropy_dict(fits.getheader(path)))
    assert read.header["LONGSTR"] == header["LONGSTR"].rstrip()
    text = read.header_bytes.decode("ascii")
    assert parse_cards(text[: text.index("END     ")]) == read.header  # joined natively


def test_odd_continue_cards_are_left_to_astropy(tmp_path: Path) -> None:
    after_number = [*VARIED[:4], "NUMBER  =                    1", "CONTINUE  'more'"]
    after_comment = [*VARIED[:4], "COMMENT   a comment", "CONTINUE  'more'"]
    not_a_string = [*VARIED[:4], "LONG    = 'first&'", "CONTINUE  42"]
    unreadable = "unreadable header: CONTINUE cards must have string values."
    expected = [unreadable, "no descriptive keywords", unreadable]  # astropy's verdicts
    for n, cards in enumerate((after_number, after_comment, not_a_string)):
        text = "".join(c.ljust(80) for c in cards)
        assert parse_cards(text) is None
        read = read_header(write_fits(tmp_path / f"odd{n}.fits", cards))
        assert read.problem == expected[n]


def test_continue_of_a_duplicate_is_dropped_with_it() -> None:
    cards = ["LONG    = 'first&'", "CONTINUE  'second'", "LONG    = 'again&'", "CONTINUE  'x'"]
    assert parse_cards("".join(c.ljust(80) for c in cards)) == {"LONG": "firstsecond"}


def test_written_by_astropy_with_data(tmp_path: Path) -> None:
    header = fits.Header()
    header["IMAGETYP"] = "Light Frame"
    header["EXPTIME"] = 120.0
    header["XBINNING"] = 2
    header["DATE-OBS"] = "2024-01-05T03:12:00.5"
    header.add_comment("written by the test")
    path = tmp_path / "img.fits"
    fits.PrimaryHDU(np.zeros((40, 30), dtype=np.int16), header=header).writeto(path)
    read = read_header(path)
    assert read.problem is None
    assert_same(read.header, astropy_dict(fits.getheader(path)))
    assert len(read.header_bytes) % BLOCK == 0
    assert path.read_bytes().startswith(read.header_bytes)


def test_multi_block_header(tmp_path: Path) -> None:
    cards = VARIED[:4] + [f"KEY{i:05d}= {i:20d}" for i in range(100)]
    path = write_fits(tmp_path / "big.fits", cards)
    read = read_header(path)
    assert read.problem is None
    assert len(read.header_bytes) == 3 * BLOCK
    assert read.header["KEY00099"] == 99
    assert_same(read.header, astropy_dict(fits.getheader(path)))


def test_unparsable_cards_do_not_stop_the_read(tmp_path: Path) -> None:
    cards = [*VARIED[:4], "BAD     = 1 2", "BADSTR  = 'unterminated", "OBJECT  = 'ok'"]
    read = read_header(write_fits(tmp_path / "bad.fits", cards))
    assert read.problem is None
    assert read.header["BAD"] == "1 2"
    assert read.header["BADSTR"] == "'unterminated"
    assert read.header["OBJECT"] == "ok"


def test_gzip_reads_only_the_header(tmp_path: Path) -> None:
    plain = write_fits(tmp_path / "a.fits", VARIED)
    packed = tmp_path / "a.fits.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes() + bytes(100 * BLOCK)))
    ours, theirs = read_header(packed), read_header(plain)
    assert ours.problem is None
    assert ours.header == theirs.header
    assert ours.header_bytes == theirs.header_bytes
    assert_same(ours.header, astropy_dict(fits.getheader(packed)))


def test_tile_compressed(tmp_path: Path) -> None:
    header = fits.Header()
    header["IMAGETYP"] = "Flat Field"
    header["FILTER"] = "V"
    path = tmp_path / "c.fits.fz"
    image = fits.CompImageHDU(np.arange(64 * 64, dtype=np.int32).reshape(64, 64), header=header)
    fits.HDUList([fits.PrimaryHDU(), image]).writeto(path)
    read = read_header(path)
    assert read.problem is None
    assert read.header["IMAGETYP"] == "Flat Field"
    assert read.header["NAXIS1"] == 64
    with fits.open(path) as hdul:
        assert_same(read.header, astropy_dict(hdul[1].header))
    assert read.header_bytes.startswith(b"XTENSION= 'IMAGE")


def test_fz_without_compressed_image_reads_the_primary(tmp_path: Path) -> None:
    path = write_fits(tmp_path / "plain.fz", VARIED)
    read = read_header(path)
    assert read.problem is None
    assert read.header["OBJECT"] == "M31 'core'"


NO_DESCRIPTION = ["SIMPLE  =                    T", "BITPIX  =                    8"]


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("empty.fits", b"", "empty file"),
        ("text.fits", b"hello, world\n" * 300, "not a FITS file (no SIMPLE card)"),
        ("cut.fits", header_bytes(VARIED)[: 10 * 80], "truncated header (no END card)"),
        (
            "noend.fits",
            "".join(c.ljust(80) for c in VARIED[:4]).ljust(BLOCK).encode(),
            "truncated header (no END card)",
        ),
        (
            "bare.fits",
            header_bytes([*NO_DESCRIPTION, "NAXIS   =    0", "EXTEND  =    T"]),
            "no descriptive keywords",
        ),
        ("short.fits", header_bytes(VARIED)[:-80], "truncated header"),
        ("empty.fits.gz", b"", "empty file"),
        ("notgz.fits.gz", header_bytes(VARIED), "gzip error: Not a gzipped file"),
        ("cutgz.fits.gz", gzip.compress(header_bytes(VARIED))[:40], "gzip error:"),
        ("empty.fz", b"", "empty file"),
        ("junk.fz", b"\x00\x01junk" * 500, "not a FITS file (no SIMPLE card)"),
    ],
)
def test_problems_are_named(tmp_path: Path, name: str, content: bytes, problem: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    read = read_header(path)
    assert read.problem is not None and read.problem.startswith(problem), read.problem


def test_truncated_data(tmp_path: Path) -> None:
    cards = [*NO_DESCRIPTION[:1], "BITPIX  = 16", "NAXIS   = 2", "NAXIS1  = 100", "NAXIS2  = 100"]
    path = write_fits(tmp_path / "t.fits", [*cards, "OBJECT  = 'M42'"], bytes(5000))
    read = read_header(path)
    assert read.problem == "truncated data: header promises 20000 bytes of data, file has 5000"
    assert read.header["OBJECT"] == "M42"  # the header itself was readable


def test_os_errors(tmp_path: Path) -> None:
    missing = read_header(tmp_path / "missing.fits")
    assert missing.problem is not None and "No such file" in missing.problem
    (tmp_path / "dir.fits").mkdir()
    directory = read_header(tmp_path / "dir.fits")
    assert directory.problem is not None and directory.problem.startswith("cannot read file:")
    assert directory.header == {} and directory.header_bytes == b""


def test_data_size() -> None:
    assert data_size({"BITPIX": 8, "NAXIS": 0}) == 0
    assert data_size({"BITPIX": -32, "NAXIS": 2, "NAXIS1": 10, "NAXIS2": 3}) == 120
    table = {"BITPIX": 8, "NAXIS": 2, "NAXIS1": 8, "NAXIS2": 5, "PCOUNT": 60, "GCOUNT": 1}
    assert data_size(table) == 100
    groups = {"BITPIX": 16, "NAXIS": 3, "NAXIS1": 0, "NAXIS2": 4, "NAXIS3": 2}
    assert data_size({**groups, "GROUPS": True, "PCOUNT": 2, "GCOUNT": 3}) == 2 * 3 * (2 + 8)
    assert data_size({"BITPIX": 16, "NAXIS": 1}) is None
    assert data_size({"BITPIX": "16", "NAXIS": 0}) is None


def test_fits_names() -> None:
    for name in ("a.fits", "A.FIT", "b.fts", "c.fits.gz", "d.FITS.GZ", "e.fz", "f.fits.fz"):
        assert is_fits_name(name), name
    for name in ("a.txt", "a.fits.bz2", "fits", "a.gz", "a.fitsx"):
        assert not is_fits_name(name), name
