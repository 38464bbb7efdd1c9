"""Profile every `dynakv serve` process of a bench run with cProfile (opt-in).

    DYNAKV_PROFILE_DIR=/tmp/prof PYTHONPATH=bench/profile \\
        .venv/bin/python bench/run.py --skip-etcd --skip-redis --duration-s 10

Python imports `sitecustomize` at start-up from PYTHONPATH, so every process
of the run (the harness, `dynakv dev`, its nodes) sees this module; only the
node processes (`-m dynakv serve`) profile. Each writes
`<DIR>/node-<pid>.prof` when it exits (atexit: a SIGTERM stop is a normal
exit for a node). Read one with `python -m pstats`, or `bench/profile/top.py`.
Does nothing unless DYNAKV_PROFILE_DIR is set.
"""

from __future__ import annotations

import atexit
import cProfile
import os
import sys
from pathlib import Path


def _start(directory: Path) -> None:
    profiler = cProfile.Profile()

    def dump() -> None:
        profiler.disable()
        directory.mkdir(parents=True, exist_ok=True)
        profiler.dump_stats(str(directory / f"node-{os.getpid()}.prof"))

    atexit.register(dump)
    profiler.enable()


_directory = os.environ.get("DYNAKV_PROFILE_DIR")
if _directory and "serve" in sys.argv:
    _start(Path(_directory))
