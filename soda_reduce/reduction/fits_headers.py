"""Fast reading of primary FITS headers for the index.

Indexing an archive reads tens of thousands of headers, and
``astropy.io.fits.getheader`` spends most of its time building Card objects we
never need. Here plain and gzipped files are read block by block up to the END
card and the 80-character cards are parsed by a small parser that handles the
common value forms (strings, logicals, integers, reals); anything unusual goes to
astropy (``Card.fromstring`` for one card, ``Header.fromstring`` when long
strings use CONTINUE). Tile-compressed ``.fz`` files, which are rare, go through
``astropy.io.fits.open`` entirely.

Nothing here raises for a bad file: the problem is described in plain words, so
the indexer can list the file and carry on.
"""

from __future__ import annotations

import gzip
import os
import re
import threading
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from soda_reduce.reduction.index_model import HeaderValue

BLOCK = 2880
CARD = 80
FIRST_READ = 4 * BLOCK  # one read covers the usual one- or two-block header
MAX_HEADER_BYTES = 1000 * BLOCK  # a header larger than this is not a header

FITS_SUFFIXES = (".fits", ".fit", ".fts")
GZIP_SUFFIXES = tuple(s + ".gz" for s in FITS_SUFFIXES)
TILE_SUFFIXES = (".fz",)
ALL_SUFFIXES = FITS_SUFFIXES + GZIP_SUFFIXES + TILE_SUFFIXES

# Cards that describe the layout of the data, not the observation.
STRUCTURAL = frozenset(
    {"SIMPLE", "XTENSION", "BITPIX", "NAXIS", "EXTEND", "PCOUNT", "GCOUNT", "GROUPS"}
)
_NAXIS_N = re.compile(r"NAXIS\d{1,3}\Z")
_COMMENTARY = frozenset({"", "COMMENT", "HISTORY"})
_END = b"END     "
_INT = re.compile(r"[+-]?\d+\Z")
_FLOAT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[EeDd][+-]?\d+)?\Z")

# warnings.catch_warnings is process-wide state: serialise the (rare) astropy fallbacks.
_astropy_lock = threading.Lock()


@dataclass(frozen=True)
class HeaderRead:
    """A primary header as plain values, its raw bytes, and what went wrong if anything."""

    header: dict[str, HeaderValue] = field(default_factory=dict)
    header_bytes: bytes = b""
    problem: str | None = None


def is_fits_name(name: str) -> bool:
    """True for the file names the indexer reads (case-insensitive)."""
    return name.lower().endswith(ALL_SUFFIXES)


def read_header(path: Path) -> HeaderRead:
    """Read the primary header of a FITS file (first image header for ``.fz``); never raises."""
    name = path.name.lower()
    try:
        if name.endswith(TILE_SUFFIXES):
            return _read_tile_compressed(path)
        if name.endswith(".gz"):
            return _read_gzip(path)
        return _read_plain(path)
    except OSError as exc:
        return HeaderRead(problem=f"cannot read file: {exc}")


# -- readers ---------------------------------------------------------------


def _read_plain(path: Path) -> HeaderRead:
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return HeaderRead(problem="empty file")
        buf, end, problem = _read_blocks(f, f.read(FIRST_READ))
    if problem:
        return HeaderRead(problem=problem)
    header_len = _header_length(end)
    header, problem = _header_from_bytes(buf[:header_len], end)
    if problem is None and size < header_len:
        problem = "truncated header (file ends inside the last header block)"
    if problem is None:
        promised = data_size(header)
        if promised is not None and size - header_len < promised:
            problem = (
                f"truncated data: header promises {promised} bytes of data, "
                f"file has {max(size - header_len, 0)}"
            )
    return HeaderRead(header, buf[:header_len], problem or _descriptive_problem(header))


def _read_gzip(path: Path) -> HeaderRead:
    """Only the header blocks are decompressed, so the data size cannot be checked."""
    try:
        with open(path, "rb") as raw:
            if os.fstat(raw.fileno()).st_size == 0:
                return HeaderRead(problem="empty file")
            with gzip.GzipFile(fileobj=raw, mode="rb") as f:
                buf, end, problem = _read_blocks(f, _read_full(f, FIRST_READ))
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        return HeaderRead(problem=f"gzip error: {exc}")
    if problem:
        return HeaderRead(problem=problem)
    header_len = _header_length(end)
    header, problem = _header_from_bytes(buf[:header_len], end)
    if problem is None and len(buf) < header_len:
        problem = "truncated header (stream ends inside the last header block)"
    return HeaderRead(header, buf[:header_len], problem or _descriptive_problem(header))


def _read_tile_compressed(path: Path) -> HeaderRead:
    """The first CompImageHDU's image header; a plain primary header if there is none."""
    with open(path, "rb") as f:
        start = f.read(9)
    if not start:
        return HeaderRead(problem="empty file")
    if start != b"SIMPLE  =":
        return HeaderRead(problem="not a FITS file (no SIMPLE card)")
    from astropy.io import fits

    try:
        with _astropy_lock, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
                for hdu in hdul:
                    if isinstance(hdu, fits.CompImageHDU):
                        text = hdu.header.tostring()
                        header = _from_astropy(hdu.header)
                        break
                else:
                    text = None
    except Exception as exc:  # astropy raises many kinds (OSError too) for broken files
        return HeaderRead(problem=f"cannot read tile-compressed file: {exc}")
    if text is None:
        return _read_plain(path)
    return HeaderRead(header, text.encode("ascii", "replace"), _descriptive_problem(header))


