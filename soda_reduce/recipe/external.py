"""External pipelines as recipes: esorex, 2dFdr's aaorun, PypeIt... wrapped by configuration.

A JSON file named in ``SODA_REDUCE_EXTERNAL_RECIPES`` (several: separated by
``os.pathsep``) declares recipes that run a command. The wrapper honours the
recipe contract for them: it writes the inputs as a set-of-frames file (one
``path CATEGORY`` line per input, which is exactly esorex's .sof format), runs
the command with the recipe parameters as options, then takes every FITS file
the command wrote, categorises it by a header keyword (ESO's ``PRO.CATG``),
stamps our provenance keywords into it, makes its preview and lists it in
products.json; the main product is known from the headers, never guessed from
file names. Outputs matching an ``auxiliary`` glob (QA plots, text spectra,
logs) are kept too. The command's stdout and stderr pass into the step log.

``ESOREX_EXAMPLE`` and ``PYPEIT_EXAMPLE`` are the documented examples
(docs/recipes.md). In a command, ``{sof}``, ``{out}`` (the directory the
command writes to) and ``{workdir}`` are replaced by paths; an argument that is
exactly ``{params}`` becomes one argument per parameter (``param_format``), and
``{inputs}`` becomes the input paths, for tools that take files on the command line.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePath, PurePosixPath
from typing import Any

from soda_reduce.recipe.contract import (
    MANIFEST,
    InputSpec,
    Recipe,
    RecipeCall,
    RecipeFailure,
    RecipeInput,
    RecipeUsageError,
)
from soda_reduce.reduction.cascade import Param, param

ENV_VAR = "SODA_REDUCE_EXTERNAL_RECIPES"
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fits.fz")
COMPRESSION_SUFFIXES = (".gz", ".fz")  # a raw file is the same file with or without them
WORK = "_external"  # scratch directory inside OUTDIR, removed after success
RESERVED = (MANIFEST, "recipe.log", WORK)  # recipe.log: where the runner puts the step log
DEFAULT_AUXILIARY = {"*.png": "QA_PLOT", "*.pdf": "QA_PLOT", "*.txt": "TEXT", "*.log": "LOG"}
DEFAULT_AUXILIARY |= {"*.json": "AUXILIARY"}
OCTET_STREAM = "application/octet-stream"
_TYPES = mimetypes.MimeTypes()  # Python's own table only: the same answer on every host
_TYPES.add_type("text/plain", ".log")
_ENCODED = {"gzip": "application/gzip", "bzip2": "application/x-bzip2", "xz": "application/x-xz"}

log = logging.getLogger("soda_reduce.recipe")

ESOREX_EXAMPLE: dict[str, Any] = {
    "name": "eso.muse_bias",
    "version": "2.10.10",
    "description": "MUSE master bias by ESO's muse_bias recipe, run through esorex.",
    "product": "MASTER_BIAS",
    "command": [
        "esorex",
        "--output-dir={out}",
        "--log-dir={out}",
        "muse_bias",
        "{params}",
        "{sof}",
    ],
    "param_format": "--{name}={value}",
    "bool_values": ["TRUE", "FALSE"],
    "inputs": [
        {"category": "BIAS", "min": 3, "max": None},
        {"category": "BADPIX_TABLE", "min": 0, "max": 1},
    ],
    "parameters": [
        {"name": "nifu", "type": "int", "default": 0, "minimum": -1, "maximum": 24},
        {
            "name": "combine",
            "type": "str",
            "default": "sigclip",
            "choices": ["average", "median", "minmax", "sigclip"],
        },
    ],
    "category_keyword": "HIERARCH ESO PRO CATG",
    "categories": {"MASTER_BIAS": "MASTER_BIAS"},
    "qc_prefix": "ESO QC ",
    "env": {"OMP_NUM_THREADS": "1"},
}

# Science + standard in one step: each spec1d names its raw file in FILENAME (source_keyword), so
# the science one is main. ``auxiliary`` (glob -> category, first match wins) replaces
# DEFAULT_AUXILIARY. The command: a site script writing a .pypeit file, then ``run_pypeit -r OUT``.
PYPEIT_EXAMPLE: dict[str, Any] = {
    "name": "pypeit.kast_blue",
    "version": "2.0.1",
    "description": "Shane/Kast blue 1-D spectra by PypeIt's run_pypeit.",
    "product": "SPEC1D",
    "command": ["pypeit-from-sof", "shane_kast_blue", "{sof}", "{out}"],
    "inputs": [
        {"category": "SCIENCE", "min": 1, "max": None},
        {"category": "STANDARD", "min": 0, "max": 1},
        {"category": "ARC", "min": 0, "max": None},
    ],
    "sof_categories": {"SCIENCE": "science", "STANDARD": "standard", "ARC": "arc,tilt"},
    "category_keyword": "DMODCLS",
    "categories": {"SpecObjs": "SPEC1D"},
    "source_keyword": "FILENAME",
    "auxiliary": {"*.png": "QA_PLOT", "spec1d_*.txt": "SPEC1D_LISTING", "*.log": "LOG"},
}


@dataclass(frozen=True)
class ExternalSpec:
    """One configured external recipe (the keys of ESOREX_EXAMPLE and PYPEIT_EXAMPLE)."""

    name: str
    version: str
    product: str
    command: tuple[str, ...]
    inputs: tuple[InputSpec, ...]
    parameters: tuple[Param, ...] = ()
    description: str = ""
    param_format: str = "--{name}={value}"
    bool_values: tuple[str, str] = ("TRUE", "FALSE")
    sof_categories: dict[str, str] = field(default_factory=dict)  # ours -> the tool's
    category_keyword: str = "HIERARCH ESO PRO CATG"
    categories: dict[str, str] = field(default_factory=dict)  # the tool's -> ours
    qc_prefix: str = "ESO QC "
    env: dict[str, str] = field(default_factory=dict)
    source_keyword: str | None = None  # product keyword naming the raw file it was made from
    auxiliary: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_AUXILIARY))

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ExternalSpec:
        try:
            command = tuple(str(a) for a in doc["command"])
            if not command:
                raise ValueError("empty command")
            return cls(
                name=str(doc["name"]),
                version=str(doc["version"]),
                product=str(doc["product"]),
                command=command,
                inputs=tuple(
                    InputSpec(str(i["category"]), int(i.get("min", 1)), i.get("max", 1))
                    for i in doc["inputs"]
                ),
                parameters=tuple(
                    param(
                        p["name"],
                        p["type"],
                        p["default"],
                        p.get("description", ""),
                        p.get("choices", ()),
                        p.get("minimum"),
                        p.get("maximum"),
                    )
                    for p in doc.get("parameters", ())
                ),
                description=str(doc.get("description", "")),
                param_format=str(doc.get("param_format", "--{name}={value}")),
                bool_values=tuple(doc.get("bool_values", ("TRUE", "FALSE"))),  # type: ignore[arg-type]
                sof_categories=dict(doc.get("sof_categories", {})),
                category_keyword=str(doc.get("category_keyword", "HIERARCH ESO PRO CATG")),
                categories=dict(doc.get("categories", {})),
                qc_prefix=str(doc.get("qc_prefix", "ESO QC ")),
                env={str(k): str(v) for k, v in doc.get("env", {}).items()},
                source_keyword=_source_keyword(doc.get("source_keyword")),
                auxiliary=_auxiliary(doc.get("auxiliary", DEFAULT_AUXILIARY)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"external recipe {doc.get('name', '?')}: bad entry ({exc})") from exc

    def recipe(self) -> Recipe:
        return Recipe(
            name=self.name,
            version=self.version,
            product=self.product,
            run=partial(run_external, self),
            inputs=self.inputs,
            parameters=self.parameters,
            description=self.description,
            outputs=tuple(dict.fromkeys(c for c in self.categories.values() if c != self.product)),
        )


def _source_keyword(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"source_keyword must be a header keyword, not {value!r}")
    return value.strip()


def _auxiliary(value: Any) -> dict[str, str]:
    """The glob -> category mapping, checked: relative patterns, never FITS (those are products)."""
    if not isinstance(value, Mapping):
        raise ValueError("auxiliary must be an object of glob pattern -> category")
    kept: dict[str, str] = {}
    for pattern, category in value.items():
        if not isinstance(pattern, str) or not isinstance(category, str) or not category.strip():
            raise ValueError(f"auxiliary {pattern!r}: {category!r} is not a category")
        where = PurePosixPath(pattern)
        if not pattern.strip() or where.is_absolute() or ".." in where.parts:
            raise ValueError(f"auxiliary pattern {pattern!r} is not a relative glob")
        if pattern.lower().endswith(FITS_SUFFIXES):
            raise ValueError(f"auxiliary pattern {pattern!r}: FITS outputs are products")
        kept[pattern] = category.strip().upper()
    return kept


def external_recipes(config: str | None = None) -> dict[str, Recipe]:
    """The recipes declared by the files in ``config`` (default: $SODA_REDUCE_EXTERNAL_RECIPES)."""
    value = os.environ.get(ENV_VAR, "") if config is None else config
    found: dict[str, Recipe] = {}
    for name in filter(None, value.split(os.pathsep)):
        path = Path(name)
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{ENV_VAR}: cannot read {path}: {exc}") from None
        for entry in doc.get("recipes", []):
            spec = ExternalSpec.from_dict(entry)
            found[spec.name] = spec.recipe()
    return found


def write_sof(call: RecipeCall, spec: ExternalSpec, path: Path) -> None:
    lines = [f"{i.path} {spec.sof_categories.get(i.category, i.category)}" for i in call.inputs]
    path.write_text("\n".join(lines) + "\n")


def command_line(call: RecipeCall, spec: ExternalSpec, sof: Path, out: Path) -> list[str]:
    options = []
    for name, value in call.params.items():
        if isinstance(value, bool):
            value = spec.bool_values[0] if value else spec.bool_values[1]
        options.append(spec.param_format.format(name=name, value=value))
    places = {"sof": str(sof), "out": str(out), "workdir": str(out.parent)}
    argv: list[str] = []
    for arg in spec.command:
        if arg == "{params}":
            argv += options
        elif arg == "{inputs}":
            argv += [str(i.path) for i in call.inputs]
        else:
            argv.append(arg.format(**places))
    return argv


@dataclass(frozen=True)
class _Made:
    """A FITS file the tool wrote with the category keyword: a product to be."""

    path: Path
    tool_category: str
    category: str
    source: str | None  # the value of source_keyword: the raw file it was made from


def run_external(spec: ExternalSpec, call: RecipeCall) -> None:
    from astropy.io import fits

    from soda_reduce.recipe.products import write_fits

    work = call.out / WORK
    shutil.rmtree(work, ignore_errors=True)
    tool_out = work / "out"
    tool_out.mkdir(parents=True)
    sof = work / "input.sof"
    write_sof(call, spec, sof)
    argv = command_line(call, spec, sof, tool_out)
    log.info("set of frames %s: %d line(s); running %s", sof, len(call.inputs), " ".join(argv))
    env = {**os.environ, **spec.env}
    try:
        done = subprocess.run(argv, cwd=work, env=env, check=False)
    except FileNotFoundError:
        raise RecipeUsageError(
            f"{argv[0]}: command not found (is the pipeline installed?)"
        ) from None
    except PermissionError:
        raise RecipeUsageError(f"{argv[0]}: not executable") from None
    if done.returncode != 0:
        raise RecipeFailure(f"{argv[0]} exited with status {done.returncode}")

    written = sorted(p for p in tool_out.rglob("*") if p.is_file())
    fits_files = [p for p in written if p.name.lower().endswith(FITS_SUFFIXES)]
    made = [m for m in (_categorise(spec, p) for p in fits_files) if m is not None]
    mains = choose_main(spec, call, made, argv[0], len(fits_files))
    taken = set(RESERVED) | {p.file for p in call.products}
    history = [f"made by {argv[0]} ({spec.name} {spec.version}), wrapped by soda-reduce"]
    for item in made:
        name = unique_name(item.path.relative_to(tool_out), taken)
        with fits.open(item.path) as hdul:
            header = hdul[0].header
            qc = {
                key[len(spec.qc_prefix) :].replace(" ", "_"): value
                for key, value in header.items()
                if key.startswith(spec.qc_prefix) and isinstance(value, int | float)
            }
            product = write_fits(call, name, hdul, item.category, history, qc, main=item in mains)
        product.serves = mains.get(item, ())
        taken.update(p.file for p in call.products)  # its preview too
        what = f"{spec.category_keyword} = {item.tool_category} -> {item.category}"
        main = f", main (made from {item.source})" if item in mains else ""
        log.info("product %s: %s%s, %d QC value(s)", name, what, main, len(qc))
    keep_auxiliary(spec, call, tool_out, [p for p in written if p not in fits_files], taken)
    shutil.rmtree(work, ignore_errors=True)


def _categorise(spec: ExternalSpec, path: Path) -> _Made | None:
    from astropy.io import fits

    try:
        header = fits.getheader(path, 0)
    except (OSError, ValueError) as exc:
        raise RecipeFailure(f"{path.name} is not a readable FITS file: {exc}") from None
    tool_category = header.get(spec.category_keyword)
    if tool_category is None:
        log.warning("%s has no %s: not a product, left out", path.name, spec.category_keyword)
        return None
    source = header.get(spec.source_keyword) if spec.source_keyword else None
    text = str(source).strip() if source is not None else ""
    category = spec.categories.get(str(tool_category), str(tool_category))
    return _Made(path, str(tool_category), category, text or None)


def choose_main(
    spec: ExternalSpec, call: RecipeCall, made: Sequence[_Made], tool: str, found: int
) -> dict[_Made, tuple[str, ...]]:
    """The main products and the main inputs (file IDs) each serves: read from the
    headers, never guessed from file names (which sort a standard before a science frame)."""
    candidates = [m for m in made if m.category == spec.product]
    if not candidates:
        raise RecipeFailure(f"{tool} did not produce a {spec.product} (found {found} FITS)")
    names = ", ".join(m.path.name for m in candidates)
    if spec.source_keyword is None:
        if len(candidates) > 1:
            raise RecipeFailure(
                f"{tool} wrote {len(candidates)} {spec.product} files ({names}) and no "
                f"source_keyword is configured to tell which raw file each was made from: "
                f"the wrapper does not pick a main product by file name"
            )
        return {candidates[0]: ()}
    keyword = spec.source_keyword
    frames: dict[str, list[RecipeInput]] = {}
    for item in call.inputs:
        if item.role == "main":
            frames.setdefault(bare_name(item.path.name), []).append(item)
    chosen: dict[str, _Made] = {}
    for m in candidates:
        raw = bare_name(m.source) if m.source else None
        if raw is None:
            log.warning("%s has no %s: kept, not a main product", m.path.name, keyword)
        elif raw not in frames:
            log.info("%s was made from %s, not a main input: kept, not main", m.path.name, raw)
        elif raw in chosen:
            raise RecipeFailure(
                f"{chosen[raw].path.name} and {m.path.name} both say ({keyword}) they were "
                f"made from {raw}: which is the {spec.product} is ambiguous"
            )
        else:
            chosen[raw] = m
    missing = [raw for raw in frames if raw not in chosen]
    if missing:
        raise RecipeFailure(
            f"{tool} made no {spec.product} whose {keyword} names main input(s) "
            f"{', '.join(missing)} ({spec.product} files: {names})"
        )
    if not chosen:
        raise RecipeFailure(f"no {spec.product} ({names}) was made from a main input ({keyword})")
    ids = {raw: tuple(dict.fromkeys(i.file_id for i in frames[raw] if i.file_id)) for raw in chosen}
    return {m: ids[raw] for raw, m in chosen.items()}


def bare_name(name: str) -> str:
    """A raw file's name without its directory or a .gz/.fz compression suffix."""
    base = PurePath(name.strip()).name
    suffix = PurePath(base).suffix
    return base[: -len(suffix)] if suffix in COMPRESSION_SUFFIXES else base


