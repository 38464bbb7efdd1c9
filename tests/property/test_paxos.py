"""Per-key Paxos under a hostile network, in the seeded harness (``sim.paxos_harness``).

Concurrent proposers run random strong operations on one key while messages
are lost, duplicated, delayed and reordered, acceptors crash and come back
with what they persisted, and proposers crash mid-round. Checked:

(a) safety: one proposal per ballot, only chosen values committed, and the
    chosen values in ballot order form one chain, each built on and
    descending from the one before; atomic increments lose no update (the
    counter ends between the successes and the successes plus the unknowns);
(b) every history is linearizable, by a brute-force search over the orders
    of at most 8 operations (an unknown write may take effect at any point
    after it started, or never; a failed one never);
(c) liveness without faults: a lone proposer finishes every operation in one
    round, with the message counts the design promises; the minority side of
    a partition answers at once;
(d) weak blind writes on the same key act, for strong operations, as writes
    of unknown outcome (``lww``);
and that the checkers catch planted bugs (an acceptor that does not persist,
one that ignores its promise). A failure names its seed: rerun it with
``PaxosHarness(seed, ...)``.
"""

from __future__ import annotations

import dataclasses
import random
from functools import cache

from hypothesis import given, settings
from hypothesis import strategies as st

from dynakv.core.record import ConflictPolicy
from dynakv.sim.paxos_harness import Faults, HistoryEntry, Kind, OpSpec, PaxosHarness, Status

OPS_MAX = 8
HOSTILE = st.builds(
    Faults,
    delay_ms_max=st.integers(1, 12),
    loss_p=st.sampled_from([0.0, 0.05, 0.15]),
    duplicate_p=st.sampled_from([0.0, 0.1]),
    acceptor_crash_p=st.sampled_from([0.0, 0.01, 0.04]),
    proposer_crash_p=st.sampled_from([0.0, 0.03, 0.1]),
)
WRITES = (Kind.PUT, Kind.CAS_PUT, Kind.CREATE)


# -- the brute-force linearizability checker ------------------------------------------

Register = tuple[bytes, str | None] | None  # (value, etag) of the current version, or absent
Step = tuple[bool, Register]  # could it happen here, and the register after it
_NO: Step = (False, None)


def apply(entry: HistoryEntry, state: Register) -> Step:
    """Whether ``entry``'s result can happen at ``state``, and the register after it."""
    etag_now = state[1] if state is not None else None
    if entry.kind is Kind.GET:
        expected = None if entry.value is None else (entry.value, entry.etag)
        return (True, state) if state == expected else _NO
    if entry.status is Status.PRECONDITION_FAILED:
        if entry.etag != etag_now:  # a 412 reports the current etag
            return _NO
        if entry.kind is Kind.CREATE:
            return (True, state) if state is not None else _NO
        return (True, state) if etag_now != entry.expected_etag else _NO
    if entry.kind in (Kind.CAS_PUT, Kind.CAS_DELETE) and (
        state is None or etag_now != entry.expected_etag
    ):
        return _NO
    if entry.kind is Kind.CREATE and state is not None:
        return _NO
    if entry.kind is Kind.INCREMENT:
        before = int(state[0]) if state is not None else 0
        if entry.value != str(before + 1).encode():
            return _NO
    if entry.kind in (Kind.DELETE, Kind.CAS_DELETE):
        return (True, None)
    assert entry.value is not None
    return (True, (entry.value, entry.etag))


def linearizable(history: list[HistoryEntry]) -> bool:
    """Is there an order of the operations, consistent with real time, in which each
    behaves as on one register? Failed operations took no effect and are left out;
    unknown ones may be placed anywhere after their start, or left out."""
    ops = [e for e in history if e.status is not Status.FAILED]
    assert len(ops) <= OPS_MAX + 4
    definite = [i for i, e in enumerate(ops) if e.status is not Status.UNKNOWN]
    needed = sum(1 << i for i in definite)

    @cache
    def search(placed: int, state: Register) -> bool:
        if placed & needed == needed:
            return True
        horizon = min(
            ops[i].return_ms or 0 for i in definite if not placed >> i & 1
        )  # nothing may go before an operation that returned before it started
        for i, entry in enumerate(ops):
            if placed >> i & 1 or entry.invoke_ms > horizon:
                continue
            possible, after = apply(entry, state)
            if possible and search(placed | 1 << i, after):
                return True
        return False

    return search(0, None)


def at(
    invoke: int,
    back: int | None,
    kind: Kind,
    status: Status = Status.OK,
    *,
    value: bytes | None = None,
    expected_etag: str | None = None,
    etag: str | None = None,
) -> HistoryEntry:
    return HistoryEntry("c", kind, invoke, back, status, value, expected_etag, etag, 1, 0)


