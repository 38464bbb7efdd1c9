"""The linearizability checker on hand-written histories: it accepts correct ones and
catches each planted anomaly (stale read, lost write, a value never written, a cas
against an overwritten version, two creates, an unknown write seen then unseen)."""

from __future__ import annotations

from dynakv.sim.linearizability import (
    ABSENT_ETAG,
    Kind,
    Operation,
    Status,
    Verdict,
    check_history,
    check_key,
)

K = b"k"


def put(
    client: str, value: bytes, start: int, end: int | None, etag: str | None = None
) -> Operation:
    status = Status.UNKNOWN if end is None else Status.OK
    return Operation(client, K, Kind.PUT, start, end, status, value=value, etag=etag)


def get(
    client: str, value: bytes | None, start: int, end: int, etag: str | None = None
) -> Operation:
    return Operation(client, K, Kind.GET, start, end, value=value, etag=etag)


def delete(client: str, start: int, end: int | None) -> Operation:
    status = Status.UNKNOWN if end is None else Status.OK
    return Operation(client, K, Kind.DELETE, start, end, status)


def cas_put(
    client: str,
    value: bytes,
    expected: str,
    start: int,
    end: int | None,
    status: Status = Status.OK,
    etag: str | None = None,
) -> Operation:
    if end is None:
        status = Status.UNKNOWN
    return Operation(
        client, K, Kind.CAS_PUT, start, end, status, value=value, expected_etag=expected, etag=etag
    )


def cas_delete(
    client: str, expected: str, start: int, end: int, status: Status = Status.OK
) -> Operation:
    return Operation(client, K, Kind.CAS_DELETE, start, end, status, expected_etag=expected)


def create(
    client: str, value: bytes | None, start: int, end: int, status: Status, etag: str | None = None
) -> Operation:
    return Operation(client, K, Kind.CREATE, start, end, status, value=value, etag=etag)


def verdict(*ops: Operation) -> Verdict:
    return check_key(ops).verdict


# --- correct histories ---------------------------------------------------------------


def test_an_empty_history_is_linearizable() -> None:
    assert check_history([]).ok
    assert check_key([]).verdict is Verdict.OK


def test_a_sequential_history_is_linearizable() -> None:
    history = [
        get("a", None, 0, 1),
        put("a", b"1", 2, 3, "e1"),
        get("b", b"1", 4, 5, "e1"),
        put("b", b"2", 6, 7, "e2"),
        get("a", b"2", 8, 9),
        delete("a", 10, 11),
        get("b", None, 12, 13),
    ]
    assert verdict(*history) is Verdict.OK


def test_overlapping_operations_linearize_in_some_order() -> None:
    # Both reads overlap both writes: one sees the second write's value before the
    # first write's value would be visible, which an order (put 2, get 2, put 1, get 1) explains.
    history = [
        put("a", b"1", 0, 10),
        put("b", b"2", 0, 10),
        get("c", b"2", 1, 9),
        get("d", b"1", 2, 11),
    ]
    assert verdict(*history) is Verdict.OK
    # The input order does not matter.
    assert verdict(*reversed(history)) is Verdict.OK


def test_reads_concurrent_with_a_write_may_see_either_value() -> None:
    history = [
        put("a", b"1", 0, 1),
        put("a", b"2", 2, 20),
        get("b", b"2", 3, 4),
        get("c", b"1", 3, 5),  # linearized before b's read: both inside the put's interval
    ]
    assert verdict(*history) is Verdict.OK


def test_conditional_writes_in_order_are_linearizable() -> None:
    history = [
        create("a", b"1", 0, 1, Status.OK, "e1"),
        create("b", b"x", 2, 3, Status.PRECONDITION_FAILED, "e1"),
        cas_put("a", b"2", "e1", 4, 5, etag="e2"),
        cas_put("b", b"3", "e1", 6, 7, Status.PRECONDITION_FAILED, etag="e2"),
        get("c", b"2", 8, 9, "e2"),
        cas_delete("c", "e2", 10, 11),
        create("a", b"4", 12, 13, Status.OK, "e4"),
    ]
    assert verdict(*history) is Verdict.OK


