"""Classification at index time: a change of one pipeline's rules re-classifies only its
files, from their stored headers, found by their rules (never the whole index); the
index report says how many; plans follow the new rules. Real indexer, real store."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from soda_reduce.pipelines import Pipeline, Registry, registry
from soda_reduce.reduction.cascade import DataSource, classification
from soda_reduce.reduction.overrides import Overrides
from soda_reduce.reduction.rules import kw
from soda_reduce.reduction.tasks import Cascade, Task
from soda_reduce.runtime.archive_plans import ArchivePipelines, indexer_of
from soda_reduce.runtime.claims import Annotator
from soda_reduce.runtime.indexer import index_archive
from soda_reduce.runtime.store.raw_files import RAW_RULES
from tests.scenario_runner import AUTHORITY, load, write_files

SCENARIOS = Path(__file__).parent / "scenarios"


def _with_rule(cascade: Cascade, category: str, rule: Any) -> Cascade:
    """The cascade with one category recognised by another rule (every task rebuilt)."""
    changed = classification(category, rule)
    done: dict[str, Task] = {}

    def source(item: DataSource | Task) -> DataSource | Task:
        if isinstance(item, Task):
            return rebuilt(item)
        return replace(item, classification=changed) if item.category == category else item

    def rebuilt(item: Task) -> Task:
        if item.name not in done:
            main = replace(item.main, source=source(item.main.source))
            associated = tuple(replace(a, source=source(a.source)) for a in item.associated)
            done[item.name] = replace(item, main=main, associated=associated)
        return done[item.name]

    return replace(cascade, tasks=tuple(rebuilt(t) for t in cascade.tasks))


def _registry_with(ccd: Pipeline) -> Registry:
    base = registry()
    return Registry(pipelines={**base.pipelines, "ccd": ccd}, refused=dict(base.refused))


async def _docs(store: Any, pipeline: str) -> dict[str, dict[str, Any]]:
    return {d["_id"]: d async for d in store.raw_files.find({"pipeline": pipeline})}


async def _index(store: Any, root: Path, found: Registry) -> Any:
    return await index_archive(
        store, root, authority=AUTHORITY, annotator=Annotator(found, Overrides())
    )


async def _science_plan(store: Any, found: Registry, science_id: str) -> tuple[Any, Any]:
    """(by the store, in memory) plans of one science frame with ``found``'s ccd."""
    pipelines = ArchivePipelines(found)
    ccd = found.get("ccd")
    files = await store.all_raw_files()
    asked = await asyncio.to_thread(pipelines.plan_indexed, ccd, store, ids=[science_id])
    return asked, pipelines.plan(ccd, files, ids=[science_id])


async def test_rules_change_reclassifies_only_that_pipeline(
    store: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "archive"
    write_files(load(SCENARIOS / "01_closest_in_time.json"), root / "ccd")
    write_files(load(SCENARIOS / "20_kast_arc_is_also_tilt.json"), root / "kast")
    base = registry()
    first = await _index(store, root, base)
    assert first.added > 0 and first.reclassified == 0
    ccd_before, kast_before = await _docs(store, "ccd"), await _docs(store, "kast")
    assert ccd_before and kast_before
    old_rules = indexer_of(base.get("ccd")).rules
    assert {d["classified"]["rules"] for d in ccd_before.values()} == {old_rules}
    science = next(i for i, d in ccd_before.items() if "SCIENCE" in d["classified"]["categories"])
    asked, memory = await _science_plan(store, base, science)
    assert asked.complete and asked.to_dict() == memory.to_dict()

    async def whole_index() -> None:
        raise AssertionError("re-classification read the whole index")

    # a new version of ccd: its files only, from their stored headers, found by their rules
    bumped = _registry_with(replace(base.get("ccd"), version="1-bumped"))
    new_rules = indexer_of(bumped.get("ccd")).rules
    assert new_rules != old_rules
    monkeypatch.setattr(store, "all_raw_files", whole_index)
    again = await _index(store, root, bumped)
    assert again.reclassified == len(ccd_before)
    assert (again.added, again.updated, again.removed) == (0, 0, 0)
    assert f"{len(ccd_before)} re-classified" in again.summary()
    ccd_after, kast_after = await _docs(store, "ccd"), await _docs(store, "kast")
    assert kast_after == kast_before  # another pipeline's files are not touched
    assert {d["classified"]["rules"] for d in ccd_after.values()} == {new_rules}
    assert all(new_rules in d["slots"] and old_rules not in d["slots"] for d in ccd_after.values())
    assert await store.db[RAW_RULES].find_one({"_id": old_rules}) is None
    assert (await _index(store, root, bumped)).reclassified == 0
    monkeypatch.undo()

    # rules that no longer know the archive's biases: re-classified, and plans follow
    ccd = base.get("ccd")
    blind = replace(ccd, cascade=_with_rule(ccd.cascade, "BIAS", kw("IMAGETYP").is_("zero")))
    changed = await _index(store, root, _registry_with(blind))
    assert changed.reclassified == len(ccd_before)
    biases = [d for d in (await _docs(store, "ccd")).values() if d["header"]["IMAGETYP"] == "BIAS"]
    assert biases and all("BIAS" not in d["classified"]["categories"] for d in biases)
    asked, memory = await _science_plan(store, _registry_with(blind), science)
    assert not asked.complete and asked.to_dict() == memory.to_dict()
    assert any("no BIAS" in r for d in asked.datasets for r in d.reasons)
    restored = await _index(store, root, base)
    assert restored.reclassified == len(ccd_before)
    asked, _ = await _science_plan(store, base, science)
    assert asked.complete
