"""The command line on a generated demo archive: the issue's acceptance path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from soda_reduce.cli import main


@pytest.fixture(scope="module")
def demo_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "archive"
    assert main(["demo-data", str(root), "--nights", "3", "--seed", "7", "--size", "64"]) == 0
    return root


def test_index_lists_every_file_with_its_problem(
    demo_archive: Path, tmp_path: Path, capsys
) -> None:
    args = ["index", "--archive", str(demo_archive), "--data-dir", str(tmp_path), "--json"]
    assert main(args) == 0
    listing = json.loads(capsys.readouterr().out)
    files = {Path(f["path"]).name: f for f in listing["files"]}
    manifest = json.loads((demo_archive / "_truth" / "manifest.json").read_text())
    raw_entries = manifest["files"] if isinstance(manifest, dict) else manifest
    assert len(listing["files"]) == len(raw_entries)
    assert not any(f["path"].startswith("_truth") for f in listing["files"])
    for name in ("empty.fits", "truncated_header.fits", "truncated_data.fits", "notes.fits"):
        assert files[name]["problem"], name
        assert files[name]["category"] is None
    assert files["focus_0001.fits"]["problem"] is None
    assert files["focus_0001.fits"]["category"] is None
    categories = {f["category"] for f in listing["files"]}
    assert {"BIAS", "DARK", "FLAT", "SCIENCE"} <= categories
    assert all(f["id"].startswith("ivo://example.org/raw?") for f in listing["files"])
    # a second run reads nothing again
    assert main(args) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["report"]["unchanged"] == len(listing["files"])
    assert again["report"]["added"] == again["report"]["updated"] == 0


def test_plan_shows_fallbacks_and_incomplete_datasets(
    demo_archive: Path, tmp_path: Path, capsys
) -> None:
    graph = tmp_path / "plan.svg"
    args = [
        "plan",
        "--archive",
        str(demo_archive),
        "--data-dir",
        str(tmp_path),
        "--target",
        "science",
        "--graph",
        str(graph),
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "level 1 (within 3 nights)" in text
    assert "[INCOMPLETE]" in text
    assert "no FLAT with INSTRUME=DEMOCAM, BINNING=2x2, FILTER=R at any time" in text
    assert graph.exists() or graph.with_suffix(".dot").exists()
    assert main([*args[:-2], "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    levels = {a["level"] for j in plan["jobs"] for a in j["associations"] if a["level"] is not None}
    assert levels >= {0, 1}
    assert any(not d["complete"] for d in plan["datasets"])


def test_plan_refuses_bad_parameters(demo_archive: Path, tmp_path: Path, capsys) -> None:
    args = [
        "plan",
        "--archive",
        str(demo_archive),
        "--data-dir",
        str(tmp_path),
        "--param",
        "flat.sigma_clip=lots",
    ]
    assert main(args) == 2
    assert "not a number" in capsys.readouterr().err


def test_cascade_graph(tmp_path: Path, capsys) -> None:
    assert main(["cascade"]) == 0
    assert "digraph" in capsys.readouterr().out


def test_reduce_twice_second_run_is_all_cache_hits(tmp_path: Path, capsys) -> None:
    archive = tmp_path / "archive"
    assert main(["demo-data", str(archive), "--nights", "1", "--science-per-night", "2",
                 "--size", "64"]) == 0  # fmt: skip
    capsys.readouterr()
    args = ["reduce", "--archive", str(archive), "--out", str(tmp_path / "out"),
            "--data-dir", str(tmp_path / "data")]  # fmt: skip
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "0 reused from the cache, 0 failed" in first
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    reduced = [r for r in results if r.get("status") == "done"]
    assert reduced and all(r["complete"] for r in reduced)
    for entry in reduced:
        files = {p.suffix for p in Path(entry["directory"]).iterdir()}
        assert {".fits", ".png", ".json", ".log"} <= files
    assert main(args) == 0
    second = capsys.readouterr().out
    assert "0 computed" in second and "all steps were cache hits" in second