def test_two_concurrent_cas_on_one_version_one_wins() -> None:
    history = [
        put("a", b"1", 0, 1, "e1"),
        cas_put("a", b"2", "e1", 2, 10, etag="e2"),
        cas_put("b", b"3", "e1", 2, 10, Status.PRECONDITION_FAILED, etag="e2"),
    ]
    assert verdict(*history) is Verdict.OK


# --- planted anomalies ---------------------------------------------------------------


def test_stale_read_is_caught() -> None:
    history = [
        put("a", b"1", 0, 1),
        put("a", b"2", 2, 3),
        get("b", b"1", 4, 5),  # the read starts after put 2 completed
    ]
    check = check_key(history)
    assert check.verdict is Verdict.VIOLATION
    assert check.stuck[0].operation == history[2]
    assert "b'2'" in check.state


def test_lost_write_is_caught() -> None:
    # Write 2 completed, but later reads see write 1, then write 3, then write 1
    # again: no order explains write 2 vanishing while write 1 comes back.
    history = [
        put("a", b"1", 0, 1),
        put("a", b"2", 2, 3),
        put("c", b"3", 4, 20),
        get("b", b"1", 5, 6),
    ]
    assert verdict(*history) is Verdict.VIOLATION
    # A read after a completed delete that sees the deleted value: the delete was lost.
    lost_delete = [put("a", b"1", 0, 1), delete("a", 2, 3), get("b", b"1", 4, 5)]
    assert verdict(*lost_delete) is Verdict.VIOLATION


def test_reads_that_go_back_are_caught() -> None:
    history = [
        put("a", b"1", 0, 1),
        put("a", b"2", 2, 30),
        get("b", b"2", 3, 4),
        get("c", b"1", 5, 6),  # after b saw 2, nobody may see 1 again
    ]
    assert verdict(*history) is Verdict.VIOLATION


def test_a_value_never_written_is_caught() -> None:
    history = [put("a", b"1", 0, 1), get("b", b"ghost", 2, 3)]
    check = check_key(history)
    assert check.verdict is Verdict.VIOLATION
    assert "no write of this key wrote" in check.explain()
    # Also when the read overlaps everything.
    assert verdict(put("a", b"1", 0, 10), get("b", b"ghost", 0, 10)) is Verdict.VIOLATION
    # Reading something before any write happened.
    assert verdict(get("b", b"1", 0, 1), put("a", b"1", 2, 3)) is Verdict.VIOLATION


def test_a_cas_against_an_overwritten_version_is_caught() -> None:
    history = [
        put("a", b"1", 0, 1, "e1"),
        put("b", b"2", 2, 3, "e2"),
        cas_put("a", b"3", "e1", 4, 5, etag="e3"),  # e1 was overwritten before it began
    ]
    assert verdict(*history) is Verdict.VIOLATION
    # And a cas that failed although its version was current all along.
    failed = [
        put("a", b"1", 0, 1, "e1"),
        cas_put("a", b"3", "e1", 2, 3, Status.PRECONDITION_FAILED),
    ]
    assert verdict(*failed) is Verdict.VIOLATION


def test_a_cas_delete_against_an_overwritten_version_is_caught() -> None:
    history = [
        put("a", b"1", 0, 1, "e1"),
        put("b", b"2", 2, 3, "e2"),
        cas_delete("a", "e1", 4, 5),
    ]
    assert verdict(*history) is Verdict.VIOLATION


def test_two_successful_creates_are_caught() -> None:
    history = [
        create("a", b"1", 0, 10, Status.OK, "e1"),
        create("b", b"2", 0, 10, Status.OK, "e2"),
    ]
    assert verdict(*history) is Verdict.VIOLATION
    # With a delete between them it is fine.
    assert verdict(history[0], delete("c", 11, 12), create("b", b"2", 13, 14, Status.OK)) is (
        Verdict.OK
    )


