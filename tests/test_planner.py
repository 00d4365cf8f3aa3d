"""The planner's request handling, plan format and graphs (files in memory)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from soda_reduce.pipelines import get_cascade
from soda_reduce.reduction.cascade import classification, data_source, same_setup
from soda_reduce.reduction.graph import cascade_dot, plan_dot
from soda_reduce.reduction.index_model import RawFile, raw_file_id
from soda_reduce.reduction.plan import PLAN_SCHEMA, PlanRequestError, ReductionPlan
from soda_reduce.reduction.planner import plan_reduction
from soda_reduce.reduction.report import format_plan
from soda_reduce.reduction.rules import kw
from soda_reduce.reduction.tasks import cascade, task
from soda_reduce.runtime.render import write_graph

CASCADE = get_cascade("ccd")


def frame(name: str, **header: object) -> RawFile:
    header.setdefault("INSTRUME", "CAM")
    return RawFile(raw_file_id(name), name, header, checksum="sha-" + name)


def night_files(night: str) -> list[RawFile]:
    files = [
        frame(f"{night}/b{i}.fits", IMAGETYP="BIAS", **{"DATE-OBS": f"{night}T18:0{i}:00"})
        for i in range(3)
    ]
    files += [
        frame(
            f"{night}/f{i}.fits", IMAGETYP="FLAT", FILTER="V", **{"DATE-OBS": f"{night}T19:0{i}:00"}
        )
        for i in range(3)
    ]
    files.append(
        frame(
            f"{night}/s.fits",
            IMAGETYP="OBJECT",
            FILTER="V",
            OBJECT="M67",
            **{"DATE-OBS": f"{night}T23:00:00"},
        )
    )
    return files


FILES = (
    night_files("2024-01-05")
    + night_files("2024-01-07")
    + [
        RawFile(raw_file_id("bad.fits"), "bad.fits", problem="truncated header (no END card)"),
        frame("focus.fits", FOCUSPOS=1200),
    ]
)


def test_plan_round_trips_as_json() -> None:
    plan = plan_reduction(CASCADE, FILES)
    data = json.loads(plan.to_json())
    assert data["schema"] == PLAN_SCHEMA
    assert data["complete"] is True
    assert ReductionPlan.from_json(plan.to_json()) == plan
    assert plan.target == "science"
    assert [j.task for j in plan.jobs] == ["bias", "flat", "science"] * 2
    assert plan.runnable_jobs() == list(plan.jobs)
    for job in plan.jobs:
        assert job.job_id == f"{job.task}-{job.step_key[:12]}"
        for dep in job.depends_on:  # upstream first
            assert [j.job_id for j in plan.jobs].index(dep) < list(plan.jobs).index(job)


def test_bad_requests_are_usage_errors() -> None:
    cases = [
        ({"target": "nonsense"}, "no task 'nonsense'"),
        ({"parameters": {"flat.nonsense": "1"}}, "task flat has no parameter 'nonsense'"),
        ({"parameters": {"flat.sigma_clip": "high"}}, "not a number"),
        ({"parameters": {"flat.combine": "mode"}}, "must be one of median, average"),
        ({"parameters": {"nosuch.x": "1"}}, "no task 'nosuch'"),
        ({"parameters": {"use_darks": "1"}}, "unknown workflow parameter"),
        ({"ids": [raw_file_id("missing.fits")]}, "unknown ID"),
        ({"ids": [raw_file_id("bad.fits")]}, "truncated header"),
        ({"ids": [raw_file_id("2024-01-05/b0.fits")]}, "is a BIAS frame; task science reduces"),
        ({"ids": [raw_file_id("focus.fits")]}, "is an unclassified frame"),
    ]
    for kwargs, message in cases:
        with pytest.raises(PlanRequestError, match=message):
            plan_reduction(CASCADE, FILES, **kwargs)


def test_parameter_names_are_case_insensitive() -> None:
    plan = plan_reduction(CASCADE, FILES, parameters={"FLAT.Sigma_Clip": "5", "USE_DARK": "0"})
    flat = next(j for j in plan.jobs if j.task == "flat")
    assert flat.parameters["sigma_clip"] == 5.0
    assert plan.workflow_parameters == {"use_dark": False}
    assert plan.parameters == {"flat.sigma_clip": 5.0}


def test_selecting_a_calibration_selects_its_group() -> None:
    plan = plan_reduction(CASCADE, FILES, target="flat", ids=[raw_file_id("2024-01-07/f1.fits")])
    (dataset,) = plan.datasets
    assert len(dataset.main_inputs) == 3
    assert {j.task for j in plan.jobs} == {"bias", "flat"}


def test_report_and_graphs(tmp_path: Path) -> None:
    plan = plan_reduction(CASCADE, FILES, target="stack")
    text = format_plan(plan, verbose=True)
    assert "INCOMPLETE" in text and "only 1 science product(s)" in text
    dot = plan_dot(plan)
    assert dot.startswith("digraph") and "MASTER_FLAT L0" in dot
    cdot = cascade_dot(CASCADE)
    assert "cluster_0" in cdot and "task:science" in cdot and "if use_dark=true" in cdot
    written = write_graph(cdot, tmp_path / "cascade.svg")
    if shutil.which("dot"):
        assert written.suffix == ".svg" and "<svg" in written.read_text()
    else:
        assert written.suffix == ".dot"


def test_cascade_builder_rejects_cycles_and_unknown_tasks() -> None:
    raw = (
        data_source("raw", classification("X", kw("IMAGETYP").is_("x")))
        .match(same_setup("INSTRUME"))
        .build()
    )
    lone = task("lone").recipe("r").main_input(raw).build()
    user = task("user").recipe("r").main_input(raw).input(lone).build()
    with pytest.raises(ValueError, match="not in the cascade"):
        cascade("c").tasks(user).build()
    with pytest.raises(ValueError, match="no recipe"):
        task("t").main_input(raw).build()
    built = cascade("c").tasks(lone, user).default_target(user).build()
    assert built.task("USER").name == "user"


def test_static_calibrations_and_time_clusters() -> None:
    arc = classification("ARC", kw("IMAGETYP").is_("arc"))
    sci = classification("SCI", kw("IMAGETYP").is_("sci"))
    raw_arc = (
        data_source("raw_arc", arc)
        .group_by("INSTRUME")
        .cluster_in_time(2.0)
        .match(same_setup("INSTRUME"))
        .build()
    )
    raw_sci = data_source("raw_sci", sci).build()
    wave = task("wave").recipe("x.wave").main_input(raw_arc, min=2).static("LINE_LIST").build()
    extract = (
        task("extract")
        .recipe("x.extract")
        .main_input(raw_sci)
        .input(wave, "WAVE_SOLUTION")
        .static("BAD_PIXELS", optional=True)
        .build()
    )
    spectro = cascade("spectro").tasks(wave, extract).default_target(extract).build()
    files = [
        frame("a1.fits", IMAGETYP="arc", **{"DATE-OBS": "2024-01-05T18:00:00"}),
        frame("a2.fits", IMAGETYP="arc", **{"DATE-OBS": "2024-01-05T18:30:00"}),
        frame("a3.fits", IMAGETYP="arc", **{"DATE-OBS": "2024-01-06T04:00:00"}),
        frame("a4.fits", IMAGETYP="arc", **{"DATE-OBS": "2024-01-06T04:10:00"}),
        frame("s1.fits", IMAGETYP="sci", **{"DATE-OBS": "2024-01-06T03:00:00"}),
    ]
    from soda_reduce.reduction.planner import StaticFile

    missing = plan_reduction(spectro, files, target="wave")
    assert [d.complete for d in missing.datasets] == [False, False]  # two clusters, no line list
    assert "no static calibration LINE_LIST" in missing.datasets[0].reasons[0]
    library = {"LINE_LIST": StaticFile("static/lines.fits", "sha-lines")}
    plan = plan_reduction(spectro, files, static=library)
    (science,) = [j for j in plan.jobs if j.task == "extract"]
    (wave_job,) = [j for j in plan.jobs if j.task == "wave"]
    # the arc cluster one hour after the frame wins over the one nine hours before
    assert sorted(i.path for i in wave_job.inputs if i.role == "main") == ["a3.fits", "a4.fits"]
    assert [i.category for i in wave_job.inputs if i.role == "static"] == ["LINE_LIST"]
    assert science.complete and not any(i.category == "BAD_PIXELS" for i in science.inputs)
    changed = plan_reduction(spectro, files, static={"LINE_LIST": StaticFile("l", "sha-other")})
    assert {j.task: j.step_key for j in changed.jobs} != {j.task: j.step_key for j in plan.jobs}