def _read_full(f: BinaryIO, n: int) -> bytes:
    """Read n bytes unless the stream ends first (streams may return short reads)."""
    parts, got = [], 0
    while got < n:
        chunk = f.read(n - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _read_blocks(f: BinaryIO, buf: bytes) -> tuple[bytes, int, str | None]:
    """Read on from ``buf`` until the END card: (bytes, END offset, problem)."""
    if not buf:
        return buf, -1, "empty file"
    if not buf.startswith(b"SIMPLE  ="):
        return buf, -1, "not a FITS file (no SIMPLE card)"
    scanned = 0
    while True:
        end = _find_end(buf, scanned)
        if end >= 0:
            return buf, end, None
        scanned = len(buf) - len(buf) % CARD
        more = _read_full(f, FIRST_READ) if len(buf) < MAX_HEADER_BYTES else b""
        if not more:
            return buf, -1, "truncated header (no END card)"
        buf += more


def _find_end(buf: bytes, start: int) -> int:
    for i in range(start, len(buf) - CARD + 1, CARD):
        if buf[i] == 69 and buf.startswith(_END, i):  # 69 = 'E'
            return i
    return -1


def _header_length(end: int) -> int:
    return -(-(end + CARD) // BLOCK) * BLOCK


def _descriptive_problem(header: dict[str, HeaderValue]) -> str | None:
    for key in header:
        if key not in STRUCTURAL and not _NAXIS_N.match(key):
            return None
    return "no descriptive keywords"


def data_size(header: dict[str, HeaderValue]) -> int | None:
    """Bytes of data the primary header promises (unpadded); None if it cannot say."""
    try:
        bitpix = header["BITPIX"]
        naxis = header["NAXIS"]
        pcount = header.get("PCOUNT", 0)
        gcount = header.get("GCOUNT", 1)
        axes = [header[f"NAXIS{i}"] for i in range(1, int(naxis) + 1)]  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError):
        return None
    values = [bitpix, naxis, pcount, gcount, *axes]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return None
    if naxis == 0:
        return 0
    if axes[0] == 0 and header.get("GROUPS") is True:  # random groups
        axes = axes[1:]
    count = 1
    for n in axes:
        count *= n  # type: ignore[operator]
    return abs(bitpix) // 8 * gcount * (pcount + count)  # type: ignore[operator]


# -- card parsing ----------------------------------------------------------


def _header_from_bytes(raw: bytes, end: int) -> tuple[dict[str, HeaderValue], str | None]:
    text = raw[:end].decode("latin-1")
    header = parse_cards(text)
    if header is None:  # CONTINUE long strings: astropy reassembles them
        try:
            header = _astropy_header(text)
        except Exception as exc:
            return {}, f"unreadable header: {exc}"
    return header, None


def parse_cards(text: str) -> dict[str, HeaderValue] | None:
    """Parse 80-character cards; None when CONTINUE cards need astropy's long-string rules.

    Commentary cards (COMMENT, HISTORY, blank keyword, or any keyword without
    the ``= `` value indicator) carry no value and are dropped. The first of
    duplicate keywords wins, as with ``Header[keyword]``.
    """
    header: dict[str, HeaderValue] = {}
    for i in range(0, len(text) - CARD + 1, CARD):
        card = text[i : i + CARD]
        if card[8:10] == "= ":
            key = card[:8].rstrip().upper()
            field_ = card[10:]
        else:
            key = card[:8].rstrip().upper()
            if key == "CONTINUE":
                return None
            if key != "HIERARCH" or "=" not in card:
                if card[8:9] == "=" and key not in _COMMENTARY:
                    value = _card_fallback(card, card[9:])  # '=' without the blank
                    header.setdefault(key, value)
                continue
            eq = card.index("=")
            key = card[9:eq].strip().upper()
            field_ = card[eq + 1 :]
        if key in _COMMENTARY or key in header:
            continue
        header[key] = _parse_value(card, field_)
    return header


def _parse_value(card: str, field_: str) -> HeaderValue:
    v = field_.lstrip()
    if not v:
        return None
    if v[0] == "'":
        j = 1
        while True:
            k = v.find("'", j)
            if k < 0:
                return _card_fallback(card, v)
            if v.startswith("'", k + 1):
                j = k + 2
                continue
            break
        rest = v[k + 1 :].lstrip()
        if rest and rest[0] != "/":
            return _card_fallback(card, v)
        return v[1:k].replace("''", "'").rstrip()
    token = v.partition("/")[0].rstrip()
    if not token:
        return None
    if token == "T":
        return True
    if token == "F":
        return False
    if _INT.match(token):
        return int(token)
    if _FLOAT.match(token):
        return float(token.replace("D", "E").replace("d", "e"))
    return _card_fallback(card, v)


def _card_fallback(card: str, field_: str) -> HeaderValue:
    """astropy for what the fast path does not know (complex...); raw text if it fails too."""
    from astropy.io.fits import Card

    try:
        with _astropy_lock, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _plain_value(Card.fromstring(card).value)
    except Exception:
        return field_.partition("/")[0].strip() or None


def _astropy_header(text: str) -> dict[str, HeaderValue]:
    from astropy.io.fits import Header

    with _astropy_lock, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _from_astropy(Header.fromstring(text))


def _from_astropy(header: Any) -> dict[str, HeaderValue]:
    """The same dictionary parse_cards builds, from an astropy Header."""
    out: dict[str, HeaderValue] = {}
    for card in header.cards:
        key = card.keyword.upper()
        if key in _COMMENTARY or key in out:
            continue
        image = card.image
        if not image.startswith("HIERARCH") and image[8:9] != "=":
            continue
        try:
            value = card.value
        except Exception:
            value = image[10:].partition("/")[0].strip() or None
        out[key] = _plain_value(value)
    return out


def _plain_value(value: Any) -> HeaderValue:
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, complex):
        return str(value)
    if type(value).__name__ == "Undefined":
        return None
    return str(value)
