"""Known product bugs the simulator tolerates and counts, each reported to its owner.

Each function recognises one known failure exactly (by its type, message or
the frame it came from), so ``workload`` can count it in the run's stats
instead of failing the run; anything else still fails. Remove a function
(and its use) once its bug is fixed. Must never: match more than the one
failure it names.
"""

from __future__ import annotations


def known_ring_install_race(error: BaseException) -> bool:
    """KNOWN, REPORTED: ``node.coordinator.Coordinator.write`` reads ``self.ring`` again
    after awaiting the local sync; a ring installed meanwhile gives fallbacks from the
    new ring beside the old preference list, and ``core.coordinator.WriteCoordination``
    asserts they are disjoint. The write was put locally (its outcome is unknown).
    Counted, not failed, until the coordinator takes one ring per write."""
    frames = []
    trace = error.__traceback__
    while trace is not None:
        frames.append(trace.tb_frame.f_code)
        trace = trace.tb_next
    return (
        isinstance(error, AssertionError)
        and bool(frames)
        and frames[-1].co_filename.endswith("core/coordinator.py")
        and frames[-1].co_name == "__init__"
        and "fallbacks" in frames[-1].co_varnames
    )


def known_unread_answer(error: str) -> bool:
    """KNOWN, REPORTED: ``StrongPath._send`` fails a call to a node the detector holds
    down at once, in a future whose exception nobody reads when the operation has
    already ended (the same issue as ``cluster._AnswersRead``, on a future that never
    reaches the network). Counted, not failed, until ``node/strong.py`` reads it."""
    return error.startswith("Future exception was never retrieved: PeerUnreachable(") and (
        "the detector holds it down" in error
    )
