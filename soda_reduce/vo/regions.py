"""Sky regions and intervals of SODA 1.0 / DALI 1.1: circle, polygon, POS RANGE, interval.

Pure geometry on the unit sphere with numpy. A cutout needs two things from a region:
whether pixel centres lie inside it (``contains``) and points along its outline
(``outline``), so that pixels the boundary crosses are kept even when their centres
fall outside. Malformed regions raise ValueError; the SODA layer turns that into a
UsageError.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MAX_OUTLINE = 20000  # points per circle or edge: bounds the work for huge regions
MAX_VERTICES = 2000  # the self-intersection check is O(n^2) vectorised in n


def format_number(value: float) -> str:
    """DALI spelling: +Inf / -Inf for open limits, 12 significant digits otherwise."""
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return format(value, ".12g")


def unit_vectors(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """(..., 3) unit vectors of longitudes and latitudes in degrees."""
    lon_r, lat_r = np.radians(lon), np.radians(lat)
    cos_lat = np.cos(lat_r)
    return np.stack([cos_lat * np.cos(lon_r), cos_lat * np.sin(lon_r), np.sin(lat_r)], axis=-1)


def lon_lat(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y, z = vectors[..., 0], vectors[..., 1], vectors[..., 2]
    lon = np.degrees(np.arctan2(y, x)) % 360.0
    lat = np.degrees(np.arctan2(z, np.hypot(x, y)))
    return lon, lat


def separation(lon1, lat1, lon2, lat2) -> np.ndarray:
    """Angular distance in degrees (haversine: exact for tiny angles too)."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dlat, dlon = p2 - p1, np.radians(np.asarray(lon2) - np.asarray(lon1))
    h = np.sin(dlat / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlon / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0))))


def _check_lon_lat(lon: float, lat: float, what: str) -> None:
    if not (math.isfinite(lon) and math.isfinite(lat)):
        raise ValueError(f"{what}: coordinates must be finite numbers")
    if not 0.0 <= lon <= 360.0:
        raise ValueError(f"{what}: longitude {format_number(lon)} is outside [0, 360]")
    if not -90.0 <= lat <= 90.0:
        raise ValueError(f"{what}: latitude {format_number(lat)} is outside [-90, 90]")


def _count(length_deg: float, step_deg: float) -> int:
    return int(min(MAX_OUTLINE, max(2, math.ceil(length_deg / max(step_deg, 1e-12)) + 1)))


