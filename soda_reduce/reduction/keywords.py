"""Derived keywords: one name for what archives spell many ways.

A cascade declares derivations (EXPTIME from EXPTIME or EXPOSURE, BINNING from
XBINNING/YBINNING or CCDSUM, NIGHT from DATE-OBS and the site longitude...), and
rules then speak only of the derived names. Time is handled with plain datetime
arithmetic: astropy.time costs milliseconds per call, and planning 20,000 frames
must take well under two seconds.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

MJD_EPOCH = datetime(1858, 11, 17, tzinfo=UTC)


@dataclass(frozen=True)
class Derivation:
    """A keyword computed from the header; ``None`` when it cannot be."""

    name: str
    compute: Callable[[Mapping[str, Any]], Any]
    description: str


def first_of(name: str, *keywords: str, default: Any = None) -> Derivation:
    """The first keyword present wins (EXPTIME, then EXPOSURE...)."""

    def compute(header: Mapping[str, Any]) -> Any:
        for keyword in keywords:
            value = header.get(keyword)
            if value is not None and value != "":
                return value
        return default

    fallback = "" if default is None else f", else {default!r}"
    return Derivation(name, compute, f"first of {', '.join(keywords)}{fallback}")


def _int_or_none(value: Any) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def binning(name: str = "BINNING", default: str = "1x1") -> Derivation:
    """'XxY' from XBINNING/YBINNING, CCDSUM ('2 2') or BINNING ('2x2')."""

    def compute(header: Mapping[str, Any]) -> Any:
        x, y = _int_or_none(header.get("XBINNING")), _int_or_none(header.get("YBINNING"))
        if x is not None:
            return f"{x}x{y if y is not None else x}"
        ccdsum = header.get("CCDSUM")
        if isinstance(ccdsum, str):
            parts = ccdsum.split()
            if len(parts) == 2 and all(p.isdigit() for p in parts):
                return f"{int(parts[0])}x{int(parts[1])}"
        raw = header.get("BINNING")
        if isinstance(raw, str) and re.fullmatch(r"\s*\d+\s*[xX]\s*\d+\s*", raw):
            a, b = re.split(r"[xX]", raw)
            return f"{int(a)}x{int(b)}"
        return default

    return Derivation(name, compute, f"XBINNING x YBINNING, or CCDSUM, else {default}")


def parse_date_obs(value: Any, time_obs: Any = None) -> datetime | None:
    """A UTC datetime from DATE-OBS (ISO 8601, with or without time, or old DD/MM/YY)."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip().rstrip("Z")
    match = re.fullmatch(r"(\d\d)/(\d\d)/(\d\d)", text)
    if match:
        day, month, year = (int(g) for g in match.groups())
        text = f"{1900 + year if year > 50 else 2000 + year:04d}-{month:02d}-{day:02d}"
    if "T" not in text and isinstance(time_obs, str) and time_obs.strip():
        text = f"{text}T{time_obs.strip()}"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def observation_time(header: Mapping[str, Any]) -> datetime | None:
    moment = parse_date_obs(header.get("DATE-OBS"), header.get("TIME-OBS") or header.get("UT"))
    if moment is None and isinstance(header.get("MJD-OBS"), int | float):
        moment = MJD_EPOCH + timedelta(days=float(header["MJD-OBS"]))
    return moment


def mjd_of(moment: datetime) -> float:
    return (moment - MJD_EPOCH).total_seconds() / 86400.0


def mjd(name: str = "MJD") -> Derivation:
    def compute(header: Mapping[str, Any]) -> Any:
        moment = observation_time(header)
        return None if moment is None else round(mjd_of(moment), 8)

    return Derivation(name, compute, "MJD of DATE-OBS (or MJD-OBS)")


def iso_time(name: str = "DATE") -> Derivation:
    def compute(header: Mapping[str, Any]) -> Any:
        moment = observation_time(header)
        return None if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%S")

    return Derivation(name, compute, "DATE-OBS in ISO form")


def parse_longitude(value: Any) -> float | None:
    """Degrees east from a number or a sexagesimal string ('-70 44 15', '-70:44:15')."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str):
        return None
    parts = re.split(r"[\s:dhms°'\"]+", value.strip())
    parts = [p for p in parts if p]
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        return None
    if not numbers:
        return None
    sign = -1.0 if value.strip().startswith("-") else 1.0
    degrees = abs(numbers[0]) + sum(abs(n) / 60**i for i, n in enumerate(numbers[1:], start=1))
    return sign * degrees


def night_label(moment: datetime, longitude_deg: float) -> str:
    """The local date on which the night began: local mean time shifted back by 12 h.

    Frames from noon to noon local time share a night, so afternoon biases,
    twilight flats and science after midnight all belong together.
    """
    local = moment + timedelta(hours=longitude_deg / 15.0)
    return (local - timedelta(hours=12)).date().isoformat()


def night(
    name: str = "NIGHT",
    longitude_keywords: tuple[str, ...] = ("SITELONG", "LONG-OBS", "OBSGEO-L", "LONGITUD"),
    default_longitude: float = 0.0,
) -> Derivation:
    def compute(header: Mapping[str, Any]) -> Any:
        moment = observation_time(header)
        if moment is None:
            return None
        longitude = default_longitude
        for keyword in longitude_keywords:
            parsed = parse_longitude(header.get(keyword))
            if parsed is not None:
                longitude = parsed
                break
        return night_label(moment, longitude)

    return Derivation(
        name,
        compute,
        f"local date at noon before DATE-OBS (longitude from {longitude_keywords[0]})",
    )


def nights_between(a: str, b: str) -> int:
    """Whole nights separating two night labels."""
    return abs((date.fromisoformat(a) - date.fromisoformat(b)).days)
