"""Per-key Paxos acceptor state in storage, against every engine: states round
trip beside (never inside) the records, a commit writes state and record
atomically, states page per partition in key order, a partition drop takes its
states and no others, and a state past its bound is refused with nothing
written. Plus RocksDB durability (a live copy after ``sync``), crash atomicity
(a torn WAL), an older database without the family, a real full disk, and a
property test of both engines against a dict model with reopens.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rocksdict import Rdict, WriteBatch

from dynakv.core.paxos import AcceptorState, Ballot, Decree, Proposal, decode_state, encode_state
from dynakv.core.record import Record
from dynakv.storage import (
    PAXOS_STATE_BYTES_MAX,
    MemoryStorage,
    PaxosStateTooLarge,
    RocksStorage,
    Storage,
    StorageError,
    StorageFull,
)
from dynakv.storage.rocks import REOPEN_RETRY_INTERVAL_S
from dynakv.storage.sweeper import Sweeper
from tests.contract.conftest import EDGE_KEYS, EDGE_PARTITIONS
from tests.contract.test_storage_contract import expiring, record, sibling


def promised(timestamp: int) -> bytes:
    """An encoded state that only promised a ballot."""
    return encode_state(AcceptorState(promised=Ballot(timestamp, "n1")))


def committed(timestamp: int, stored: Record) -> bytes:
    """An encoded state that committed ``stored`` at a ballot."""
    ballot = Ballot(timestamp, "n1")
    decree = Decree(ballot, Proposal(origin=ballot, record=stored, history=()))
    return encode_state(AcceptorState(promised=ballot, accepted=decree, committed=decree))


def all_states(storage: Storage, partition: int, page: int = 1000) -> list[tuple[bytes, bytes]]:
    states: list[tuple[bytes, bytes]] = []
    after: bytes | None = None
    for _ in range(10_000):
        batch = storage.scan_paxos(partition, after=after, limit=page)
        assert len(batch) <= page
        states.extend(batch)
        if len(batch) < page:
            return states
        after = batch[-1][0]
    raise AssertionError("scan_paxos never ended")


def fill_states(storage: Storage, partitions: list[int]) -> dict[int, list[tuple[bytes, bytes]]]:
    """A state and a record under every key of every partition; what was written."""
    written: dict[int, list[tuple[bytes, bytes]]] = {}
    for partition in partitions:
        for index, key in reversed(list(enumerate(EDGE_KEYS))):
            storage.put(partition, key, record(sibling(bytes([partition % 256, index]))))
            storage.put_paxos(partition, key, promised(partition * 100 + index + 1))
        written[partition] = sorted(
            (key, storage.get_paxos(partition, key) or b"") for key in EDGE_KEYS
        )
    return written


# --- both engines ------------------------------------------------------------


def test_get_paxos_of_a_key_never_proposed_is_none(storage: Storage) -> None:
    assert storage.get_paxos(0, b"k") is None
    storage.put(0, b"k", record())  # a record alone has no Paxos state
    assert storage.get_paxos(0, b"k") is None
    assert storage.scan_paxos(0, limit=10) == []


def test_put_paxos_round_trips_and_overwrites_without_touching_the_record(
    storage: Storage,
) -> None:
    stored = record(sibling(b"weak"))
    storage.put(3, b"k", stored)
    storage.put_paxos(3, b"k", promised(5))
    assert storage.get_paxos(3, b"k") == promised(5)
    assert decode_state(storage.get_paxos(3, b"k") or b"").promised == Ballot(5, "n1")
    storage.put_paxos(3, b"k", promised(9))
    assert storage.get_paxos(3, b"k") == promised(9)
    assert storage.get(3, b"k") == stored
    storage.put_paxos(3, b"new", b"")  # opaque: storage never judges a state
    assert storage.get_paxos(3, b"new") == b"" and storage.get(3, b"new") is None
    storage.put(3, b"k", record(sibling(b"later", counter=2)))  # a record put keeps the state
    assert storage.get_paxos(3, b"k") == promised(9)


def test_a_commit_writes_state_record_and_index_entry_and_overwrites_the_record(
    storage: Storage,
) -> None:
    storage.put(4, b"k", record(sibling(b"before")))
    chosen = expiring(5_000, b"strong")
    state = committed(7, chosen)
    storage.put_paxos(4, b"k", state, record=chosen)
    assert storage.get_paxos(4, b"k") == state
    assert storage.get(4, b"k") == chosen  # the caller merged; storage overwrites
    assert storage.due_for_purge(4_999, limit=10) == []
    assert storage.due_for_purge(5_000, limit=10) == [(4, b"k")]


def test_purging_a_committed_record_keeps_its_paxos_state(storage: Storage) -> None:
    chosen = expiring(1_000, None)  # a strong delete: a tombstone that expires
    state = committed(3, chosen)
    storage.put_paxos(6, b"k", state, record=chosen)
    assert Sweeper(storage, batch_max=10).sweep_once(1_000) == 1
    assert storage.get(6, b"k") is None
    assert storage.get_paxos(6, b"k") == state  # a promise outlives the record


def test_states_are_per_partition_and_key_and_page_in_key_order(storage: Storage) -> None:
    written = fill_states(storage, EDGE_PARTITIONS)
    for partition in EDGE_PARTITIONS:
        assert [key for key, _ in written[partition]] == sorted(EDGE_KEYS)
        for page in (1, 2, 3, 100):
            assert all_states(storage, partition, page) == written[partition]
        for key, state in written[partition]:
            assert storage.get_paxos(partition, key) == state
    assert len({state for states in written.values() for _, state in states}) == len(
        EDGE_PARTITIONS
    ) * len(EDGE_KEYS)
    assert storage.scan_paxos(3, limit=10) == []
    assert storage.scan_paxos(65535, after=b"\xff" * 21, limit=10) == []
    # ``after`` need not name a stored key.
    assert [k for k, _ in storage.scan_paxos(1, after=b"a\x00\x00", limit=10)] == [
        b"b",
        b"\xff",
        b"\xff" * 20,
    ]


def test_delete_paxos_forgets_only_that_state_and_keeps_the_record(storage: Storage) -> None:
    stored = record(sibling(b"kept"))
    storage.put_paxos(2, b"k", committed(4, stored), record=stored)
    storage.put_paxos(2, b"other", promised(1))
    storage.put_paxos(3, b"k", promised(2))
    storage.delete_paxos(2, b"k")
    storage.delete_paxos(2, b"k")  # absent is fine
    storage.delete_paxos(9, b"never")
    assert storage.get_paxos(2, b"k") is None
    assert storage.get(2, b"k") == stored
    assert storage.scan_paxos(2, limit=10) == [(b"other", promised(1))]
    assert storage.get_paxos(3, b"k") == promised(2)


@pytest.mark.parametrize("dropped", [0, 1, 65534, 65535])
def test_delete_partition_drops_the_paxos_states_of_that_partition_only(
    storage: Storage, dropped: int
) -> None:
    written = fill_states(storage, EDGE_PARTITIONS)
    records = {p: storage.scan_raw(p, limit=100) for p in EDGE_PARTITIONS}

    storage.delete_partition(dropped)

    assert storage.scan_paxos(dropped, limit=100) == []
    assert all(storage.get_paxos(dropped, key) is None for key in EDGE_KEYS)
    assert storage.count_partition(dropped) == 0
    for partition in EDGE_PARTITIONS:
        if partition != dropped:
            assert all_states(storage, partition) == written[partition]
            assert storage.scan_raw(partition, limit=100) == records[partition]
    storage.put_paxos(dropped, b"again", promised(1))  # a state after the drop is seen
    assert storage.scan_paxos(dropped, limit=10) == [(b"again", promised(1))]


def test_a_state_past_its_bound_is_refused_and_nothing_is_written(storage: Storage) -> None:
    storage.put_paxos(1, b"k", promised(1))
    largest = b"\x01" * PAXOS_STATE_BYTES_MAX
    storage.put_paxos(1, b"big", largest)
    assert storage.get_paxos(1, b"big") == largest
    with pytest.raises(PaxosStateTooLarge) as caught:
        storage.put_paxos(1, b"k", largest + b"\x01", record=expiring(10))
    error = caught.value
    assert isinstance(error, StorageError)
    assert (error.partition, error.key) == (1, b"k")
    assert (error.size_bytes, error.max_bytes) == (PAXOS_STATE_BYTES_MAX + 1, 1024 * 1024)
    assert "more than the 1048576 allowed" in error.message
    assert storage.get_paxos(1, b"k") == promised(1)
    assert storage.get(1, b"k") is None and storage.due_for_purge(10, limit=10) == []


def test_a_failed_commit_writes_neither_state_nor_record(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = record(sibling(b"before"))
    storage.put_paxos(0, b"k", committed(1, before), record=before)

    def fail(*args: object) -> None:
        raise StorageFull(path="simulated", free_bytes=0, reason="simulated")

    # The step that changes the data: RocksDB's one batch write, the memory engine's first change.
    if isinstance(storage, RocksStorage):
        monkeypatch.setattr(storage._database, "write", fail)
    else:
        monkeypatch.setattr(storage, "_store", fail)
    chosen = expiring(10, b"after")
    with pytest.raises(StorageFull):
        storage.put_paxos(0, b"k", committed(2, chosen), record=chosen)
    monkeypatch.undo()
    assert storage.get_paxos(0, b"k") == committed(1, before)
    assert storage.get(0, b"k") == before
    assert storage.due_for_purge(10, limit=10) == []


# --- RocksStorage only -------------------------------------------------------


def test_rocks_writes_state_record_and_index_entry_in_one_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = RocksStorage.open(tmp_path / "db")
    try:
        batch_sizes: list[int] = []
        write = storage._database.write

        def spy(batch: WriteBatch) -> None:
            batch_sizes.append(batch.len())
            write(batch)

        monkeypatch.setattr(storage._database, "write", spy)
        storage.put_paxos(0, b"k", committed(1, expiring(10)), record=expiring(10))
        storage.put_paxos(0, b"k", committed(2, record()), record=record())  # no index entry
        storage.put_paxos(0, b"k", promised(3))
        assert batch_sizes == [3, 2, 1]
    finally:
        storage.close()


def test_rocks_states_are_durable_after_sync_across_a_crash_and_a_reopen(tmp_path: Path) -> None:
    path, copy = tmp_path / "db", tmp_path / "crashed"
    storage = RocksStorage.open(path)
    try:
        written = fill_states(storage, [0, 65535])
        chosen = expiring(9_000, b"chosen")
        storage.put_paxos(7, b"c", committed(5, chosen), record=chosen)
        storage.delete_paxos(0, b"a")
        storage.sync()
        shutil.copytree(path, copy)  # a live copy: what a crash right now leaves
    finally:
        storage.close()
    written[0] = [(key, state) for key, state in written[0] if key != b"a"]
    for reopened_path in (copy, path):
        reopened = RocksStorage.open(reopened_path)
        try:
            for partition in (0, 65535):
                assert all_states(reopened, partition, page=3) == written[partition]
            assert reopened.get_paxos(7, b"c") == committed(5, chosen)
            assert reopened.get(7, b"c") == chosen
            assert reopened.due_for_purge(9_000, limit=10) == [(7, b"c")]
        finally:
            reopened.close()


@pytest.mark.parametrize("seed", range(3))
def test_rocks_a_torn_wal_never_leaves_a_commit_half_applied(tmp_path: Path, seed: int) -> None:
    """Crash between appends: cut the WAL of a live copy anywhere; what replays
    holds every commit whole (state and record) or not at all, in order."""
    rng = random.Random(seed)
    path, copy = tmp_path / "db", tmp_path / "copy"
    storage = RocksStorage.open(path)
    written: list[tuple[int, bytes, bytes, Record]] = []
    try:
        for index in range(300):
            partition, key = (0, 1, 65535)[index % 3], index.to_bytes(2, "big")
            chosen = record(sibling(rng.randbytes(rng.randint(1, 300))))
            state = committed(index + 1, chosen)
            storage.put_paxos(partition, key, state, record=chosen)
            written.append((partition, key, state, chosen))
        storage.sync()
        shutil.copytree(path, copy)  # the WAL holds it all: nothing was flushed yet
    finally:
        storage.close()
    (wal,) = copy.glob("*.log")
    cuts = sorted(rng.randrange(wal.stat().st_size) for _ in range(6))
    seen_counts = []
    for cut in cuts:
        torn = tmp_path / f"torn-{cut}"
        shutil.copytree(copy, torn)
        with (torn / wal.name).open("r+b") as file:
            file.truncate(cut)
        crashed = RocksStorage(torn)
        try:
            states = [crashed.get_paxos(p, k) for p, k, _, _ in written]
            records = [crashed.get(p, k) for p, k, _, _ in written]
            for (_, _, state, chosen), got_state, got_record in zip(
                written, states, records, strict=True
            ):
                assert (got_state, got_record) in ((state, chosen), (None, None)), "half a commit"
            present = [s is not None for s in states]
            count = sum(present)
            assert present == [True] * count + [False] * (len(written) - count), "not a prefix"
            seen_counts.append(count)
        finally:
            crashed.close()
    assert seen_counts == sorted(seen_counts) and seen_counts[-1] < len(written)


def test_rocks_opens_a_database_made_before_the_paxos_family(tmp_path: Path) -> None:
    path = tmp_path / "db"
    storage = RocksStorage.open(path)
    storage.put(5, b"old", record(sibling(b"from before")))
    storage.close()
    raw = Rdict(str(path))  # rocksdict detects raw mode and the column families
    raw.drop_column_family("paxos")
    raw.close()
    del raw
    reopened = RocksStorage.open(path)
    try:
        assert reopened.get(5, b"old") == record(sibling(b"from before"))
        assert reopened.get_paxos(5, b"old") is None
        reopened.put_paxos(5, b"old", promised(1))
        assert reopened.get_paxos(5, b"old") == promised(1)
    finally:
        reopened.close()


@pytest.mark.integration
def test_rocks_every_paxos_write_is_storage_full_then_resumes(tmp_path: Path) -> None:
    from tests.integration.test_disk_full import MIB, WRITES_MAX, FakeClock, loop_fs
    from tests.integration.test_disk_full import fill as fill_disk

    kept = record(sibling(b"kept"))
    with loop_fs(tmp_path) as mount_point:
        clock = FakeClock()
        (mount_point / "db").mkdir()
        storage = RocksStorage(
            mount_point / "db", write_buffer_bytes=4 * MIB, monotonic_s=clock.now_s
        )
        try:
            storage.put_paxos(1, b"kept", committed(1, kept), record=kept)
            storage.sync()
            filler = fill_disk(mount_point, leave_bytes=6 * MIB)
            for index in range(WRITES_MAX):
                chosen = record(sibling(index.to_bytes(4, "big") * (16 * 1024)))
                try:
                    storage.put_paxos(
                        0, index.to_bytes(4, "big"), committed(2, chosen), record=chosen
                    )
                    storage.sync()
                except StorageFull:
                    break
            else:
                raise AssertionError(f"{WRITES_MAX} commits never filled the file system")
            refused: dict[str, Callable[[], object]] = {
                "put_paxos": lambda: storage.put_paxos(1, b"kept", promised(3)),
                "put_paxos with a record": lambda: storage.put_paxos(
                    1, b"x", committed(3, kept), record=kept
                ),
                "delete_paxos": lambda: storage.delete_paxos(1, b"kept"),
                "delete_partition": lambda: storage.delete_partition(1),
            }
            for name, write in refused.items():
                with pytest.raises(StorageFull):
                    write()
                assert storage.get_paxos(1, b"kept") == committed(1, kept), name
            # Reads go on.
            assert storage.scan_paxos(1, limit=10) == [(b"kept", committed(1, kept))]
            assert storage.get(1, b"x") is None

            filler.unlink()
            clock.time_s += REOPEN_RETRY_INTERVAL_S
            storage.put_paxos(1, b"kept", promised(4))  # reopens: the space is back
            assert storage.reopens_total == 1 and storage.full_reason is None
            storage.delete_partition(0)
            storage.sync()
        finally:
            storage.close()
        reopened = RocksStorage.open(mount_point / "db")
        try:
            assert reopened.get_paxos(1, b"kept") == promised(4)
            assert reopened.get(1, b"kept") == kept
            assert reopened.scan_paxos(0, limit=10) == [] and reopened.count_partition(0) == 0
        finally:
            reopened.close()


# --- both engines agree with a dict model --------------------------------------

PAXOS_PARTITIONS = st.sampled_from([0, 1, 65535])
PAXOS_KEYS = st.sampled_from([b"", b"a", b"b", b"\xff" * 9])
PAXOS_STATES = st.binary(max_size=6)
PAXOS_RECORDS = st.builds(
    lambda value, at_ms: expiring(at_ms, value) if at_ms else record(sibling(value)),
    st.binary(max_size=4),
    st.sampled_from([0, 100]),
)
PAXOS_OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("state"), PAXOS_PARTITIONS, PAXOS_KEYS, PAXOS_STATES),
        st.tuples(st.just("commit"), PAXOS_PARTITIONS, PAXOS_KEYS, PAXOS_STATES, PAXOS_RECORDS),
        st.tuples(st.just("put"), PAXOS_PARTITIONS, PAXOS_KEYS, PAXOS_RECORDS),
        st.tuples(st.just("delete"), PAXOS_PARTITIONS, PAXOS_KEYS),
        st.tuples(st.just("drop"), PAXOS_PARTITIONS),
        st.tuples(st.just("reopen")),
    ),
    max_size=30,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations=PAXOS_OPERATIONS, page=st.integers(1, 3))
def test_paxos_states_agree_with_a_dict_model(
    operations: list[tuple[object, ...]], page: int
) -> None:
    states: dict[int, dict[bytes, bytes]] = {0: {}, 1: {}, 65535: {}}
    records: dict[int, dict[bytes, Record]] = {0: {}, 1: {}, 65535: {}}
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "db"
        memory, rocks = MemoryStorage(), RocksStorage.open(path)
        try:
            for operation in operations:
                name, *args = operation
                if name == "reopen":
                    rocks.close()
                    rocks = RocksStorage.open(path)
                    continue
                partition = args[0]
                assert isinstance(partition, int)
                for engine in (memory, rocks):
                    apply(engine, operation)
                if name == "drop":
                    states[partition], records[partition] = {}, {}
                    continue
                key = args[1]
                assert isinstance(key, bytes)
                if name == "delete":
                    states[partition].pop(key, None)
                if name in ("state", "commit"):
                    assert isinstance(args[2], bytes)
                    states[partition][key] = args[2]
                if name in ("commit", "put"):
                    assert isinstance(args[-1], Record)
                    records[partition][key] = args[-1]
            for engine in (memory, rocks):
                for partition, partition_states in states.items():
                    want = sorted(partition_states.items())
                    assert all_states(engine, partition, page) == want
                    for key in (b"", b"a", b"b", b"\xff" * 9):
                        assert engine.get_paxos(partition, key) == partition_states.get(key)
                        assert engine.get(partition, key) == records[partition].get(key)
        finally:
            rocks.close()


def apply(engine: Storage, operation: tuple[object, ...]) -> None:
    name, *args = operation
    partition = args[0]
    assert isinstance(partition, int)
    if name == "drop":
        engine.delete_partition(partition)
        return
    key = args[1]
    assert isinstance(key, bytes)
    if name == "delete":
        engine.delete_paxos(partition, key)
    elif name == "put":
        assert isinstance(args[2], Record)
        engine.put(partition, key, args[2])
    else:
        assert isinstance(args[2], bytes)
        chosen = args[3] if name == "commit" else None
        assert chosen is None or isinstance(chosen, Record)
        engine.put_paxos(partition, key, args[2], record=chosen)