@dataclass(frozen=True)
class Interval:
    """A closed interval; either limit may be infinite (an open interval in DALI terms)."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if math.isnan(self.low) or math.isnan(self.high):
            raise ValueError("interval limits must be numbers, not NaN")
        if self.low > self.high:
            raise ValueError(
                f"interval lower limit {format_number(self.low)} is above the upper limit "
                f"{format_number(self.high)}"
            )

    def overlaps(self, other: Interval) -> bool:
        return self.low <= other.high and other.low <= self.high

    def __str__(self) -> str:
        return f"{format_number(self.low)} {format_number(self.high)}"


@dataclass(frozen=True)
class Circle:
    """DALI circle: centre longitude, latitude and radius, degrees (ICRS)."""

    lon: float
    lat: float
    radius: float

    def __post_init__(self) -> None:
        _check_lon_lat(self.lon, self.lat, "circle centre")
        if not (math.isfinite(self.radius) and 0.0 < self.radius <= 180.0):
            raise ValueError(f"circle radius {format_number(self.radius)} is not in (0, 180]")

    def contains(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        return separation(self.lon, self.lat, lon, lat) <= self.radius

    def outline(self, step_deg: float) -> tuple[np.ndarray, np.ndarray]:
        """The centre and points along the circle, about ``step_deg`` apart."""
        n = _count(360.0 * math.sin(math.radians(min(self.radius, 90.0))), step_deg)
        bearing = np.radians(np.linspace(0.0, 360.0, n, endpoint=False))
        d, lat1 = math.radians(self.radius), math.radians(self.lat)
        lat2 = np.arcsin(
            np.clip(
                math.sin(lat1) * math.cos(d) + math.cos(lat1) * math.sin(d) * np.cos(bearing), -1, 1
            )
        )
        dlon = np.arctan2(
            np.sin(bearing) * math.sin(d) * math.cos(lat1),
            math.cos(d) - math.sin(lat1) * np.sin(lat2),
        )
        lon = (self.lon + np.degrees(dlon)) % 360.0
        return np.append(lon, self.lon), np.append(np.degrees(lat2), self.lat)

    def soda(self) -> str:
        return f"CIRCLE {format_number(self.lon)} {format_number(self.lat)} " + format_number(
            self.radius
        )


@dataclass(frozen=True)
class Range:
    """POS=RANGE lon1 lon2 lat1 lat2; infinite limits are open, lon1 > lon2 wraps through 0."""

    lon1: float
    lon2: float
    lat1: float
    lat2: float

    def __post_init__(self) -> None:
        for value, low, high, what in (
            (self.lon1, 0.0, 360.0, "longitude"),
            (self.lon2, 0.0, 360.0, "longitude"),
            (self.lat1, -90.0, 90.0, "latitude"),
            (self.lat2, -90.0, 90.0, "latitude"),
        ):
            if math.isnan(value) or (math.isfinite(value) and not low <= value <= high):
                raise ValueError(
                    f"RANGE {what} {format_number(value)} is outside [{low:g}, {high:g}]"
                )
        if self.lat_bounds[0] > self.lat_bounds[1]:
            raise ValueError("RANGE latitudes must be given as lower then upper limit")

    @property
    def lat_bounds(self) -> tuple[float, float]:
        return max(self.lat1, -90.0), min(self.lat2, 90.0)

    @property
    def lon_bounds(self) -> tuple[float, float]:
        """Finite longitude limits: an infinite limit opens the range to 0 or 360."""
        lo = 0.0 if math.isinf(self.lon1) else self.lon1
        hi = 360.0 if math.isinf(self.lon2) else self.lon2
        return lo, hi

    @property
    def full_lon(self) -> bool:
        return self.lon_bounds == (0.0, 360.0)

    def contains(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        lat_lo, lat_hi = self.lat_bounds
        inside = (np.asarray(lat) >= lat_lo) & (np.asarray(lat) <= lat_hi)
        if self.full_lon:
            return inside
        lo, hi = self.lon_bounds
        lon = np.asarray(lon) % 360.0
        if lo <= hi:
            in_lon = (lon >= lo) & (lon <= hi) | ((hi >= 360.0) & (lon == 0.0))
        else:  # wraps through 0
            in_lon = (lon >= lo) | (lon <= hi)
        return inside & in_lon

    def outline(self, step_deg: float) -> tuple[np.ndarray, np.ndarray]:
        lat_lo, lat_hi = self.lat_bounds
        lo, hi = (0.0, 360.0) if self.full_lon else self.lon_bounds
        width = (hi - lo) % 360.0 or (360.0 if self.full_lon else 0.0)
        lons, lats = [], []
        for lat in (lat_lo, lat_hi):  # parallels
            n = _count(width * math.cos(math.radians(lat)), step_deg)
            lons.append((lo + np.linspace(0.0, width, n)) % 360.0)
            lats.append(np.full(n, lat))
        if not self.full_lon:  # meridians
            n = _count(lat_hi - lat_lo, step_deg)
            for lon in (lo, hi):
                lons.append(np.full(n, lon % 360.0))
                lats.append(np.linspace(lat_lo, lat_hi, n))
        return np.concatenate(lons), np.concatenate(lats)

    def soda(self) -> str:
        values = (self.lon1, self.lon2, self.lat1, self.lat2)
        return "RANGE " + " ".join(format_number(v) for v in values)


@dataclass(frozen=True)
class Polygon:
    """DALI polygon: at least 3 vertices joined by great circles, smaller than a hemisphere.

    DALI asks for counter-clockwise vertices; both windings are accepted here and the
    polygon is always the smaller region they enclose (what every client means).
    """

    vertices: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        if len(self.vertices) < 3:
            raise ValueError("a polygon needs at least 3 vertices")
        if len(self.vertices) > MAX_VERTICES:
            raise ValueError(f"a polygon may have at most {MAX_VERTICES} vertices")
        for n, (lon, lat) in enumerate(self.vertices, start=1):
            _check_lon_lat(lon, lat, f"polygon vertex {n}")
        xy = self._plane_vertices()
        x, y = xy[:, 0], xy[:, 1]
        if _self_intersects(xy):
            raise ValueError("the polygon's edges cross each other")
        area = 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))
        if abs(area) < 1e-18:
            raise ValueError("the polygon has no area (its vertices are on one great circle)")

    def _centre(self) -> np.ndarray:
        lon, lat = np.array(self.vertices).T
        total = unit_vectors(lon, lat).sum(axis=0)
        norm = float(np.linalg.norm(total))
        if norm < 1e-9:
            raise ValueError("the polygon does not fit in a hemisphere")
        return total / norm

    def _basis(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        centre = self._centre()
        axis = np.array([0.0, 0.0, 1.0]) if abs(centre[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
        east = np.cross(axis, centre)
        east /= np.linalg.norm(east)
        return centre, east, np.cross(centre, east)

    def _project(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Gnomonic projection: great circles become straight lines, so edges stay exact."""
        centre, east, north = self._basis()
        d = vectors @ centre
        with np.errstate(divide="ignore", invalid="ignore"):
            xy = np.stack([vectors @ east / d, vectors @ north / d], axis=-1)
        return xy, d

    def _plane_vertices(self) -> np.ndarray:
        lon, lat = np.array(self.vertices).T
        xy, d = self._project(unit_vectors(lon, lat))
        if np.any(d < 1e-6):
            raise ValueError("the polygon does not fit in a hemisphere")
        return xy

    def contains(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        """Even-odd rule in the gnomonic plane; points beyond 90 degrees are outside."""
        xy, d = self._project(unit_vectors(np.asarray(lon, float), np.asarray(lat, float)))
        px, py = xy[..., 0], xy[..., 1]
        verts = self._plane_vertices()
        inside = np.zeros(np.shape(px), dtype=bool)
        for (x1, y1), (x2, y2) in zip(verts, np.roll(verts, -1, axis=0), strict=True):
            crosses = (y1 > py) != (y2 > py)
            with np.errstate(divide="ignore", invalid="ignore"):
                x_at = x1 + (py - y1) * (x2 - x1) / (y2 - y1)
            inside ^= crosses & (px < x_at)
        return inside & (d > 0)

    def outline(self, step_deg: float) -> tuple[np.ndarray, np.ndarray]:
        """Points along the great-circle edges (slerp), vertices included."""
        lon, lat = np.array(self.vertices).T
        vec = unit_vectors(lon, lat)
        parts = []
        for a, b in zip(vec, np.roll(vec, -1, axis=0), strict=True):
            angle = math.acos(float(np.clip(a @ b, -1.0, 1.0)))
            n = _count(math.degrees(angle), step_deg)
            t = np.linspace(0.0, 1.0, n)[:, None]
            if angle < 1e-12:
                parts.append(np.repeat(a[None, :], n, axis=0))
                continue
            s = math.sin(angle)
            parts.append((np.sin((1 - t) * angle) * a + np.sin(t * angle) * b) / s)
        return lon_lat(np.concatenate(parts))

    def soda(self) -> str:
        return "POLYGON " + " ".join(
            f"{format_number(lon)} {format_number(lat)}" for lon, lat in self.vertices
        )


def _self_intersects(xy: np.ndarray) -> bool:
    """Whether two non-adjacent edges cross (vectorised per edge)."""
    a, b = xy, np.roll(xy, -1, axis=0)
    n = len(xy)

    def orient(p, q, r):
        return np.sign(
            (q[..., 0] - p[..., 0]) * (r[..., 1] - p[..., 1])
            - (q[..., 1] - p[..., 1]) * (r[..., 0] - p[..., 0])
        )

    for i in range(n):
        j = np.arange(i + 2, n)
        if i == 0:
            j = j[j != n - 1]  # the last edge touches the first
        if j.size == 0:
            continue
        p, q = a[i], b[i]
        r, s = a[j], b[j]
        o1, o2 = orient(p, q, r), orient(p, q, s)
        o3, o4 = orient(r, s, p[None, :]), orient(r, s, q[None, :])
        if np.any((o1 * o2 < 0) & (o3 * o4 < 0)):
            return True
    return False


Region = Circle | Range | Polygon
