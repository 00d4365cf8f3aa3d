"""The real Kast night through the kast pipeline: typing as PypeIt types, a job driven by pyvo.

- ``soda-reduce index --json`` gives each file the types PypeIt's own ``pypeit_setup``
  gives it (run here on the same files, offline);
- a SODA async job ``ID=<b27>&TARGET=science`` through a ``soda-reduce serve`` process,
  driven by pyvo, completes; its results hold b27's 1-D spectrum over ~3,400-5,500 A;
  DataLink on it lists b27 as #progenitor, the calibrations (bias, flat, arc, standard,
  arc template) as #calibration and a #preview, and passes STILTS ``datalinklint``;
- the same job again is all cache hits.

PypeIt is the pipeline's optional extra (``soda-reduce[kast]``), which the README's test
command installs: these tests fail in CI when it is missing, and skip only outside CI.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
from astropy.io import fits

from soda_reduce.pipelines.kast.pypeit_steps import RAW_TYPES
from tests.support.tools import missing, stilts
from tests.test_serve import Served, bounded, create_job, job_document, plan_counts, serve

KAST = Path(__file__).resolve().parents[2] / "shared" / "data" / "kast"
RAW = KAST / "raw"
OURS_TO_PYPEIT = RAW_TYPES  # our frame types -> PypeIt's
JOB_S = 900  # a whole Kast reduction on two cores takes about two minutes


def _need_pypeit() -> None:
    if importlib.util.find_spec("pypeit") is None:
        missing("PypeIt is not installed (pip install soda-reduce[kast]; the test command does)")
    if not RAW.is_dir():
        pytest.fail(f"the Kast night is missing: {RAW}")


def _environment() -> dict[str, str]:
    """No SODA_REDUCE_* settings of the caller (the documented defaults), but a command's
    store stops with it; the default data directory is the session's XDG_DATA_HOME
    (tests/conftest.py), not the real home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SODA_REDUCE_")}
    env["SODA_REDUCE_STORE_LINGER_S"] = "0"
    return env


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = _environment()
    command = [sys.executable, "-m", "soda_reduce.cli", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def pypeit_types(raw: Path, out: Path) -> dict[str, set[str]]:
    """PypeIt's own frame types for the files, from the .pypeit file pypeit_setup writes."""
    script = (
        "import sys\n"
        "from soda_reduce.pipelines.kast.offline import install_site_registry\n"
        "install_site_registry()\n"
        "from pypeit.scripts.setup import Setup\n"
        "Setup.entry_point()\n"
    )
    command = [sys.executable, "-c", script, "-s", "shane_kast_blue", "-r", str(raw)]
    command += ["-c", "all", "-d", str(out)]
    out.mkdir(parents=True, exist_ok=True)  # pypeit_setup writes its log in the cwd
    done = subprocess.run(command, cwd=out, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    files = list(out.rglob("*.pypeit"))
    assert len(files) == 1, files
    lines = files[0].read_text().splitlines()
    start = lines.index("data read")
    header = None
    found: dict[str, set[str]] = {}
    for line in lines[start + 1 :]:
        if line.strip() == "data end":
            break
        if line.strip().startswith("path "):
            continue
        cells = [c.strip() for c in line.split("|")]
        if header is None:
            header = cells
            continue
        row = dict(zip(header, cells, strict=True))
        found[row["filename"]] = set(row["frametype"].split(","))
    return found


def test_index_types_match_pypeit_setup(tmp_path: Path) -> None:
    _need_pypeit()
    done = _cli("index", "--archive", str(RAW), "--data-dir", str(tmp_path / "d"), "--json",
                cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    listing = json.loads(done.stdout)
    assert listing["pipelines"]["kast"]["claimed"] == 9
    assert listing["pipelines"]["kast"]["classified"] == 9
    assert listing["pipelines"]["ccd"]["claimed"] == 0
    ours = {Path(f["path"]).name: {OURS_TO_PYPEIT[t] for t in f["types"]} for f in listing["files"]}
    assert all(f["pipeline"] == "kast" for f in listing["files"])
    theirs = pypeit_types(RAW, tmp_path / "setup")
    assert set(theirs) == set(ours) and len(ours) == 9
    for name in sorted(ours):
        assert ours[name] == theirs[name], (name, ours[name], theirs[name])
    assert ours["b1.fits.gz"] == {"arc", "tilt"}
    assert ours["b11.fits.gz"] == {"pixelflat", "illumflat", "trace"}


def test_plan_names_the_arc_template_and_meta_target(tmp_path: Path) -> None:
    data = str(tmp_path / "d")
    done = _cli("plan", "--archive", str(RAW), "--data-dir", data, "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["cascade"] == "kast" and plan["complete"]
    tasks = [j["task"] for j in plan["jobs"]]
    assert tasks == ["bias", "slits", "arc", "flat", "standard", "science"]
    arc = next(j for j in plan["jobs"] if j["task"] == "arc")
    static = [i for i in arc["inputs"] if i["role"] == "static"]
    assert [(i["category"], i["file_id"]) for i in static] == [
        ("REID_ARXIV", "pipeline:kast/shane_kast_blue_600.fits")
    ]
    assert next(i for i in arc["inputs"] if i["role"] == "main")["types"] == ["ARC", "TILT"]
    calib = _cli("plan", "--archive", str(RAW), "--data-dir", data, "--json", "--target",
                 "calibrations", cwd=tmp_path)  # fmt: skip
    assert calib.returncode == 0, calib.stderr
    tasks = {j["task"] for j in json.loads(calib.stdout)["jobs"]}
    assert tasks == {"bias", "slits", "arc", "flat"}


def test_nothing_to_plan_is_an_error_with_reasons(tmp_path: Path) -> None:
    """A file no pipeline claims: index and plan say why and exit non-zero."""
    archive = tmp_path / "archive"
    archive.mkdir()
    header = fits.Header({"OBSTYPE": "OBJECT", "EXPTIME": 10.0, "DATE-OBS": "2015-05-20"})
    fits.PrimaryHDU(header=header).writeto(archive / "odd.fits")
    data = str(tmp_path / "d")
    done = _cli("index", "--archive", str(archive), "--data-dir", data, cwd=tmp_path)
    assert done.returncode == 1
    assert "odd.fits" in done.stdout + done.stderr
    assert "no pipeline claims it" in done.stdout + done.stderr
    assert "kast: 0 claimed" in done.stdout + done.stderr
    planned = _cli("plan", "--archive", str(archive), "--data-dir", data, cwd=tmp_path)
    assert planned.returncode == 1
    assert "nothing can be planned" in planned.stderr and "odd.fits" in planned.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    none = _cli("plan", "--archive", str(empty), "--data-dir", str(tmp_path / "e"), cwd=tmp_path)
    assert none.returncode == 1 and "no FITS files" in none.stderr


# ----------------------------------------------------------------------- the service


@pytest.fixture(scope="module")
def kast_served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    _need_pypeit()
    data_dir = tmp_path_factory.mktemp("kast-serve") / "data"
    # an operator's override that changes no step: the science frame in calibration group 0
    overrides = data_dir.parent / "overrides.txt"
    overrides.write_text("# file        types  calib\nb27.fits.gz   -      0\n")
    env = {"SODA_REDUCE_OVERRIDES": str(overrides)}
    with serve(data_dir, "--archive", str(RAW), "--checksum", "fast", env=env) as served:
        yield served


def _run_job(served: Served, session: requests.Session, file_id: str) -> str:
    import pyvo

    url = create_job(session, served.base, {"ID": file_id, "TARGET": "science", "PHASE": "RUN"})
    job = pyvo.dal.AsyncTAPJob(url, session=session)
    bounded(lambda: job.wait(timeout=JOB_S), JOB_S + 60, "the Kast job")
    job.raise_if_error()
    assert job.phase == "COMPLETED", served.output()[-5000:]
    return url


def test_kast_job_with_pyvo(
    kast_served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyvo
    from pyvo.dal.adhoc import DatalinkResults

    session = kast_served.session()
    b27 = "ivo://example.org/raw?b27.fits.gz"
    url = _run_job(kast_served, session, b27)
    job = pyvo.dal.AsyncTAPJob(url, session=session)
    table = job.fetch_result().to_table()
    spectra = [row for row in table if row["category"] == "SPECTRUM_1D"]
    assert len(spectra) == 1, list(table["category"])
    spectrum = spectra[0]
    assert bool(spectrum["main"]) and spectrum["task"] == "science"
    # the standard's spectrum is a product of another step, never the science dataset's main
    standard_rows = [r for r in table if r["task"] == "standard" and bool(r["main"])]
    assert standard_rows and all(r["category"] == "KAST_SPEC1D" for r in standard_rows)
    response = session.get(str(spectrum["access_url"]), timeout=60)
    assert response.status_code == 200
    with fits.open(io.BytesIO(response.content)) as hdul:
        assert hdul[0].header["OBJECT"] == "J1217p3905"
        wave = hdul["SPECTRUM"].data["WAVELENGTH"]
        flux = hdul["SPECTRUM"].data["FLUX"]
        assert hdul["SPECTRUM"].columns["WAVELENGTH"].unit == "Angstrom"
        assert 3300 < wave.min() < 3600 and 5400 < wave.max() < 5700, (wave.min(), wave.max())
        assert (flux > 0).mean() > 0.8 and len(wave) > 1500

    links = DatalinkResults.from_result_url(
        f"{kast_served.base}/datalink?ID={quote(str(spectrum['ID']), safe='')}", session=session
    )
    rows = [(r.semantics, r.access_url, r.description) for r in links]
    progenitors = [u for s, u, _ in rows if s == "#progenitor"]
    assert len(progenitors) == 1 and progenitors[0].endswith("/b27.fits.gz"), rows
    calibrations = " | ".join(f"{u} {d}" for s, u, d in rows if s == "#calibration")
    for needed in ("Bias_A_0", "Flat_A_0", "WaveCalib_A_0", "Tilts_A_0", "spec1d_b24",
                   "shane_kast_blue_600.fits"):  # fmt: skip
        assert needed in calibrations, (needed, calibrations)
    previews = [u for s, u, _ in rows if s == "#preview"]
    assert len(previews) == 1 and previews[0].endswith(".png")
    png = session.get(previews[0], timeout=60)
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    template = next(u for s, u, _ in rows if s == "#calibration" and "shane_kast" in u)
    got = session.get(template, timeout=60)
    assert got.status_code == 200
    assert got.content == (KAST / "static" / "shane_kast_blue_600.fits").read_bytes()
    assert any(s == "#auxiliary" and u.endswith(".png") for s, u, _ in rows)  # QA plots

    stilts_command = stilts()
    body = session.get(
        f"{kast_served.base}/datalink?ID={quote(str(spectrum['ID']), safe='')}", timeout=60
    ).content
    path = tmp_path / "links.xml"
    path.write_bytes(body)
    done = subprocess.run(
        [stilts_command, "datalinklint", str(path)], capture_output=True, text=True, timeout=180
    )
    report = done.stdout + done.stderr
    totals = re.search(r"Totals: Errors: (\d+); Warnings: (\d+)", report)
    assert totals is not None and totals.group(1) == "0", report

    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # the snippets' own HTTP clients: loopback
    _soda_spectrum_snippets_run_as_written(kast_served, str(spectrum["ID"]), tmp_path)

    # pages for people: the pipelines with their counts, the override shown as one
    home = session.get(f"{kast_served.base}/", timeout=60).text
    assert 'id="pipelines"' in home and "<code>kast</code>" in home
    assert "ARC,TILT" in home and "SCIENCE (override)" in home
    page = session.get(f"{kast_served.base}/raw/b27.fits.gz", timeout=60).text
    assert 'id="override"' in page and "calibration group 0" in page
    assert '<dd id="pipeline">kast</dd>' in page
    arc_page = session.get(f"{kast_served.base}/raw/b1.fits.gz", timeout=60).text
    assert "ARC, TILT" in arc_page

    again = _run_job(kast_served, session, b27)
    counts = plan_counts(job_document(session, again))
    assert counts is not None and counts[0] == counts[1] == 6, counts


# ----------------------------------------------------------------------- docs as written

README = Path(__file__).resolve().parents[1] / "README.md"
KAST_DOC = Path(__file__).resolve().parents[1] / "docs" / "pipelines" / "kast.md"
BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)


def _doc_steps(text: str) -> list[tuple[str, list[str]]]:
    """(command, expected output lines) for each kast command of a document, in order."""
    blocks = BLOCK.findall(text)
    steps: list[tuple[str, list[str]]] = []
    for n, (kind, body) in enumerate(blocks):
        if kind != "sh":
            continue
        expected: list[str] = []
        if n + 1 < len(blocks) and blocks[n + 1][0] == "text":
            expected = [line.strip() for line in blocks[n + 1][1].splitlines() if line.strip()]
        for line in body.splitlines():
            command = line.split("#", 1)[0].strip()
            if command.startswith("soda-reduce ") and "kast/raw" in command:
                steps.append((command, expected))
    return steps


@pytest.mark.parametrize("doc", [README, KAST_DOC], ids=["README", "kast.md"])
def test_kast_commands_in_the_docs_run_as_written(doc: Path, tmp_path: Path) -> None:
    """From a folder beside ``shared/`` (as the project root is): every command succeeds
    and prints what the document shows after it."""
    steps = _doc_steps(doc.read_text())
    assert steps, f"no kast command found in {doc.name}"
    root = tmp_path / "main"
    root.mkdir()
    (tmp_path / "shared").symlink_to(KAST.parents[1], target_is_directory=True)
    soda = Path(sys.executable).with_name("soda-reduce")
    env = {**_environment(), "XDG_DATA_HOME": str(tmp_path / "xdg")}  # a first-time user
    for command, expected in steps:
        argv = [str(soda), *command.split()[1:]]
        done = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True,
                              timeout=300)  # fmt: skip
        assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-2000:])
        lines = {line.strip() for line in done.stdout.splitlines()}
        missing = [line for line in expected if line not in lines]
        assert not missing, (command, missing, done.stdout)


def test_calibration_group_all_keeps_frames_together() -> None:
    """A bias an operator put in 'all' groups joins its night's biases; one in group 1 does not."""
    from soda_reduce.pipelines.kast.cascade import CASCADE
    from soda_reduce.reduction.index_model import RawFile, raw_file_id
    from soda_reduce.reduction.planner import plan_reduction

    def bias(name: str, minute: int, override: dict | None = None) -> RawFile:
        header = {"VERSION": "kastb", "OBSTYPE": "DARK", "EXPTIME": 0.0,
                  "DATE-OBS": f"2015-05-20T03:{minute:02d}:00", "GRISM_N": "600/4310",
                  "BSPLIT_N": "d55"}  # fmt: skip
        return RawFile(raw_file_id(name), name, header, checksum=name, override=override)

    files = [bias("b1.fits", 1), bias("b2.fits", 2, {"calib": ["all"]}), bias("b3.fits", 3)]
    plan = plan_reduction(CASCADE, files, target="bias")
    assert [sorted(d.main_inputs) for d in plan.datasets] == [
        [raw_file_id(f"b{n}.fits") for n in (1, 2, 3)]
    ]
    files[1] = bias("b2.fits", 2, {"calib": ["1"]})
    plan = plan_reduction(CASCADE, files, target="bias")
    assert sorted(len(d.main_inputs) for d in plan.datasets) == [1, 2]


SODA_DOC = Path(__file__).resolve().parents[1] / "docs" / "soda.md"


def _soda_spectrum_snippets_run_as_written(served: Served, product_id: str, tmp_path: Path) -> None:
    """docs/soda.md's two spectrum examples (curl, pyvo) against the Kast product just made."""
    section = SODA_DOC.read_text().split("## Spectra", 1)[1].split("\n## ", 1)[0]
    blocks = dict((kind, body) for kind, body in BLOCK.findall(section))
    assert set(blocks) == {"sh", "python"}, blocks.keys()
    step_key = product_id.split("?", 1)[1].split("/", 1)[0]
    env = {**os.environ, "BASE": served.base, "STEPKEY": step_key}
    done = subprocess.run(["bash", "-e", "-c", blocks["sh"]], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    with fits.open(tmp_path / "part.fits") as hdul:
        wave = hdul["SPECTRUM"].data["WAVELENGTH"]
        assert len(wave) > 100 and wave.min() >= 4000 and wave.max() <= 4500
    names: dict[str, object] = {"base": served.base, "product_id": product_id}
    exec(compile(blocks["python"], "docs/soda.md", "exec"), names)
    part = names["part"]
    assert len(part) == len(wave) and part["WAVELENGTH"].min() >= 4000
