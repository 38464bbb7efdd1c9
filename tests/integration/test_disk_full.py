"""A full disk, for real: RocksStorage, GroupCommitter and DiskGuard on a small
loop-mounted ext4, filled until writes are refused, then freed.

After each step every write acknowledged before it (put, then sync or
``durable()`` returned) must still read back. Needs root, ``mkfs.ext4``,
``losetup`` and ``mount`` (CI has them); skipped, with the reason, otherwise.
Each test mounts its own file system under its temporary directory and always
unmounts and detaches it.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import gc
import itertools
import logging
import os
import random
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from dynakv.core.record import Record, Sibling
from dynakv.errors import InsufficientStorage
from dynakv.node.dev import DevCluster
from dynakv.storage import DiskGuard, RocksStorage, StorageFull, open_storage
from dynakv.storage.diskspace import BALLAST_NAME
from dynakv.storage.group_commit import GroupCommitter
from dynakv.storage.rocks import REOPEN_RETRY_INTERVAL_S, wal_bytes
from dynakv.storage.sweeper import Sweeper
from tests.integration.conftest import Cluster, free_port_block, wait_for

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
FS_BYTES = 128 * MIB
VALUE_BYTES = 64 * 1024
WRITE_BUFFER_BYTES = 4 * MIB  # RocksDB's flushes must fit a small file system
RESERVE_BYTES = 16 * MIB
BALLAST_BYTES = 16 * MIB
WRITES_MAX = 4096  # bounds every write loop: far more than the file system holds
DEADLINE_S = 30.0
_fillers = itertools.count()


def _loop_fs_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "mounting a loop file system needs root"
    for tool in ("mkfs.ext4", "losetup", "mount", "umount"):
        if shutil.which(tool) is None:
            return f"{tool} not found (apt: e2fsprogs, mount)"
    return None


def _run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, timeout=60)


@contextmanager
def loop_fs(tmp_path: Path, size_bytes: int = FS_BYTES) -> Iterator[Path]:
    """A fresh ext4 of ``size_bytes`` mounted at ``tmp_path/mnt`` (no root-reserved blocks)."""
    reason = _loop_fs_unavailable()
    if reason is not None:
        pytest.skip(reason)
    image, mount_point = tmp_path / "fs.img", tmp_path / "mnt"
    with image.open("wb") as file:
        file.truncate(size_bytes)
    _run("mkfs.ext4", "-q", "-F", "-m", "0", str(image))
    attach = subprocess.run(
        ["losetup", "--find", "--show", str(image)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if attach.returncode != 0:
        pytest.skip(f"no loop device to attach: {attach.stderr.strip()}")
    device = attach.stdout.strip()
    try:
        mount_point.mkdir()
        _run("mount", device, str(mount_point))
        try:
            yield mount_point
        finally:
            _unmount(mount_point)
    finally:
        subprocess.run(["losetup", "-d", device], check=False, capture_output=True, timeout=60)


def _unmount(mount_point: Path) -> None:
    """Unmount; if a failed test left a file open, collect it and retry, then detach lazily."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        result = subprocess.run(
            ["umount", str(mount_point)], check=False, capture_output=True, timeout=60
        )
        if result.returncode == 0:
            return
        if time.monotonic() > deadline:
            _run("umount", "--lazy", str(mount_point))
            return
        gc.collect()
        time.sleep(0.1)


def free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def fill(mount_point: Path, leave_bytes: int) -> Path:
    """A file taking all but about ``leave_bytes`` of the free space."""
    filler = mount_point / f"filler-{next(_fillers)}"
    size = free_bytes(mount_point) - leave_bytes
    with filler.open("wb") as file:
        for _ in range(64):  # ext4 needs a few blocks for the file's own extents
            if size <= 0:
                break
            try:
                os.posix_fallocate(file.fileno(), 0, size)
                break
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                size -= 256 * 1024
    return filler


def a_record(value: bytes | None) -> Record:
    return Record((Sibling(value=value, node="n1", counter=1, past=(), timestamp=1),))


