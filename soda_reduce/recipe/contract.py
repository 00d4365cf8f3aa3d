"""The recipe contract: what a recipe reads, what it writes, how it says it failed.

A recipe is a command: ``python -m soda_reduce.recipe PIPELINE.RECIPE --inputs
inputs.json --params params.json --out OUTDIR`` (docs/recipes.md). Everything a
recipe needs is in those two JSON files and the files they name, and
everything it produces is in OUTDIR with a ``products.json`` manifest, so the
same step runs unchanged in a local subprocess or a Kubernetes pod, and a
wrapped external pipeline (esorex, aaorun, PypeIt) looks exactly like ours.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from soda_reduce.reduction.cascade import Param
from soda_reduce.reduction.fits_checksums import DATASUM_PREFIX, verify_file
from soda_reduce.reduction.static import PIPELINE_SCHEME

EXIT_OK = 0
EXIT_FAILURE = 1  # the recipe ran and could not produce its products
EXIT_USAGE = 2  # bad command line, inputs.json, params.json or input files: never retry

MANIFEST = "products.json"
MANIFEST_SCHEMA = "soda-reduce/products/1"
ROLES = ("main", "associated", "static")
ANY = "*"  # an InputSpec category that accepts inputs of any category

# Packages named in every manifest; others are added when the recipe imported them.
SOFTWARE = ("soda-reduce", "astropy", "numpy", "ccdproc")
OPTIONAL_SOFTWARE = {"scipy": "scipy", "PIL": "pillow", "reproject": "reproject"}
OPTIONAL_SOFTWARE |= {"astroscrappy": "astroscrappy"}

log = logging.getLogger("soda_reduce.recipe")


class RecipeUsageError(Exception):
    """The call is wrong (inputs, parameters, files): exit code 2, retrying cannot help."""


class RecipeFailure(Exception):
    """The inputs were acceptable but processing failed: exit code 1."""


@dataclass(frozen=True)
class RecipeInput:
    """One entry of inputs.json: a raw file (file_id + checksum) or an upstream product."""

    category: str
    path: Path
    role: str = "main"
    file_id: str | None = None
    checksum: str | None = None
    step_key: str | None = None
    types: tuple[str, ...] = ()  # every type of a raw frame that has several

    @property
    def all_types(self) -> tuple[str, ...]:
        return self.types or (self.category,)

    @property
    def ref(self) -> str:
        """What provenance names this input by: its IVOA ID, else the step that made it."""
        return self.file_id or self.step_key or self.path.name

    def provenance(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"category": self.category, "role": self.role}
        if self.file_id is not None or self.step_key is None:
            entry["file_id"] = self.file_id
        if self.step_key is not None:
            entry["step_key"] = self.step_key
        entry["checksum"] = self.checksum
        return entry


@dataclass(frozen=True)
class InputSpec:
    """How many inputs of one category a recipe accepts (``maximum=None``: no limit)."""

    category: str
    minimum: int = 1
    maximum: int | None = 1


@dataclass(frozen=True)
class Recipe:
    """A runnable recipe: name, version, accepted inputs, typed parameters, products.

    ``run`` is the function, or ``"module:function"`` imported only when the recipe
    runs, so that loading a pipeline never imports its heavy science code.
    ``outputs`` are the categories made beyond the main ``product``.
    """

    name: str
    version: str
    product: str
    run: Callable[[RecipeCall], None] | str
    inputs: tuple[InputSpec, ...]
    parameters: tuple[Param, ...] = ()
    description: str = ""
    outputs: tuple[str, ...] = ()

    @property
    def produces(self) -> tuple[str, ...]:
        return (self.product, *self.outputs)

    def accepts(self, category: str) -> bool:
        return any(spec.category in (ANY, category) for spec in self.inputs)

    def invoke(self, call: RecipeCall) -> None:
        function = self.run
        if isinstance(function, str):
            module_name, _, attribute = function.partition(":")
            from importlib import import_module

            function = getattr(import_module(module_name), attribute)
        function(call)

    def check_inputs(self, inputs: Sequence[RecipeInput]) -> None:
        known = {spec.category for spec in self.inputs}
        for item in inputs:
            if item.category not in known and ANY not in known:
                raise RecipeUsageError(
                    f"{self.name} does not take {item.category} inputs "
                    f"(it takes {', '.join(sorted(known))})"
                )
        for spec in self.inputs:
            count = sum(1 for i in inputs if spec.category in (ANY, i.category))
            if count < spec.minimum:
                raise RecipeUsageError(
                    f"{self.name} needs at least {spec.minimum} {spec.category} input(s), "
                    f"got {count}"
                )
            if spec.maximum is not None and count > spec.maximum:
                raise RecipeUsageError(
                    f"{self.name} takes at most {spec.maximum} {spec.category} input(s), "
                    f"got {count}"
                )
        for item in inputs:
            if not item.path.is_file():
                raise RecipeUsageError(f"{item.category} input {item.path} does not exist")

    def parse_params(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Typed parameters: defaults filled in; unknown names and bad values are usage errors."""
        values = {p.name: p.parse(p.default) for p in self.parameters}
        for name, value in raw.items():
            spec = next((p for p in self.parameters if p.name.lower() == name.lower()), None)
            if spec is None:
                known = ", ".join(p.name for p in self.parameters) or "none"
                raise RecipeUsageError(
                    f"{self.name} has no parameter {name!r} (parameters: {known})"
                )
            try:
                values[spec.name] = spec.parse(value)
            except ValueError as exc:
                raise RecipeUsageError(f"parameter {spec.name}: {exc}") from None
        return values


