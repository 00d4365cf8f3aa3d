"""One Kast science frame: ``soda-reduce reduce`` against PypeIt's own ``run_pypeit``, in one run.

Both reduce the real night in ``../shared/data/kast/raw`` (biases, dome flats, arc,
the standard Feige 66, the science frame b27) from nothing, offline:

- the peer: ``pypeit_setup`` writes the reduction file (not timed: it is the user's
  preparation), then ``run_pypeit`` reduces everything (calibrations, standard, science),
  from nothing, before and after soda-reduce's first run (their mean is the floor);
- soda-reduce: ``soda-reduce reduce --id b27 --target science`` indexes, plans and runs
  the six cached steps (bias, slits, arc, flat, standard, science), each one PypeIt step
  in its own recipe process.

Printed: wall times, the first-run ratio (goal <= 1.10) and the identical re-run ratio
(soda-reduce's second run, all cache hits, over run_pypeit's first; goal <= 0.02), with
run_pypeit's own re-run for comparison. Run: ``.venv/bin/python bench/kast_bench.py``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT.parent / "shared" / "data" / "kast" / "raw"
B27 = "ivo://example.org/raw?b27.fits.gz"
SHIM = (
    "from soda_reduce.pipelines.kast.offline import install_site_registry\n"
    "install_site_registry()\n"
)


def timed(command: list[str], cwd: Path, log: Path) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SODA_REDUCE_")}
    started = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"{' '.join(command[:4])}... failed ({done.returncode}):\n{tail}")
    return elapsed


def pypeit_file(work: Path) -> Path:
    script = SHIM + "from pypeit.scripts.setup import Setup\nSetup.entry_point()\n"
    command = [sys.executable, "-c", script, "-s", "shane_kast_blue", "-r", str(RAW)]
    timed([*command, "-c", "all", "-d", str(work / "setup")], work, work / "setup.log")
    (found,) = (work / "setup").rglob("*.pypeit")
    text = found.read_text()
    template = ROOT / "soda_reduce" / "pipelines" / "kast" / "static" / "shane_kast_blue_600.fits"
    # offline, the arc template is given as a file, as the kast pipeline does
    text = text.replace(
        "    spectrograph = shane_kast_blue\n",
        "    spectrograph = shane_kast_blue\n[calibrations]\n    [[wavelengths]]\n"
        f"        reid_arxiv = {template}\n",
    )
    found.write_text(text)
    return found


def run_pypeit(work: Path, reduction: Path, log: str, redux: str = "redux") -> float:
    script = SHIM + "from pypeit.scripts.run_pypeit import RunPypeIt\nRunPypeIt.entry_point()\n"
    command = [sys.executable, "-c", script, str(reduction), "-r", str(work / redux)]
    return timed(command, work, work / log)


def soda_reduce(work: Path, log: str) -> float:
    command = [sys.executable, "-m", "soda_reduce.cli", "reduce", "--archive", str(RAW)]
    command += ["--id", B27, "--target", "science", "--out", str(work / "products")]
    command += ["--data-dir", str(work / "data"), "--checksum", "fast"]
    return timed(command, work, work / log)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="work directory to keep (default: a temporary one)")
    args = parser.parse_args()
    if not RAW.is_dir():
        raise SystemExit(f"no Kast night at {RAW}")
    with tempfile.TemporaryDirectory(prefix="kast-bench-") as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        (work / "peer").mkdir(parents=True, exist_ok=True)
        (work / "ours").mkdir(parents=True, exist_ok=True)
        reduction = pypeit_file(work / "peer")
        # peer, ours, peer again from nothing: the machine's drift falls on both sides
        peer_runs = [run_pypeit(work / "peer", reduction, "run1.log")]
        ours_first = soda_reduce(work / "ours", "reduce1.log")
        peer_runs.append(run_pypeit(work / "peer", reduction, "run1b.log", "redux-b"))
        ours_again = soda_reduce(work / "ours", "reduce2.log")
        peer_again = run_pypeit(work / "peer", reduction, "run2.log")
        last = (work / "ours" / "reduce2.log").read_text()
        if "all steps were cache hits" not in last:
            raise SystemExit(f"the second soda-reduce run recomputed something:\n{last}")
    peer_first = sum(peer_runs) / len(peer_runs)
    shown = " and ".join(f"{s:.1f}" for s in peer_runs)
    print(f"run_pypeit, first run:             {peer_first:8.1f} s (mean of {shown} s)")
    print(f"soda-reduce reduce, first run:     {ours_first:8.1f} s")
    print(f"soda-reduce reduce, identical run: {ours_again:8.1f} s (all cache hits)")
    print(f"run_pypeit, identical run:         {peer_again:8.1f} s (its calibrations reused)")
    first, again = ours_first / peer_first, ours_again / peer_first
    print(f"first-run ratio    soda-reduce / run_pypeit       = {first:.3f}  (goal <= 1.10)")
    print(f"identical re-run   soda-reduce / run_pypeit first = {again:.3f}  (goal <= 0.02)")
    print(f"                   soda-reduce / run_pypeit again = {ours_again / peer_again:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
