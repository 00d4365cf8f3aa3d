"""Redaction of server paths from text that leaves the service (logs, job errors, pages).

A recipe's log and a failed step's error name the files they touched by their absolute paths:
the archive mount, the products directory, scratch directories, the Python installation. Shown
to anyone, those paths map the server's layout for an attacker. Known roots become placeholders
(``$ARCHIVE/2024-01-04/x.fits`` still tells a curator which file), and any other absolute path
under the usual system prefixes keeps only its file name. Pure functions; the stream variant
reads in bounded chunks so a log of any size is redacted in constant memory.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

CHUNK = 64 * 1024
SYSTEM_PREFIXES = ("tmp", "home", "root", "work", "var", "usr", "opt", "srv", "mnt", "private")
_STOP = r"\s'\"`,;:()\[\]{}<>|"  # characters that end a path in running text
_NOT_BEFORE = r"(?<![\w.~$-])"  # a path starts a token: not inside a word or a URL's host
_PREFIXES = "|".join(SYSTEM_PREFIXES)
# "/tmp/a/b.log" or "/tmp" alone, but not "/tmpfoo": a system prefix, then the rest of the token
_SYSTEM_PATH = re.compile(rf"{_NOT_BEFORE}/+(?:{_PREFIXES})(?:/[^{_STOP}]*)?(?![^{_STOP}/])")


def _with_real(path: Path | str) -> set[str]:
    """A root as written and as resolved (``/tmp`` may be ``/private/tmp``), no trailing slash."""
    text = os.path.abspath(str(path))
    forms = {text.rstrip("/") or "/"}
    with contextlib.suppress(OSError, RuntimeError):  # a loop: the written form is enough
        forms.add(str(Path(text).resolve()).rstrip("/") or "/")
    return {f for f in forms if f != "/"}


@dataclass(frozen=True)
class PublicText:
    """Replaces known roots by placeholders, then other system paths by their file names."""

    roots: tuple[tuple[str, str], ...] = ()  # (absolute root, placeholder), longest first
    _pattern: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(
        cls,
        *,
        archive: Path | str | None = None,
        products: Path | str | None = None,
        data: Path | str | None = None,
        python: Path | str | None = sys.prefix,
    ) -> PublicText:
        """The redaction of these roots (the Python installation's by default)."""
        named: list[tuple[str, Path | str | None]] = [
            ("$ARCHIVE", archive),
            ("$PRODUCTS", products),
            ("$DATA", data),
            ("$PYTHON", python),
            ("$PYTHON", _base_prefix() if python is not None else None),
        ]
        pairs: dict[str, str] = {}
        for placeholder, root in named:
            if root is None or str(root) == "":
                continue
            for form in _with_real(root):
                pairs.setdefault(form, placeholder)
        ordered = tuple(sorted(pairs.items(), key=lambda item: -len(item[0])))
        pattern = None
        if ordered:
            alternatives = "|".join(re.escape(root) for root, _ in ordered)
            # the root itself, then a slash, the end of the token, or a full stop ending it
            end = rf"(?=/|[{_STOP}]|\.(?:[{_STOP}]|$)|$)"
            pattern = re.compile(rf"{_NOT_BEFORE}({alternatives}){end}")
        return cls(ordered, pattern)

    def __call__(self, text: str) -> str:
        """``text`` with no absolute server path left in it."""
        if self._pattern is not None:
            lookup = dict(self.roots)
            text = self._pattern.sub(lambda m: lookup[m.group(1)], text)
        return _SYSTEM_PATH.sub(_file_name, text)

    def stream(self, source: BinaryIO, chunk: int = CHUNK) -> Iterator[bytes]:
        """Redacted bytes of ``source``, in pieces of about ``chunk`` bytes.

        Each piece is cut after its last line break (else its last blank), and the rest waits
        for the next read, so a path is never split between two pieces unless a single token
        is longer than ``chunk``. Bytes that are not UTF-8 pass through unchanged.
        """
        carry = b""
        for _ in range(1 << 40):  # bounded by the file's size: every turn reads or ends
            data = source.read(chunk)
            if not data:
                break
            buffer = carry + data
            cut = max(buffer.rfind(b"\n"), buffer.rfind(b" "), buffer.rfind(b"\t"))
            if cut < 0 and len(buffer) < 2 * chunk:
                carry = buffer  # one long token so far: wait for its end (bounded: 2 chunks)
                continue
            head, carry = (buffer[: cut + 1], buffer[cut + 1 :]) if cut >= 0 else (buffer, b"")
            if piece := self.bytes(head):
                yield piece
        if carry and (piece := self.bytes(carry)):
            yield piece

    def bytes(self, data: bytes) -> bytes:
        return self(data.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")

    def size(self, path: Path) -> int:
        """The length of ``path``'s redacted content (reads it once)."""
        with open(path, "rb") as source:
            return sum(len(piece) for piece in self.stream(source))


def _base_prefix() -> str | None:
    """The interpreter a venv was made from, unless it is a bare system prefix such as /usr."""
    base = sys.base_prefix
    return base if len(Path(base).parts) > 2 and base != sys.prefix else None


def _file_name(match: re.Match[str]) -> str:
    path = match.group(0)
    trailing = len(path) - len(path.rstrip("."))
    name = path.rstrip("/.").rsplit("/", 1)[-1] or "/"
    return name + "." * trailing


def public_message(
    text: str, archive: Path | str | None = None, products: Path | str | None = None
) -> str:
    """A job or step error fit for clients: ``text`` without the server's paths."""
    return PublicText.of(archive=archive, products=products)(text)
