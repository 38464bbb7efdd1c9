"""Consistency levels and how many replicas each needs.

``one``, ``quorum`` and ``all`` are Dynamo's tunable levels over the N
replicas of a key's preference list (sloppy: a fallback may stand in for a
home replica the detector holds down). ``strong`` is linearizable: per-key
Paxos (``core.paxos``, ``core.lwt``) over the key's home replicas only, never
fallbacks, so it needs a strict majority of them; the node runs it on its own
path (``node.strong``), never through the weak coordinator.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from dynakv.errors import InvalidRequest


class Consistency(StrEnum):
    ONE = "one"
    QUORUM = "quorum"
    ALL = "all"
    STRONG = "strong"

    def required(self, replicas: int) -> int:
        """Acks (writes) or replies (reads) needed out of ``replicas``; for ``strong``,
        the promises (and accepts) of a majority of the home replicas."""
        assert replicas >= 1
        if self is Consistency.ONE:
            return 1
        if self is Consistency.QUORUM or self is Consistency.STRONG:
            return replicas // 2 + 1
        return replicas


DEFAULT_CONSISTENCY = Consistency.QUORUM
# The levels the weak (Dynamo) coordinator serves; ``strong`` has its own path.
WEAK_LEVELS: Final = (Consistency.ONE, Consistency.QUORUM, Consistency.ALL)
_NAMES = ", ".join([*(level.value for level in Consistency), "session"])


def parse_consistency(text: str | None) -> Consistency:
    if text is None or text == "":
        return DEFAULT_CONSISTENCY
    try:
        return Consistency(text)
    except ValueError:
        raise InvalidRequest(
            f"consistency must be one of {_NAMES}; got {text!r}",
            field="consistency",
            allowed=[level.value for level in Consistency],
        ) from None
