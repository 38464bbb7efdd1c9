"""The session-guarantee checker: each guarantee accepted when kept and caught when broken,
with sibling (causal) and last-writer-wins versions, and a generated store that keeps them."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from dynakv.core.versions import VClock, clock_add_dot
from dynakv.sim.session_check import (
    Guarantee,
    SessionKind,
    SessionOp,
    added_dot,
    check_sessions,
)

K = b"k"


def read(client: str, clock: VClock, timestamp: int | None = None, key: bytes = K) -> SessionOp:
    return SessionOp(client, key, SessionKind.READ, clock, timestamp=timestamp)


def write(
    client: str,
    dot: tuple[str, int] | None,
    past: VClock = (),
    timestamp: int | None = None,
    ok: bool = True,
    key: bytes = K,
) -> SessionOp:
    return SessionOp(client, key, SessionKind.WRITE, past, dot, timestamp, ok)


def broken(*ops: SessionOp) -> list[Guarantee]:
    return [violation.guarantee for violation in check_sessions(ops).violations]


# --- read-your-writes ----------------------------------------------------------------


def test_reading_your_own_write_is_fine_and_missing_it_is_caught() -> None:
    assert broken(write("a", ("n1", 1)), read("a", (("n1", 1),))) == []
    assert broken(write("a", ("n1", 1)), read("a", ())) == [Guarantee.READ_YOUR_WRITES]
    # Another client's read may miss it: the guarantee is per session.
    assert broken(write("a", ("n1", 1)), read("b", ())) == []


def test_a_write_superseded_by_one_that_saw_it_counts_as_read() -> None:
    own = write("a", ("n1", 1))
    superseding = write("b", ("n2", 1), past=(("n1", 1),))
    sees_it = read("a", (("n1", 1), ("n2", 1)))
    assert broken(own, superseding, sees_it) == []
    # A read showing only the other write, without it in its past, missed a's write.
    assert broken(own, superseding, read("a", (("n2", 1),))) == [Guarantee.READ_YOUR_WRITES]


def test_under_lww_a_later_timestamp_supersedes_without_causality() -> None:
    own = write("a", ("n1", 1), timestamp=100)
    assert broken(own, read("a", (("n2", 1),), timestamp=150)) == []
    assert broken(own, read("a", (("n2", 1),), timestamp=50)) == [Guarantee.READ_YOUR_WRITES]


def test_a_write_of_unknown_outcome_promises_nothing() -> None:
    assert broken(write("a", ("n1", 1), ok=False), read("a", ())) == []
    assert broken(write("a", None, ok=False), read("a", ())) == []


def test_keys_are_separate_sessions() -> None:
    assert broken(write("a", ("n1", 1), key=b"x"), read("a", (), key=b"y")) == []


# --- monotonic reads -----------------------------------------------------------------


def test_reads_that_go_back_are_caught() -> None:
    newer, older = (("n1", 2),), (("n1", 1),)
    assert broken(read("a", older), read("a", newer)) == []
    assert broken(read("a", newer), read("a", older)) == [Guarantee.MONOTONIC_READS]
    # Against every earlier read, not just the last one.
    other = (("n2", 1),)
    both = (("n1", 2), ("n2", 1))
    assert broken(read("a", newer), read("a", both), read("a", other)) == [
        Guarantee.MONOTONIC_READS
    ]
    # Another client may be behind.
    assert broken(read("a", newer), read("b", older)) == []


def test_a_concurrent_version_is_not_at_least_an_earlier_one() -> None:
    assert broken(read("a", (("n1", 1),)), read("a", (("n2", 1),))) == [Guarantee.MONOTONIC_READS]
    # Under lww, a concurrent version with a later timestamp is newer.
    assert broken(read("a", (("n1", 1),), 10), read("a", (("n2", 1),), 12)) == []
    assert broken(read("a", (("n1", 1),), 12), read("a", (("n2", 1),), 10)) == [
        Guarantee.MONOTONIC_READS
    ]


def test_an_unsettled_read_does_not_raise_the_bar_for_later_reads() -> None:
    """A version fewer than a quorum held (a write of unknown outcome, read where it
    landed) may be missed by a later read: the documented limit of a session."""
    newer, older = (("n1", 2),), (("n1", 1),)
    unsettled = replace(read("a", newer), settled=False)
    assert broken(unsettled, read("a", older)) == []
    assert broken(read("a", newer), read("a", older)) == [Guarantee.MONOTONIC_READS]
    # It is itself held to the settled reads before it.
    assert broken(read("a", newer), replace(read("a", older), settled=False)) == [
        Guarantee.MONOTONIC_READS
    ]
    # And a write still has to supersede it (the token carried it).
    assert broken(replace(read("a", newer, 10), settled=False), write("a", None, past=older)) == [
        Guarantee.WRITES_FOLLOW_READS
    ]
    report = check_sessions([read("a", newer), replace(read("a", older), settled=False)])
    assert "(unsettled)" in report.explain()


# --- writes-follow-reads -------------------------------------------------------------


def test_a_write_must_supersede_what_its_client_read() -> None:
    seen = (("n1", 3),)
    assert broken(read("a", seen), write("a", ("n2", 1), past=seen)) == []
    assert broken(read("a", seen), write("a", ("n2", 1), past=())) == [
        Guarantee.WRITES_FOLLOW_READS
    ]
    # Unknown outcome or not, the write carried its past.
    assert broken(read("a", seen), write("a", None, past=(), ok=False)) == [
        Guarantee.WRITES_FOLLOW_READS
    ]
    # Under lww, a strictly later timestamp orders it after what was read.
    assert broken(read("a", seen, 10), write("a", ("n2", 1), timestamp=11)) == []
    assert broken(read("a", seen, 10), write("a", ("n2", 1), timestamp=10)) == [
        Guarantee.WRITES_FOLLOW_READS
    ]


# --- the report ----------------------------------------------------------------------


def test_only_the_chosen_guarantees_are_checked() -> None:
    ops = [write("a", ("n1", 1)), read("a", (("n1", 1),)), read("a", ())]
    assert broken(*ops) == [Guarantee.READ_YOUR_WRITES, Guarantee.MONOTONIC_READS]
    only = check_sessions(ops, frozenset({Guarantee.MONOTONIC_READS}))
    assert [v.guarantee for v in only.violations] == [Guarantee.MONOTONIC_READS]


def test_the_report_names_the_operation_and_its_place_in_the_session() -> None:
    ops = [read("b", ()), write("a", ("n1", 7)), read("b", ()), read("a", ())]
    report = check_sessions(ops)
    assert not report.ok
    assert (report.clients, report.operations) == (2, 4)
    (violation,) = report.violations
    assert violation.operation == ops[3]
    assert violation.position == 1
    text = report.explain()
    assert "read_your_writes: #1 a: read b'k'" in text
    assert "('n1', 7)" in text
    assert check_sessions([]).ok


# --- a generated store that keeps every guarantee ------------------------------------

steps = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c"]), st.sampled_from(["read", "write", "blind"])),
    max_size=40,
)


def run_store(plan: list[tuple[str, str]]) -> list[SessionOp]:
    """One replica that holds every write: reads see everything; a client's write
    carries the clock of its last read (a blind write carries it too, as a session must)."""
    clock: VClock = ()
    last_read: dict[str, VClock] = {}
    ops: list[SessionOp] = []
    for counter, (client, action) in enumerate(plan, start=1):
        if action == "read":
            ops.append(read(client, clock, timestamp=counter))
            last_read[client] = clock
        else:
            past = last_read.get(client, ())
            ops.append(write(client, ("n1", counter), past, timestamp=counter))
            clock = clock_add_dot(clock, "n1", counter)
    return ops


@settings(max_examples=150, deadline=None)
@given(plan=steps)
def test_a_store_that_holds_everything_keeps_every_guarantee(plan: list[tuple[str, str]]) -> None:
    report = check_sessions(run_store(plan))
    assert report.ok, report.explain()


@settings(max_examples=150, deadline=None)
@given(plan=steps, pick=st.integers(0, 1000))
def test_a_read_that_forgets_its_own_write_is_caught(
    plan: list[tuple[str, str]], pick: int
) -> None:
    ops = run_store(plan)
    # A read after one of its client's own writes: make it see nothing.
    targets = [
        i
        for i, op in enumerate(ops)
        if op.kind is SessionKind.READ
        and any(w.kind is SessionKind.WRITE and w.client == op.client for w in ops[:i])
    ]
    assume(targets)
    index = targets[pick % len(targets)]
    ops[index] = replace(ops[index], clock=(), timestamp=0)
    found = {v.guarantee for v in check_sessions(ops).violations}
    assert Guarantee.READ_YOUR_WRITES in found


def test_the_dot_a_write_adds_is_the_one_entry_that_grew() -> None:
    assert added_dot((), (("n1", 5),)) == ("n1", 5)
    assert added_dot((("n1", 5), ("n2", 3)), (("n1", 5), ("n2", 9))) == ("n2", 9)
    assert added_dot((("n1", 5),), (("n1", 5),)) is None  # nothing minted
    assert added_dot((), (("n1", 1), ("n2", 1))) is None  # two entries: not one write
