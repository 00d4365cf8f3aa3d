"""The examples at the end of each command's ``--help`` (kept apart: they are text)."""

from __future__ import annotations

_STATUS = """\
exit status: 0 everything asked for was done, 1 something failed or was not done
(incomplete datasets without --allow-incomplete), 2 usage error"""

EXAMPLES = {
    "soda-reduce": f"""\
examples:
  soda-reduce demo-data /tmp/a                        # a raw CCD archive to try things on
  soda-reduce plan --archive /tmp/a --allow-incomplete
  soda-reduce reduce --archive /tmp/a --out /tmp/products --allow-incomplete
  soda-reduce serve                                   # the service, on a demo archive

Run "soda-reduce COMMAND --help" for a command's options and examples.
{_STATUS}""",
    "demo-data": """\
examples:
  soda-reduce demo-data /tmp/a                          # 3 nights, 256-pixel frames
  soda-reduce demo-data /tmp/a --nights 1 --size 64     # small and quick
  soda-reduce demo-data /tmp/a --nights 5 --science-per-night 8 --seed 2

The archive's _truth/ folder says what each frame is and which calibration gaps
were planted (docs/demo-data.md).""",
    "index": f"""\
examples:
  soda-reduce index --archive /tmp/a                    # ID, pipeline, types, problem
  soda-reduce index --archive /tmp/a --json | jq '.pipelines'
  soda-reduce index --archive /data/raw --mongo-url mongodb://db.example.org/
  soda-reduce index --archive /data/raw --verify        # check every DATASUM (reads all data)

Only files whose size or modification time changed are read again.
{_STATUS}""",
    "plan": f"""\
examples:
  soda-reduce plan --archive /tmp/a --target science --allow-incomplete
  soda-reduce plan --archive /tmp/a --id 'ivo://example.org/raw?2024-01-04/M67_R_1x1_001.fits'
  soda-reduce plan --archive /tmp/a --where NIGHT=2024-01-04 --param flat.sigma_clip=4
  soda-reduce plan --archive /tmp/a --allow-incomplete --graph plan.svg --json > plan.json

Nothing runs: the plan says which calibrations each dataset gets, at which quality
level, and why a dataset is incomplete.
{_STATUS}""",
    "reduce": f"""\
examples:
  soda-reduce reduce --archive /tmp/a --out /tmp/products --allow-incomplete
  soda-reduce reduce --archive /tmp/a --out /tmp/other --allow-incomplete   # 0 steps computed
  soda-reduce reduce --archive /tmp/a --out /tmp/p --where NIGHT=2024-01-04 --jobs 2
  soda-reduce reduce --archive /tmp/a --out /tmp/p --param flat.sigma_clip=4 --allow-incomplete

Products are computed once, into the data directory's product store, and linked
into --out (hard links, or copies on another file system) with results.json.
{_STATUS}""",
    "cascade": """\
examples:
  soda-reduce cascade                                   # DOT on stdout
  soda-reduce cascade --graph ccd.svg                   # SVG with Graphviz, else .dot
  soda-reduce cascade --pipeline kast --graph kast.dot""",
    "serve": """\
examples:
  soda-reduce serve                                     # a demo archive, port 8080
  soda-reduce serve --archive /data/raw --port 9000
  SODA_REDUCE_BASE_URL=https://archive.example.org/reduce soda-reduce serve --archive /data/raw

One process: UWS API, worker, local executor, embedded store, in-process queue.
index/plan/reduce on the same archive use its store while it runs.""",
    "api": """\
examples:
  SODA_REDUCE_AMQP_URL=amqp://rabbit/ soda-reduce api --archive /data/raw \\
      --mongo-url mongodb://db.example.org/

Needs a broker (SODA_REDUCE_AMQP_URL): the jobs it accepts are run by
soda-reduce worker processes (docs/uws.md).""",
    "worker": """\
examples:
  SODA_REDUCE_AMQP_URL=amqp://rabbit/ soda-reduce worker --archive /data/raw \\
      --mongo-url mongodb://db.example.org/""",
}