def test_a_read_whose_etag_names_another_write_is_caught() -> None:
    history = [
        put("a", b"1", 0, 1, "e1"),
        put("a", b"2", 2, 3, "e2"),
        get("b", b"2", 4, 5, "e1"),  # right value, wrong version
    ]
    assert verdict(*history) is Verdict.VIOLATION


def test_an_etag_returned_by_two_writes_is_caught() -> None:
    check = check_key([put("a", b"1", 0, 1, "e1"), put("b", b"2", 2, 3, "e1")])
    assert check.verdict is Verdict.VIOLATION
    assert "two writes" in check.explain()


# --- unknown outcomes ----------------------------------------------------------------


def test_an_unknown_write_may_be_seen_or_not() -> None:
    seen = [put("a", b"1", 0, 1), put("a", b"2", 2, None), get("b", b"2", 50, 51)]
    unseen = [put("a", b"1", 0, 1), put("a", b"2", 2, None), get("b", b"1", 50, 51)]
    late = [put("a", b"1", 0, 1), put("a", b"2", 2, None), get("b", b"1", 50, 51)]
    late.append(get("b", b"2", 60, 61))  # it took effect long after its timeout
    assert verdict(*seen) is Verdict.OK
    assert verdict(*unseen) is Verdict.OK
    assert verdict(*late) is Verdict.OK


def test_an_unknown_write_seen_then_unseen_is_caught() -> None:
    history = [
        put("a", b"1", 0, 1),
        put("a", b"2", 2, None),
        get("b", b"2", 50, 51),
        get("b", b"1", 60, 61),  # no other write: 2 cannot disappear
    ]
    check = check_key(history)
    assert check.verdict is Verdict.VIOLATION
    assert check.stuck[0].operation == history[3]


def test_an_unknown_write_never_lands_before_its_invocation() -> None:
    history = [put("a", b"1", 0, 1), get("b", b"2", 2, 3), put("a", b"2", 4, None)]
    assert verdict(*history) is Verdict.VIOLATION


def test_an_unknown_cas_applies_only_if_its_version_was_current() -> None:
    applied = [
        put("a", b"1", 0, 1, "e1"),
        cas_put("a", b"2", "e1", 2, None),
        get("b", b"2", 10, 11),
    ]
    assert verdict(*applied) is Verdict.OK
    impossible = [
        put("a", b"1", 0, 1, "e1"),
        put("a", b"5", 2, 3, "e5"),
        cas_put("a", b"2", "e1", 4, None),  # e1 was gone before it began
        get("b", b"2", 10, 11),
    ]
    assert verdict(*impossible) is Verdict.VIOLATION


def test_an_unknown_writes_etag_is_learned_and_held_to() -> None:
    learned = [
        put("a", b"1", 0, 1, "e1"),
        put("a", b"2", 2, None),
        get("b", b"2", 10, 11, "e2"),
        cas_put("b", b"3", "e2", 12, 13, etag="e3"),
        get("c", b"3", 14, 15, "e3"),
    ]
    assert verdict(*learned) is Verdict.OK
    contradicted = [
        put("a", b"1", 0, 1, "e1"),
        put("a", b"2", 2, None),
        get("b", b"2", 10, 11, "e2"),
        get("c", b"2", 12, 13, "e9"),  # one write, two etags
    ]
    assert verdict(*contradicted) is Verdict.VIOLATION


def test_an_unknown_write_explains_a_failed_cas() -> None:
    history = [
        put("a", b"1", 0, 1, "e1"),
        put("b", b"2", 2, None),
        cas_put("a", b"3", "e1", 10, 11, Status.PRECONDITION_FAILED),
    ]
    assert verdict(*history) is Verdict.OK
    without = [history[0], history[2]]
    assert verdict(*without) is Verdict.VIOLATION


def test_many_unobserved_unknown_writes_stay_tractable() -> None:
    # 40 lost writes and one planted stale read: without pruning the search would
    # try every subset of the lost writes before reporting the violation.
    history = [put("a", b"0", 0, 1)]
    history += [put(f"u{i}", f"lost{i}".encode(), 2 + i, None) for i in range(40)]
    for i in range(60):
        history.append(put("a", f"w{i}".encode(), 100 + 4 * i, 101 + 4 * i))
        history.append(get("b", f"w{i}".encode(), 102 + 4 * i, 103 + 4 * i))
    assert check_key(history, steps_max=200_000).verdict is Verdict.OK
    history.append(get("b", b"w3", 1000, 1001))
    assert check_key(history, steps_max=200_000).verdict is Verdict.VIOLATION