def test_the_checker_refuses_a_stale_read_and_accepts_a_concurrent_one() -> None:
    put = at(0, 10, Kind.PUT, value=b"1", etag="e1")
    stale = at(20, 30, Kind.GET)
    assert not linearizable([put, stale])
    assert linearizable([put, at(5, 30, Kind.GET)])  # overlapping: may go first


def test_the_checker_lets_an_unknown_write_land_late_or_never() -> None:
    lost = at(0, None, Kind.PUT, Status.UNKNOWN, value=b"u", etag="eu")
    seen = at(50, 60, Kind.GET, value=b"u", etag="eu")
    assert linearizable([lost, seen]) and linearizable([lost, at(50, 60, Kind.GET)])
    read_first = at(0, 5, Kind.GET, value=b"u", etag="eu")
    assert not linearizable(
        [read_first, at(10, None, Kind.PUT, Status.UNKNOWN, value=b"u", etag="eu")]
    )


def test_the_checker_knows_compare_and_set() -> None:
    put = at(0, 10, Kind.PUT, value=b"1", etag="e1")
    cas = at(20, 30, Kind.CAS_PUT, value=b"2", expected_etag="e1", etag="e2")
    twice = at(40, 50, Kind.CAS_PUT, value=b"3", expected_etag="e1", etag="e3")
    refused = at(40, 50, Kind.CAS_PUT, Status.PRECONDITION_FAILED, expected_etag="e1", etag="e2")
    assert linearizable([put, cas, refused])
    assert not linearizable([put, cas, twice])  # a lost update


# -- the runs ---------------------------------------------------------------------------


def random_scripts(rng: random.Random) -> dict[str, list[OpSpec]]:
    clients = rng.randint(2, 4)
    per_client = OPS_MAX // clients
    kinds = [Kind.GET, Kind.GET, Kind.PUT, Kind.CAS_PUT, Kind.CAS_PUT, Kind.CREATE, Kind.DELETE]
    kinds.append(Kind.CAS_DELETE)
    scripts: dict[str, list[OpSpec]] = {}
    for c in range(clients):
        ops = []
        for _ in range(per_client):
            kind = rng.choice(kinds)
            value = f"v{rng.randrange(10**9)}".encode() if kind in WRITES else None
            ops.append(OpSpec(kind, value))
        scripts[f"c{c}"] = ops
    return scripts


@settings(max_examples=250, deadline=None)
@given(st.integers(0, 2**32 - 1), HOSTILE, st.sampled_from(list(ConflictPolicy)))
def test_histories_are_linearizable_and_safe(
    seed: int, faults: Faults, policy: ConflictPolicy
) -> None:
    scripts = random_scripts(random.Random(seed))
    harness = PaxosHarness(seed, scripts, faults=faults, policy=policy)
    history = harness.run()
    assert harness.check_safety() == [], f"seed {seed}"
    assert linearizable(history), f"seed {seed}: " + "\n".join(map(str, history))


def mixed_scripts(rng: random.Random) -> dict[str, list[OpSpec]]:
    """Strong operations and weak blind writes on one key, at most ``OPS_MAX`` + 1."""
    kinds = [Kind.GET, Kind.GET, Kind.CAS_PUT, Kind.PUT, Kind.CREATE, Kind.DELETE]
    kinds += [Kind.WEAK_PUT, Kind.WEAK_PUT]
    scripts: dict[str, list[OpSpec]] = {}
    for c in range(rng.randint(2, 3)):
        chosen = [rng.choice(kinds) for _ in range(3)]
        scripts[f"c{c}"] = [
            OpSpec(
                k, f"v{rng.randrange(10**9)}".encode() if k in (*WRITES, Kind.WEAK_PUT) else None
            )
            for k in chosen
        ]
    return scripts


@settings(max_examples=250, deadline=None)
@given(st.integers(0, 2**32 - 1), HOSTILE)
def test_weak_writes_act_as_writes_of_unknown_outcome_to_strong_operations(
    seed: int, faults: Faults
) -> None:
    """Under lww, a weak write that strong operations see takes effect (for them) at
    one point after it started: the history stays linearizable with every weak
    write as an unknown-outcome put. (Disabling absorption breaks this.)"""
    harness = PaxosHarness(seed, mixed_scripts(random.Random(seed)), faults=faults)
    history = harness.run()
    assert harness.check_safety() == [], f"seed {seed}"
    assert linearizable(history), f"seed {seed}: " + "\n".join(map(str, history))