class Workload:
    """Distinct random values under distinct keys; remembers what was acknowledged."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self._next = 0
        self.acked: dict[bytes, bytes] = {}

    def next_write(self) -> tuple[bytes, bytes]:
        key = self._next.to_bytes(4, "big")
        self._next += 1
        return key, self._rng.randbytes(VALUE_BYTES)

    def assert_readable(self, storage: RocksStorage) -> None:
        assert self.acked, "the test acknowledged nothing"
        lost = [k.hex() for k, v in self.acked.items() if storage.get(0, k) != a_record(v)]
        assert not lost, f"{len(lost)} of {len(self.acked)} acknowledged writes lost: {lost[:5]}"


def test_writes_refused_below_the_reserve_then_resumed(tmp_path: Path) -> None:
    with loop_fs(tmp_path) as mount_point:
        guard = DiskGuard(
            mount_point, node_id="n1", reserve_bytes=RESERVE_BYTES, ballast_bytes=BALLAST_BYTES
        )
        guard.refresh()
        assert guard.ballast_bytes == BALLAST_BYTES and guard.state == "ok"
        filler = fill(mount_point, leave_bytes=RESERVE_BYTES + 24 * MIB)
        storage = RocksStorage.open(mount_point / "db", write_buffer_bytes=WRITE_BUFFER_BYTES)
        workload = Workload(seed=1)
        try:
            refused = _write_until_the_guard_refuses(storage, guard, workload)
            assert (refused.node, refused.reserve_bytes) == ("n1", RESERVE_BYTES)
            assert refused.free_bytes < RESERVE_BYTES and refused.http_status == 507
            assert guard.status()["state"] == "low"
            # Below the reserve: tombstones are stored and reads go on.
            storage.put(1, b"deleted", a_record(None))
            storage.sync()
            assert storage.get(1, b"deleted") == a_record(None)
            workload.assert_readable(storage)
            assert storage.full_reason is None, "the reserve kept RocksDB itself from filling"

            filler.unlink()
            guard.refresh()
            guard.check_value_write()  # writes resume: nothing was restarted or reopened
            key, value = workload.next_write()
            storage.put(0, key, a_record(value))
            storage.sync()
            workload.acked[key] = value
            workload.assert_readable(storage)
            assert storage.reopens_total == 0
        finally:
            storage.close()
        reopened = RocksStorage.open(mount_point / "db")
        try:
            workload.assert_readable(reopened)
        finally:
            reopened.close()


def _write_until_the_guard_refuses(
    storage: RocksStorage, guard: DiskGuard, workload: Workload
) -> InsufficientStorage:
    pending: dict[bytes, bytes] = {}
    for index in range(WRITES_MAX):
        guard.refresh()
        try:
            guard.check_value_write()
        except InsufficientStorage as refused:
            return refused
        key, value = workload.next_write()
        storage.put(0, key, a_record(value))
        pending[key] = value
        if index % 8 == 7:
            storage.sync()
            workload.acked.update(pending)
            pending.clear()
    raise AssertionError(f"{WRITES_MAX} writes never filled the file system")


def test_rocksdb_out_of_space_is_storage_full_until_space_is_freed(tmp_path: Path) -> None:
    with loop_fs(tmp_path) as mount_point:
        clock = FakeClock()
        (mount_point / "db").mkdir()
        storage = RocksStorage(
            mount_point / "db", write_buffer_bytes=WRITE_BUFFER_BYTES, monotonic_s=clock.now_s
        )
        filler = fill(mount_point, leave_bytes=6 * MIB)
        workload = Workload(seed=2)
        try:
            asyncio.run(_fill_free_and_resume(storage, workload, filler, clock))
        finally:
            storage.close()  # never raises
        reopened = RocksStorage.open(mount_point / "db")
        try:
            workload.assert_readable(reopened)
        finally:
            reopened.close()


class FakeClock:
    """RocksStorage's monotonic clock, moved by the test (reopens are rate-limited)."""

    def __init__(self) -> None:
        self.time_s = 1000.0

    def now_s(self) -> float:
        return self.time_s


async def _fill_free_and_resume(
    storage: RocksStorage, workload: Workload, filler: Path, clock: FakeClock
) -> None:
    committer = GroupCommitter(storage)
    committer.start()
    sweeper = Sweeper(storage, batch_max=16)
    storage.put(2, b"expired", Record((Sibling(b"x", "n1", 1, (), 1, expires_at_ms=5),)))
    first_error: StorageFull | None = None
    for _ in range(WRITES_MAX):
        key, value = workload.next_write()
        try:
            storage.put(0, key, a_record(value))
            await committer.durable()
        except StorageFull as exc:
            first_error = exc  # kept alive on purpose: it must not pin the DB
            break
        workload.acked[key] = value
    assert first_error is not None, f"{WRITES_MAX} writes never filled the file system"
    assert first_error.http_status == 507 and first_error.path == str(storage.path)
    assert "No space left on device" in first_error.reason
    assert storage.full_reason is not None
    with pytest.raises(StorageFull):  # no room to reopen: the next try is due in a second
        storage.put(0, b"refused", a_record(b"x"))
    with pytest.raises(StorageFull):
        await committer.durable()
    workload.assert_readable(storage)  # reads go on
    assert sweeper.sweep_once(now_ms=10) == 0, "a sweep stops quietly on a full disk"
    assert sweeper.full_total == 1 and storage.get(2, b"expired") is not None
    assert storage.reopens_total == 0

    os.remove(filler)
    with pytest.raises(StorageFull):  # space is back, but the next try is not due yet
        storage.put(0, b"refused", a_record(b"x"))
    scan = storage.scan(0)
    next(scan)  # an open scan pins the DB: no reopen until it is closed
    clock.time_s += REOPEN_RETRY_INTERVAL_S
    with pytest.raises(StorageFull):
        storage.put(0, b"refused", a_record(b"x"))
    scan.close()
    key, value = workload.next_write()
    storage.put(0, key, a_record(value))  # reopens: the space is back and no scan is open
    await committer.durable()
    workload.acked[key] = value
    assert storage.reopens_total == 1 and storage.full_reason is None
    assert sweeper.sweep_once(now_ms=10) == 1 and storage.get(2, b"expired") is None
    workload.assert_readable(storage)
    await committer.close()