def test_many_interchangeable_unknown_writes_stay_tractable() -> None:
    # 30 lost writes nobody reads, and 12 creates that failed (reporting no etag)
    # right after a delete: each needs some lost write to have landed in between,
    # and any one will do. Without using such twins in order, the search would try
    # every choice of them before it could report the stale read at the end.
    history = [put(f"u{i}", f"lost{i}".encode(), i, None) for i in range(30)]
    for i in range(12):
        at = 100 + 8 * i
        history.append(delete("a", at, at + 1))
        history.append(create("b", None, at + 2, at + 3, Status.PRECONDITION_FAILED))
        history.append(put("a", f"w{i}".encode(), at + 4, at + 5, f"e{i}"))
        history.append(get("b", f"w{i}".encode(), at + 6, at + 7))
    assert check_key(history, steps_max=100_000).verdict is Verdict.OK
    history.append(get("b", b"w3", 1000, 1001))
    assert check_key(history, steps_max=100_000).verdict is Verdict.VIOLATION


def test_a_412_may_say_the_key_is_absent() -> None:
    deleted = [
        put("a", b"1", 0, 1, "e1"),
        delete("a", 2, 3),
        cas_put("b", b"2", "e1", 4, 5, Status.PRECONDITION_FAILED, etag=ABSENT_ETAG),
    ]
    assert verdict(*deleted) is Verdict.OK
    present = [
        put("a", b"1", 0, 1, "e1"),
        cas_put("b", b"2", "e9", 4, 5, Status.PRECONDITION_FAILED, etag=ABSENT_ETAG),
    ]
    assert verdict(*present) is Verdict.VIOLATION
    # A create fails only on a present key, whatever it reports.
    assert verdict(create("b", None, 0, 1, Status.PRECONDITION_FAILED, ABSENT_ETAG)) is (
        Verdict.VIOLATION
    )


# --- the report ----------------------------------------------------------------------


def test_keys_are_checked_independently_and_the_report_names_the_bad_one() -> None:
    good = [put("a", b"1", 0, 1), get("b", b"1", 2, 3)]
    bad = [
        Operation("a", b"other", Kind.PUT, 0, 1, value=b"1"),
        Operation("a", b"other", Kind.PUT, 2, 3, value=b"2"),
        Operation("b", b"other", Kind.GET, 4, 5, value=b"1"),
    ]
    report = check_history([*bad, *good])
    assert report.verdict is Verdict.VIOLATION
    assert [check.key for check in report.keys] == [K, b"other"]
    assert [check.key for check in report.violations()] == [b"other"]
    text = report.explain()
    assert "key b'other': violation" in text
    assert "longest linearizable prefix: 2 ops" in text
    assert "b: get -> b'1' [4, 5]" in text


def test_failed_reads_are_dropped() -> None:
    history = [
        put("a", b"1", 0, 1),
        Operation("b", K, Kind.GET, 2, None, Status.UNKNOWN),
        get("b", b"1", 3, 4),
    ]
    assert check_key(history).operations == 2
    assert verdict(*history) is Verdict.OK


def test_the_budget_gives_a_verdict_instead_of_hanging() -> None:
    # Many concurrent writes and a read of a value nobody wrote: the search must
    # try the orders of the writes before giving up.
    history = [put(f"c{i}", f"{i}".encode(), 0, 100) for i in range(14)]
    history.append(get("r", b"never", 0, 100))
    check = check_key(history, steps_max=500)
    assert check.verdict is Verdict.BUDGET_EXCEEDED
    assert check.steps == 500
    report = check_history(history, steps_max=500)
    assert report.verdict is Verdict.BUDGET_EXCEEDED
    assert not report.ok
