"""FITS checksums: the DATASUM / CHECKSUM convention, and a raw file's content checksum from it.

A file that states, in every HDU, the ones' complement sum of its data (``DATASUM``,
FITS standard 4.0, appendix J; archives add it at ingest, ESO and MAST among them)
can be identified by its header blocks alone: they hold those sums, and a change of the
data that its writer recorded changes them. That is what makes a content checksum of
an archive of millions of frames possible without reading their pixels at index time
(``datasum_checksum``). The sums are verified where the data is read anyway
(``verify_file``: before a recipe runs on the file, and by ``soda-reduce index
--verify``), so a file whose data changed behind its header is caught before a step is
computed from it, not trusted for ever.

The 32-bit sum is not a cryptographic digest: a change that keeps it (two words
swapped, a flipped image with a recomputed DATASUM) goes unnoticed in this scheme;
``docs/planning.md`` says what each checksum mode guarantees.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from soda_reduce.reduction.fits_headers import FileLayout, HeaderRead, read_header

DATASUM_PREFIX = "datasum:"  # checksums vouched for by the files' DATASUM cards
VERIFY_CHUNK = 8 << 20  # bytes of data summed at a time (a multiple of 4)

_EXCLUDE = frozenset(range(0x3A, 0x41)) | frozenset(range(0x5B, 0x61))  # punctuation


def ones_complement_sum(data: bytes | bytearray | memoryview, start: int = 0) -> int:
    """The 32-bit ones' complement sum of big-endian words (``len(data)`` a multiple of 4)."""
    total = start + int(np.frombuffer(data, dtype=">u4").sum(dtype=np.uint64))
    while total >> 32:
        total = (total & 0xFFFFFFFF) + (total >> 32)
    return total


def encode_checksum(value: int) -> str:
    """The 16 characters of a ``CHECKSUM`` card for the complement of ``value`` (appendix J)."""
    value = ~value & 0xFFFFFFFF
    chars = [0] * 16
    for i in range(4):
        byte = (value >> (24 - 8 * i)) & 0xFF
        quotient, remainder = byte // 4 + 0x30, byte % 4
        ch = [quotient + remainder, quotient, quotient, quotient]
        changed = True
        while changed:  # bounded: each pass moves a pair away from punctuation
            changed = False
            for j in (0, 2):
                if ch[j] in _EXCLUDE or ch[j + 1] in _EXCLUDE:
                    ch[j] += 1
                    ch[j + 1] -= 1
                    changed = True
        for j in range(4):
            chars[4 * j + i] = ch[j]
    return bytes(chars[15:] + chars[:15]).decode("ascii")


def datasum_checksum(read: HeaderRead, primary_sha256: str | None = None) -> str | None:
    """``datasum:`` + sha256 of every HDU's header blocks, when every HDU states its DATASUM
    and the HDUs make up the whole file; None when the file must be hashed instead.
    ``primary_sha256``: the primary header's digest if known (a single HDU: the answer)."""
    layout = read.layout
    if read.problem is not None or layout is None or not layout.covers_file:
        return None
    if any(hdu.datasum is None for hdu in layout.hdus):
        return None
    if primary_sha256 and layout.header_blocks == (read.header_bytes,):
        return DATASUM_PREFIX + primary_sha256
    digest = hashlib.sha256()
    for block in layout.header_blocks:
        digest.update(block)
    return DATASUM_PREFIX + digest.hexdigest()


def verify_datasums(path: Path | str, layout: FileLayout) -> str | None:
    """Sum each HDU's data and compare with its DATASUM; the problem in words, or None."""
    fd = os.open(path, os.O_RDONLY)
    try:
        for number, hdu in enumerate(layout.hdus):
            if hdu.datasum is None:
                continue
            total, offset, end = 0, hdu.data_offset, hdu.data_offset + hdu.data_length
            while offset < end:  # bounded: offset grows on every turn, or the loop ends
                chunk = os.pread(fd, min(VERIFY_CHUNK, end - offset), offset)
                if not chunk:  # unpadded last block: what is missing sums to 0
                    break
                total = ones_complement_sum(chunk + bytes(-len(chunk) % 4), total)
                offset += len(chunk)
            if total != hdu.datasum:
                return (
                    f"HDU {number}: its data sums to {total}, not the DATASUM {hdu.datasum} of "
                    "its header: the file was changed or damaged after its checksum was written"
                )
    finally:
        os.close(fd)
    return None


def verify_file(path: Path, checksum: str) -> str | None:
    """Check a file against the checksum it was indexed with; the problem in words, or None.

    Only ``datasum:`` checksums are checked (their data was not read when indexed): the
    header blocks must be the ones indexed, and the data must match their DATASUM cards.
    """
    if not checksum.startswith(DATASUM_PREFIX):
        return None
    read = read_header(path)
    if read.problem is not None:
        return read.problem
    if datasum_checksum(read) != checksum or read.layout is None:
        return "its headers changed since it was indexed (re-index the archive)"
    return verify_datasums(path, read.layout)
