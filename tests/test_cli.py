"""The command line on a generated demo archive: the issue's acceptance path."""

from __future__ import annotations

import json
import os
import re
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
    # a partial plan is a failure unless accepted
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "[INCOMPLETE]" in captured.out
    assert re.fullmatch(
        r"error: [1-9] of 12 datasets are incomplete; --allow-incomplete accepts a partial plan",
        captured.err.splitlines()[-1],
    )
    assert main([*args, "--allow-incomplete"]) == 0
    text = capsys.readouterr().out
    assert "level 1 (within 3 nights)" in text
    assert "[INCOMPLETE]" in text
    assert "no FLAT with INSTRUME=DEMOCAM, BINNING=2x2, FILTER=R at any time" in text
    assert graph.exists() or graph.with_suffix(".dot").exists()
    assert main([*args[:-2], "--json", "--allow-incomplete"]) == 0
    captured = capsys.readouterr()
    plan = json.loads(captured.out)
    levels = {a["level"] for j in plan["jobs"] for a in j["associations"] if a["level"] is not None}
    assert levels >= {0, 1}
    assert any(not d["complete"] for d in plan["datasets"])
    # with JSON on stdout, the reasons are on stderr
    assert "incomplete: ccd: science " in captured.err
    assert "no FLAT with INSTRUME=DEMOCAM, BINNING=2x2, FILTER=R" in captured.err


def test_plan_graph_labels_break_lines_once(demo_archive: Path, tmp_path: Path, capsys) -> None:
    """DOT's line break in a label is the two characters backslash-n: escaped once, not
    twice (which Graphviz draws as a literal backslash and n)."""
    graph = tmp_path / "plan.dot"
    args = ["plan", "--archive", str(demo_archive), "--data-dir", str(tmp_path)]
    assert main([*args, "--graph", str(graph), "--allow-incomplete"]) == 0
    capsys.readouterr()
    dot = graph.read_text()
    labels = re.findall(r'label="((?:[^"\\]|\\.)*)"', dot)
    node_labels = [label for label in labels if label.count("\\n") >= 1]
    assert node_labels, dot
    assert "\\\\" not in dot  # no escaped backslash anywhere: nothing was escaped twice
    for label in node_labels:
        lines = label.split("\\n")
        assert all(line and "\\" not in line for line in lines), label
    science = next(label for label in node_labels if label.startswith("science "))
    assert re.fullmatch(r"science \S+\.fits(\\nlevel \d)?\\nscience-[0-9a-fx]{12}", science)
    assert main(["cascade", "--graph", str(tmp_path / "ccd.dot")]) == 0
    cascade = (tmp_path / "ccd.dot").read_text()
    assert "\\\\" not in cascade and 'label="BIAS\\n(raw_bias)\\ngroup: ' in cascade


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


def test_reduce_shares_products_across_folders(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The step cache follows the products, not the working folder: a run from folder A into
    out1, then the same request from folder B into out2, computes nothing the second time,
    and out2 still gets every product (linked from the data directory's product store)."""
    archive = tmp_path / "archive"
    assert main(["demo-data", str(archive), "--nights", "1", "--science-per-night", "2",
                 "--size", "64"]) == 0  # fmt: skip
    capsys.readouterr()
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))  # the default data directory
    for name in ("cwd-a", "cwd-b"):
        (tmp_path / name).mkdir()
    request = ["reduce", "--archive", str(archive), "--target", "science"]
    monkeypatch.chdir(tmp_path / "cwd-a")
    # one science frame has no flat (the demo's gap 4): a partial plan, refused by default
    assert main([*request, "--out", "out1"]) == 1
    refused = capsys.readouterr()
    assert "error: 1 of 2 datasets are incomplete" in refused.err
    assert "0 computed" not in refused.out and not (tmp_path / "cwd-a" / "out1").exists()
    assert main([*request, "--out", "out1", "--allow-incomplete"]) == 0
    first = capsys.readouterr()
    assert "0 reused from the cache, 0 failed" in first.out
    assert "incomplete: ccd: science " in first.err
    monkeypatch.chdir(tmp_path / "cwd-b")
    assert main([*request, "--out", str(tmp_path / "out2"), "--allow-incomplete"]) == 0
    second = capsys.readouterr().out
    assert " 0 computed" in second and "all steps were cache hits" in second
    assert "hard-linked to the product store" in second
    data_dirs = list((tmp_path / "xdg" / "soda-reduce").iterdir())
    assert len(data_dirs) == 1 and re.fullmatch(r"archive-[0-9a-f]{10}", data_dirs[0].name)
    assert not (tmp_path / "cwd-a" / "soda-data").exists()
    for out in (tmp_path / "cwd-a" / "out1", tmp_path / "out2"):
        results = json.loads((out / "results.json").read_text())
        reduced = [r for r in results if r.get("status") in ("done", "cached")]
        assert len(reduced) == 1 and all(r["complete"] for r in reduced)
        assert [r["dataset"] for r in results if not r["complete"]] and all(
            r["reasons"] for r in results if not r["complete"]
        )
        for entry in reduced:
            folder = Path(entry["directory"])
            assert folder.parent == out
            assert {".fits", ".png", ".json", ".log"} <= {p.suffix for p in folder.iterdir()}
            main_product = Path(entry["main_product"])
            assert main_product.parent == folder
            stored = data_dirs[0] / "products" / "steps" / entry["step_key"][:2] / entry["step_key"]
            assert main_product.samefile(stored / main_product.name)  # a hard link, no copy
            assert not os.access(main_product, os.W_OK) or os.geteuid() == 0
            assert not main_product.stat().st_mode & 0o222  # read-only: shared by every run
    out1_calibrations = sorted(p.name for p in (tmp_path / "cwd-a" / "out1").iterdir())
    assert any(name.startswith("bias-") for name in out1_calibrations)
    assert out1_calibrations == sorted(p.name for p in (tmp_path / "out2").iterdir())


def test_default_data_directory_is_per_user_and_per_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from soda_reduce.config import DEMO_ARCHIVE, default_data_dir

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    home = tmp_path / "xdg" / "soda-reduce"
    first, second = tmp_path / "a" / "raw", tmp_path / "b" / "raw"
    for folder in (first, second):
        folder.mkdir(parents=True)
    (tmp_path / "link").symlink_to(first)
    assert default_data_dir(None) == home / "demo"  # serve without --archive
    assert default_data_dir(home / "demo" / DEMO_ARCHIVE) == home / "demo"  # its demo archive
    assert default_data_dir(first).parent == home and default_data_dir(first).name[:4] == "raw-"
    assert default_data_dir(first) != default_data_dir(second)  # same name, another archive
    assert default_data_dir(tmp_path / "link") == default_data_dir(first)  # the resolved root
    monkeypatch.chdir(second)
    assert default_data_dir(Path(".")) == default_data_dir(second)
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_data_dir(None) == tmp_path / "home" / ".local" / "share" / "soda-reduce" / "demo"