@dataclass
class Product:
    """One file in OUTDIR, as listed in products.json."""

    file: str
    category: str
    content_type: str
    size: int = 0
    sha256: str = ""
    qc: dict[str, float | int] = field(default_factory=dict)
    main: bool = False
    preview_of: str | None = None
    serves: tuple[str, ...] = ()  # main inputs (IVOA IDs) this is the main product for
    auxiliary: bool = False  # QA plots, text spectra, logs: DataLink #auxiliary

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "file": self.file,
            "category": self.category,
            "content_type": self.content_type,
            "size": self.size,
            "sha256": self.sha256,
        }
        if self.main:
            doc["main"] = True
        if self.qc:
            doc["qc"] = dict(self.qc)
        if self.preview_of:
            doc["preview_of"] = self.preview_of
        if self.serves:
            doc["serves"] = list(self.serves)
        if self.auxiliary:
            doc["auxiliary"] = True
        return doc


@dataclass
class RecipeCall:
    """One invocation: what the recipe function receives, and where it records its products."""

    recipe: Recipe
    inputs: tuple[RecipeInput, ...]
    params: dict[str, Any]
    out: Path
    step_key: str = ""
    job_id: str = ""
    products: list[Product] = field(default_factory=list)
    started: datetime = field(default_factory=lambda: datetime.now(UTC))

    def of(self, category: str) -> list[RecipeInput]:
        return [i for i in self.inputs if i.category == category]

    def one(self, category: str) -> RecipeInput:
        found = self.of(category)
        if len(found) != 1:
            raise RecipeUsageError(f"exactly one {category} input needed, got {len(found)}")
        return found[0]

    def maybe(self, category: str) -> RecipeInput | None:
        found = self.of(category)
        return found[0] if found else None

    def add_product(
        self,
        filename: str,
        category: str,
        content_type: str,
        qc: Mapping[str, float | int] | None = None,
        main: bool = False,
        preview_of: str | None = None,
        serves: Sequence[str] = (),
        auxiliary: bool = False,
    ) -> Product:
        """Record a file already written in OUTDIR (size and sha256 are read from it).

        ``serves`` names the main inputs a main product is for, when one step reduces
        several (a science frame and its standard star); ``auxiliary`` marks QA plots,
        text spectra and logs."""
        path = self.out / filename
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        product = Product(
            filename,
            category,
            content_type,
            path.stat().st_size,
            digest,
            _plain_qc(qc or {}),
            main,
            preview_of,
            tuple(serves),
            auxiliary,
        )
        self.products.append(product)
        return product

    def manifest(self, finished: datetime | None = None) -> dict[str, Any]:
        finished = finished or datetime.now(UTC)
        return {
            "schema": MANIFEST_SCHEMA,
            "recipe": self.recipe.name,
            "recipe_version": self.recipe.version,
            "step_key": self.step_key,
            "job_id": self.job_id,
            "software": software_versions(),
            "parameters": dict(self.params),
            "inputs": [i.provenance() for i in self.inputs],
            "products": [p.to_dict() for p in self.products],
            "started": _iso(self.started),
            "finished": _iso(finished),
            "duration_s": round((finished - self.started).total_seconds(), 3),
        }

    def write_manifest(self) -> Path:
        """Write products.json last and atomically: its presence means the recipe succeeded."""
        if not any(p.main for p in self.products):
            raise RecipeFailure(f"{self.recipe.name} produced no {self.recipe.product} product")
        path = self.out / MANIFEST
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.manifest(), indent=2) + "\n")
        os.replace(tmp, path)
        return path


