"""``core.noop``: a recipe that does nothing, for measuring and testing the machinery.

It honours the whole contract (reads inputs.json and params.json, writes a
product and products.json) in a few milliseconds after Python starts, so the
plan runner's overhead per step can be measured, and it can be told to be slow
or to fail so that timeouts, retries and crash recovery can be tested.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time

from soda_reduce.recipe.contract import ANY, InputSpec, Recipe, RecipeCall, RecipeFailure
from soda_reduce.reduction.cascade import param

log = logging.getLogger("soda_reduce.recipe")


def noop(call: RecipeCall) -> None:
    if call.params["sleep_s"] > 0:
        log.info("sleeping %.3f s", call.params["sleep_s"])
        time.sleep(call.params["sleep_s"])
    if call.params["fail"] == "failure":
        raise RecipeFailure("asked to fail (fail=failure)")
    if call.params["fail"] == "kill":
        log.info("killing myself with SIGKILL (fail=kill)")
        os.kill(os.getpid(), signal.SIGKILL)
    listing = {"inputs": [i.ref for i in call.inputs], "params": call.params}
    (call.out / "noop.json").write_text(json.dumps(listing, indent=1) + "\n")
    call.add_product(
        "noop.json", "NOOP", "application/json", qc={"NINPUTS": len(call.inputs)}, main=True
    )


RECIPES = {
    "core.noop": Recipe(
        name="core.noop",
        version="1",
        product="NOOP",
        run=noop,
        inputs=(InputSpec(ANY, minimum=0, maximum=None),),
        parameters=(
            param("sleep_s", float, 0.0, "seconds to sleep", minimum=0.0, maximum=86400.0),
            param("fail", str, "no", "fail on purpose", choices=("no", "failure", "kill")),
        ),
        description="Does nothing, quickly (or slowly, or fails, on request).",
    )
}
