"""The linearizability checker against generated histories and a brute-force reference.

1. Histories made by running a sequential register at a point inside each
   operation's interval (clients overlapping at random, some writes of
   unknown outcome landing late or never) are always linearizable.
2. Changing one read of such a history to a value it cannot have seen (never
   written; written only after the read returned; overwritten by a completed
   write before the read began) is always caught.
3. On small arbitrary histories, the verdict equals a brute-force search over
   every order, every subset of the unknown writes and every assignment of
   etags to the writes whose etag the client never got.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import product

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from dynakv.sim.linearizability import (
    ABSENT_ETAG,
    Kind,
    Operation,
    Status,
    Verdict,
    check_history,
    check_key,
)

FAST = settings(max_examples=100, deadline=None)
KINDS = (Kind.GET, Kind.PUT, Kind.DELETE, Kind.CAS_PUT, Kind.CAS_DELETE, Kind.CREATE)
KIND_WEIGHTS = (40, 25, 5, 15, 5, 10)
WRITES = frozenset({Kind.PUT, Kind.CAS_PUT, Kind.CREATE})


@dataclass
class _Planned:
    client: str
    key: bytes
    kind: Kind
    invoke_ns: int
    return_ns: int
    point_ns: int
    unknown: bool


def generate(
    rng: random.Random,
    ops: int,
    keys: int,
    clients: int,
    unknown_one_in: int = 10,
    unreported_one_in: int = 5,
) -> list[Operation]:
    """A linearizable history: each client's operations one after another, each
    taking effect at a point inside its interval (an unknown write: any time after
    its invocation, or never)."""
    planned: list[_Planned] = []
    clock = dict.fromkeys(range(clients), 0)
    for _ in range(ops):
        client = rng.randrange(clients)
        kind = rng.choices(KINDS, KIND_WEIGHTS)[0]
        invoke = clock[client] + rng.randint(0, 5)
        end = invoke + rng.randint(0, 30)
        # (hypothesis's random() leans to 0: count down from the top instead)
        unknown = kind is not Kind.GET and rng.randrange(unknown_one_in) == unknown_one_in - 1
        point = rng.randint(invoke, end + (100 if unknown else 0))
        key = f"k{rng.randrange(keys)}".encode()
        planned.append(_Planned(f"c{client}", key, kind, invoke, end, point, unknown))
        clock[client] = end + 1
    order = sorted(range(len(planned)), key=lambda i: (planned[i].point_ns, i))
    state: dict[bytes, tuple[bytes, str] | None] = {}
    given: dict[bytes, list[str]] = {}
    history: list[Operation | None] = [None] * len(planned)
    for index in order:
        reported = rng.randrange(unreported_one_in) != unreported_one_in - 1
        history[index] = _run(rng, planned[index], index, reported, state, given)
    return [op for op in history if op is not None]


def _run(
    rng: random.Random,
    plan: _Planned,
    index: int,
    reported: bool,
    state: dict[bytes, tuple[bytes, str] | None],
    given: dict[bytes, list[str]],
) -> Operation:
    """Apply one operation to the register at its point; what its client saw.
    ``given``: per key, the etags clients were given (the only ones they name)."""
    current = state.get(plan.key)
    known = given.setdefault(plan.key, [])
    if plan.kind is Kind.GET:
        if current is None:
            return Operation(plan.client, plan.key, plan.kind, plan.invoke_ns, plan.return_ns)
        if reported and current[1] not in known:
            known.append(current[1])
        seen = (current[0], current[1] if reported else None)
        return Operation(
            plan.client, plan.key, plan.kind, plan.invoke_ns, plan.return_ns, *_ok(seen)
        )
    value, etag = f"v{index}".encode(), f"e{index}"
    expected = None
    if plan.kind in (Kind.CAS_PUT, Kind.CAS_DELETE):
        if current is not None and current[1] in known and rng.random() < 0.6:
            expected = current[1]
        else:
            expected = rng.choice(known or ["never-given"])
        allowed = current is not None and current[1] == expected
    elif plan.kind is Kind.CREATE:
        allowed = current is None
    else:
        allowed = True
    if plan.unknown:
        applied = allowed and rng.random() < 0.5
        status, reply_etag = Status.UNKNOWN, None
    elif allowed:
        applied, status, reply_etag = True, Status.OK, etag
    else:
        applied, status = False, Status.PRECONDITION_FAILED
        reply_etag = (ABSENT_ETAG if current is None else current[1]) if reported else None
    if applied:
        state[plan.key] = (value, etag) if plan.kind in WRITES else None
    if reply_etag not in (None, ABSENT_ETAG) and reply_etag not in known:
        known.append(reply_etag)
    if plan.kind not in WRITES:
        value = b""
    if status is Status.PRECONDITION_FAILED:
        value = b""
    elif plan.kind not in WRITES:
        reply_etag = None
    return Operation(
        plan.client,
        plan.key,
        plan.kind,
        plan.invoke_ns,
        None if plan.unknown else plan.return_ns,
        status,
        value=value or None,
        expected_etag=expected,
        etag=reply_etag,
    )


def _ok(seen: tuple[bytes | None, str | None]) -> tuple[Status, bytes | None, None, str | None]:
    return (Status.OK, seen[0], None, seen[1])


# --- 1 and 2: generated histories ----------------------------------------------------


@FAST
@given(rng=st.randoms(use_true_random=False), ops=st.integers(1, 60), keys=st.integers(1, 3))
def test_generated_histories_are_linearizable(rng: random.Random, ops: int, keys: int) -> None:
    history = generate(rng, ops, keys, clients=5)
    report = check_history(history)
    assert report.ok, report.explain()
    shuffled = list(history)
    rng.shuffle(shuffled)
    assert check_history(shuffled) == report


def _impossible_reads(history: Sequence[Operation]) -> list[tuple[int, bytes]]:
    """(read, value) pairs that no linearization can explain: a value never written;
    one written only after the read returned; one that a completed write overwrote
    (both writes definite and one after the other) before the read began."""
    writes = [
        op for op in history if op.kind in WRITES and op.status is not Status.PRECONDITION_FAILED
    ]
    completed = [op for op in history if op.kind is not Kind.GET and op.status is Status.OK]
    found: list[tuple[int, bytes]] = []
    for index, read in enumerate(history):
        if read.kind is not Kind.GET:
            continue
        found.append((index, b"never-written"))
        for write in writes:
            assert write.value is not None
            if write.key == read.key and (
                _after(read, write) or any(_between(write, later, read) for later in completed)
            ):
                found.append((index, write.value))
    return found


def _after(first: Operation, second: Operation) -> bool:
    """Did ``first`` return before ``second`` was invoked?"""
    return first.status is not Status.UNKNOWN and (first.return_ns or 0) < second.invoke_ns


def _between(write: Operation, later: Operation, read: Operation) -> bool:
    return (
        write.status is Status.OK
        and later is not write
        and later.key == read.key
        and _after(write, later)
        and _after(later, read)
    )


@FAST
@given(
    rng=st.randoms(use_true_random=False),
    ops=st.integers(2, 60),
    keys=st.integers(1, 3),
    pick=st.integers(0, 10_000),
)
def test_an_impossible_read_is_caught(rng: random.Random, ops: int, keys: int, pick: int) -> None:
    history = generate(rng, ops, keys, clients=5)
    candidates = _impossible_reads(history)
    assume(candidates)
    index, value = candidates[pick % len(candidates)]
    assume(history[index].value != value)
    history[index] = replace(history[index], value=value, etag=None)
    report = check_history(history)
    assert report.verdict is Verdict.VIOLATION, (index, value)
    (bad,) = report.violations()
    assert bad.key == history[index].key


# --- 3: a brute-force reference ------------------------------------------------------


def reference_linearizable(operations: Sequence[Operation]) -> bool:
    """Try every order, every subset of unknown writes, every etag for blank writes."""
    ops = [op for op in operations if not (op.kind is Kind.GET and op.status is Status.UNKNOWN)]
    makes = [
        i
        for i, op in enumerate(ops)
        if op.kind in WRITES and op.status is not Status.PRECONDITION_FAILED
    ]
    known = [ops[i].etag for i in makes if ops[i].etag is not None]
    if len(set(known)) < len(known):
        return False
    mentioned = {
        e for op in ops for e in (op.etag, op.expected_etag) if e not in (None, ABSENT_ETAG)
    }
    options = [*sorted(mentioned - set(known)), None]  # None: one no client ever saw
    blank = [i for i in makes if ops[i].etag is None]
    for choice in product(options, repeat=len(blank)):
        named = [etag for etag in choice if etag is not None]
        if len(set(named)) < len(named):
            continue
        etags = {i: ops[i].etag or f"unseen-{i}" for i in makes}
        etags.update({i: etag or f"unseen-{i}" for i, etag in zip(blank, choice, strict=True)})
        if _orders(ops, etags, frozenset(range(len(ops))), None):
            return True
    return False


def _orders(
    ops: list[Operation], etags: dict[int, str], remaining: frozenset[int], current: int | None
) -> bool:
    if all(ops[i].status is Status.UNKNOWN for i in remaining):
        return True  # the rest may never take effect
    for i in remaining:
        if any(_returned(ops[j]) < ops[i].invoke_ns for j in remaining):
            continue  # something that returned before it was invoked is still to go
        rest = remaining - {i}
        if ops[i].status is Status.UNKNOWN and _orders(ops, etags, rest, current):
            return True
        ok, after = _apply(ops, etags, i, current)
        if ok and _orders(ops, etags, rest, after):
            return True
    return False


def _returned(op: Operation) -> float:
    return float("inf") if op.status is Status.UNKNOWN or op.return_ns is None else op.return_ns


def _apply(
    ops: list[Operation], etags: dict[int, str], i: int, current: int | None
) -> tuple[bool, int | None]:
    op = ops[i]
    now = None if current is None else etags[current]
    if op.kind is Kind.GET:
        if op.value is None:
            return current is None, current
        seen = current is not None and ops[current].value == op.value
        return seen and op.etag in (None, now), current
    if op.status is Status.PRECONDITION_FAILED:
        if op.kind is Kind.CREATE and current is None:
            return False, current
        if op.etag == ABSENT_ETAG:
            return current is None, current
        if op.etag is not None and op.etag != now:
            return False, current
        if op.kind is Kind.CREATE:
            return True, current
        return now != op.expected_etag, current
    if op.kind is Kind.PUT:
        return True, i
    if op.kind is Kind.DELETE:
        return True, None
    if op.kind is Kind.CREATE:
        return current is None, i
    return now is not None and now == op.expected_etag, i if op.kind is Kind.CAS_PUT else None


@st.composite
def small_histories(draw: st.DrawFn) -> list[Operation]:
    """Up to 5 arbitrary operations with few values and etags, so they collide."""
    values = st.sampled_from([b"a", b"b", b"c"])
    etags = st.sampled_from(["e1", "e2", "e3"])
    history = []
    for n in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(KINDS))
        invoke = draw(st.integers(0, 20))
        statuses = [Status.OK] if kind is Kind.GET else [Status.OK, Status.UNKNOWN]
        if kind in (Kind.CAS_PUT, Kind.CAS_DELETE, Kind.CREATE):
            statuses.append(Status.PRECONDITION_FAILED)
        status = draw(st.sampled_from(statuses))
        end = None if status is Status.UNKNOWN else invoke + draw(st.integers(0, 10))
        failed = status is Status.PRECONDITION_FAILED
        value = draw(st.none() | values) if kind is Kind.GET else None
        if kind in WRITES and not failed:
            value = draw(values)
        expected = draw(etags) if kind in (Kind.CAS_PUT, Kind.CAS_DELETE) else None
        reports = kind is Kind.GET or failed or kind in WRITES
        etag = draw(st.none() | etags) if reports else None
        if failed and draw(st.booleans()):
            etag = ABSENT_ETAG
        op = Operation(f"c{n}", b"k", kind, invoke, end, status, value, expected, etag)
        history.append(op)
    return history


@settings(max_examples=600, deadline=None)
@given(history=small_histories())
def test_small_histories_match_the_brute_force_reference(history: list[Operation]) -> None:
    expected = Verdict.OK if reference_linearizable(history) else Verdict.VIOLATION
    assert check_key(history).verdict is expected, check_key(history).explain()


def test_the_reference_itself_can_say_no() -> None:
    stale = [
        Operation("a", b"k", Kind.PUT, 0, 1, value=b"1"),
        Operation("a", b"k", Kind.PUT, 2, 3, value=b"2"),
        Operation("b", b"k", Kind.GET, 4, 5, value=b"1"),
    ]
    assert not reference_linearizable(stale)
    assert reference_linearizable([*stale[:2], replace(stale[2], value=b"2")])


# --- scale ---------------------------------------------------------------------------


def test_a_thousand_operations_over_ten_keys_check_quickly() -> None:
    history = generate(random.Random(7), 1000, keys=10, clients=5)
    report = check_history(history)
    assert report.ok, report.explain()
    assert len(report.keys) == 10
    # A planted stale read in the middle of it is still found.
    candidates = _impossible_reads(history)
    index, value = candidates[len(candidates) // 2]
    history[index] = replace(history[index], value=value, etag=None)
    assert check_history(history).verdict is Verdict.VIOLATION
