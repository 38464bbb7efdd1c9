"""Vector clocks against a dict reference model, and the hybrid logical clock's promises."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dynakv.core.versions import (
    EMPTY_CLOCK,
    LOGICAL_BITS,
    Hlc,
    VClock,
    clock_add_dot,
    clock_concurrent,
    clock_descends,
    clock_from_mapping,
    clock_get,
    clock_join,
    covers,
    hlc_physical_ms,
    is_canonical,
)

FAST = settings(max_examples=150, deadline=None)
NODES = ["a", "b", "c", "d"]

# The reference model: a plain dict node -> counter, absent meaning 0.
models = st.dictionaries(st.sampled_from(NODES), st.integers(0, 4), max_size=len(NODES))


def model_of(clock: VClock) -> dict[str, int]:
    return dict(clock)


def model_get(model: dict[str, int], node_id: str) -> int:
    return model.get(node_id, 0)


def model_join(*models_in: dict[str, int]) -> dict[str, int]:
    joined: dict[str, int] = {}
    for model in models_in:
        for node_id, counter in model.items():
            joined[node_id] = max(joined.get(node_id, 0), counter)
    return {node_id: counter for node_id, counter in joined.items() if counter > 0}


def model_descends(a: dict[str, int], b: dict[str, int]) -> bool:
    return all(model_get(a, node_id) >= model_get(b, node_id) for node_id in NODES)


clocks = models.map(clock_from_mapping)


@FAST
@given(model=models)
def test_clock_from_mapping_is_canonical_and_faithful(model: dict[str, int]) -> None:
    clock = clock_from_mapping(model)
    assert is_canonical(clock)
    assert model_of(clock) == {n: c for n, c in model.items() if c > 0}
    assert all(clock_get(clock, node_id) == model_get(model, node_id) for node_id in NODES)


@FAST
@given(a=models, b=models, c=models)
def test_join_matches_the_model(a: dict[str, int], b: dict[str, int], c: dict[str, int]) -> None:
    joined = clock_join(clock_from_mapping(a), clock_from_mapping(b), clock_from_mapping(c))
    assert is_canonical(joined)
    assert model_of(joined) == model_join(a, b, c)


@FAST
@given(a=clocks, b=clocks, c=clocks)
def test_join_is_a_semilattice(a: VClock, b: VClock, c: VClock) -> None:
    assert clock_join(a, b) == clock_join(b, a)
    assert clock_join(clock_join(a, b), c) == clock_join(a, clock_join(b, c))
    assert clock_join(a, a) == a
    assert clock_join(a, EMPTY_CLOCK) == a
    assert clock_join() == EMPTY_CLOCK


@FAST
@given(a=clocks, b=clocks, c=clocks)
def test_join_is_the_least_upper_bound(a: VClock, b: VClock, c: VClock) -> None:
    joined = clock_join(a, b)
    assert clock_descends(joined, a)
    assert clock_descends(joined, b)
    if clock_descends(c, a) and clock_descends(c, b):
        assert clock_descends(c, joined)


@FAST
@given(a=models, b=models)
def test_descends_and_concurrent_match_the_model(a: dict[str, int], b: dict[str, int]) -> None:
    clock_a, clock_b = clock_from_mapping(a), clock_from_mapping(b)
    assert clock_descends(clock_a, clock_b) == model_descends(a, b)
    expected_concurrent = not model_descends(a, b) and not model_descends(b, a)
    assert clock_concurrent(clock_a, clock_b) == expected_concurrent


@FAST
@given(a=clocks, b=clocks, c=clocks)
def test_descends_is_a_partial_order(a: VClock, b: VClock, c: VClock) -> None:
    assert clock_descends(a, a)
    assert clock_descends(a, EMPTY_CLOCK)
    if clock_descends(a, b) and clock_descends(b, a):
        assert a == b  # antisymmetric, because clocks are canonical
    if clock_descends(a, b) and clock_descends(b, c):
        assert clock_descends(a, c)


@FAST
@given(clock=clocks, node_id=st.sampled_from(NODES), counter=st.integers(1, 6))
def test_add_dot_and_covers(clock: VClock, node_id: str, counter: int) -> None:
    with_dot = clock_add_dot(clock, node_id, counter)
    assert is_canonical(with_dot)
    assert covers(with_dot, node_id, counter)
    assert clock_descends(with_dot, clock)
    assert covers(clock, node_id, counter) == (model_get(model_of(clock), node_id) >= counter)
    assert clock_get(with_dot, node_id) == max(clock_get(clock, node_id), counter)


@FAST
@given(
    entries=st.lists(st.tuples(st.sampled_from(NODES), st.integers(-1, 3)), max_size=5),
)
def test_is_canonical_rejects_unsorted_duplicate_and_non_positive(
    entries: list[tuple[str, int]],
) -> None:
    ids = [node_id for node_id, _ in entries]
    expected = ids == sorted(set(ids)) and all(counter > 0 for _, counter in entries)
    assert is_canonical(entries) == expected


# --- hybrid logical clock ----------------------------------------------------------------

wall_times_ms = st.integers(0, 2_000_000_000_000)
hlc_events = st.lists(
    st.one_of(
        st.tuples(st.just("tick"), wall_times_ms),
        st.tuples(st.just("observe"), st.integers(0, 2_000_000_000_000 << LOGICAL_BITS)),
        # Bursts in one millisecond exercise the logical counter.
        st.tuples(st.just("burst"), st.integers(0, 5)),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(start=st.integers(0, 1 << 60), events=hlc_events)
def test_hlc_is_monotonic_and_passes_everything_it_observed(
    start: int, events: list[tuple[str, int]]
) -> None:
    hlc = Hlc(start)
    last_tick = start
    observed_max = 0
    last_wall_ms = 0
    for kind, argument in events:
        if kind == "observe":
            hlc.observe(argument)
            observed_max = max(observed_max, argument)
            assert hlc.last >= argument
            continue
        wall_ms = argument if kind == "tick" else last_wall_ms
        for _ in range(1 if kind == "tick" else argument + 1):
            timestamp = hlc.tick(wall_ms)
            assert timestamp > last_tick, "never goes backwards, whatever the wall clock does"
            assert timestamp > observed_max, "beats every timestamp it has observed"
            assert hlc_physical_ms(timestamp) >= wall_ms, "never behind the wall clock"
            assert hlc.last == timestamp
            last_tick = timestamp
        last_wall_ms = wall_ms


@FAST
@given(wall_ms=wall_times_ms, remote_timestamp=st.integers(0, 1 << 60))
def test_observe_then_tick_is_greater_than_observed(wall_ms: int, remote_timestamp: int) -> None:
    hlc = Hlc()
    hlc.observe(remote_timestamp)
    assert hlc.tick(wall_ms) > remote_timestamp


def test_logical_overflow_carries_into_the_next_millisecond() -> None:
    hlc = Hlc()
    first = hlc.tick(7)
    stamps = [hlc.tick(7) for _ in range(1 << LOGICAL_BITS)]
    assert stamps == sorted(set(stamps))
    assert hlc_physical_ms(first) == 7
    assert hlc_physical_ms(stamps[-1]) == 8
