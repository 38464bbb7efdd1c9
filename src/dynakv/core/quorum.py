"""Quorum tallies for the coordinator: when a read or write is decided, and how.

A tally is a small state machine over the replicas of one request. The shell
feeds it events (an ack, a reply, a definite failure, a timeout) and asks
``outcome()``; it never does I/O and never reads a clock.

Write outcomes:

- ``SUCCEEDED`` once ``required`` replicas acknowledged durably.
- ``FAILED`` (``QuorumNotReached``) once quorum can no longer be reached and
  every failure was *definite* (the request never reached that replica, or it
  refused). Dynamo semantics: no rollback, so ``acked`` replicas keep it.
- ``UNKNOWN`` (``OutcomeUnknown``) once quorum can no longer be reached and
  some replica *may* have applied it (its reply timed out). Never "failed".

Read outcomes: ``SUCCEEDED`` once ``required`` replies arrived (the merge is
the caller's), ``FAILED`` once that can no longer happen.

During a ring change a write is decided by a ``JointTally``: ``required``
acknowledgements among the old preference list *and* among the new one (the
joint quorum), so a quorum read by either ring's lists meets the write.

Invariants: each replica reports at most once; the outcome, once decided,
never changes.
"""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UNKNOWN = "unknown"


class Tally:
    """Counts answers from a fixed set of replicas against a required number."""

    __slots__ = (
        "_decided",
        "_definite_failures",
        "_maybe_applied",
        "_pending",
        "_succeeded",
        "replicas",
        "required",
    )

    def __init__(self, replicas: tuple[str, ...], required: int) -> None:
        assert len(set(replicas)) == len(replicas), replicas
        assert required >= 1, required
        self.replicas = replicas
        self.required = required
        self._pending = set(replicas)
        self._succeeded: list[str] = []
        self._definite_failures: list[str] = []
        self._maybe_applied: list[str] = []
        self._decided = Outcome.PENDING

    @property
    def acked(self) -> int:
        return len(self._succeeded)

    @property
    def pending(self) -> frozenset[str]:
        return frozenset(self._pending)

    def add(self, replica: str) -> None:
        """Ask one more replica (a fallback standing in for a failed home replica);
        call before reporting the failure it replaces, so quorum stays reachable."""
        assert replica not in self.replicas, (replica, self.replicas)
        assert self._decided is Outcome.PENDING, "a decided tally takes no one new"
        self.replicas = (*self.replicas, replica)
        self._pending.add(replica)

    def on_success(self, replica: str) -> Outcome:
        self._take(replica)
        self._succeeded.append(replica)
        return self._update()

    def on_definite_failure(self, replica: str) -> Outcome:
        """The replica certainly did not apply it (unreachable, or it refused)."""
        self._take(replica)
        self._definite_failures.append(replica)
        return self._update()

    def on_unknown_failure(self, replica: str) -> Outcome:
        """No answer in time: the replica may or may not have applied it."""
        self._take(replica)
        self._maybe_applied.append(replica)
        return self._update()

    def on_deadline(self) -> Outcome:
        """The request's deadline passed: every replica still pending is unknown."""
        for replica in sorted(self._pending):
            self.on_unknown_failure(replica)
        if self._decided is Outcome.PENDING:
            # Only possible with required > len(replicas), which callers rule out.
            raise AssertionError("a tally with nothing pending must be decided")
        return self._decided

    def outcome(self) -> Outcome:
        return self._decided

    def _take(self, replica: str) -> None:
        assert replica in self.replicas, (replica, self.replicas)
        assert replica in self._pending, f"{replica} answered twice"
        self._pending.discard(replica)

    def _update(self) -> Outcome:
        if self._decided is not Outcome.PENDING:
            return self._decided
        if len(self._succeeded) >= self.required:
            self._decided = Outcome.SUCCEEDED
        elif len(self._succeeded) + len(self._pending) < self.required:
            self._decided = Outcome.UNKNOWN if self._maybe_applied else Outcome.FAILED
        return self._decided


class ReadTally(Tally):
    """A read cannot half-apply: a timeout is a plain failure to reach R replies.

    ``counted``: when given, only replies from these replicas (the home replicas) count
    toward R; the others (fallbacks standing in for home replicas held down) are asked
    for what they hold, but R fallbacks that never took a write must not outvote it."""

    __slots__ = ("counted",)

    def __init__(
        self, replicas: tuple[str, ...], required: int, counted: frozenset[str] | None = None
    ) -> None:
        super().__init__(replicas, required)
        assert counted is None or counted <= set(replicas), (counted, replicas)
        self.counted = counted

    def _update(self) -> Outcome:
        counted = self.counted
        if counted is None:
            super()._update()
        elif self._decided is Outcome.PENDING:
            acked = sum(1 for replica in self._succeeded if replica in counted)
            if acked >= self.required:
                self._decided = Outcome.SUCCEEDED
            elif acked + len(self._pending & counted) < self.required:
                self._decided = Outcome.FAILED
        if self._decided is Outcome.UNKNOWN:
            self._decided = Outcome.FAILED
        return self._decided


class JointTally(Tally):
    """A write during a ring change: every group (the old list, the new list) needs its
    own count of acks. It fails once any group can no longer reach its count."""

    __slots__ = ("groups",)

    def __init__(self, replicas: tuple[str, ...], groups: tuple[tuple[frozenset[str], int], ...]):
        assert groups, "a joint tally needs at least one group"
        for members, needed in groups:
            assert members <= set(replicas) and needed >= 1, (members, needed)
        super().__init__(replicas, max(needed for _, needed in groups))
        self.groups = groups

    def _update(self) -> Outcome:
        if self._decided is not Outcome.PENDING:
            return self._decided
        acked = set(self._succeeded)
        if all(len(acked & members) >= needed for members, needed in self.groups):
            self._decided = Outcome.SUCCEEDED
        elif any(
            len(acked & members) + len(self._pending & members) < needed
            for members, needed in self.groups
        ):
            self._decided = Outcome.UNKNOWN if self._maybe_applied else Outcome.FAILED
        return self._decided
