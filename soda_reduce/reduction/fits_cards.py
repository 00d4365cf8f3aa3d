"""FITS header cards to plain values, fast, with astropy for what is unusual.

The index parses every card of every header, and pure-Python parsing costs about 1 us a
card. Most of an archive's cards are repeated word for word from file to file (88 % of
the cards of the real Kast night in ``data/kast``: fixed comments, the controller's
registers, the night's setup), so each distinct card image is parsed once and its
``(keyword, value)`` kept in a bounded memo: a card seen before costs a dictionary
look-up. Values are immutable, the parse of a card does not depend on its neighbours
(CONTINUE cards are joined after the look-up), and the memo is cleared when it is
full, so it is safe in threads and bounded in memory (~6 MB).

Commentary cards (COMMENT, HISTORY, blank keyword, or any keyword without the ``= ``
value indicator) carry no value and are dropped. The first of duplicate keywords wins,
as with ``Header[keyword]``. Long strings in the CONTINUE convention are joined as
astropy joins them; anything odd (complex values, a CONTINUE that follows no string)
goes to astropy: ``Card.fromstring`` for one card, ``Header.fromstring`` for a header.
"""

from __future__ import annotations

import re
import threading
import warnings
from typing import Any

from soda_reduce.reduction.index_model import HeaderValue

CARD = 80
MEMO_SIZE = 20_000  # distinct card images kept

_COMMENTARY = frozenset({"", "COMMENT", "HISTORY"})
_INT = re.compile(r"[+-]?\d+\Z")
_FLOAT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[EeDd][+-]?\d+)?\Z")

# What a card image parses to: (keyword, value); keyword None for commentary.
_Parsed = tuple[str | None, HeaderValue]
_CONTINUE = "\0continue"  # keyword of a CONTINUE card; its value is the string's next part
_ASTROPY = "\0astropy"  # a card only astropy's header parser can place
_memo: dict[str, _Parsed] = {}

# warnings.catch_warnings is process-wide state: serialise the (rare) astropy fallbacks.
astropy_lock = threading.Lock()


def parse_cards(text: str) -> dict[str, HeaderValue] | None:
    """Parse 80-character cards; None when only astropy's header parser can (odd CONTINUEs)."""
    header: dict[str, HeaderValue] = {}
    memo = _memo
    if len(memo) > MEMO_SIZE:
        memo.clear()
    continuing: str | None = None  # the keyword whose string a CONTINUE card would extend
    joined = False  # a CONTINUE has extended it already
    for i in range(0, len(text) - CARD + 1, CARD):
        image = text[i : i + CARD]
        parsed = memo.get(image)
        if parsed is None:
            parsed = memo[image] = _parse_card(image)
        key, value = parsed
        if key is _CONTINUE:
            if continuing is None or not isinstance(value, str):
                return None
            if continuing:  # "" marks a duplicate's continuation: dropped with it
                base = header[continuing]
                if not isinstance(base, str):
                    return None
                if not joined and base.endswith("&"):
                    base = base[:-1]
                header[continuing] = base + value
            joined = True
            continue
        if key is _ASTROPY:
            return None
        if key is None:
            continuing = None
            continue
        joined = False
        if key in header:
            continuing = ""
            continue
        header[key] = value
        continuing = key
    return header


def _parse_card(image: str) -> _Parsed:
    """One card image, alone: (keyword, value), (None, None) for commentary."""
    if image[8:10] == "= ":
        key = image[:8].rstrip().upper()
        if key == "CONTINUE" or key in _COMMENTARY:
            return (_ASTROPY, None) if key == "CONTINUE" else (None, None)
        return key, _parse_value(image, image[10:])
    key = image[:8].rstrip().upper()
    if key == "CONTINUE":
        return _CONTINUE, _continued_part(image[8:])
    if key == "HIERARCH" and "=" in image:
        eq = image.index("=")
        key = image[9:eq].strip().upper()
        return (None, None) if key in _COMMENTARY else (key, _parse_value(image, image[eq + 1 :]))
    if image[8:9] == "=" and key not in _COMMENTARY:  # '=' without the blank
        return key, _card_fallback(image, image[9:])
    return None, None


def _continued_part(field: str) -> str | None:
    """The string of a CONTINUE card, its trailing ``&`` removed; None if not a string."""
    v = field.lstrip()
    end = _string_end(v)
    if end < 0:
        return None
    part = v[1:end].replace("''", "'").rstrip()
    return part[:-1] if part.endswith("&") else part


def _string_end(v: str) -> int:
    """Index of the quote closing the string ``v`` starts with; -1 if it is not one."""
    if not v.startswith("'"):
        return -1
    j = 1
    while True:  # bounded: j grows on every turn
        k = v.find("'", j)
        if k < 0:
            return -1
        if not v.startswith("'", k + 1):
            break
        j = k + 2
    rest = v[k + 1 :].lstrip()
    return k if not rest or rest[0] == "/" else -1


def _parse_value(card: str, field: str) -> HeaderValue:
    v = field.lstrip()
    if not v:
        return None
    if v[0] == "'":
        end = _string_end(v)
        if end < 0:
            return _card_fallback(card, v)
        return v[1:end].replace("''", "'").rstrip()
    token = v.partition("/")[0].rstrip()
    if not token:
        return None
    if token == "T":
        return True
    if token == "F":
        return False
    if _INT.match(token):
        return int(token)
    if _FLOAT.match(token):
        return float(token.replace("D", "E").replace("d", "e"))
    return _card_fallback(card, v)


def _card_fallback(card: str, field: str) -> HeaderValue:
    """astropy for what the fast path does not know (complex...); raw text if it fails too."""
    from astropy.io.fits import Card

    try:
        with astropy_lock, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _plain_value(Card.fromstring(card).value)
    except Exception:
        return field.partition("/")[0].strip() or None


def astropy_header(text: str) -> dict[str, HeaderValue]:
    """The dictionary parse_cards builds, by astropy's own header parser."""
    from astropy.io.fits import Header

    with astropy_lock, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return from_astropy(Header.fromstring(text))


def from_astropy(header: Any) -> dict[str, HeaderValue]:
    """The same dictionary parse_cards builds, from an astropy Header."""
    out: dict[str, HeaderValue] = {}
    for card in header.cards:
        key = card.keyword.upper()
        if key in _COMMENTARY or key in out:
            continue
        image = card.image
        if not image.startswith("HIERARCH") and image[8:9] != "=":
            continue
        try:
            value = card.value
        except Exception:
            value = image[10:].partition("/")[0].strip() or None
        out[key] = _plain_value(value)
    return out


def _plain_value(value: Any) -> HeaderValue:
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, complex):
        return str(value)
    if type(value).__name__ == "Undefined":
        return None
    return str(value)
