"""Products placed where a user asked for them, out of the shared product store.

The product store (``DATA_DIR/products/steps/...``) is content-addressed and shared by
every run, so ``reduce --out DIR`` does not compute into ``DIR``: it places each step's
files in ``DIR/<job id>/`` (``science-bf044ad112fa/``, ``flat-5ca1ed79754e/``), as hard
links when ``DIR`` is on the product store's file system (instant, no space), as copies
otherwise. Committed product files are read-only (`ProductStore.commit`), so a hard
link cannot be edited in place into the cache everyone reuses.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from soda_reduce.runtime.products import ProductStore

MAX_FILES_PER_STEP = 10_000  # a step directory holding more is not placed whole


class PlacementError(OSError):
    """The products could not be placed in the output folder."""


@dataclass
class Placement:
    """What `place` did: how many files became hard links and how many copies."""

    linked: int = 0
    copied: int = 0

    def add(self, other: Placement) -> None:
        self.linked += other.linked
        self.copied += other.copied

    def describe(self) -> str:
        if self.copied and not self.linked:
            return f"{self.copied} files copied (another file system than the product store)"
        if self.linked and not self.copied:
            return f"{self.linked} files hard-linked to the product store (no extra space)"
        return f"{self.linked} files hard-linked, {self.copied} copied"


def place(products: ProductStore, step_key: str, destination: Path) -> Placement:
    """Place every file of a committed step in ``destination`` (made if missing); files
    already there from an earlier placement are replaced, nothing else is touched."""
    source = products.step_dir(step_key)
    done = Placement()
    count = 0
    for folder, _, names in os.walk(source):  # bounded by the step's own files
        relative = Path(folder).relative_to(source)
        (destination / relative).mkdir(parents=True, exist_ok=True)
        for name in sorted(names):
            count += 1
            if count > MAX_FILES_PER_STEP:
                raise PlacementError(
                    f"step {step_key[:12]} has more than {MAX_FILES_PER_STEP} files"
                )
            _place_file(Path(folder) / name, destination / relative / name, done)
    return done


def _place_file(source: Path, target: Path, done: Placement) -> None:
    if target.is_symlink() or target.exists():
        if target.is_dir() and not target.is_symlink():
            raise PlacementError(f"{target} is a directory; remove it or use another --out")
        with contextlib.suppress(OSError):
            if os.path.samefile(source, target):
                done.linked += 1
                return
        target.unlink()
    try:
        os.link(source, target)
        done.linked += 1
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
        shutil.copy2(source, target)
        os.chmod(target, os.stat(target).st_mode | 0o200)  # a copy is the user's own
        done.copied += 1