def test_a_clean_close_then_a_start_on_a_full_disk_uses_the_ballast(tmp_path: Path) -> None:
    with loop_fs(tmp_path) as mount_point:
        database = mount_point / "db"
        workload = _write_with_the_ballast_in_place(mount_point, seed=3, closing_leaves_bytes=None)
        assert wal_bytes(database) < VALUE_BYTES, "a clean close leaves nothing to replay"
        filler = fill(mount_point, leave_bytes=0)
        _restart_from_the_ballast(mount_point, workload, filler)


def test_a_close_on_a_full_disk_then_a_start_replays_the_wal_from_the_ballast(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="dynakv.storage.rocks")
    with loop_fs(tmp_path) as mount_point:
        database = mount_point / "db"
        workload = _write_with_the_ballast_in_place(mount_point, seed=4, closing_leaves_bytes=0)
        assert any("storage close failed" in r.getMessage() for r in caplog.records)
        assert wal_bytes(database) >= len(workload.acked) * VALUE_BYTES, "the WAL must replay"
        filler = next(mount_point.glob("filler-*"))
        _restart_from_the_ballast(mount_point, workload, filler)


def _write_with_the_ballast_in_place(
    mount_point: Path, *, seed: int, closing_leaves_bytes: int | None
) -> Workload:
    """3 MiB acknowledged (under one write buffer: all of it in the WAL), then a
    close, on a full disk when ``closing_leaves_bytes`` is given. Never raises."""
    guard = DiskGuard(
        mount_point, node_id="n1", reserve_bytes=RESERVE_BYTES, ballast_bytes=BALLAST_BYTES
    )
    guard.refresh()
    assert (mount_point / BALLAST_NAME).stat().st_size == BALLAST_BYTES
    storage = RocksStorage.open(mount_point / "db", write_buffer_bytes=WRITE_BUFFER_BYTES)
    workload = Workload(seed)
    for _ in range(3 * MIB // VALUE_BYTES):
        key, value = workload.next_write()
        storage.put(0, key, a_record(value))
        storage.sync()
        workload.acked[key] = value
    if closing_leaves_bytes is not None:
        fill(mount_point, leave_bytes=closing_leaves_bytes)
    storage.close()
    return workload


def _restart_from_the_ballast(mount_point: Path, workload: Workload, filler: Path) -> None:
    database = mount_point / "db"
    assert free_bytes(mount_point) < 1 * MIB
    with pytest.raises(StorageFull):  # the control: without the ballast there is no room
        RocksStorage.open(database)
    guard = DiskGuard(
        mount_point, node_id="n1", reserve_bytes=RESERVE_BYTES, ballast_bytes=BALLAST_BYTES
    )
    storage = open_storage("rocksdb", database, disk=guard)  # releases the ballast first
    assert isinstance(storage, RocksStorage)
    try:
        assert not (mount_point / BALLAST_NAME).exists()
        workload.assert_readable(storage)
        guard.refresh()
        assert guard.is_low and guard.ballast_bytes == 0, "no room to make it again yet"
        filler.unlink()
        guard.refresh()
        assert guard.state == "ok" and guard.ballast_bytes == BALLAST_BYTES
        key, value = workload.next_write()
        storage.put(0, key, a_record(value))
        storage.sync()
        workload.acked[key] = value
    finally:
        storage.close()
    reopened = RocksStorage.open(database)
    try:
        workload.assert_readable(reopened)
    finally:
        reopened.close()


# --- a real node on a full disk ---------------------------------------------

NODE_FS_BYTES = 384 * MIB
NODE_RESERVE_BYTES = 96 * MIB  # above RocksDB's 64 MiB write buffer: its flushes fit
N2 = 1  # the cluster index of n2, whose data directory is on the loop file system


def test_a_cluster_node_on_a_full_disk_refuses_values_and_recovers(tmp_path: Path) -> None:
    """n2's data directory on a small file system: below the reserve it refuses
    values (the others take the writes), stores tombstones, serves reads; filled
    to the brim it stops cleanly and starts again (the ballast); freed, it takes
    writes again with no restart. Every acknowledged write stays readable."""
    reason = _loop_fs_unavailable()
    if reason is not None:
        pytest.skip(reason)
    base = free_port_block(6)
    spec = DevCluster(
        data_dir=tmp_path / "cluster", nodes=3, http_base_port=base, rpc_base_port=base + 3
    )
    spec.data_dir.mkdir(parents=True)
    spec.write_configs()
    with loop_fs(tmp_path, NODE_FS_BYTES) as disk:
        for node_id in spec.node_ids():
            config = spec.data_dir / node_id / "node.toml"
            text = config.read_text() + (
                f"\n[limits]\ndisk_reserve_bytes = {NODE_RESERVE_BYTES}\n"
                "\n[timing]\ndisk_check_interval_ms = 100\n"
            )
            if node_id == "n2":
                text = text.replace(
                    f'data_dir = "{(spec.data_dir / node_id).resolve()}"', f'data_dir = "{disk}"'
                )
                assert str(disk) in text
            config.write_text(text)
        cluster = Cluster(spec)
        try:
            for index in range(3):
                cluster.start(index)
            for index in range(3):
                cluster.wait_healthy(index)
            if "disk" not in cluster.request(N2, "GET", "/v1/status").json():
                pytest.skip("the node does not report its DiskGuard in /v1/status yet")
            _full_disk_scenario(cluster, disk)
        finally:
            cluster.stop_all()


def _disk(cluster: Cluster) -> dict[str, Any]:
    disk: dict[str, Any] = cluster.request(N2, "GET", "/v1/status").json()["disk"]
    return disk


def _full_disk_scenario(cluster: Cluster, disk: Path) -> None:
    acked: dict[bytes, bytes] = {}
    for index in range(40):
        key, value = b"before-%d" % index, random.Random(index).randbytes(1024)
        assert cluster.put(0, key, value, query="consistency=all").status == 204
        acked[key] = value
    assert _disk(cluster)["state"] == "ok"

    # Below the reserve: n2 refuses values, the others take them; tombstones and reads go on.
    fill(disk, leave_bytes=NODE_RESERVE_BYTES // 2)
    wait_for(lambda: _disk(cluster)["state"] == "low", "n2 to see its disk low")
    status = _disk(cluster)
    assert status["free_bytes"] < status["reserve_bytes"] == NODE_RESERVE_BYTES
    assert cluster.put(0, b"while-low", b"v", query="consistency=quorum").status == 204
    acked[b"while-low"] = b"v"
    assert cluster.local(N2, b"while-low") is None, "n2 stored a value below its reserve"
    refused = cluster.put(N2, b"refused", b"v", query="consistency=all")
    assert refused.status == 507, refused
    deleted = b"before-0"
    assert cluster.delete(0, deleted, query="consistency=all").status == 204
    del acked[deleted]
    record = cluster.local(N2, deleted)
    assert record is not None and all(s["tombstone"] for s in record["siblings"])
    _assert_readable(cluster, acked, deleted)

    # Filled to the brim: a graceful stop exits 0, and the node starts again.
    fill(disk, leave_bytes=0)
    assert cluster.stop(N2) == 0, "a graceful stop on a full disk must exit 0"
    cluster.start(N2)
    cluster.wait_healthy(N2)
    assert _disk(cluster)["state"] == "low"
    for key, value in acked.items():
        if key == b"while-low":
            continue  # n2 refused it
        local = cluster.local(N2, key)
        stored = [base64.b64decode(s["value"]) for s in local["siblings"] if s["value"]]
        assert stored == [value], f"n2 lost {key!r} across the restart"

    # Freed: writes resume without a restart, and the ballast comes back.
    for filler in disk.glob("filler-*"):
        filler.unlink()
    wait_for(lambda: _disk(cluster)["state"] == "ok", "n2 to see its disk ok again")
    wait_for(lambda: _disk(cluster)["ballast_bytes"] > 0, "n2 to make its ballast again")
    assert cluster.put(N2, b"after", b"v", query="consistency=all").status == 204
    acked[b"after"] = b"v"
    assert cluster.local(N2, b"after") is not None
    _assert_readable(cluster, acked, deleted)


def _assert_readable(cluster: Cluster, acked: dict[bytes, bytes], deleted: bytes) -> None:
    for index in range(3):
        assert cluster.get(index, deleted).status == 404
        for key, value in acked.items():
            response = cluster.get(index, key)
            assert (response.status, response.body) == (200, value), (index, key)
