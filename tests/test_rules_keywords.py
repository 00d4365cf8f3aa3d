"""Rules and derived keywords: the vocabulary cascades are written in."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from soda_reduce.reduction.cascade import param
from soda_reduce.reduction.keywords import (
    binning,
    first_of,
    night,
    night_label,
    parse_date_obs,
    parse_longitude,
)
from soda_reduce.reduction.rules import kw, rule_from_mapping, where


class Frame(dict):
    """A header is enough to test rules: rules only call ``get``."""


def test_equality_ignores_case_and_blanks() -> None:
    rule = kw("imagetyp").one_of("bias", "zero", "bias frame")
    assert rule.matches(Frame(IMAGETYP="  Bias   FRAME "))
    assert rule.matches(Frame(IMAGETYP="ZERO"))
    assert not rule.matches(Frame(IMAGETYP="dark"))
    assert not rule.matches(Frame())
    assert kw("FILTER").is_("v").matches(Frame(FILTER="V "))


def test_ranges_regex_functions_and_combinators() -> None:
    short = kw("EXPTIME").between(0, 1)
    assert short.matches(Frame(EXPTIME=0.5))
    assert not short.matches(Frame(EXPTIME=2))
    assert not short.matches(Frame(EXPTIME="0.5"))  # a string is not a number
    assert not short.matches(Frame(EXPTIME=True))
    regex = kw("OBJECT").matches(r"ngc \d+")
    assert regex.matches(Frame(OBJECT="NGC  2244"))
    assert not regex.matches(Frame(OBJECT="M67"))
    odd = where(lambda f: (f.get("NAXIS1") or 0) % 2 == 1, "odd width")
    combined = (short | regex) & ~odd
    assert combined.matches(Frame(EXPTIME=0.1, NAXIS1=4))
    assert not combined.matches(Frame(EXPTIME=0.1, NAXIS1=5))
    assert "odd width" in combined.describe()
    assert rule_from_mapping({"filter": ["V", "R"]}).matches(Frame(FILTER="r"))


def test_binning_conventions() -> None:
    derive = binning().compute
    assert derive({"XBINNING": 2, "YBINNING": 2}) == "2x2"
    assert derive({"XBINNING": 1}) == "1x1"
    assert derive({"CCDSUM": "2 2"}) == "2x2"
    assert derive({"BINNING": "4X4"}) == "4x4"
    assert derive({}) == "1x1"


def test_first_of_and_exposure_aliases() -> None:
    exptime = first_of("EXPTIME", "EXPTIME", "EXPOSURE")
    assert exptime.compute({"EXPOSURE": 30.0}) == 30.0
    assert exptime.compute({"EXPTIME": 10, "EXPOSURE": 30.0}) == 10
    assert first_of("READOUT", "READOUTM", default="default").compute({}) == "default"


def test_date_obs_forms() -> None:
    assert parse_date_obs("2024-01-05T03:12:00.5") == datetime(2024, 1, 5, 3, 12, 0, 500000, UTC)
    assert parse_date_obs("2024-01-05", "03:12:00") == datetime(2024, 1, 5, 3, 12, tzinfo=UTC)
    assert parse_date_obs("05/01/98") == datetime(1998, 1, 5, tzinfo=UTC)
    assert parse_date_obs("yesterday") is None
    assert parse_longitude("-70 44 15") == pytest.approx(-70.7375)
    assert parse_longitude(149.06) == 149.06


def test_night_follows_local_noon() -> None:
    # Chile: 00:43 UTC on Jan 5 is 20:00 local on Jan 4; 10:00 UTC is 05:17 local, same night.
    assert night_label(datetime(2024, 1, 5, 0, 43, tzinfo=UTC), -70.7375) == "2024-01-04"
    assert night_label(datetime(2024, 1, 5, 10, 0, tzinfo=UTC), -70.7375) == "2024-01-04"
    # Afternoon biases (local 16:00) belong to the coming night.
    assert night_label(datetime(2024, 1, 4, 20, 43, tzinfo=UTC), -70.7375) == "2024-01-04"
    # Siding Spring (east): 12:00 UTC on Jan 5 is 21:56 local Jan 5.
    derive = night().compute
    assert derive({"DATE-OBS": "2024-01-05T12:00:00", "SITELONG": 149.06}) == "2024-01-05"
    assert derive({"DATE-OBS": "2024-01-05T12:00:00", "LONG-OBS": "149:03:36"}) == "2024-01-05"
    assert derive({}) is None


def test_parameters_are_typed_and_limited() -> None:
    clip = param("sigma_clip", float, 3.0, minimum=1.0, maximum=10.0)
    assert clip.parse("4") == 4.0
    for bad in ("abc", "0.5", "nan", "inf"):
        with pytest.raises(ValueError):
            clip.parse(bad)
    flag = param("cosmic_rays", bool, True)
    assert flag.parse("No") is False
    with pytest.raises(ValueError):
        flag.parse("maybe")
    with pytest.raises(ValueError):
        param("combine", str, "mode", choices=("median", "average"))
    assert param("n", int, 3).parse("7") == 7
    with pytest.raises(ValueError):
        param("n", int, 3).parse("7.5")


def test_time_windows() -> None:
    from soda_reduce.reduction.cascade import (
        SAME_NIGHT,
        UNLIMITED,
        WITHIN_1_WEEK,
        WITHIN_3_NIGHTS,
        within_hours,
    )

    assert SAME_NIGHT.admits(0, 30.0) and not SAME_NIGHT.admits(1, 2.0)
    assert WITHIN_3_NIGHTS.admits(3, None) and not WITHIN_3_NIGHTS.admits(4, None)
    assert WITHIN_1_WEEK.admits(7, None) and not WITHIN_1_WEEK.admits(None, 1.0)
    assert within_hours(2).admits(None, 1.5) and not within_hours(2).admits(0, 2.5)
    assert UNLIMITED.admits(None, None)
