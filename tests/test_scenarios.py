"""Run every cascade scenario in tests/scenarios/ through index, store and planner."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.scenario_runner import (
    check_expectations,
    copy_tree_reversed,
    key_by_job,
    load,
    mutants,
    plan_scenario,
    scenario_files,
    write_files,
)

SCENARIOS = scenario_files()


def test_there_are_enough_scenarios() -> None:
    assert len(SCENARIOS) >= 12


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
async def test_scenario(path: Path, store, tmp_path: Path) -> None:
    spec = load(path)
    root = tmp_path / "archive"
    write_files(spec, root)
    planned = await plan_scenario(store, spec, root)
    expect = spec["expect"]
    problems = check_expectations(planned, expect)
    if expect.get("repeatable"):
        again = await plan_scenario(store, spec, root)
        if again.plan.to_json() != planned.plan.to_json():
            problems.append("the same request on the same archive gave a different plan")
        copy = tmp_path / "copy"
        copy_tree_reversed(root, copy)
        await store.db.drop_collection("raw_files")
        await store.ensure_indexes()
        moved = await plan_scenario(store, spec, copy)
        if key_by_job(moved) != key_by_job(planned):
            problems.append("a byte-identical copy of the archive gave other step keys")
    for variant in expect.get("variants", []):
        base_keys = key_by_job(planned)
        changed = await plan_scenario(store, spec, root, parameters=variant["parameters"])
        new_keys = key_by_job(changed)
        if set(new_keys) != set(base_keys):
            problems.append(f"variant {variant['name']}: different jobs planned")
        for ident, key in base_keys.items():
            differs = new_keys.get(ident) != key
            should = ident[0] in variant["changed"]
            if differs != should:
                verb = "changed" if differs else "kept"
                problems.append(f"variant {variant['name']}: {ident} {verb} its step key")
    known_bug = spec.get("known_bug")
    if known_bug:  # the scenario states the right behaviour; the planner does not have it yet
        if problems:
            pytest.xfail(f"known bug: {known_bug}")
        pytest.fail(f"{path.name} passes: the known bug seems fixed, remove its known_bug")
    assert not problems, f"{path.name}: {spec.get('description', '')}\n" + "\n".join(problems)
    # every stated expectation must be able to fail: a wrong one must be reported
    vacuous = [what for what, wrong in mutants(spec) if not check_expectations(planned, wrong)]
    assert not vacuous, f"{path.name}: expectations that cannot fail: {vacuous}"
