"""The archive boundary: only FITS files whose real path is inside the archive root are used.

An archive may hold symbolic links (nights linked from another disk, a file shared by two
programmes). A link that leaves the root, though, turns a path under ``/archive/files/`` into a
read of anything the service can read (``evil.fits -> /etc/passwd``). So a path is resolved
(every link followed) and kept only if the result is still under the resolved root: the indexer
skips and reports the others, and every handler that opens a raw file from a request checks
again when it serves, since a link can be planted after the scan. Links that stay inside the
root keep working.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from soda_reduce.reduction.fits_headers import GZIP_SUFFIXES, is_fits_name

OUTSIDE = "resolves outside the archive"
FITS_MAGIC = b"SIMPLE  ="
GZIP_MAGIC = b"\x1f\x8b"


def real_root(root: Path | str) -> Path:
    return Path(root).resolve()


def outside(real_root_: Path, path: Path | str) -> bool:
    """True when ``path``, every link followed, is not under ``real_root_`` (or loops)."""
    try:
        real = Path(path).resolve()
    except (OSError, RuntimeError):  # a link loop (RuntimeError before Python 3.13)
        return True
    return not real.is_relative_to(real_root_)


def inside(root: Path | str, relative: str) -> Path | None:
    """The real path of ``root/relative`` if it stays inside the root; else None.

    ``relative`` is data (a request, a stored plan): absolute paths and ``..`` are refused
    before anything is resolved. The answer is the resolved path, so the caller opens the
    file it checked, not a name a new link could redirect.
    """
    parts = PurePosixPath(relative).parts
    if not parts or relative.startswith("/") or ".." in parts or "\0" in relative:
        return None
    base = real_root(root)
    try:
        real = base.joinpath(*parts).resolve()
    except (OSError, RuntimeError):
        return None
    return real if real.is_relative_to(base) and real != base else None


def looks_like_fits(path: Path, name: str) -> bool:
    """The file starts as a FITS file does (as gzip when ``name`` says ``.fits.gz``)."""
    try:
        with open(path, "rb") as f:
            start = f.read(len(FITS_MAGIC))
    except OSError:
        return False
    if name.lower().endswith(GZIP_SUFFIXES):
        return start.startswith(GZIP_MAGIC)
    return start == FITS_MAGIC


def servable(root: Path | str, relative: str) -> Path | None:
    """The real path of an archive file fit to send or cut: a FITS name, a regular FITS file,
    inside the root. None for anything else (blocking: call it in a thread).

    The content is checked, not the target's name: a link may point at a content-addressed
    file without a suffix, but never at something that is not FITS."""
    if not is_fits_name(relative):
        return None
    real = inside(root, relative)
    if real is None or not real.is_file():
        return None
    return real if looks_like_fits(real, relative) else None
