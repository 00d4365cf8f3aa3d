"""What a person reads about products beyond DataLink's facts: a FITS file's structure and
primary header, and each step's manifest (recipe, parameters, QC, run time).

Blocking file reads (call them in a thread). Everything returned is bounded (HDUs, cards,
manifest entries) and fit for the public: header values and comments go through the
path redaction (`public_text.py`), since a wrapped pipeline may write its own directories
into a header.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from astropy.io import fits

from soda_reduce.runtime.products import ProductError, ProductStore
from soda_reduce.runtime.public_text import PublicText

MAX_HDUS = 50  # HDUs listed on a product page
MAX_CARDS = 1000  # primary-header cards shown
MAX_VALUE = 200  # characters of one header value or comment
MAX_MANIFEST_ITEMS = 500  # products read from one manifest
MAX_QC = 100  # QC parameters kept per product


@dataclass(frozen=True)
class HduOutline:
    index: int
    name: str
    kind: str  # PrimaryHDU, ImageHDU, BinTableHDU, CompImageHDU...
    shape: str  # "2048 x 4096" (NAXIS1 x NAXIS2), "12 rows x 5 columns", "" for none


@dataclass(frozen=True)
class FitsOutline:
    """A FITS file's HDUs and its primary header, as the product page shows them."""

    hdus: tuple[HduOutline, ...] = ()
    more_hdus: bool = False
    cards: tuple[tuple[str, str, str], ...] = ()  # (keyword, value, comment)
    more_cards: int = 0
    problem: str | None = None


def fits_outline(path: Path, public: PublicText) -> FitsOutline:
    """Headers only (data is never read); a damaged file is a ``problem``, not an error."""
    try:
        with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
            hdus: list[HduOutline] = []
            more = False
            for index, hdu in enumerate(hdul):
                if index >= MAX_HDUS:
                    more = True
                    break
                hdus.append(_hdu(index, hdu))
            primary = hdul[0].header
            cards = header_cards(primary, public)
            return FitsOutline(tuple(hdus), more, cards, max(0, len(primary) - MAX_CARDS))
    except Exception as exc:  # astropy has many ways to refuse a damaged file
        return FitsOutline(problem=public(f"the FITS file cannot be read: {exc}")[:MAX_VALUE])


COMMENTARY = ("HISTORY", "COMMENT", "")
CARD_TEXT = 72  # characters of commentary text in one card


def header_cards(header: fits.Header, public: PublicText) -> tuple[tuple[str, str, str], ...]:
    """The first `MAX_CARDS` cards as (keyword, value, comment), redacted.

    A long HISTORY or COMMENT is written as several cards of 72 characters each; they are
    joined again before redaction, or a path cut between two cards would be half shown.
    """
    rows: list[list[str]] = []
    continued = False
    for card in header.cards[:MAX_CARDS]:
        keyword = card.keyword
        if keyword in COMMENTARY:
            text = str(card.value)
            if continued and rows and rows[-1][0] == keyword:
                rows[-1][1] += text
            else:
                rows.append([keyword, text, ""])
            continued = len(text) >= CARD_TEXT
            continue
        continued = False
        rows.append([keyword, _plain_value(card.value), str(card.comment)])
    return tuple((k, public(v)[:MAX_VALUE], public(c)[:MAX_VALUE]) for k, v, c in rows)


def _hdu(index: int, hdu: Any) -> HduOutline:
    header = hdu.header
    kind = type(hdu).__name__
    if isinstance(hdu, fits.BinTableHDU | fits.TableHDU):
        rows, columns = int(header.get("NAXIS2", 0)), int(header.get("TFIELDS", 0))
        shape = f"{rows} rows x {columns} columns"
    else:
        naxis = int(header.get("NAXIS", 0) or 0)
        axes = [header.get(f"NAXIS{n}") for n in range(1, min(naxis, 9) + 1)]
        shape = " x ".join(str(a) for a in axes) if axes else ""
    name = str(header.get("EXTNAME", "PRIMARY" if index == 0 else ""))
    return HduOutline(index, name[:MAX_VALUE], kind, shape)


def _plain_value(value: Any) -> str:
    if isinstance(value, bool):
        return "T" if value else "F"
    if isinstance(value, fits.card.Undefined):
        return ""
    return str(value)


@dataclass(frozen=True)
class ManifestFile:
    """One product as its step's manifest lists it."""

    file: str
    category: str
    content_type: str
    main: bool = False
    preview_of: str | None = None
    qc: tuple[tuple[str, str], ...] = ()  # (name, value shown)


@dataclass(frozen=True)
class StepManifest:
    """A step's manifest, summarised: who made its products, how, and their QC."""

    step_key: str
    recipe: str = ""
    recipe_version: str = ""
    parameters: tuple[tuple[str, str], ...] = ()
    duration_s: float | None = None
    finished: str = ""
    files: tuple[ManifestFile, ...] = field(default_factory=tuple)

    def file(self, name: str) -> ManifestFile | None:
        return next((f for f in self.files if f.file == name), None)

    def preview_of(self, name: str) -> ManifestFile | None:
        return next((f for f in self.files if f.preview_of == name), None)


def step_manifest(products: ProductStore, step_key: str) -> StepManifest | None:
    """The step's manifest, or None when it is gone (collected) or unreadable."""
    try:
        manifest = products.manifest(step_key)
    except ProductError:
        return None
    files = []
    for item in list(manifest.get("products") or [])[:MAX_MANIFEST_ITEMS]:
        if not isinstance(item, dict) or not item.get("file"):
            continue
        qc = item.get("qc") if isinstance(item.get("qc"), dict) else {}
        files.append(
            ManifestFile(
                str(item["file"]),
                str(item.get("category", "")),
                str(item.get("content_type") or "application/octet-stream"),
                bool(item.get("main")),
                item.get("preview_of"),
                tuple((str(k), qc_value(v)) for k, v in list(qc.items())[:MAX_QC]),
            )
        )
    parameters = manifest.get("parameters") if isinstance(manifest.get("parameters"), dict) else {}
    duration = manifest.get("duration_s")
    return StepManifest(
        step_key,
        str(manifest.get("recipe", "")),
        str(manifest.get("recipe_version", "")),
        tuple((str(k), _plain(v)) for k, v in sorted(parameters.items())),
        float(duration) if isinstance(duration, int | float) else None,
        str(manifest.get("finished", "")),
        tuple(files),
    )


def step_manifests(products: ProductStore, keys: Iterable[str]) -> dict[str, StepManifest]:
    """Manifests of several steps (the job page's), those still stored."""
    found = {}
    for key in dict.fromkeys(keys):
        manifest = step_manifest(products, key)
        if manifest is not None:
            found[key] = manifest
    return found


def qc_value(value: Any) -> str:
    """A QC number as a person reads it: 4 significant digits, integers whole."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)[:MAX_VALUE]


def _plain(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)[:MAX_VALUE]
