"""The coordinator's tallies: when a request is decided, and as what."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynakv.core.quorum import Outcome, ReadTally, Tally

REPLICAS = ("a", "b", "c")


def test_write_succeeds_at_w_acks() -> None:
    tally = Tally(REPLICAS, 2)
    assert tally.on_success("a") is Outcome.PENDING
    assert tally.on_success("b") is Outcome.SUCCEEDED
    # Later answers never change a decided outcome.
    assert tally.on_definite_failure("c") is Outcome.SUCCEEDED


def test_definite_failures_give_quorum_not_reached_with_acks() -> None:
    tally = Tally(REPLICAS, 2)
    tally.on_success("a")
    tally.on_definite_failure("b")
    assert tally.outcome() is Outcome.PENDING
    assert tally.on_definite_failure("c") is Outcome.FAILED
    assert tally.acked == 1


def test_a_timeout_makes_the_outcome_unknown_never_failed() -> None:
    tally = Tally(REPLICAS, 2)
    tally.on_success("a")
    tally.on_unknown_failure("b")
    assert tally.on_definite_failure("c") is Outcome.UNKNOWN


def test_deadline_turns_pending_replicas_unknown() -> None:
    tally = Tally(REPLICAS, 3)
    tally.on_success("a")
    assert tally.on_deadline() is Outcome.UNKNOWN


def test_reads_never_report_unknown() -> None:
    tally = ReadTally(REPLICAS, 2)
    tally.on_success("a")
    tally.on_unknown_failure("b")
    assert tally.on_unknown_failure("c") is Outcome.FAILED


def test_a_replica_answering_twice_is_a_bug() -> None:
    tally = Tally(REPLICAS, 2)
    tally.on_success("a")
    with pytest.raises(AssertionError):
        tally.on_success("a")


EVENTS = st.sampled_from(["ok", "definite", "unknown"])


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 3), st.lists(EVENTS, min_size=3, max_size=3), st.permutations(REPLICAS))
def test_outcome_matches_reference_model(
    required: int, events: list[str], order: list[str]
) -> None:
    tally = Tally(REPLICAS, required)
    first_decision = None
    for replica, event in zip(order, events, strict=True):
        outcome = {
            "ok": tally.on_success,
            "definite": tally.on_definite_failure,
            "unknown": tally.on_unknown_failure,
        }[event](replica)
        if outcome is not Outcome.PENDING and first_decision is None:
            first_decision = outcome
        if first_decision is not None:
            assert outcome is first_decision  # once decided, fixed
    # Reference: decided by the prefix at which success or impossibility first shows.
    acks = 0
    expected = Outcome.PENDING
    for index, event in enumerate(events):
        acks += event == "ok"
        remaining = len(events) - index - 1
        if acks >= required:
            expected = Outcome.SUCCEEDED
            break
        if acks + remaining < required:
            expected = Outcome.UNKNOWN if "unknown" in events[: index + 1] else Outcome.FAILED
            break
    assert tally.outcome() is expected
