"""PNG previews of raw files, made on first request and kept under the product root.

Raw files have no step to make their preview, so DataLink's #preview of a raw file points
here. The picture is drawn exactly as recipes draw theirs (recipe.products.write_preview:
zscale, north up). The cache name hashes the path and the file's checksum, so a changed
file gets a new preview and an old one is never served for it; the PNG is written under
a temporary name and renamed, so a reader never sees half a picture.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

from astropy.io import fits

from soda_reduce.recipe.products import first_image, write_preview
from soda_reduce.reduction.index_model import RawFile

PREVIEW_DIR = "previews"


class PreviewError(Exception):
    """The file has no image to draw, or could not be read."""


def raw_preview_path(products_root: Path, raw: RawFile) -> Path:
    """Where the preview of ``raw`` is (or will be) cached."""
    digest = hashlib.sha256(f"{raw.path}\0{raw.checksum}".encode()).hexdigest()
    return products_root / PREVIEW_DIR / "raw" / digest[:2] / f"{digest}.png"


def raw_preview(products_root: Path, archive_root: Path, raw: RawFile) -> Path:
    """The cached PNG of ``raw``, drawn now if missing; blocking (call it in a thread)."""
    target = raw_preview_path(products_root, raw)
    if target.is_file():
        return target
    source = archive_root / raw.path
    try:
        with fits.open(source, memmap=False) as hdul:
            data = first_image(hdul)
            if data is None:
                raise PreviewError(f"{raw.path} holds no image")
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.stem}-{uuid.uuid4().hex[:8]}.png")
            try:
                write_preview(data, partial)
                os.replace(partial, target)
            finally:
                partial.unlink(missing_ok=True)
    except (OSError, ValueError, TypeError) as exc:
        raise PreviewError(f"{raw.path}: {exc}") from exc
    return target
