"""What the tests need from the machine, and what happens without it.

A schema folder, STILTS, a browser, RabbitMQ, PypeIt: missing, a test is skipped on a
developer's machine, saying why, but fails when ``CI`` is set. A CI run that silently
validated nothing would be a lie; the test command installs all of them.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest


def missing(why: str) -> NoReturn:
    """Skip, or under CI fail: the environment lacks something a test needs."""
    if os.environ.get("CI"):
        pytest.fail(f"{why} (CI is set: a missing schema or tool is a failure)", pytrace=False)
    pytest.skip(why)


def stilts() -> str:
    """The ``stilts`` command (Debian package stilts)."""
    found = shutil.which("stilts")
    if found is None:
        missing("stilts not on PATH (Debian package stilts)")
    return found
