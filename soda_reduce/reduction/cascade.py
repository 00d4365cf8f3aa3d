"""Processing cascades (EDPS): classifications, data sources, associations, tasks.

Everything here is an immutable value built by small fluent builders, so a
cascade module reads like the pipeline's documentation:

    raw_bias = data_source("raw_bias", BIAS).group_by("INSTRUME", "NIGHT", "BINNING")
    bias = task("bias").recipe("ccd.master_bias").main_input(raw_bias, min=3)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from soda_reduce.reduction.rules import Always, Rule

# --------------------------------------------------------------------------- windows


@dataclass(frozen=True)
class TimeWindow:
    """How far in time an associated file may be from the file it serves.

    ``max_nights`` counts whole nights between night labels (0 = the same night);
    ``max_hours`` is an absolute limit on |delta MJD|. ``None`` means no limit.
    """

    name: str
    max_nights: int | None = None
    max_hours: float | None = None

    def admits(self, nights_apart: int | None, hours_apart: float | None) -> bool:
        if self.max_nights is not None and (nights_apart is None or nights_apart > self.max_nights):
            return False
        return not (
            self.max_hours is not None and (hours_apart is None or hours_apart > self.max_hours)
        )


SAME_NIGHT = TimeWindow("the same night", max_nights=0)
WITHIN_1_NIGHT = TimeWindow("1 night", max_nights=1)
WITHIN_3_NIGHTS = TimeWindow("3 nights", max_nights=3)
WITHIN_1_WEEK = TimeWindow("7 nights", max_nights=7)
UNLIMITED = TimeWindow("any time")


def within_hours(hours: float) -> TimeWindow:
    return TimeWindow(f"{hours:g} hours", max_hours=hours)


# ----------------------------------------------------------------------- association


@dataclass(frozen=True)
class MatchLevel:
    """One quality level: keywords that must be equal, numeric keywords that must be
    close (``tolerances``: keyword -> largest absolute difference, e.g. a grating
    tilt within 0.1 degree), a time window, an extra rule."""

    level: int
    keywords: tuple[str, ...]
    window: TimeWindow = UNLIMITED
    predicate: Rule | None = None  # applied to the candidate
    tolerances: tuple[tuple[str, float], ...] = ()

    def close_enough(self, ref: Any, candidate: Any) -> bool:
        """Whether every toleranced keyword of ``candidate`` is within reach of ``ref``'s."""
        for keyword, tolerance in self.tolerances:
            a, b = ref.get(keyword), candidate.get(keyword)
            if a is None and b is None:
                continue  # a keyword neither frame has (a grating tilt on a grism arm)
            if not _is_number(a) or not _is_number(b) or abs(float(a) - float(b)) > tolerance:
                return False
        return True

    def describe_tolerances(self, ref: Any) -> str:
        shown = [(k, t) for k, t in self.tolerances if ref.get(k) is not None]
        return ", ".join(f"{k}={ref.get(k)}±{t:g}" for k, t in shown)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class AssociationRule:
    """Quality levels tried in order (level 0 best); candidates ranked by ``closest_by``."""

    levels: tuple[MatchLevel, ...]
    closest_by: str = "MJD"


class AssociationBuilder:
    def __init__(self) -> None:
        self._levels: list[MatchLevel] = []
        self._closest_by = "MJD"

    def level(
        self,
        level: int,
        match: Sequence[str] = (),
        window: TimeWindow = UNLIMITED,
        predicate: Rule | None = None,
        near: Mapping[str, float] | None = None,
    ) -> AssociationBuilder:
        tolerances = tuple((k.upper(), float(v)) for k, v in sorted((near or {}).items()))
        for keyword, tolerance in tolerances:
            if not tolerance >= 0:
                raise ValueError(f"tolerance of {keyword} must be >= 0, not {tolerance}")
        self._levels.append(
            MatchLevel(level, tuple(k.upper() for k in match), window, predicate, tolerances)
        )
        return self

    def closest_by(self, keyword: str) -> AssociationBuilder:
        self._closest_by = keyword.upper()
        return self

    def build(self) -> AssociationRule:
        if not self._levels:
            raise ValueError("an association needs at least one quality level")
        levels = tuple(sorted(self._levels, key=lambda lv: lv.level))
        return AssociationRule(levels, self._closest_by)


def association() -> AssociationBuilder:
    return AssociationBuilder()


def same_setup(
    *keywords: str, closest_by: str = "MJD", near: Mapping[str, float] | None = None
) -> AssociationRule:
    """The common ladder: same night, then within 3 nights, then any time, same setup
    (``near``: numeric keywords that need only be close, with their tolerances)."""
    builder = association().closest_by(closest_by)
    for level, window in enumerate((SAME_NIGHT, WITHIN_3_NIGHTS, UNLIMITED)):
        builder.level(level, keywords, window, near=near)
    return builder.build()


# ------------------------------------------------------------------ classification


@dataclass(frozen=True)
class Classification:
    """A category (BIAS, FLAT...) and the header rule that recognises it."""

    category: str
    rule: Rule