def keep_auxiliary(
    spec: ExternalSpec, call: RecipeCall, root: Path, files: Sequence[Path], taken: set[str]
) -> None:
    """Copy the non-FITS outputs that match an ``auxiliary`` glob; log the ones ignored."""
    ignored: list[str] = []
    for path in files:
        relative = PurePosixPath(path.relative_to(root).as_posix())
        category = next((c for g, c in spec.auxiliary.items() if relative.match(g)), None)
        if category is None:
            ignored.append(str(relative))
            continue
        name = unique_name(relative, taken)
        shutil.copyfile(path, call.out / name)
        kind = content_type(path.name)
        call.add_product(name, category, kind, auxiliary=True)
        log.info("auxiliary %s: %s -> %s (%s)", name, relative, category, kind)
    shown = ", ".join(ignored[:20]) + (", ..." if len(ignored) > 20 else "")
    if ignored:
        log.info("ignored %d output(s) matching no auxiliary pattern: %s", len(ignored), shown)


def content_type(name: str) -> str:
    """MIME type by suffix from Python's table (compressed files as the compression)."""
    kind, encoding = _TYPES.guess_type(name)
    if encoding is not None:
        return _ENCODED.get(encoding, OCTET_STREAM)
    return kind or OCTET_STREAM


def unique_name(relative: PurePath, taken: set[str]) -> str:
    """A flat name in OUTDIR: the file's own, else its path joined by '_', else numbered."""
    name = relative.name if relative.name not in taken else "_".join(relative.parts)
    if name in taken:
        path = PurePath(name)
        suffix = "".join(path.suffixes[-2:]) if path.suffix in (".gz", ".fz") else path.suffix
        stem, number = name[: len(name) - len(suffix)], 2
        while f"{stem}-{number}{suffix}" in taken:
            number += 1
        name = f"{stem}-{number}{suffix}"
    taken.add(name)
    return name
