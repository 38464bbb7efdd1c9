"""``python -m dynakv.sim``: the ``dynakv sim`` command (``sim/cli.py``) without the
top-level CLI. Owns nothing else."""

from __future__ import annotations

from dynakv.sim.cli import sim_command

if __name__ == "__main__":
    sim_command(prog_name="python -m dynakv.sim")
