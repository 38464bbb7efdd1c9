"""``dynakv.sim``: a whole dynakv cluster in one process, in virtual time, per seed.

``loop`` (the virtual-time event loop and the trace hash), ``network`` (the
seeded in-memory network with faults), ``disk`` (simulated storage and
fsync: what survives a crash), ``cluster`` (each node the real one, wired by
``node.assembly``: replica, coordinator, membership, ring changes, hinted
handoff, anti-entropy, acceptor, strong path, sweeper), ``observed`` (the
writes replicas mint), ``workload`` (clients, the fault schedule, the
phases), ``ring_change_clients`` (join, leave and remove during a run),
``liveness`` (the checks after healing), ``causal_check`` and
``strong_clients`` (the checkers; the latter feeds ``linearizability``),
``strong_bugs`` and ``node_bugs`` (planted bugs). Entry point:
``dynakv sim --seed N`` or ``python -m dynakv.sim --seed N`` (``cli``); see
docs/simulation.md.
"""

from dynakv.sim.workload import SimConfig, SimResult, run_seed

__all__ = ["SimConfig", "SimResult", "run_seed"]
