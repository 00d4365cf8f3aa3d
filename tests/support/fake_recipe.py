"""A stand-in recipe that follows the recipe contract, for runner tests.

It writes a product whose content depends on its inputs and parameters, and
appends "start KEY" / "finish KEY" lines to a ledger file (``FAKE_LEDGER``),
so tests can count how often each step really ran. Parameters steer it:
``sleep`` seconds, ``fail`` ("exit" = a real failure, "crash-once" = killed by
a signal on the first attempt only, "crash" = always killed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path

PRODUCTS = {
    "ccd.master_bias": "MASTER_BIAS",
    "ccd.master_dark": "MASTER_DARK",
    "ccd.master_flat": "MASTER_FLAT",
    "ccd.science": "REDUCED_SCIENCE",
    "ccd.stack": "STACKED_SCIENCE",
}


def host_path(path: str) -> str:
    """Undo a pod's mount points (``FAKE_PATH_MAP="/products=/tmp/p,/archive=/tmp/a"``)."""
    for pair in filter(None, os.environ.get("FAKE_PATH_MAP", "").split(",")):
        mount, root = pair.split("=", 1)
        if path == mount or path.startswith(mount + "/"):
            return root + path[len(mount) :]
    return path


def ledger(line: str) -> None:
    path = os.environ.get("FAKE_LEDGER")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("recipe")
    parser.add_argument("--inputs", required=True)
    parser.add_argument("--params", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    inputs = json.loads(Path(args.inputs).read_text())
    params = json.loads(Path(args.params).read_text())
    key = inputs["step_key"]
    ledger(f"start {key} {os.getpid()}")
    for item in inputs["inputs"]:
        if item["step_key"] and not Path(host_path(item["path"])).is_file():
            print(f"missing upstream product {item['path']}", file=sys.stderr)
            return 2
    time.sleep(float(os.environ.get("FAKE_SLEEP", params.get("sleep", 0))))
    mode = os.environ.get("FAKE_FAIL_" + inputs["job_id"].split("-")[0].upper(), "")
    marker = Path(os.environ.get("FAKE_STATE", "/tmp")) / f"crashed-{key}"
    if mode == "exit":
        print("simulated processing failure", file=sys.stderr)
        return 1
    if mode == "crash" or (mode == "crash-once" and not marker.exists()):
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    out = Path(args.out)
    digest = hashlib.sha256(json.dumps([inputs["inputs"], params]).encode()).hexdigest()
    category = PRODUCTS.get(args.recipe, "PRODUCT")
    (out / "product.txt").write_text(digest)
    (out / "inputs-seen.json").write_text(json.dumps(inputs))
    manifest = {
        "recipe": args.recipe,
        "step_key": key,
        "products": [{"file": "product.txt", "category": category, "content_type": "text/plain"}],
    }
    (out / "products.json").write_text(json.dumps(manifest))
    ledger(f"finish {key}")
    print(f"{args.recipe}: wrote {category}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
