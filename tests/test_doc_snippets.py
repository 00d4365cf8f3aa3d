"""Every code block of the README and docs/ runs as written (tests/support/doc_snippets.py).

A reader pastes a block into a shell or a Python prompt on the machine where ``./dev serve``
runs. The test does that: one ``soda-reduce serve`` on its embedded defaults (the demo
archive it generates, nothing given), and each page's blocks run in document order in one
working folder, shell blocks with ``bash -e``, Python blocks each in a fresh interpreter.
Two things are changed, and only these: ``http://127.0.0.1:8080`` becomes the test
service's address (a free port, not 8080), and ``/tmp/`` a folder of this test, so runs
never meet. The working folder is laid out as a checkout is: ``../shared`` beside it, the
project's ``docs/`` in it; ``BASE`` is the service's address, as the docs say.

A block that cannot run here says so in a mark before its fence; a mark must give its
reason, and a ``run by`` mark must name a test file that exists and reads that page.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.doc_snippets import ROOT, Snippet, documents, snippets
from tests.test_serve import Served, serve

BLOCK_TIMEOUT_S = 600  # a block may reduce the demo archive (~1 min on 2 cores)
DOCUMENTED_BASE = "http://127.0.0.1:8080"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``./dev serve`` as the README starts it: no archive given, a demo archive generated."""
    with serve(tmp_path_factory.mktemp("snippets-serve") / "data") as running:
        yield running


def _pages_with_code() -> list[Path]:
    return [doc for doc in documents() if any(s.runs_here for s in snippets(doc))]


def _workdir(tmp: Path) -> tuple[Path, Path]:
    """(working folder laid out as a checkout, stand-in for /tmp/)."""
    work = tmp / "main"
    work.mkdir()
    (tmp / "shared").symlink_to(ROOT.parent / "shared", target_is_directory=True)
    (work / "docs").symlink_to(ROOT / "docs", target_is_directory=True)
    scratch = tmp / "tmp"
    scratch.mkdir()
    return work, scratch


def _environment(tmp: Path, base: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SODA_REDUCE_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["BASE"] = base
    env["XDG_DATA_HOME"] = str(tmp / "xdg")  # the CLI's default data folder, not the real home
    env["SODA_REDUCE_STORE_LINGER_S"] = "0"
    env.pop("VIRTUAL_ENV", None)
    return env


def _as_written(snippet: Snippet, base: str, scratch: Path) -> str:
    return snippet.code.replace(DOCUMENTED_BASE, base).replace("/tmp/", f"{scratch}/")


def _run(snippet: Snippet, code: str, work: Path, env: dict[str, str]) -> None:
    if snippet.language == "sh":
        argv = ["bash", "-e", "-o", "pipefail", "-c", code]
    else:
        argv = [sys.executable, "-c", code]
    done = subprocess.run(
        argv, cwd=work, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S
    )
    assert done.returncode == 0, (
        f"{snippet.where} ({snippet.language}) failed with {done.returncode}:\n{code}\n"
        f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
    )


@pytest.mark.parametrize(
    "doc", _pages_with_code(), ids=lambda d: str(d.relative_to(ROOT)).replace("/", "_")
)
def test_code_blocks_run_as_written(doc: Path, served: Served, tmp_path: Path) -> None:
    work, scratch = _workdir(tmp_path)
    env = _environment(tmp_path, served.base)
    for snippet in snippets(doc):
        if snippet.runs_here:
            _run(snippet, _as_written(snippet, served.base, scratch), work, env)


def test_every_block_not_run_here_says_why() -> None:
    """A mark is a promise: a reason for 'not run', a real test reading the page for 'run by'."""
    problems = []
    for doc in documents():
        for snippet in snippets(doc):
            if snippet.mark is None:
                continue
            if not snippet.mark_text:
                problems.append(f"{snippet.where}: '{snippet.mark}' without a reason")
            if snippet.mark == "run by":
                test = ROOT / snippet.mark_text.split()[0]
                if not test.is_file():
                    problems.append(f"{snippet.where}: {snippet.mark_text} does not exist")
                elif doc.name not in test.read_text():
                    problems.append(f"{snippet.where}: {test.name} never reads {doc.name}")
    assert not problems, "\n".join(problems)


def test_the_readme_has_runnable_code() -> None:
    """The README's client example and its command line run here, not merely exist."""
    readme = [s for s in snippets(ROOT / "README.md") if s.runs_here]
    assert {s.language for s in readme} == {"sh", "python"}
