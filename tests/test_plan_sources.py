"""The store's frame source plans exactly as frames in memory do, on every scenario.

Each scenario's files are written as FITS, indexed by the real indexer into the real
SecantusDB store (as tests/scenario_runner.py does), then planned twice: classified in
memory (``plan_with``, the scenario tests' path) and by asking the store
(``ArchivePipelines.plan_indexed``: stored classification, indexed queries). The plans
must be identical, for the scenario's own request and for each of its datasets asked
for by one ID (the service's path: a RUN names raw files).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from soda_reduce.pipelines import registry
from soda_reduce.reduction.plan import PlanRequestError
from soda_reduce.runtime.archive_plans import ArchivePipelines, indexer_of
from soda_reduce.runtime.store.raw_files import StoreFrames
from tests.scenario_runner import (
    _fid,
    load,
    plan_scenario,
    scenario_files,
    scenario_pipeline,
    write_files,
)

SCENARIOS = scenario_files()


def _by_store(pipelines: ArchivePipelines, store: Any, name: str, **request: Any) -> Any:
    """(plan or the refusal's text, the source's counts) planned by asking the store."""
    pipeline = pipelines.get(name)
    source = pipelines.source(pipeline, store)
    assert isinstance(source, StoreFrames)
    try:
        plan: Any = pipelines.plan_from(pipeline, source, **request).to_dict()
    except PlanRequestError as exc:
        plan = f"refused: {exc}"
    return plan, source.counts


def _in_memory(pipelines: ArchivePipelines, files: list[Any], name: str, **request: Any) -> Any:
    from soda_reduce.runtime.archive_plans import plan_with

    try:
        return plan_with(pipelines.get(name), files, None, **request).to_dict()
    except PlanRequestError as exc:
        return f"refused: {exc}"


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
async def test_store_source_plans_every_scenario_exactly(
    path: Path, store: Any, tmp_path: Path
) -> None:
    spec = load(path)
    root = tmp_path / "archive"
    write_files(spec, root)
    planned = await plan_scenario(store, spec, root)  # indexed; planned in memory
    pipeline = scenario_pipeline(spec)
    pipelines = ArchivePipelines(registry())
    files = planned.files
    own = [raw for raw in files if raw.pipeline == pipeline.name]
    rules = indexer_of(pipeline).rules
    assert own and all(raw.classified and raw.classified.rules == rules for raw in own)

    requests: list[dict[str, Any]] = [
        {
            "target": spec.get("target"),
            "ids": [_fid(n) for n in spec.get("ids", [])],
            "where": spec.get("where", {}),
            "parameters": spec.get("parameters", {}),
        }
    ]
    requests += [
        {"target": spec.get("target"), "parameters": variant["parameters"]}
        for variant in spec["expect"].get("variants", [])
    ]
    for dataset in planned.plan.datasets:  # each dataset asked for by one of its frames
        requests.append(
            {
                "target": spec.get("target"),
                "ids": [dataset.main_inputs[0]],
                "parameters": spec.get("parameters", {}),
            }
        )
    assert len(requests) > 1 or not planned.plan.datasets
    for request in requests:
        memory = _in_memory(pipelines, files, pipeline.name, **request)
        asked, counts = await asyncio.to_thread(
            _by_store, pipelines, store, pipeline.name, **request
        )
        assert asked == memory, f"{path.name}: {request}"
        assert counts.queries > 0
    first, _ = await asyncio.to_thread(_by_store, pipelines, store, pipeline.name, **requests[0])
    assert first == planned.plan.to_dict()


def _bias_archive(seed: int) -> tuple[list[Any], str, list[list[str]]]:
    """A science frame, and bias nights only more than 3 nights from it (so "any time",
    level 2, decides), from sites at random longitudes (so a night is not a fixed shift
    of the MJD). The closest usable group lies just inside one of the widening radii,
    before the frame, and a farther one just inside it after: a search that misses a
    night at the edge of its window picks the wrong one. Groups of two biases are too
    few (incomplete, passed over); the others lie beyond."""
    import random
    from datetime import UTC, datetime, timedelta

    from soda_reduce.reduction.index_model import RawFile, raw_file_id

    rng = random.Random(seed)
    start = datetime(2024, 3, 1, 3, 0, tzinfo=UTC)
    radius = (16.0, 64.0, 256.0)[seed % 3]
    files: list[Any] = []
    groups: list[list[str]] = []

    def add(name: str, when: datetime, **header: Any) -> str:
        header.update({"INSTRUME": "CAM", "DATE-OBS": when.isoformat()[:19]})
        files.append(RawFile(raw_file_id(name, "test.sources"), name, header, checksum=name))
        return files[-1].file_id

    def biases(tag: str, days: float, count: int) -> None:
        night, longitude = start + timedelta(days=days), rng.uniform(-170, 170)
        groups.append(
            [
                add(f"{tag}_{i}.fits", night + timedelta(minutes=i), IMAGETYP="bias",
                    SITELONG=longitude)
                for i in range(count)
            ]
        )  # fmt: skip

    science = add("sci.fits", start, IMAGETYP="light", FILTER="V", SITELONG=0.0)
    biases("best", -(radius - rng.uniform(0.2, 0.9)), 3)
    biases("rival", radius - rng.uniform(0.05, 0.15), 3)
    for n in range(12):  # too few frames, closer than the best
        biases(f"few{n}", rng.choice([-1, 1]) * rng.uniform(4.5, radius - 1.5), 2)
    for n in range(30):  # usable, farther
        biases(f"far{n}", rng.choice([-1, 1]) * rng.uniform(radius + 1.5, radius + 2000), 3)
    return files, science, groups


@pytest.mark.parametrize("seed", range(6))
async def test_any_time_association_widens_to_the_closest_usable_group(
    seed: int, store: Any
) -> None:
    from soda_reduce.reduction.frame_source import MemoryFrames
    from soda_reduce.reduction.overrides import Overrides
    from soda_reduce.runtime.claims import Annotator

    files, science, groups = _bias_archive(seed)
    annotated = [Annotator(registry(), Overrides()).annotate(raw) for raw in files]
    await store.upsert_raw_files(annotated)
    pipelines = ArchivePipelines(registry())
    ccd = pipelines.get("ccd")
    frames = {f.file_id: f for f in indexer_of(ccd).frames(annotated)}

    def reference(group: list[str]) -> Any:
        ordered = sorted((frames[i] for i in group), key=lambda f: (f.mjd, f.file_id))
        return ordered[(len(ordered) - 1) // 2]

    sci_mjd = frames[science].mjd
    nights: dict[str, list[str]] = {}  # biases of one night are one group, whatever the site
    for file_id in (i for g in groups for i in g):
        nights.setdefault(frames[file_id].night, []).append(file_id)
    usable = [g for g in nights.values() if len(g) >= 3]
    best = min(usable, key=lambda g: (abs(reference(g).mjd - sci_mjd), reference(g).file_id))

    memory = pipelines.plan_from(ccd, MemoryFrames(list(frames.values())), ids=[science])
    asked, counts = await asyncio.to_thread(_by_store, pipelines, store, "ccd", ids=[science])
    assert asked == memory.to_dict() == _in_memory(pipelines, annotated, "ccd", ids=[science])
    job = next(j for j in memory.jobs if j.task == "science")
    bias = next(a for a in job.associations if a.category == "MASTER_BIAS")
    assert bias.status == "matched" and bias.level == 2
    chosen = memory.job(bias.chosen[0])
    assert sorted(i.file_id for i in chosen.inputs if i.role == "main") == sorted(best)
    # the widening stopped at the first usable group: far fewer documents than the archive
    assert counts.documents < len(files)
