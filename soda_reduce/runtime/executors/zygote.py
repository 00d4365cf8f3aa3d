"""Warm recipe runners: fork each recipe from a process that imported its pipeline once.

Importing PypeIt takes ~3.6 s of CPU; a Kast reduction runs six PypeIt steps,
each a recipe process of its own. A *zygote* (``python -m
soda_reduce.runtime.executors.zygote PIPELINE``) runs the pipeline's ``warm``
hook (its heavy imports) once, then forks one child per recipe call: the child
runs exactly ``python -m soda_reduce.recipe ...`` would (the same ``main``,
the same contract, its own session, its log on stdout and stderr), minus the
import. The recipe contract is unchanged; a dead zygote costs one transient
failure and is started again.

Protocol, one JSON object per line: the parent writes ``{"id", "argv", "cwd",
"log"}`` on the zygote's stdin; the zygote answers ``{"ready": true}`` once
warm, then ``{"id", "pid"}`` when it forked and ``{"id", "pid", "status",
"cpu"}`` when the child ended (its wait status and CPU seconds). The zygote is
single-threaded (forking with other threads alive is unsafe) and its own
output goes to its stderr, never into the protocol.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import selectors
import signal
import sys
import time
from typing import Any

POLL_S = 0.05


def _send(fd: int, message: dict[str, Any]) -> None:
    os.write(fd, (json.dumps(message) + "\n").encode())  # one write: never interleaved


def _child(request: dict[str, Any], protocol: int) -> None:
    """In the forked child: become what ``python -m soda_reduce.recipe`` would be."""
    code = 1
    try:
        os.setsid()  # its own process group: killed whole, like a cold recipe
        from soda_reduce.runtime.process import die_with_parent

        die_with_parent()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        for fd in (log, null, protocol):
            os.close(fd)
        os.chdir(request["cwd"])
        from soda_reduce.recipe.__main__ import main

        code = int(main(list(request["argv"])) or 0)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # anything else: the traceback goes to the step's log
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def serve(pipeline: str) -> int:
    """The zygote's loop: warm up, then fork on request and report exits."""
    protocol = os.dup(1)
    os.dup2(2, 1)  # anything printed by imports goes to the zygote's log, not the protocol
    sys.stdout = sys.stderr
    from soda_reduce.pipelines import registry

    warm = registry().get(pipeline).warm
    if warm:
        module, _, function = warm.partition(":")
        from importlib import import_module

        getattr(import_module(module), function)()
    import soda_reduce.recipe.__main__  # noqa: F401  (the child's entry point, imported once)

    _send(protocol, {"ready": True, "pid": os.getpid()})
    children: dict[int, str] = {}
    pending = b""
    selector = selectors.DefaultSelector()
    selector.register(0, selectors.EVENT_READ)
    open_input = True
    while open_input or children:
        if open_input and selector.select(timeout=POLL_S):
            chunk = os.read(0, 65536)
            if not chunk:
                open_input = False  # the parent is gone: finish, children get SIGTERM
                for pid in children:
                    _kill(pid)
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                request = json.loads(line)
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    _child(request, protocol)
                children[pid] = request["id"]
                _send(protocol, {"id": request["id"], "pid": pid})
        elif not open_input:
            time.sleep(POLL_S)
        _reap(children, protocol)
    return 0


def _reap(children: dict[int, str], protocol: int) -> None:
    while children:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            children.clear()
            return
        if pid == 0:
            return
        request_id = children.pop(pid, None)
        if request_id is not None:
            cpu = usage.ru_utime + usage.ru_stime
            _send(protocol, {"id": request_id, "pid": pid, "status": status, "cpu": cpu})


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m soda_reduce.runtime.executors.zygote PIPELINE", file=sys.stderr)
        return 2
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crashing child leaves no core file
    return serve(args[0])


if __name__ == "__main__":
    sys.exit(main())
