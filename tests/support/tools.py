"""External tools the tests run (STILTS): found, or the test skips; under CI it fails."""

from __future__ import annotations

import os
import shutil

import pytest


def stilts() -> str:
    """The ``stilts`` command; missing, a skip on a workstation and a failure when ``CI`` is set
    (a check that silently did not run is not a check)."""
    found = shutil.which("stilts")
    if found is None:
        why = "stilts not on PATH (Debian package stilts)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    return found
