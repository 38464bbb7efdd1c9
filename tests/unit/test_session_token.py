"""core.session: the token's bounds and codec, which replica may answer, and
(property) that a token never forgets a key's requirement without saying so."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynakv.core import session
from dynakv.core.idempotency import idempotency_hash, parse_idempotency_key
from dynakv.core.record import ConflictPolicy, Record, RecordBounds, Sibling
from dynakv.core.session import (
    CLOCK_ENTRIES_MAX,
    EMPTY_SESSION,
    KEYS_MAX,
    TOKEN_CHARS_MAX,
    SessionEntry,
    SessionToken,
    decode_session,
    encode_session,
    entry_for,
    needs_quorum,
    observe,
    read_candidates,
    requirement,
    satisfies,
    session_bounds_problem,
    session_key_hash,
)
from dynakv.core.versions import VClock, clock_descends, clock_join
from dynakv.errors import InvalidRequest

NODES = ["a", "b", "c"]


def record_with(clock: VClock, timestamp: int) -> Record:
    """A one-sibling record whose clock is ``clock`` (its last entry is the dot)."""
    *past, (node, counter) = clock
    return Record((Sibling(b"v", node, counter, tuple(past), timestamp),))


def test_a_new_session_needs_nothing_and_any_replica_answers() -> None:
    assert decode_session(None) == EMPTY_SESSION == decode_session(b"")
    entry = requirement(EMPTY_SESSION, 7)
    assert satisfies(None, entry, ConflictPolicy.SIBLINGS)
    assert not needs_quorum(EMPTY_SESSION, 7)


def test_a_replica_answers_only_once_it_holds_what_the_session_saw() -> None:
    token = observe(EMPTY_SESSION, 7, (("a", 3), ("b", 2)), timestamp=100)
    entry = requirement(token, 7)
    policy = ConflictPolicy.SIBLINGS
    assert not satisfies(None, entry, policy)
    assert not satisfies(record_with((("a", 3),), 90), entry, policy)
    assert satisfies(record_with((("a", 3), ("b", 2)), 100), entry, policy)
    assert satisfies(record_with((("a", 4), ("b", 5)), 120), entry, policy)
    # lww: a newer winner that never saw b:2 is still newer than what was seen.
    newer = record_with((("a", 5),), 101)
    assert not satisfies(newer, entry, ConflictPolicy.SIBLINGS)
    assert satisfies(newer, entry, ConflictPolicy.LWW)
    assert not satisfies(record_with((("a", 5),), 100), entry, ConflictPolicy.LWW)


def test_observing_joins_and_moves_the_key_to_the_most_recent() -> None:
    token = observe(EMPTY_SESSION, 1, (("a", 1),), 10)
    token = observe(token, 2, (("b", 1),), 20)
    token = observe(token, 1, (("b", 4),), 5)
    assert [e.key_hash for e in token.entries] == [2, 1]
    assert entry_for(token, 1) == SessionEntry(1, (("a", 1), ("b", 4)), 10)
    assert token.max_timestamp == 20 and not token.evicted
    assert decode_session(encode_session(token).encode()) == token


def test_past_the_bound_the_oldest_keys_are_evicted_and_the_token_says_so() -> None:
    token = EMPTY_SESSION
    for key_hash in range(KEYS_MAX + 5):
        token = observe(token, key_hash, (("a", key_hash + 1), ("b", 1)), key_hash)
    assert len(token.entries) == KEYS_MAX and token.evicted
    assert entry_for(token, 0) is None and entry_for(token, KEYS_MAX + 4) is not None
    assert needs_quorum(token, 0), "a forgotten key may have been seen: quorum"
    assert not needs_quorum(token, KEYS_MAX + 4)
    assert len(encode_session(token)) <= TOKEN_CHARS_MAX
    big = tuple((f"node-{n:03d}", 1) for n in range(CLOCK_ENTRIES_MAX + 1))
    bigger = observe(EMPTY_SESSION, 9, big, 1)
    assert bigger.evicted and entry_for(bigger, 9) is None


def test_long_node_ids_shrink_the_token_to_its_byte_bound() -> None:
    token = EMPTY_SESSION
    for key_hash in range(KEYS_MAX):
        clock = tuple((f"{'n' * 60}{n}", 1 << 40) for n in range(4))
        token = observe(token, key_hash, clock, 1 << 40)
    assert len(encode_session(token)) <= TOKEN_CHARS_MAX
    assert token.evicted and len(token.entries) < KEYS_MAX


@pytest.mark.parametrize(
    "raw",
    [
        b"%%%",
        base64.urlsafe_b64encode(b"\x09junk"),
        base64.urlsafe_b64encode(b"\x01\x93\x91\x93\x01\x91\x92\xa1b\x01\x05\x00\xc2"),
        b"A" * (TOKEN_CHARS_MAX + 1),
    ],
    ids=["not-base64", "format", "timestamp-past-newest", "too-long"],
)
def test_a_bad_token_is_a_400_naming_the_header(raw: bytes) -> None:
    with pytest.raises(InvalidRequest) as caught:
        decode_session(raw)
    assert caught.value.facts()["field"] == "X-Dynakv-Session"


def test_a_token_from_a_clock_far_ahead_is_refused() -> None:
    bounds = RecordBounds(clock_offset_ms_max=1000)
    token = observe(EMPTY_SESSION, 1, (("a", 1),), (10_000 << 16))
    assert session_bounds_problem(token, bounds, now_ms=9_500) is None
    assert session_bounds_problem(token, bounds, now_ms=1_000) is not None


def test_the_local_replica_is_asked_first_then_the_next_live_one() -> None:
    preference = ("a", "b", "c")
    assert read_candidates(preference, "b", frozenset()) == ("b", "a")
    assert read_candidates(preference, "z", frozenset({"a"})) == ("b", "c")
    assert read_candidates(preference, "z", frozenset({"a", "b", "c"})) == ()


def test_idempotency_key_rules() -> None:
    assert parse_idempotency_key(None) == 0
    assert parse_idempotency_key(b"abc-123") == idempotency_hash(b"abc-123") != 0
    assert parse_idempotency_key(b" abc-123 ") == idempotency_hash(b"abc-123")
    assert idempotency_hash(b"x") != idempotency_hash(b"y")
    for bad in (b"", b"a b", b"a, b", b"x" * 129, "é".encode()):
        with pytest.raises(InvalidRequest) as caught:
            parse_idempotency_key(bad)
        assert caught.value.facts()["field"] == "Idempotency-Key"


# --- property: the token never loses a requirement silently ---------------------------------

clocks = st.dictionaries(st.sampled_from(NODES), st.integers(1, 50), max_size=3).map(
    lambda d: tuple(sorted(d.items()))
)
observations = st.lists(
    st.tuples(st.integers(0, KEYS_MAX + 20), clocks, st.integers(0, 1000)), max_size=300
)


@settings(max_examples=150, deadline=None)
@given(observations)
def test_a_token_requires_at_least_what_was_seen_unless_it_says_it_evicted(
    seen: list[tuple[int, VClock, int]],
) -> None:
    """Reference model: per key, the join of every clock seen and the max timestamp."""
    token = EMPTY_SESSION
    model: dict[int, tuple[VClock, int]] = {}
    for key_hash, clock, timestamp in seen:
        token = observe(token, key_hash, clock, timestamp)
        old_clock, old_ts = model.get(key_hash, ((), 0))
        model[key_hash] = (clock_join(old_clock, clock), max(old_ts, timestamp))
        assert decode_session(encode_session(token).encode()) == token
    assert len(token.entries) <= KEYS_MAX
    assert len({e.key_hash for e in token.entries}) == len(token.entries)
    assert token.max_timestamp == max((ts for _, ts in model.values()), default=0)
    for key_hash, (clock, timestamp) in model.items():
        entry = entry_for(token, key_hash)
        if entry is None:
            # Dropped only with the flag set (so reads of it go to a quorum), or
            # never worth keeping (nothing seen).
            assert token.evicted or (not clock and timestamp == 0)
            continue
        assert entry.clock == clock and entry.timestamp == timestamp
        # A replica that holds exactly what was seen answers; one that lacks a dot does not.
        if clock:
            assert satisfies(record_with(clock, timestamp), entry, ConflictPolicy.SIBLINGS)
            node, counter = clock[-1]
            if counter > 1:
                lacking = (*clock[:-1], (node, counter - 1))
                assert clock_descends(clock, lacking)
                assert not satisfies(
                    record_with(lacking, timestamp), entry, ConflictPolicy.SIBLINGS
                )


def test_a_token_keeps_the_most_recent_keys() -> None:
    token = EMPTY_SESSION
    for key_hash in range(KEYS_MAX * 2):
        token = observe(token, key_hash, (("a", 1),), 1)
    assert [e.key_hash for e in token.entries] == list(range(KEYS_MAX, KEYS_MAX * 2))
    assert isinstance(token, SessionToken)
    assert session_key_hash(b"k") == session_key_hash(b"k") != session_key_hash(b"l")


def test_observing_nothing_new_returns_the_same_token_in_the_same_order() -> None:
    token = session.EMPTY_SESSION
    for key_hash, counter in ((1, 5), (2, 7)):
        token = session.observe(token, key_hash, (("n1", counter),), 100 + counter)
    again = session.observe(token, 1, (("n1", 3),), 90)  # older than what it saw of key 1
    assert again is token and [e.key_hash for e in again.entries] == [1, 2]
    newer = session.observe(token, 1, (("n1", 6),), 90)
    assert newer is not token and [e.key_hash for e in newer.entries] == [2, 1]


def test_decoded_tokens_are_memoized_within_a_bound_and_bad_ones_never() -> None:
    raws = [
        session.encode_session(
            session.observe(session.EMPTY_SESSION, i, (("n1", i + 1),), 10)
        ).encode()
        for i in range(session.DECODED_MAX + 5)
    ]
    first = session.decode_session(raws[0])
    assert session.decode_session(raws[0]) is first  # memoized
    for raw in raws:
        assert session.decode_session(raw).entries[0].key_hash == raws.index(raw)
    assert len(session._decoded) <= session.DECODED_MAX
    assert session.decode_session(raws[0]) == first  # evicted, decoded again: equal
    for _ in range(2):
        with pytest.raises(InvalidRequest):
            session.decode_session(b"!!not-base64!!")
    assert b"!!not-base64!!" not in session._decoded
