"""Fast reading of primary FITS headers for the index.

Indexing an archive reads tens of thousands of headers, and
``astropy.io.fits.getheader`` spends most of its time building Card objects we
never need. Here a plain file is read with ``os.pread`` up to its END card (one
read covers the usual header of up to four blocks), its cards are parsed by
``fits_cards`` (astropy for what is unusual), and the layout of its HDUs is
followed to the end of the file: one more small read per extension, none for the
usual single-HDU file. The layout says where each HDU's data is and the DATASUM
it states, which lets the indexer identify a file without reading its data
(``fits_checksums``). Gzipped files are decompressed up to the END card; tile-
compressed ``.fz`` files, which are rare, go through ``astropy.io.fits.open``.

Nothing here raises for a bad file: the problem is described in plain words, so
the indexer can list the file and carry on.
"""

from __future__ import annotations

import gzip
import os
import re
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, NamedTuple

from soda_reduce.reduction.fits_cards import (
    CARD,
    astropy_header,
    astropy_lock,
    from_astropy,
    parse_cards,
)
from soda_reduce.reduction.index_model import HeaderValue

BLOCK = 2880
FIRST_READ = 4 * BLOCK  # one read covers the usual one- to four-block header
MAX_HEADER_BYTES = 1000 * BLOCK  # a header larger than this is not a header
MAX_HDUS = 1000  # extensions followed; a file with more is hashed instead

FITS_SUFFIXES = (".fits", ".fit", ".fts")
GZIP_SUFFIXES = tuple(s + ".gz" for s in FITS_SUFFIXES)
TILE_SUFFIXES = (".fz",)
ALL_SUFFIXES = FITS_SUFFIXES + GZIP_SUFFIXES + TILE_SUFFIXES

# Cards that describe the layout of the data, not the observation.
STRUCTURAL = frozenset(
    {"SIMPLE", "XTENSION", "BITPIX", "NAXIS", "EXTEND", "PCOUNT", "GCOUNT", "GROUPS"}
)
_NAXIS_N = re.compile(r"NAXIS\d{1,3}\Z")
_END = b"END     "
_END_STEP = re.compile(rb"(?:.{80})*?END {5}", re.S)


class Hdu(NamedTuple):  # a tuple: made for every file read, cheaper than a dataclass
    """Where one HDU is in a plain FITS file, and the DATASUM its header states."""

    offset: int
    header_length: int  # whole blocks
    data_length: int  # whole blocks
    datasum: int | None  # None: not stated, or not an unsigned 32-bit integer

    @property
    def data_offset(self) -> int:
        return self.offset + self.header_length


class FileLayout(NamedTuple):
    """Every HDU of a plain file, their header blocks (primary first), and whether they end
    exactly where the file does (nothing after the last HDU, which no DATASUM covers)."""

    hdus: tuple[Hdu, ...]
    header_blocks: tuple[bytes, ...]
    covers_file: bool


@dataclass(frozen=True)
class HeaderRead:
    """A primary header as plain values, its raw bytes, the file's layout when it could be
    followed (plain files only), and what went wrong if anything."""

    header: dict[str, HeaderValue] = field(default_factory=dict)
    header_bytes: bytes = b""
    problem: str | None = None
    layout: FileLayout | None = None


def is_fits_name(name: str) -> bool:
    """True for the file names the indexer reads (case-insensitive)."""
    return name.lower().endswith(ALL_SUFFIXES)


def read_header(path: Path | str, *, layout: bool = True) -> HeaderRead:
    """Read the primary header of a FITS file (first image header for ``.fz``); never raises.

    ``layout=False``: do not follow the extensions (their headers are then not read).
    """
    name = os.fspath(path).lower()
    try:
        if name.endswith(TILE_SUFFIXES):
            return _read_tile_compressed(path, layout)
        if name.endswith(".gz"):
            return _read_gzip(path)
        return _read_plain(path, layout)
    except OSError as exc:
        return HeaderRead(problem=f"cannot read file: {exc}")


# -- readers ---------------------------------------------------------------


def _read_plain(path: Path | str, follow: bool = True) -> HeaderRead:
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return HeaderRead(problem="empty file")
        buf, end, problem = _pread_blocks(fd, 0, b"SIMPLE  =")
        if problem:
            return HeaderRead(problem=problem)
        header_len = _header_length(end)
        raw = buf[:header_len]
        header, problem = _header_from_bytes(raw, end)
        layout = None
        if problem is None and size < header_len:
            problem = "truncated header (file ends inside the last header block)"
        if problem is None:
            promised = data_size(header)
            if promised is not None and size - header_len < promised:
                problem = (
                    f"truncated data: header promises {promised} bytes of data, "
                    f"file has {max(size - header_len, 0)}"
                )
            elif promised is not None and follow:
                layout = _follow_hdus(fd, size, raw, header, promised)
    finally:
        os.close(fd)
    return HeaderRead(header, raw, problem or _descriptive_problem(header), layout)


def _read_gzip(path: Path | str) -> HeaderRead:
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