@settings(max_examples=120, deadline=None)
@given(st.integers(0, 2**32 - 1), HOSTILE, st.integers(2, 5))
def test_increments_lose_no_update(seed: int, faults: Faults, clients: int) -> None:
    scripts = {f"c{c}": [OpSpec(Kind.INCREMENT)] * 4 for c in range(clients)}
    harness = PaxosHarness(seed, scripts, faults=faults)
    history = harness.run()
    assert harness.check_safety() == [], f"seed {seed}"
    chain: list[bytes] = []
    for _, proposal in harness.chosen():
        value = proposal.record.visible_values(0)[0]
        if not chain or chain[-1] != value:
            chain.append(value)
    assert chain == [str(n).encode() for n in range(1, len(chain) + 1)], f"seed {seed}"
    succeeded = [e.value for e in history if e.status is Status.OK]
    unknown = sum(1 for e in history if e.status is Status.UNKNOWN)
    assert len(set(succeeded)) == len(succeeded), f"seed {seed}: two increments saw one value"
    assert set(succeeded) <= set(chain), f"seed {seed}"
    assert len(succeeded) <= len(chain) <= len(succeeded) + unknown, f"seed {seed}"


def test_a_lone_proposer_finishes_every_operation_in_one_round() -> None:
    script = [
        OpSpec(Kind.GET),
        OpSpec(Kind.CREATE, b"a"),
        OpSpec(Kind.GET),
        OpSpec(Kind.CAS_PUT, b"b"),
        OpSpec(Kind.CAS_PUT, b"c", expected_etag="A" * 22),  # fails: no propose
        OpSpec(Kind.PUT, b"d"),
        OpSpec(Kind.DELETE),
        OpSpec(Kind.GET),
    ]
    quiet = Faults(delay_ms_min=2, delay_ms_max=2)
    for seed in range(20):
        harness = PaxosHarness(seed, {"solo": script}, faults=quiet)
        history = harness.run()
        assert [e.rounds for e in history] == [1] * len(script)
        assert [e.status for e in history] == [Status.OK] * 4 + [Status.PRECONDITION_FAILED] + [
            Status.OK
        ] * 3
        assert history[-1].value is None and history[2].value == b"a"
        counts = {kind: set() for kind in Kind}  # type: dict[Kind, set[int]]
        for _, kind, messages in harness.traffic():
            counts[kind].add(messages)
        n = 3
        assert counts[Kind.GET] == {2 * n}  # one round trip
        assert counts[Kind.CREATE] == counts[Kind.PUT] == counts[Kind.DELETE] == {6 * n}
        assert counts[Kind.CAS_PUT] == {6 * n, 2 * n}  # the failed one never proposed


def test_five_replicas_tolerate_two_down() -> None:
    harness = PaxosHarness(
        7,
        {"solo": [OpSpec(Kind.PUT, b"x"), OpSpec(Kind.GET)]},
        replicas=("r1", "r2", "r3", "r4", "r5"),
    )
    harness.isolate(["r4", "r5"])
    history = harness.run()
    assert [e.status for e in history] == [Status.OK, Status.OK]
    assert history[1].value == b"x"


def test_the_minority_side_of_a_partition_answers_at_once() -> None:
    script = [OpSpec(Kind.PUT, b"x"), OpSpec(Kind.GET), OpSpec(Kind.CREATE, b"y")]
    harness = PaxosHarness(3, {"minority": script})
    harness.isolate(["r2", "r3"])
    history = harness.run()
    assert [e.status for e in history] == [Status.FAILED] * 3
    assert all(e.return_ms is not None and e.return_ms - e.invoke_ms <= 2 for e in history)
    assert all(e.rounds == 1 for e in history)


# -- the checkers catch planted bugs ---------------------------------------------------------


def violations(faults: Faults, seeds: range) -> int:
    found = 0
    for seed in seeds:
        harness = PaxosHarness(seed, random_scripts(random.Random(seed)), faults=faults)
        history = harness.run()
        if harness.check_safety() or not linearizable(history):
            found += 1
    return found


def test_the_checkers_catch_an_acceptor_that_does_not_persist() -> None:
    hostile = Faults(loss_p=0.1, acceptor_crash_p=0.05, delay_ms_max=8)
    assert violations(dataclasses.replace(hostile, forget_on_restart=True), range(150)) > 0
    assert violations(hostile, range(150)) == 0


def test_the_checkers_catch_an_acceptor_that_ignores_its_promise() -> None:
    hostile = Faults(loss_p=0.1, duplicate_p=0.1, delay_ms_max=8)
    assert violations(dataclasses.replace(hostile, accept_any=True), range(150)) > 0
    assert violations(hostile, range(150)) == 0


def test_the_checkers_catch_a_read_that_trusts_the_latest_commit() -> None:
    hostile = Faults(loss_p=0.1, duplicate_p=0.05, acceptor_crash_p=0.03, delay_ms_max=8)
    assert violations(dataclasses.replace(hostile, read_trusts_head=True), range(150)) > 0
    assert violations(hostile, range(150)) == 0
