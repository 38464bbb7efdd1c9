"""Consistency levels and how many replicas each needs.

``one``, ``quorum`` and ``all`` are Dynamo's tunable levels over the N
replicas of a key's preference list. ``strong`` (linearizable, strict quorum)
is reserved for the consensus issue and rejected until it exists.
"""

from __future__ import annotations

from enum import StrEnum

from dynakv.errors import InvalidRequest


class Consistency(StrEnum):
    ONE = "one"
    QUORUM = "quorum"
    ALL = "all"

    def required(self, replicas: int) -> int:
        """Acks (writes) or replies (reads) needed out of ``replicas``."""
        assert replicas >= 1
        if self is Consistency.ONE:
            return 1
        if self is Consistency.QUORUM:
            return replicas // 2 + 1
        return replicas


DEFAULT_CONSISTENCY = Consistency.QUORUM
_NAMES = ", ".join(level.value for level in Consistency)


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