def classification(category: str, rule: Rule) -> Classification:
    return Classification(category.upper(), rule)


# ----------------------------------------------------------------------- data source


@dataclass(frozen=True)
class TimeClustering:
    """Split a group where consecutive frames are more than ``max_gap_hours`` apart."""

    max_gap_hours: float


@dataclass(frozen=True)
class DataSource:
    name: str
    classification: Classification
    group_by: tuple[str, ...] = ()
    clustering: TimeClustering | None = None
    match: AssociationRule | None = None
    condition: Rule = field(default_factory=Always)
    group_near: tuple[tuple[str, float], ...] = ()  # numeric grouping keys, with tolerances

    @property
    def category(self) -> str:
        return self.classification.category


class DataSourceBuilder:
    def __init__(self, name: str, classified_as: Classification) -> None:
        self._source = DataSource(name, classified_as)

    def group_by(
        self, *keywords: str, near: Mapping[str, float] | None = None
    ) -> DataSourceBuilder:
        """Frames with equal ``keywords`` (and ``near`` keywords within their tolerance)
        are reduced together."""
        tolerances = tuple((k.upper(), float(v)) for k, v in sorted((near or {}).items()))
        self._source = replace(
            self._source, group_by=tuple(k.upper() for k in keywords), group_near=tolerances
        )
        return self

    def cluster_in_time(self, max_gap_hours: float) -> DataSourceBuilder:
        self._source = replace(self._source, clustering=TimeClustering(max_gap_hours))
        return self

    def match(self, rule: AssociationRule) -> DataSourceBuilder:
        self._source = replace(self._source, match=rule)
        return self

    def only_if(self, condition: Rule) -> DataSourceBuilder:
        self._source = replace(self._source, condition=condition)
        return self

    def build(self) -> DataSource:
        return self._source


def data_source(name: str, classified_as: Classification) -> DataSourceBuilder:
    return DataSourceBuilder(name, classified_as)


# ------------------------------------------------------------------------ parameters

PARAM_TYPES: dict[str, type] = {"bool": bool, "int": int, "float": float, "str": str}


@dataclass(frozen=True)
class Param:
    """A typed recipe or workflow parameter with its default and limits."""

    name: str
    type: str
    default: Any
    description: str = ""
    choices: tuple[Any, ...] = ()
    minimum: float | None = None
    maximum: float | None = None

    def parse(self, raw: Any) -> Any:
        """The typed value of ``raw`` (a string from a request, or a value); ValueError if bad."""
        value = _coerce(self.type, raw)
        if self.choices and value not in self.choices:
            shown = ", ".join(str(c) for c in self.choices)
            raise ValueError(f"{self.name} must be one of {shown}, not {raw!r}")
        if self.minimum is not None and value < self.minimum:
            raise ValueError(f"{self.name} must be >= {self.minimum}, not {raw!r}")
        if self.maximum is not None and value > self.maximum:
            raise ValueError(f"{self.name} must be <= {self.maximum}, not {raw!r}")
        return value


def _coerce(kind: str, raw: Any) -> Any:
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("true", "t", "yes", "y", "1", "on"):
            return True
        if text in ("false", "f", "no", "n", "0", "off"):
            return False
        raise ValueError(f"not a boolean: {raw!r}")
    if kind == "int":
        if isinstance(raw, bool):
            raise ValueError(f"not an integer: {raw!r}")
        if isinstance(raw, float) and not raw.is_integer():
            raise ValueError(f"not an integer: {raw!r}")
        try:
            return int(str(raw).strip()) if not isinstance(raw, int | float) else int(raw)
        except ValueError:
            raise ValueError(f"not an integer: {raw!r}") from None
    if kind == "float":
        if isinstance(raw, bool):
            raise ValueError(f"not a number: {raw!r}")
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise ValueError(f"not a number: {raw!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"not a finite number: {raw!r}")
        return value
    if kind == "str":
        return str(raw).strip()
    raise ValueError(f"unknown parameter type {kind!r}")


def param(
    name: str,
    kind: type | str,
    default: Any,
    description: str = "",
    choices: Iterable[Any] = (),
    minimum: float | None = None,
    maximum: float | None = None,
) -> Param:
    type_name = kind if isinstance(kind, str) else kind.__name__
    if type_name not in PARAM_TYPES:
        raise ValueError(f"parameter {name}: unsupported type {type_name}")
    spec = Param(name, type_name, default, description, tuple(choices), minimum, maximum)
    spec.parse(default)  # a default that fails its own limits is a cascade bug
    return spec


@dataclass(frozen=True)
class WhenParam:
    """A condition on a workflow parameter: the input is used only when it holds."""

    parameter: str
    equals: Any = True

    def holds(self, workflow_params: dict[str, Any]) -> bool:
        return workflow_params.get(self.parameter) == self.equals

    def describe(self) -> str:
        value = str(self.equals).lower() if isinstance(self.equals, bool) else self.equals
        return f"{self.parameter}={value}"


def when(parameter: str, equals: Any = True) -> WhenParam:
    return WhenParam(parameter, equals)