def load_inputs(path: Path, recipe: Recipe) -> tuple[dict[str, Any], tuple[RecipeInput, ...]]:
    """inputs.json as (header fields, inputs); RecipeUsageError with the reason if malformed.

    Relative paths are taken relative to the directory of inputs.json, so a
    step directory can be moved or mounted elsewhere as a whole.
    """
    doc = _read_json(path, "inputs")
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
        raise RecipeUsageError(f"{path}: expected an object with an 'inputs' list")
    asked = doc.get("recipe")
    if asked not in (None, "", recipe.name):
        raise RecipeUsageError(f"{path} is for recipe {asked!r}, not {recipe.name!r}")
    version = doc.get("recipe_version")
    if version not in (None, "") and str(version) != recipe.version:
        raise RecipeUsageError(
            f"{path} asks for {recipe.name} version {version}, this is version {recipe.version}"
        )
    items: list[RecipeInput] = []
    for n, entry in enumerate(doc["inputs"], start=1):
        if not isinstance(entry, dict) or not entry.get("category") or not entry.get("path"):
            raise RecipeUsageError(f"{path}: input {n} needs at least 'category' and 'path'")
        role = entry.get("role") or "main"
        if role not in ROLES:
            raise RecipeUsageError(f"{path}: input {n} has role {role!r}, not one of {ROLES}")
        if str(entry["path"]).startswith(PIPELINE_SCHEME):
            file_path = _shipped_file(str(entry["path"]), path, n)
        else:
            file_path = Path(entry["path"])
        if not file_path.is_absolute():
            file_path = path.parent / file_path
        items.append(
            RecipeInput(
                category=str(entry["category"]).upper(),
                path=file_path,
                role=role,
                file_id=entry.get("file_id"),
                checksum=entry.get("checksum"),
                step_key=entry.get("step_key"),
                types=tuple(str(x).upper() for x in entry.get("types") or ()),
            )
        )
    return doc, tuple(items)


def _shipped_file(reference: str, inputs_path: Path, number: int) -> Path:
    """``pipeline:NAME/FILE``: a static calibration shipped inside a pipeline package,
    found through the same registry in a local process and in a pod."""
    from soda_reduce.pipelines import registry

    try:
        return registry().static_path(reference)
    except (KeyError, ValueError) as exc:
        raise RecipeUsageError(f"{inputs_path}: input {number}: {exc}") from None


