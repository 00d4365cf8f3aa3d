"""Render DOT with Graphviz when it is installed; fall back to writing the DOT."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def write_graph(dot: str, path: Path) -> Path:
    """Write DOT, or SVG/PNG/PDF when the suffix asks for it and Graphviz is installed."""
    suffix = path.suffix.lower().lstrip(".")
    if suffix in ("", "dot", "gv"):
        path.write_text(dot)
        return path
    executable = shutil.which("dot")
    if executable is None:
        fallback = path.with_suffix(".dot")
        fallback.write_text(dot)
        return fallback
    subprocess.run(
        [executable, f"-T{suffix}", "-o", str(path)],
        input=dot.encode(),
        check=True,
        timeout=120,
        capture_output=True,
    )
    return path
