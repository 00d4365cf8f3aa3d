"""``python -m soda_reduce.recipe PIPELINE.RECIPE --inputs F --params F --out DIR``.

Exit codes: 0 success, 1 processing failure, 2 bad usage or bad input.
stdout and stderr are the step's log.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from soda_reduce.recipe import get_recipe, recipe_names
from soda_reduce.recipe.contract import EXIT_USAGE, execute


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m soda_reduce.recipe",
        description="Run one recipe: read inputs.json and params.json, write products to OUTDIR.",
    )
    parser.add_argument("recipe", nargs="?", help="PIPELINE.RECIPE, e.g. ccd.master_bias")
    parser.add_argument("--inputs", type=Path, help="inputs.json (set of files)")
    parser.add_argument("--params", type=Path, help="params.json (typed parameters)")
    parser.add_argument("--out", type=Path, help="output directory")
    parser.add_argument("--list", action="store_true", help="list the known recipes and exit")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    args = parser.parse_args(argv)

    logging.basicConfig(
        stream=sys.stderr,
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    logging.captureWarnings(True)
    log = logging.getLogger("soda_reduce.recipe")
    if args.list:
        for name in recipe_names():
            print(name)
        return 0
    if not args.recipe or args.inputs is None or args.out is None:
        parser.print_usage(sys.stderr)
        log.error("usage error: RECIPE, --inputs and --out are required")
        return EXIT_USAGE
    try:
        recipe = get_recipe(args.recipe)
    except KeyError as exc:
        log.error("usage error: %s", exc.args[0])
        return EXIT_USAGE
    except Exception as exc:  # a broken external-recipe configuration
        log.error("usage error: cannot load recipe %s: %s", args.recipe, exc)
        return EXIT_USAGE
    return execute(recipe, args.inputs.resolve(), args.params, args.out.resolve())


if __name__ == "__main__":
    sys.exit(main())
