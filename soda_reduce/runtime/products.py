"""Product storage, content-addressed by step key.

A finished step's products live in ``ROOT/steps/ab/abcdef.../``: same key,
same place, whoever computed it. Attempts run in ``ROOT/scratch/`` on the same
file system and are moved into place with one atomic rename, so a reader
never sees half a product directory, and two runners finishing the same key
cannot mix their files. Committed files are made read-only: they are shared by
every later run, and ``reduce --out`` hard-links them into users' folders
(`runtime.product_links`), where an edit in place would change them for all.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST = "products.json"
LOG_NAME = "recipe.log"


class ProductError(Exception):
    """A step directory is missing or its manifest is unusable."""


@dataclass(frozen=True)
class ProductStore:
    root: Path

    def step_dir(self, step_key: str) -> Path:
        return self.root / "steps" / step_key[:2] / step_key

    def has(self, step_key: str) -> bool:
        return (self.step_dir(step_key) / MANIFEST).is_file()

    def new_workdir(self, step_key: str, attempt: int) -> Path:
        """A fresh directory for one attempt, unique even across runners."""
        path = self.root / "scratch" / f"{step_key[:16]}-{attempt}-{uuid.uuid4().hex[:8]}"
        (path / "out").mkdir(parents=True)
        return path

    def commit(self, step_key: str, workdir: Path) -> Path:
        """Move ``workdir/out`` (and the log) into the step's place; idempotent.

        If another runner got there first its products stand (same key, same
        result) and ours are discarded.
        """
        out = workdir / "out"
        if not (out / MANIFEST).is_file():
            raise ProductError(f"the recipe wrote no {MANIFEST}")
        log = workdir / LOG_NAME
        if log.is_file():
            shutil.copyfile(log, out / LOG_NAME)
        _read_only(out)
        target = self.step_dir(step_key)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(out, target)
        except OSError:
            if not self.has(step_key):
                raise
        shutil.rmtree(workdir, ignore_errors=True)
        return target

    def manifest(self, step_key: str) -> dict[str, Any]:
        path = self.step_dir(step_key) / MANIFEST
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ProductError(f"step {step_key[:12]}: cannot read {path}: {exc}") from None

    def product_path(self, step_key: str, category: str) -> Path:
        """The product of ``category`` a step made (the input of a downstream step)."""
        for item in self.manifest(step_key).get("products", []):
            if str(item.get("category", "")).upper() == category.upper():
                return self.step_dir(step_key) / item["file"]
        raise ProductError(f"step {step_key[:12]} made no {category} product")


def _read_only(folder: Path) -> None:
    """Take the write bits off every file below ``folder`` (directories keep theirs, so
    the sweeper can still remove a step)."""
    for parent, _, names in os.walk(folder):  # bounded by the step's own files
        for name in names:
            path = os.path.join(parent, name)
            if not os.path.islink(path):
                with contextlib.suppress(OSError):  # a pod's files may be another user's
                    os.chmod(path, os.stat(path).st_mode & ~0o222)


def main_product(
    products: ProductStore, step_key: str, main_inputs: tuple[str, ...] | list[str] = ()
) -> Path | None:
    """The main product of a step for a dataset: the one that says it serves one of the
    dataset's main inputs, else the step's (first) main product."""
    try:
        listed = products.manifest(step_key).get("products", [])
    except ProductError:
        return None
    mains = [p for p in listed if p.get("main")]
    wanted = set(main_inputs)
    for item in mains:
        if wanted & set(item.get("serves", ())):
            return products.step_dir(step_key) / item["file"]
    return products.step_dir(step_key) / mains[0]["file"] if mains else None