def _read_tile_compressed(path: Path | str, follow: bool = True) -> HeaderRead:
    """The first CompImageHDU's image header; a plain primary header if there is none."""
    with open(path, "rb") as f:
        start = f.read(9)
    if not start:
        return HeaderRead(problem="empty file")
    if start != b"SIMPLE  =":
        return HeaderRead(problem="not a FITS file (no SIMPLE card)")
    from astropy.io import fits

    try:
        with astropy_lock, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
                for hdu in hdul:
                    if isinstance(hdu, fits.CompImageHDU):
                        text = hdu.header.tostring()
                        header = from_astropy(hdu.header)
                        break
                else:
                    text = None
    except Exception as exc:  # astropy raises many kinds (OSError too) for broken files
        return HeaderRead(problem=f"cannot read tile-compressed file: {exc}")
    plain = _read_plain(path, follow)  # the file's own layout: its blocks as stored
    if text is None:
        return plain
    image = text.encode("ascii", "replace")
    return HeaderRead(header, image, _descriptive_problem(header), plain.layout)


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
    while True:  # bounded by MAX_HEADER_BYTES
        end = _find_end(buf, scanned)
        if end >= 0:
            return buf, end, None
        scanned = len(buf) - len(buf) % CARD
        more = _read_full(f, FIRST_READ) if len(buf) < MAX_HEADER_BYTES else b""
        if not more:
            return buf, -1, "truncated header (no END card)"
        buf += more


def _pread_blocks(fd: int, offset: int, start: bytes) -> tuple[bytes, int, str | None]:
    """``_read_blocks`` by ``os.pread`` from ``offset``, the header starting with ``start``."""
    buf = os.pread(fd, FIRST_READ, offset)
    if not buf:
        return buf, -1, "empty file"
    if not buf.startswith(start):
        what = "no SIMPLE card" if offset == 0 else f"no XTENSION card at byte {offset}"
        return buf, -1, f"not a FITS file ({what})"
    scanned = 0
    while True:  # bounded by MAX_HEADER_BYTES
        end = _find_end(buf, scanned)
        if end >= 0:
            return buf, end, None
        scanned = len(buf) - len(buf) % CARD
        more = os.pread(fd, FIRST_READ, offset + len(buf)) if len(buf) < MAX_HEADER_BYTES else b""
        if not more:
            return buf, -1, "truncated header (no END card)"
        buf += more


def _find_end(buf: bytes, start: int) -> int:
    """Offset of the END card (on a card boundary) from ``start``; -1 if not there yet.

    A regular expression steps card by card in C: ``bytes.find(b"END     ")`` crawls
    through the blanks of a header (its needle ends in blanks), ~13 us a header.
    """
    found = _END_STEP.match(buf, start)
    if found is None or found.end() - len(_END) + CARD > len(buf):
        return -1
    return found.end() - len(_END)


def _header_length(end: int) -> int:
    return -(-(end + CARD) // BLOCK) * BLOCK


def _padded(n: int) -> int:
    return -(-n // BLOCK) * BLOCK


def _follow_hdus(
    fd: int, size: int, primary: bytes, header: dict[str, HeaderValue], promised: int
) -> FileLayout:
    """The HDUs from the primary one to the end of the file (one pread per extension)."""
    hdus = [Hdu(0, len(primary), _padded(promised), _datasum(header))]
    blocks = [primary]
    offset = len(primary) + hdus[0].data_length
    while offset < size and len(hdus) < MAX_HDUS:
        buf, end, problem = _pread_blocks(fd, offset, b"XTENSION=")
        if problem:
            break
        length = _header_length(end)
        ext, problem = _header_from_bytes(buf[:length], end)
        data = data_size(ext) if problem is None else None
        if data is None or offset + length + data > size:
            break
        hdus.append(Hdu(offset, length, _padded(data), _datasum(ext)))
        blocks.append(buf[:length])
        offset += length + hdus[-1].data_length
    return FileLayout(tuple(hdus), tuple(blocks), offset == size or offset - size == _gap(size))


def _gap(size: int) -> int:
    """The last data block may be cut short by writers that do not pad: still complete."""
    return -size % BLOCK


def _datasum(header: dict[str, HeaderValue]) -> int | None:
    value = header.get("DATASUM")
    text = value.strip() if isinstance(value, str) else None
    if not text or not text.isdigit() or not text.isascii():
        return None
    number = int(text)
    return number if number < 1 << 32 else None


def _descriptive_problem(header: dict[str, HeaderValue]) -> str | None:
    for key in header:
        if key not in STRUCTURAL and not _NAXIS_N.match(key):
            return None
    return "no descriptive keywords"


def data_size(header: dict[str, HeaderValue]) -> int | None:
    """Bytes of data the header promises (unpadded); None if it cannot say."""
    try:
        bitpix = header["BITPIX"]
        naxis = header["NAXIS"]
        pcount = header.get("PCOUNT", 0)
        gcount = header.get("GCOUNT", 1)
        axes = [header[f"NAXIS{i}"] for i in range(1, int(naxis) + 1)]  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError):
        return None
    for v in (bitpix, naxis, pcount, gcount, *axes):
        if type(v) is not int:  # bool is not int here, as it must not be
            return None
    if naxis == 0:
        return 0
    if axes[0] == 0 and header.get("GROUPS") is True:  # random groups
        axes = axes[1:]
    count = 1
    for n in axes:
        count *= n  # type: ignore[operator]
    return abs(bitpix) // 8 * gcount * (pcount + count)  # type: ignore[operator]


def _header_from_bytes(raw: bytes, end: int) -> tuple[dict[str, HeaderValue], str | None]:
    text = raw[:end].decode("latin-1")
    header = parse_cards(text)
    if header is None:  # CONTINUE cards astropy's rules must place
        try:
            header = astropy_header(text)
        except Exception as exc:
            return {}, f"unreadable header: {exc}"
    return header, None
