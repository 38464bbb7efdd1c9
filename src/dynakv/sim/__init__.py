"""``dynakv.sim``: a whole dynakv cluster in one process, in virtual time, per seed.

``loop`` (the virtual-time event loop and the trace hash), ``network`` (the
seeded in-memory network with faults), ``cluster`` (nodes running the real
``Coordinator`` and ``LocalReplica`` over simulated storage and fsync) and
``workload`` (clients, the fault schedule and the checkers). Entry point:
``python -m dynakv.sim --seed N``; see docs/simulation.md.
"""

from dynakv.sim.workload import SimConfig, SimResult, run_seed

__all__ = ["SimConfig", "SimResult", "run_seed"]
