"""Benchmark of the command line, each figure measured in one run.

(a) ``soda-reduce plan`` on a demo archive of about 100 raw files, wall time of the whole
    command (a subprocess, as typed in a shell), best and median of --runs:
    - against ``python -c pass`` (the interpreter's own start, the floor);
    - first run: nothing indexed, no store running (the store keeper is started);
    - cold: indexed, no store running (each run starts a keeper, linger 0);
    - warm: a store already running (a keeper lingering from the first run), the usual
      case of commands typed one after another.
    Goal: warm plan <= 0.5 s.
(b) ``soda-reduce reduce`` of the same request again, into a new ``--out`` folder from
    another working folder: its wall time against the first run's, and the steps it
    computed. Goal: 0 steps computed (and a small fraction of the first run's time).

With ``--before SRC`` (a source tree of an earlier version, e.g. ``git archive HEAD
soda_reduce | tar -x -C SRC``) the same plan and re-run are timed with that code too
(``PYTHONPATH=SRC``, its own ``--data-dir``), for comparison in the same run.

The commands run with a bytecode cache (``PYTHONPYCACHEPREFIX`` in the bench's folder),
as an installed package has; ``PYTHONDONTWRITEBYTECODE`` set in the environment would
otherwise make every run compile its imports again (~0.15 s here).

  .venv/bin/python bench/cli_bench.py [--runs 7] [--nights 4] [--reduce-nights 1] [--before SRC]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from soda_reduce.runtime.store.sharing import process_alive, read_record

GOALS = {"(a) warm plan s": 0.5, "(b) steps computed": 0}
SODA = [sys.executable, "-m", "soda_reduce.cli"]


class Bench:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SODA_REDUCE_")}
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
        self.env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
        self.env["XDG_DATA_HOME"] = str(work / "xdg")

    def run(self, argv: Sequence[str], cwd: Path | None = None, **env: str) -> float:
        started = time.perf_counter()
        done = subprocess.run(
            list(argv),
            cwd=cwd or self.work,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=1800,
        )
        elapsed = time.perf_counter() - started
        self.last = done
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr}")
        return elapsed

    def data_dir(self) -> Path:
        (found,) = [p for p in (self.work / "xdg" / "soda-reduce").iterdir() if p.is_dir()]
        return found

    def stop_keeper(self) -> None:
        """Stop a lingering keeper (bounded wait), so a cold run finds no store."""
        for folder in (self.work / "xdg" / "soda-reduce").glob("*"):
            record = read_record(folder)
            if record is not None and record.alive():
                os.kill(record.pid, signal.SIGTERM)
                deadline = time.monotonic() + 10
                while process_alive(record.pid) and time.monotonic() < deadline:
                    time.sleep(0.02)


def timings(values: list[float]) -> str:
    return f"{min(values):6.3f} / {statistics.median(values):6.3f}"


def plan_figures(bench: Bench, args: argparse.Namespace) -> dict[str, list[float]]:
    archive = bench.work / "archive"
    bench.run([*SODA, "demo-data", str(archive), "--nights", str(args.nights), "--size", "64"])
    raw = len([p for p in archive.rglob("*.fits*") if "_truth" not in p.parts])
    print(f"(a) demo archive of {raw} raw files ({args.nights} nights)")
    plan = [*SODA, "plan", "--archive", str(archive), "--allow-incomplete"]
    figures: dict[str, list[float]] = {"python -c pass": [], "cold": [], "warm": []}
    for _ in range(args.runs):
        figures["python -c pass"].append(bench.run([sys.executable, "-c", "pass"]))
    bench.run([sys.executable, "-m", "soda_reduce.cli", "--help"])  # the bytecode cache
    figures["first"] = [bench.run(plan, SODA_REDUCE_STORE_LINGER_S="600")]
    for _ in range(args.runs):
        figures["warm"].append(bench.run(plan))
    record = read_record(bench.data_dir())
    assert record is not None and record.owner == "keeper", "no keeper lingered"
    for _ in range(args.runs):
        bench.stop_keeper()
        figures["cold"].append(bench.run(plan, SODA_REDUCE_STORE_LINGER_S="0"))
    bench.stop_keeper()
    return figures


def before_figures(bench: Bench, args: argparse.Namespace) -> dict[str, list[float]]:
    """The earlier version's plan (it starts and stops a store each time) and re-run."""
    env = {"PYTHONPATH": str(Path(args.before).resolve())}
    data = str(bench.work / "before-data")
    plan = [*SODA, "plan", "--archive", str(bench.work / "archive"), "--data-dir", data]
    bench.run(plan, **env)  # indexes
    figures: dict[str, list[float]] = {"plan": [], "reduce first": [], "reduce again": []}
    for _ in range(args.runs):
        figures["plan"].append(bench.run(plan, **env))
    archive = str(bench.work / "reduce-archive")
    for name, out in (("reduce first", "before-out1"), ("reduce again", "before-out2")):
        argv = [*SODA, "reduce", "--archive", archive, "--out", str(bench.work / out)]
        figures[name].append(bench.run([*argv, "--data-dir", data], **env))
        print(f"    before, {name}: {bench.last.stdout.splitlines()[0]}")
    return figures


