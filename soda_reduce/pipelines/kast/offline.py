"""PypeIt without the network: the site registry astropy would download.

Importing PypeIt builds every telescope's parameters at class definition, and
each asks astropy's ``EarthLocation.of_site``, which downloads the site
registry (astropy no longer ships one). Here that registry is installed
before PypeIt is imported: Lick Observatory with its coordinates given
explicitly, and every other site as NaN, so that any use of another
telescope's position shows as NaN instead of a plausible wrong number.
"""

from __future__ import annotations

import math

LICK = {"lon": -121.6429, "lat": 37.3414, "height": 1283.0}  # degrees, degrees, metres
LICK_NAMES = ("Lick Observatory", "lick", "Lick", "Mount Hamilton")


def install_site_registry() -> None:
    """Make ``EarthLocation.of_site`` answer without the network (idempotent)."""
    from astropy import units as u
    from astropy.coordinates import EarthLocation
    from astropy.coordinates.sites import SiteRegistry

    if isinstance(EarthLocation._site_registry, _OfflineSites):
        return

    class _Sites(_OfflineSites, SiteRegistry):
        def __getitem__(self, site_name: str) -> EarthLocation:
            try:
                return super().__getitem__(site_name)
            except Exception:  # astropy's UnknownSiteException: a site nobody uses here
                nan = math.nan
                return EarthLocation.from_geodetic(nan * u.deg, nan * u.deg, nan * u.m)

    sites = _Sites()
    lick = EarthLocation.from_geodetic(
        LICK["lon"] * u.deg, LICK["lat"] * u.deg, LICK["height"] * u.m
    )
    sites.add_site(list(LICK_NAMES), lick)
    EarthLocation._site_registry = sites


class _OfflineSites:
    """Marker of the registry installed here."""
