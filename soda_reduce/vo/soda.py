"""SODA 1.0 parameters: parsing, SODA's error labels, descriptor metadata and VALUES limits.

Pure functions (stdlib, numpy, astropy). Three users:

- ``/soda/sync`` and the async job service parse requests with `parse_soda`;
- the DataLink writer builds service descriptors from `SODA_PARAMETERS` (three-factor
  semantics: name, UCD, unit, as in SODA 1.0 table 2) and fills their VALUES with
  `param_limits_from_wcs` and `pol_options`;
- the cutout code reads a dataset's time and wavelength coverage with
  `exposure_interval` and `filter_band`.

Errors: SODA 1.0 section 5.2 wants text/plain error documents beginning with a label.
`SodaUsageError` and `MultiValuedParamNotSupported` are DALI `UsageError`s (so outside
the SODA handlers they still render as DALI error VOTables with status 400);
`error_document` maps any DALI error onto its SODA label.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import product
from typing import Any

from soda_reduce.vo.coverage import (
    celestial_wcs,
    exposure_interval,
    filter_band,
    footprint,
    image_shape,
)
from soda_reduce.vo.dali import (
    DaliError,
    ForbiddenError,
    NotFoundError,
    TransientError,
    UsageError,
)
from soda_reduce.vo.regions import (
    Circle,
    Interval,
    Polygon,
    Range,
    Region,
    format_number,
    separation,
)

# SODA 1.0 section 5.2: an error document's text begins with one of these
ERROR_LABELS = (
    "Error",
    "AuthenticationError",
    "AuthorizationError",
    "ServiceUnavailable",
    "UsageError",
    "MultiValuedParamNotSupported",
)
# ObsCore pol_states vocabulary: the values POL may take
POL_STATES = ("I", "Q", "U", "V", "RR", "LL", "RL", "LR", "XX", "YY", "XY", "YX", "POLI", "POLA")
SPATIAL = ("POS", "CIRCLE", "POLYGON")
# validating a polygon (simple, convex enough) costs O(n^2): bounded, so that no request
# can hold a CPU for long; archive footprints need far fewer vertices
MAX_POLYGON_VERTICES = 100


class SodaUsageError(UsageError):
    """A malformed or inapplicable SODA parameter (400, label UsageError)."""

    label = "UsageError"


class MultiValuedParamNotSupported(SodaUsageError):
    """Several values where this resource takes one (sync: ID, POS/CIRCLE/POLYGON, BAND, TIME)."""

    label = "MultiValuedParamNotSupported"


def error_document(exc: BaseException) -> tuple[int, str]:
    """HTTP status and the text/plain body SODA wants for ``exc``."""
    if isinstance(exc, SodaUsageError):
        return exc.http_status, f"{exc.label}: {exc.message}\n"
    if isinstance(exc, DaliError):
        label = "Error"
        if isinstance(exc, UsageError | NotFoundError):
            label = "UsageError"
        elif isinstance(exc, ForbiddenError):
            label = "AuthorizationError"
        elif isinstance(exc, TransientError):
            label = "ServiceUnavailable"
        return exc.http_status, f"{label}: {exc.message}\n"
    return 500, "Error: internal error; the service log has the details\n"


# ------------------------------------------------------------------ parameter metadata


@dataclass(frozen=True)
class SodaParameter:
    """One standard SODA parameter as a DataLink inputParams PARAM declares it."""

    name: str
    datatype: str
    arraysize: str | None
    xtype: str | None
    ucd: str
    unit: str | None
    description: str


SODA_PARAMETERS: tuple[SodaParameter, ...] = (
    SodaParameter(
        "ID",
        "char",
        "*",
        None,
        "meta.ref.url;meta.curation",
        None,
        "The publisher DID of the dataset of interest",
    ),
    SodaParameter(
        "POS",
        "char",
        "*",
        None,
        "pos.outline;obs",
        None,
        "Region to cut out: CIRCLE lon lat radius, RANGE lon1 lon2 lat1 lat2 or "
        "POLYGON lon1 lat1 ... (degrees, ICRS)",
    ),
    SodaParameter(
        "CIRCLE",
        "double",
        "3",
        "circle",
        "pos.outline;obs",
        "deg",
        "A circle (ra, dec, radius) that should be covered by the cutout",
    ),
    SodaParameter(
        "POLYGON",
        "double",
        "*",
        "polygon",
        "pos.outline;obs",
        "deg",
        "A polygon (ra, dec pairs) that should be covered by the cutout; pixels outside "
        "it are masked",
    ),
    SodaParameter(
        "BAND",
        "double",
        "2",
        "interval",
        "em.wl;stat.interval",
        "m",
        "Wavelength interval (barycentric, metres): images whose filter overlaps it",
    ),
    SodaParameter(
        "TIME",
        "double",
        "2",
        "interval",
        "time.interval;obs.exposure",
        "d",
        "Time interval (MJD, UTC): images whose exposure overlaps it",
    ),
    SodaParameter(
        "POL",
        "char",
        "*",
        None,
        "meta.code;phys.polarization",
        None,
        "Polarization states to extract (repeatable); unpolarised images have only I",
    ),
)
SODA_PARAMETER_NAMES = frozenset(p.name for p in SODA_PARAMETERS)


# ------------------------------------------------------------------ parsing

_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\Z")
_INF = {"+inf": math.inf, "inf": math.inf, "-inf": -math.inf}


def _numbers(value: str, name: str, *, infinite: bool = False) -> list[float]:
    out: list[float] = []
    for word in value.split():
        if len(out) > 2 * MAX_POLYGON_VERTICES:
            raise SodaUsageError(f"{name}: more than {2 * MAX_POLYGON_VERTICES} numbers")
        if _NUMBER.match(word):
            out.append(float(word))
        elif infinite and word.lower() in _INF:
            out.append(_INF[word.lower()])
        else:
            raise SodaUsageError(f"{name}: {word!r} is not a number")
    return out


def _region(build, name: str):
    try:
        return build()
    except ValueError as exc:
        raise SodaUsageError(f"{name}: {exc}") from None


def parse_circle(value: str, name: str = "CIRCLE") -> Circle:
    """DALI circle: ``lon lat radius`` in degrees."""
    numbers = _numbers(value, name)
    if len(numbers) != 3:
        raise SodaUsageError(f"{name}: a circle is 3 numbers (lon lat radius), not {len(numbers)}")
    return _region(lambda: Circle(*numbers), name)


def parse_polygon(value: str, name: str = "POLYGON") -> Polygon:
    """DALI polygon: ``lon1 lat1 lon2 lat2 ...``, at least 3 vertices, degrees."""
    numbers = _numbers(value, name)
    if len(numbers) < 6 or len(numbers) % 2:
        raise SodaUsageError(
            f"{name}: a polygon is an even count of at least 6 numbers, not {len(numbers)}"
        )
    if len(numbers) > 2 * MAX_POLYGON_VERTICES:
        raise SodaUsageError(
            f"{name}: {len(numbers) // 2} vertices, more than the limit of {MAX_POLYGON_VERTICES}"
        )
    pairs = tuple(zip(numbers[::2], numbers[1::2], strict=True))
    return _region(lambda: Polygon(pairs), name)


def parse_range(value: str, name: str = "POS") -> Range:
    numbers = _numbers(value, name, infinite=True)
    if len(numbers) != 4:
        raise SodaUsageError(f"{name}: RANGE takes 4 numbers (lon1 lon2 lat1 lat2)")
    return _region(lambda: Range(*numbers), name)


def parse_pos(value: str) -> Region:
    """SIA-2 style POS: a shape keyword (CIRCLE, RANGE, POLYGON) then its numbers."""
    shape, _, rest = value.strip().partition(" ")
    parsers = {"CIRCLE": parse_circle, "RANGE": parse_range, "POLYGON": parse_polygon}
    parse = parsers.get(shape.upper())
    if parse is None:
        raise SodaUsageError(f"POS: unknown shape {shape!r} (CIRCLE, RANGE or POLYGON)")
    return parse(rest, "POS")


def parse_interval(value: str, name: str) -> Interval:
    """DALI interval: two numbers, -Inf / +Inf for open limits."""
    numbers = _numbers(value, name, infinite=True)
    if len(numbers) != 2:
        raise SodaUsageError(f"{name}: an interval is 2 numbers (low high), not {len(numbers)}")
    try:
        return Interval(*numbers)
    except ValueError as exc:
        raise SodaUsageError(f"{name}: {exc}") from None


def parse_pol(value: str) -> str:
    state = value.strip().upper()
    if state not in POL_STATES:
        raise SodaUsageError(f"POL: unknown state {value!r} (one of {', '.join(POL_STATES)})")
    return state


@dataclass(frozen=True)
class SodaFilter:
    """One combination of filter values: what one cutout is made of."""

    region: Region | None = None
    band: Interval | None = None
    time: Interval | None = None
    pol: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return self.region is None and self.band is None and self.time is None and not self.pol

    def describe(self) -> str:
        """e.g. ``CIRCLE 12 34 0.5; BAND 5e-07 6e-07`` (FITS HISTORY, result listings)."""
        parts = [self.region.soda()] if self.region is not None else []
        if self.band is not None:
            parts.append(f"BAND {self.band}")
        if self.time is not None:
            parts.append(f"TIME {self.time}")
        if self.pol:
            parts.append("POL " + " ".join(self.pol))
        return "; ".join(parts) or "whole dataset"


@dataclass(frozen=True)
class SodaRequest:
    """The SODA parameters of one request, validated."""

    ids: tuple[str, ...] = ()
    regions: tuple[Region, ...] = ()
    bands: tuple[Interval, ...] = ()
    times: tuple[Interval, ...] = ()
    pol: tuple[str, ...] = ()

    @property
    def filtering(self) -> bool:
        return bool(self.regions or self.bands or self.times or self.pol)

    def filters(self) -> list[SodaFilter]:
        """One filter per combination of values (SODA 1.0 section 6); POL values stay one filter.

        Values of POS, CIRCLE and POLYGON are alternatives of one spatial axis: a CIRCLE
        and a POLYGON give two cutouts, not their intersection.
        """
        return [
            SodaFilter(region, band, time, self.pol)
            for region, band, time in product(
                self.regions or (None,), self.bands or (None,), self.times or (None,)
            )
        ]


def _grouped(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for name, value in pairs:
        if value.strip():  # descriptors send empty values for unset parameters
            grouped.setdefault(name.upper(), []).append(value)
    return grouped


def parse_soda(pairs: Iterable[tuple[str, str]], *, sync: bool) -> SodaRequest:
    """The SODA parameters among ``pairs`` (names case-insensitive, others ignored).

    ``sync``: ID, the spatial parameters together, BAND and TIME take one value each,
    more is MultiValuedParamNotSupported. POL is repeatable everywhere (SODA 1.0 3.3.7).
    Empty values count as not given.
    """
    grouped = _grouped(pairs)
    if sync:
        spatial = sum(len(grouped.get(n, [])) for n in SPATIAL)
        if spatial > 1:
            raise MultiValuedParamNotSupported(
                f"{spatial} values of POS, CIRCLE and POLYGON: /soda/sync cuts one region "
                "(use /soda/async for several)"
            )
        for name in ("ID", "BAND", "TIME"):
            if len(grouped.get(name, [])) > 1:
                raise MultiValuedParamNotSupported(
                    f"{name} given {len(grouped[name])} times: /soda/sync takes one"
                )
    regions: list[Region] = [parse_pos(v) for v in grouped.get("POS", [])]
    regions += [parse_circle(v) for v in grouped.get("CIRCLE", [])]
    regions += [parse_polygon(v) for v in grouped.get("POLYGON", [])]
    ids = tuple(i for v in grouped.get("ID", []) for i in v.split())
    return SodaRequest(
        ids=ids,
        regions=tuple(dict.fromkeys(regions)),
        bands=tuple(dict.fromkeys(parse_interval(v, "BAND") for v in grouped.get("BAND", []))),
        times=tuple(dict.fromkeys(parse_interval(v, "TIME") for v in grouped.get("TIME", []))),
        pol=tuple(dict.fromkeys(parse_pol(v) for v in grouped.get("POL", []))),
    )


# ------------------------------------------------------------------ descriptor VALUES


def pol_options(header: Mapping[str, Any]) -> tuple[str, ...]:
    """POL values with a non-empty answer: a CCD image without a polariser is Stokes I."""
    return ("I",)


Limit = float | tuple[float, ...] | None


def param_limits_from_wcs(header: Mapping[str, Any]) -> dict[str, tuple[Limit, Limit]]:
    """VALUES limits of a dataset's SODA parameters, as SODA 1.0 section 4.2 describes them.

    ``header`` is an image header: an astropy Header or the indexed header dict of a raw
    file (``RawFile.header``). Returns ``{name: (min, max)}`` with only the parameters
    that have limits for this dataset; write each non-None limit with `format_limit`
    into ``<MIN value=...>`` / ``<MAX value=...>``:

    - ``CIRCLE``: ``(None, (ra, dec, radius))``, a circle covering the image (MAX only);
    - ``POLYGON``: ``(None, (ra1, dec1, ..., ra4, dec4))``, the image's corners (MAX only);
    - ``TIME``: ``(mjd_start, mjd_end)``, the exposure;
    - ``BAND``: ``(metres_min, metres_max)``, the filter passband, when the filter is known.

    POS has no entry: SODA 1.0 says useful POS metadata cannot be given and clients
    should use POLYGON's. POL options come from `pol_options`.
    """
    limits: dict[str, tuple[Limit, Limit]] = {}
    corners = footprint(header)
    if corners is not None:
        wcs, (ny, nx) = celestial_wcs(header), image_shape(header)  # type: ignore[misc]
        assert wcs is not None
        clon, clat = wcs.pixel_to_world_values((nx - 1) / 2.0, (ny - 1) / 2.0)
        clon, clat = float(clon) % 360.0, float(clat)
        radius = max(float(separation(clon, clat, lon, lat)) for lon, lat in corners)
        limits["CIRCLE"] = (None, (round(clon, 9), round(clat, 9), round(radius * 1.0001, 9)))
        ordered = corners if _signed_area(corners) > 0 else corners[::-1]
        limits["POLYGON"] = (None, tuple(round(v, 9) for pair in ordered for v in pair))
    when = exposure_interval(header)
    if when is not None:
        limits["TIME"] = (when.low, when.high)
    band = filter_band(header)
    if band is not None:
        limits["BAND"] = (band.low, band.high)
    return limits


def _signed_area(corners: Sequence[tuple[float, float]]) -> float:
    """Area in (ra cos dec, dec) around the first corner: > 0 for the SODA examples' order."""
    lon0, lat0 = corners[0]
    cos0 = math.cos(math.radians(lat0))
    pts = [(((lon - lon0 + 180.0) % 360.0 - 180.0) * cos0, lat - lat0) for lon, lat in corners]
    return sum(x1 * y2 - x2 * y1 for (x1, y1), (x2, y2) in zip(pts, pts[1:] + pts[:1], strict=True))


def format_limit(value: float | Sequence[float]) -> str:
    """A VALUES MIN/MAX attribute: numbers separated by blanks, DALI infinities."""
    if isinstance(value, int | float):
        return format_number(float(value))
    return " ".join(format_number(float(v)) for v in value)