def reduce_figures(bench: Bench, args: argparse.Namespace) -> dict[str, float]:
    archive = bench.work / "reduce-archive"
    bench.run([*SODA, "demo-data", str(archive), "--nights", str(args.reduce_nights),
               "--science-per-night", "4", "--size", "128"])  # fmt: skip
    request = [*SODA, "reduce", "--archive", str(archive), "--allow-incomplete"]
    first_cwd, second_cwd = bench.work / "cwd-a", bench.work / "cwd-b"
    first_cwd.mkdir()
    second_cwd.mkdir()
    first = bench.run([*request, "--out", "out1"], cwd=first_cwd, SODA_REDUCE_STORE_LINGER_S="0")
    steps = int(re.search(r"^(\d+) steps in", bench.last.stdout, re.M).group(1))  # type: ignore[union-attr]
    second = bench.run([*request, "--out", "out2"], cwd=second_cwd, SODA_REDUCE_STORE_LINGER_S="0")
    computed = int(re.search(r": (\d+) computed", bench.last.stdout).group(1))  # type: ignore[union-attr]
    placed = bench.last.stdout.splitlines()[-2]
    results = json.loads((second_cwd / "out2" / "results.json").read_text())
    have = all(Path(r["main_product"]).is_file() for r in results if r.get("main_product"))
    print(f"(b) {steps} steps; second run: {placed}; every main product in out2: {have}")
    return {"first": first, "second": second, "steps": steps, "computed": computed}


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="runs per figure of (a)")
    parser.add_argument("--nights", type=int, default=4, help="nights of (a)'s archive")
    parser.add_argument("--reduce-nights", type=int, default=1, help="nights of (b)'s archive")
    parser.add_argument("--before", help="source tree of an earlier version, to compare")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="cli_bench_"))
    bench = Bench(work)
    load_before = os.getloadavg()[0]
    try:
        plans = plan_figures(bench, args)
        reduced = reduce_figures(bench, args)
        before = before_figures(bench, args) if args.before else None
    finally:
        bench.stop_keeper()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    floor = min(plans["python -c pass"])
    warm = min(plans["warm"])
    print("\n(a) soda-reduce plan, wall seconds, best / median")
    for name in ("python -c pass", "first", "cold", "warm"):
        ratio = min(plans[name]) / floor
        print(f"    {name:<16}{timings(plans[name])}   x{ratio:5.1f} python -c pass")
    print(f"    cold - warm (the store's start and stop): {min(plans['cold']) - warm:.3f} s")
    goal = GOALS["(a) warm plan s"]
    print(f"(a) warm plan {warm:.3f} s  goal <= {goal} s  {verdict(warm <= goal)}")
    ratio = reduced["second"] / reduced["first"]
    print(
        f"(b) reduce again elsewhere: {reduced['second']:.2f} s vs first {reduced['first']:.2f} s "
        f"(x{ratio:.3f}); {reduced['computed']} of {reduced['steps']} steps computed  "
        f"goal 0  {verdict(reduced['computed'] == 0)}"
    )
    if before is not None:
        print(f"--before {args.before}: the same, with the earlier code")
        share = warm / min(before["plan"])
        print(f"    plan            {timings(before['plan'])}   (warm plan now: x{share:.2f})")
        print(
            f"    reduce again    {before['reduce again'][0]:6.2f} s vs first "
            f"{before['reduce first'][0]:.2f} s (now: {reduced['second']:.2f} s)"
        )
    print(f"load average (1 min) {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    return 0


if __name__ == "__main__":
    sys.exit(main())