def check_raw_data(inputs: Sequence[RecipeInput]) -> None:
    """Check the raw inputs the index identified by their DATASUM cards (``datasum:``
    checksums: their data was not read then) before the recipe reads them, so that a file
    whose data changed behind its header fails the step, named, instead of making a
    product under a step key that stands for other data (``reduction/fits_checksums``)."""
    for item in inputs:
        if item.checksum and item.checksum.startswith(DATASUM_PREFIX):
            problem = verify_file(item.path, item.checksum)
            if problem is not None:
                raise RecipeUsageError(f"raw input {item.ref}: {problem}")


def load_params(path: Path | None, recipe: Recipe) -> dict[str, Any]:
    raw = _read_json(path, "params") if path is not None else {}
    if not isinstance(raw, dict):
        raise RecipeUsageError(f"{path}: expected an object of parameter names and values")
    return recipe.parse_params(raw)


def execute(recipe: Recipe, inputs_path: Path, params_path: Path | None, out: Path) -> int:
    """Run one recipe call end to end; returns the exit code and logs why it failed."""
    try:
        doc, inputs = load_inputs(inputs_path, recipe)
        params = load_params(params_path, recipe)
        recipe.check_inputs(inputs)
        check_raw_data(inputs)
        out.mkdir(parents=True, exist_ok=True)
        stale = out / MANIFEST
        stale.unlink(missing_ok=True)  # a manifest left by an earlier attempt is not ours
        call = RecipeCall(
            recipe,
            inputs,
            params,
            out,
            step_key=str(doc.get("step_key") or ""),
            job_id=str(doc.get("job_id") or ""),
        )
        log.info(
            "%s v%s: %d input(s) (%s), parameters %s, step %s",
            recipe.name,
            recipe.version,
            len(inputs),
            _count_categories(inputs),
            json.dumps(params, sort_keys=True),
            call.step_key[:12] or "-",
        )
        recipe.invoke(call)
        manifest = call.write_manifest()
    except RecipeUsageError as exc:
        log.error("usage error: %s", exc)
        return EXIT_USAGE
    except RecipeFailure as exc:
        log.error("failed: %s", exc)
        return EXIT_FAILURE
    except Exception:
        log.exception("failed with an unexpected error")
        return EXIT_FAILURE
    log.info(
        "done in %.2f s: %d product(s) listed in %s",
        (datetime.now(UTC) - call.started).total_seconds(),
        len(call.products),
        manifest,
    )
    return EXIT_OK


def software_versions() -> dict[str, str]:
    """Versions of what made the products, for provenance (importlib.metadata, no imports)."""
    versions = {"python": platform.python_version()}
    names = list(SOFTWARE)
    names += [dist for module, dist in OPTIONAL_SOFTWARE.items() if module in sys.modules]
    for name in names:
        key = name.replace("-", "_")
        try:
            versions[key] = metadata.version(name)
        except metadata.PackageNotFoundError:
            if name == "soda-reduce":
                from soda_reduce import __version__

                versions[key] = __version__
    return versions


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RecipeUsageError(f"{what} file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeUsageError(f"cannot read {what} file {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise RecipeUsageError(f"{what} file {path} is not valid JSON: {exc}") from None


def _count_categories(inputs: Sequence[RecipeInput]) -> str:
    counts: dict[str, int] = {}
    for item in inputs:
        counts[item.category] = counts.get(item.category, 0) + 1
    return ", ".join(f"{n} {c}" for c, n in counts.items())


def _plain_qc(qc: Mapping[str, Any]) -> dict[str, float | int]:
    """QC values as JSON numbers: numpy scalars converted, NaN and infinities left out."""
    plain: dict[str, float | int] = {}
    for name, value in qc.items():
        if isinstance(value, bool | int):
            plain[name] = int(value)
            continue
        number = float(value)
        if number != number or number in (float("inf"), float("-inf")):
            log.warning("QC %s is %s: left out of the manifest", name, number)
            continue
        is_integer = not isinstance(value, float) and number.is_integer()
        plain[name] = int(number) if is_integer else number
    return plain


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
