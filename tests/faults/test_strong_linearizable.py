"""``strong`` and conditional operations stay linearizable through real faults:
3 node processes, each in a network namespace of its own, and six client
threads (two per node) doing strong gets, puts and deletes, If-Match
read-modify-writes and If-None-Match creates on three keys
(``tests.faults.strong_load``), recorded with their invocation and response
times.

- A node killed (SIGKILL) and restarted while the clients run.
- The network partitioned 2/1 (iptables, both directions) and healed, with
  clients on both sides.

After each, a strong read of every key through every node joins the history,
and must hold: the whole history is linearizable, key by key (our
Wing-Gong-Lowe checker; a write with no answer may take effect at any later
time or never); every answer came within ``ANSWER_S_MAX`` (the node's request
timeout + scheduling slack: no hang); no answer was one the API never gives.
So no acknowledged write was lost: the final reads are part of the history,
and a stale one is a violation (each test plants one and shows the checker
catches it in this very history). During the partition every request through
the minority node answers 503, never a value.
Needs root, ``ip``, ``iptables`` and ``setpriv``; skipped with the reason otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import pytest

from dynakv.sim.linearizability import ABSENT_ETAG, Kind, Report, Status, Verdict, check_history
from tests.faults import netns
from tests.faults.conftest import cluster_in_namespaces, everyone_up, wait_for
from tests.faults.strong_load import (
    Call,
    Record,
    StrongLoad,
    anomaly,
    final_reads,
    history,
    planted_stale_read,
    tally,
    to_operation,
    where,
)

pytestmark = pytest.mark.faults

ALL: Final = (0, 1, 2)
N1, N2, N3 = ALL
CLIENT_NODES: Final = (N1, N2, N3, N1, N2, N3)  # two client threads per node
KEYS: Final = (b"lin-a", b"lin-b", b"lin-c")
DEFINITE: Final = (200, 204, 404, 412)  # answers that say what happened
REQUEST_TIMEOUT_S: Final = 2.0  # the node's default request_timeout_ms
ANSWER_S_MAX: Final = REQUEST_TIMEOUT_S + 1.0  # + scheduling on 2 shared cores
OKS_PER_PHASE: Final = 150
# Once the partition heals, n3 hears the others are up within the detector's
# reconnect interval (10 s) plus a gossip round; until then it answers 503.
HEAL_S_MAX: Final = 25.0
MINORITY_ANSWERS: Final = 12


def _check(records: Sequence[Record], finals: Sequence[Record]) -> Report:
    """The assertions both scenarios share; the checker's report."""
    everything = [*records, *finals]
    odd = [(record, why) for record in everything if (why := anomaly(record)) is not None]
    assert not odd, f"{len(odd)} answers the API never gives, e.g. {odd[:3]}"
    slow = [record for record in everything if record.elapsed_s > ANSWER_S_MAX]
    assert not slow, f"{len(slow)} requests took over {ANSWER_S_MAX} s, e.g. {slow[:3]}"
    unanswered = [record for record in finals if record.status not in (200, 404)]
    assert not unanswered, f"final strong reads failed: {unanswered}"
    operations = history(everything)
    report = check_history(operations)
    assert report.ok, report.explain()
    # The check can fail on this history: a read of an overwritten acknowledged
    # value after the final reads (a lost write) is caught.
    planted = [p for key in KEYS if (p := planted_stale_read(operations, key)) is not None]
    assert planted, "no key had an acknowledged write overwritten: the load did too little"
    for stale in planted:
        verdict = check_history([*operations, stale]).verdict
        assert verdict is Verdict.VIOLATION, (stale, verdict)
    return report


def _summary(records: Sequence[Record], report: Report) -> str:
    unknown = sum(
        1 for r in records if r.sent and r.call.kind.value != "get" and anomaly(r) is None
        and (r.status is None or (r.status >= 500 and r.status != 503))
    )  # fmt: skip
    steps = sum(check.steps for check in report.keys)
    return (
        f"{len(records)} requests ({tally(records)}), {unknown} writes of unknown outcome; "
        f"linearizable ({sum(c.operations for c in report.keys)} operations, {steps} steps); "
        f"max answer {max(r.elapsed_s for r in records):.2f} s"
    )


