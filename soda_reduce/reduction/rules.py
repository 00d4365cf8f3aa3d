"""Header rules: small immutable conditions a pipeline scientist can read aloud.

    kw("IMAGETYP").one_of("bias", "zero", "bias frame")
    kw("EXPTIME").between(0, 0.001) | kw("IMAGETYP").is_("zero")

String values are compared case- and whitespace-insensitively ("Bias  Frame"
equals "bias frame"), because archives spell the same thing many ways.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol


class KeywordSource(Protocol):
    """Anything that answers keyword look-ups (a frame with its derived keywords)."""

    def get(self, keyword: str) -> Any: ...


def normalise(value: Any) -> Any:
    """The comparable form of a header value: strings folded and blank-collapsed."""
    if isinstance(value, str):
        return " ".join(value.split()).casefold()
    return value


def show(value: Any) -> str:
    """A header value as people write it in a sentence."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class Rule:
    """Base of all conditions; supports ``&``, ``|`` and ``~``."""

    def matches(self, frame: KeywordSource) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def __and__(self, other: Rule) -> Rule:
        return AllOf((self, other))

    def __or__(self, other: Rule) -> Rule:
        return AnyOf((self, other))

    def __invert__(self) -> Rule:
        return Not(self)

    def __str__(self) -> str:
        return self.describe()


@dataclass(frozen=True)
class Equals(Rule):
    keyword: str
    value: Any

    @cached_property
    def _wanted(self) -> Any:
        return normalise(self.value)

    def matches(self, frame: KeywordSource) -> bool:
        actual = frame.get(self.keyword)
        return actual is not None and normalise(actual) == self._wanted

    def describe(self) -> str:
        return f"{self.keyword}={show(self.value)}"


@dataclass(frozen=True)
class OneOf(Rule):
    keyword: str
    values: tuple[Any, ...]

    @cached_property
    def _normalised(self) -> tuple[Any, ...]:
        return tuple(normalise(v) for v in self.values)

    def matches(self, frame: KeywordSource) -> bool:
        actual = frame.get(self.keyword)
        if actual is None:
            return False
        return normalise(actual) in self._normalised  # rules are matched once per file indexed

    def describe(self) -> str:
        return f"{self.keyword} in {{{', '.join(show(v) for v in self.values)}}}"


@dataclass(frozen=True)
class InRange(Rule):
    keyword: str
    low: float | None = None
    high: float | None = None

    def matches(self, frame: KeywordSource) -> bool:
        actual = frame.get(self.keyword)
        if isinstance(actual, bool) or not isinstance(actual, int | float):
            return False
        if self.low is not None and actual < self.low:
            return False
        return not (self.high is not None and actual > self.high)

    def describe(self) -> str:
        low = "-inf" if self.low is None else show(self.low)
        high = "+inf" if self.high is None else show(self.high)
        return f"{self.keyword} in [{low}, {high}]"


@dataclass(frozen=True)
class MatchesRegex(Rule):
    keyword: str
    pattern: str

    def matches(self, frame: KeywordSource) -> bool:
        actual = frame.get(self.keyword)
        if actual is None:
            return False
        text = " ".join(str(actual).split())
        return re.fullmatch(self.pattern, text, flags=re.IGNORECASE) is not None

    def describe(self) -> str:
        return f"{self.keyword} ~ /{self.pattern}/"


@dataclass(frozen=True)
class Exists(Rule):
    keyword: str

    def matches(self, frame: KeywordSource) -> bool:
        return frame.get(self.keyword) is not None

    def describe(self) -> str:
        return f"{self.keyword} present"


@dataclass(frozen=True)
class Where(Rule):
    """Escape hatch: any Python predicate, with the words that describe it."""

    predicate: Callable[[KeywordSource], bool]
    description: str

    def matches(self, frame: KeywordSource) -> bool:
        return bool(self.predicate(frame))

    def describe(self) -> str:
        return self.description


@dataclass(frozen=True)
class AllOf(Rule):
    rules: tuple[Rule, ...]

    def matches(self, frame: KeywordSource) -> bool:
        return all(rule.matches(frame) for rule in self.rules)

    def describe(self) -> str:
        return " and ".join(_paren(rule) for rule in self.rules)


@dataclass(frozen=True)
class AnyOf(Rule):
    rules: tuple[Rule, ...]

    def matches(self, frame: KeywordSource) -> bool:
        return any(rule.matches(frame) for rule in self.rules)

    def describe(self) -> str:
        return " or ".join(_paren(rule) for rule in self.rules)


@dataclass(frozen=True)
class Not(Rule):
    rule: Rule

    def matches(self, frame: KeywordSource) -> bool:
        return not self.rule.matches(frame)

    def describe(self) -> str:
        return f"not {_paren(self.rule)}"


@dataclass(frozen=True)
class Always(Rule):
    def matches(self, frame: KeywordSource) -> bool:
        return True

    def describe(self) -> str:
        return "always"


def _paren(rule: Rule) -> str:
    text = rule.describe()
    return f"({text})" if isinstance(rule, AllOf | AnyOf) else text


@dataclass(frozen=True)
class Keyword:
    """Entry point of the rule vocabulary: ``kw("FILTER").is_("V")``."""

    name: str

    def is_(self, value: Any) -> Rule:
        return Equals(self.name, value)

    def one_of(self, *values: Any) -> Rule:
        return OneOf(self.name, tuple(values))

    def between(self, low: float | None = None, high: float | None = None) -> Rule:
        return InRange(self.name, low, high)

    def matches(self, pattern: str) -> Rule:
        return MatchesRegex(self.name, pattern)

    def exists(self) -> Rule:
        return Exists(self.name)


def kw(name: str) -> Keyword:
    return Keyword(name.upper())


def where(predicate: Callable[[KeywordSource], bool], description: str) -> Rule:
    return Where(predicate, description)


def rule_from_mapping(selection: dict[str, Any]) -> Rule:
    """A header filter given as ``{"FILTER": "V", "OBJECT": ["M67", "NGC 2244"]}``."""
    parts: list[Rule] = []
    for key, value in sorted(selection.items()):
        if isinstance(value, list | tuple):
            parts.append(OneOf(key.upper(), tuple(value)))
        else:
            parts.append(Equals(key.upper(), value))
    return AllOf(tuple(parts)) if parts else Always()
