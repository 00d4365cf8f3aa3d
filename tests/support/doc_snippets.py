"""The code blocks of the README and docs/, as the snippet test runs them.

A fenced ``sh`` or ``python`` block is code a reader will paste, so it runs under test
unless the line just before its fence says otherwise:

- ``<!-- not run: REASON -->``: code for another machine (a production cluster, an
  operator's MongoDB, a package index), or the set-up commands the whole suite stands on;
- ``<!-- run by: tests/test_x.py -->``: another test runs it as written (it needs
  something this test does not build, such as a finished Kast reduction).

Blocks in other languages (``text``, ``json``, ``xml``, ``toml``, ``yaml``, none) are
documents or expected output, not commands.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUNNABLE = frozenset({"sh", "python"})
_FENCE = re.compile(r"^```(\w*)[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
_MARK = re.compile(r"<!--\s*(not run|run by):\s*(.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Snippet:
    doc: Path
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    mark: str | None  # "not run" | "run by" | None
    mark_text: str

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"

    @property
    def runs_here(self) -> bool:
        return self.language in RUNNABLE and self.mark is None


def documents() -> list[Path]:
    """The README and every page under docs/ and k8s/ (the operator's pages)."""
    pages = sorted((ROOT / "docs").rglob("*.md")) + sorted((ROOT / "k8s").rglob("*.md"))
    return [ROOT / "README.md", *pages]


def snippets(doc: Path) -> list[Snippet]:
    text = doc.read_text()
    found = []
    for match in _FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        mark = _MARK.search(before)
        found.append(
            Snippet(
                doc=doc,
                line=text.count("\n", 0, match.start()) + 1,
                language=match.group(1),
                code=match.group(2),
                mark=mark.group(1) if mark else None,
                mark_text=mark.group(2) if mark else "",
            )
        )
    return found