def test_strong_history_is_linearizable_through_a_kill_and_restart(tmp_path: Path) -> None:
    with cluster_in_namespaces(tmp_path) as (_net, cluster):
        wait_for(lambda: everyone_up(cluster, ALL), "every node to see every member up")
        with StrongLoad(cluster, CLIENT_NODES, KEYS, seed=7) as load:
            load.wait_count(where(statuses=DEFINITE), OKS_PER_PHASE, "strong ops to succeed")
            cluster.kill(N2)
            killed_ns = time.monotonic_ns()
            load.wait_count(
                where(statuses=DEFINITE, since_ns=killed_ns), OKS_PER_PHASE, "the majority"
            )
            cluster.start(N2)
            restart_s = cluster.wait_healthy(N2)
            restarted_ns = time.monotonic_ns()
            back_s = load.wait_count(
                where(node=N2, statuses=DEFINITE, since_ns=restarted_ns),
                OKS_PER_PHASE // 6,
                "n2 to answer strong ops again",
                HEAL_S_MAX,
            )
            load.wait_count(where(statuses=DEFINITE), OKS_PER_PHASE, "strong ops after it")
        records = load.records()
        finals = final_reads(cluster, ALL, KEYS)
    while_down = [r for r in records if killed_ns <= r.invoke_ns and r.return_ns <= restarted_ns]
    through_others = [r for r in while_down if r.call.node != N2]
    assert any(r.status in DEFINITE for r in through_others), tally(through_others)
    report = _check(records, finals)
    print(
        f"\nkill -9 n2: restarted in {restart_s:.2f} s, answering strong ops {back_s:.2f} s "
        f"later; while it was down {tally(while_down)}; {_summary(records, report)}"
    )


def test_strong_history_is_linearizable_through_a_partition_and_heal(tmp_path: Path) -> None:
    with cluster_in_namespaces(tmp_path) as (net, cluster):
        wait_for(lambda: everyone_up(cluster, ALL), "every node to see every member up")
        with StrongLoad(cluster, CLIENT_NODES, KEYS, seed=8) as load:
            load.wait_count(where(statuses=DEFINITE), OKS_PER_PHASE, "strong ops to succeed")
            netns.partition(net, [N3], [N1, N2])
            cut_ns = time.monotonic_ns()
            load.wait_count(
                where(statuses=DEFINITE, since_ns=cut_ns), OKS_PER_PHASE, "the majority"
            )
            load.wait_count(where(node=N3, since_ns=cut_ns), MINORITY_ANSWERS, "answers through n3")
            netns.heal(net)
            healed_ns = time.monotonic_ns()
            assert not any(netns.rules(net, index) for index in ALL)
            back_s = load.wait_count(
                where(node=N3, statuses=DEFINITE, since_ns=healed_ns),
                OKS_PER_PHASE // 6,
                "n3 to answer strong ops again",
                HEAL_S_MAX,
            )
            load.wait_count(where(statuses=DEFINITE), OKS_PER_PHASE, "strong ops after it")
        records = load.records()
        finals = final_reads(cluster, ALL, KEYS)
    during = [r for r in records if cut_ns <= r.invoke_ns and r.return_ns <= healed_ns]
    minority = [r for r in during if r.call.node == N3]
    majority = [r for r in during if r.call.node != N3]
    assert minority and all(r.status == 503 for r in minority), tally(minority)
    for index in (N1, N2):
        through = [r for r in majority if r.call.node == index]
        assert any(r.status in DEFINITE for r in through), (index, tally(through))
    report = _check(records, finals)
    print(
        f"\npartition n3 | n1 n2: through n3 {tally(minority)} "
        f"(max {max(r.elapsed_s for r in minority):.2f} s), through n1 and n2 "
        f"{tally(majority)}; n3 answering strong ops {back_s:.2f} s after the heal; "
        f"{_summary(records, report)}"
    )


def _answer(call: Call, status: int | None, etag: str | None = None, sent: bool = True) -> Record:
    body = b"v" if status == 200 else b""
    return Record(call, 10, 20, status, etag, body, "" if status else "ConnectionResetError", sent)


def test_answers_map_to_the_checkers_operations() -> None:
    """The table in ``strong_load``'s docstring, answer by answer (no root needed)."""
    get = Call("c", N1, b"k", Kind.GET)
    put = Call("c", N1, b"k", Kind.PUT, value=b"w")
    cas = Call("c", N1, b"k", Kind.CAS_PUT, value=b"w", expected_etag="e1")
    create = Call("c", N1, b"k", Kind.CREATE, value=b"w")
    read = to_operation(_answer(get, 200, "e1"))
    assert read is not None and (read.value, read.etag, read.return_ns) == (b"v", "e1", 20)
    absent = to_operation(_answer(get, 404))
    assert absent is not None and absent.value is None and absent.status is Status.OK
    for failed_read in (503, 504, None):
        assert to_operation(_answer(get, failed_read)) is None
    assert to_operation(_answer(put, 503)) is None  # definitely not applied
    assert to_operation(_answer(put, 204, "e2", sent=False)) is None
    for unknown in (504, 500, None):
        operation = to_operation(_answer(put, unknown))
        assert operation is not None and operation.status is Status.UNKNOWN
        assert operation.return_ns is None and operation.value == b"w"
    written = to_operation(_answer(cas, 204, "e2"))
    assert written is not None and (written.expected_etag, written.etag) == ("e1", "e2")
    stale = to_operation(_answer(cas, 412, "e3"))
    assert stale is not None and stale.status is Status.PRECONDITION_FAILED
    assert stale.etag == "e3"
    exists = to_operation(_answer(create, 412))
    assert exists is not None and exists.etag == ABSENT_ETAG
    for odd in (_answer(put, 412), _answer(put, 204), _answer(get, 300), _answer(cas, 400)):
        assert anomaly(odd) is not None and to_operation(odd) is None, odd
