"""DiskGuard: the reserve's thresholds, recovery, one log line per transition,
status, and the ballast (made only with room to spare, released for an open).

A fake ``statvfs`` gives exact byte counts; the ballast is a real file in a
temporary directory, and the fake counts its size as used space, so creating
or releasing it moves the free space the way a real file system does.
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynakv.errors import InsufficientStorage, UnavailableError
from dynakv.storage import diskspace
from dynakv.storage.diskspace import (
    BALLAST_BYTES_MAX_DEFAULT,
    BALLAST_NAME,
    BALLAST_RETRY_REFRESHES,
    DiskGuard,
    default_ballast_bytes,
    is_no_space,
)

RESERVE = 1_000_000
BALLAST = 64 * 1024
LOGGER = "dynakv.storage.diskspace"


@dataclass(frozen=True, slots=True)
class Stats:
    f_bavail: int
    f_blocks: int
    f_frsize: int


class FakeFs:
    """A file system of ``total_bytes`` with ``other_bytes`` used by others,
    plus whatever the ballast file holds; ``failing`` makes statvfs raise."""

    def __init__(self, root: Path, *, total_bytes: int, other_bytes: int) -> None:
        self.root = root
        self.total_bytes = total_bytes
        self.other_bytes = other_bytes
        self.failing = False
        self.calls = 0

    def set_free(self, free_bytes: int) -> None:
        """Make ``free_bytes`` free, counting the ballast as it is now."""
        self.other_bytes = self.total_bytes - self.ballast_on_disk() - free_bytes

    def ballast_on_disk(self) -> int:
        ballast = self.root / BALLAST_NAME
        return ballast.stat().st_size if ballast.exists() else 0

    def statvfs(self, path: Path) -> Stats:
        assert path == self.root
        self.calls += 1
        if self.failing:
            raise OSError(errno.EIO, "Input/output error")
        free = self.total_bytes - self.other_bytes - self.ballast_on_disk()
        return Stats(f_bavail=free, f_blocks=self.total_bytes, f_frsize=1)


def make_guard(
    tmp_path: Path, free_bytes: int, *, ballast_bytes: int = 0
) -> tuple[DiskGuard, FakeFs]:
    fs = FakeFs(tmp_path, total_bytes=100 * RESERVE, other_bytes=0)
    fs.set_free(free_bytes)
    guard = DiskGuard(
        tmp_path,
        node_id="n1",
        reserve_bytes=RESERVE,
        ballast_bytes=ballast_bytes,
        statvfs=fs.statvfs,
    )
    return guard, fs


def records_at(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == level]


# --- the reserve -------------------------------------------------------------


@pytest.mark.parametrize(
    ("free_bytes", "low"), [(RESERVE - 1, True), (RESERVE, False), (RESERVE + 1, False)]
)
def test_low_exactly_below_the_reserve(tmp_path: Path, free_bytes: int, low: bool) -> None:
    guard, _ = make_guard(tmp_path, free_bytes)
    assert guard.is_low is low
    assert guard.state == ("low" if low else "ok")
    assert guard.free_bytes == free_bytes
    if not low:
        guard.check_value_write()
        return
    with pytest.raises(InsufficientStorage) as caught:
        guard.check_value_write()
    error = caught.value
    assert isinstance(error, UnavailableError) and error.http_status == 507
    assert (error.node, error.free_bytes, error.reserve_bytes) == ("n1", free_bytes, RESERVE)
    assert "n1" in str(error) and str(free_bytes) in str(error)


def test_one_statvfs_per_refresh(tmp_path: Path) -> None:
    guard, fs = make_guard(tmp_path, 2 * RESERVE)
    before = fs.calls
    guard.refresh()
    assert fs.calls == before + 1


def test_writes_resume_when_space_returns(tmp_path: Path) -> None:
    guard, fs = make_guard(tmp_path, 5 * RESERVE)
    guard.check_value_write()
    fs.set_free(RESERVE // 2)
    guard.check_value_write()  # not re-read yet: the last reading stands
    guard.refresh()
    with pytest.raises(InsufficientStorage):
        guard.check_value_write()
    fs.set_free(RESERVE)
    guard.refresh()
    guard.check_value_write()
    assert guard.status()["state"] == "ok"


def test_one_log_line_per_transition(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    guard, fs = make_guard(tmp_path, 5 * RESERVE)
    assert records_at(caplog, logging.WARNING) == []
    fs.set_free(RESERVE - 1)
    for _ in range(5):
        guard.refresh()
    warnings = records_at(caplog, logging.WARNING)
    assert len(warnings) == 1 and "n1" in warnings[0].getMessage()
    assert str(RESERVE - 1) in warnings[0].getMessage()
    fs.set_free(RESERVE + 1)
    for _ in range(5):
        guard.refresh()
    infos = [r for r in records_at(caplog, logging.INFO) if "disk ok" in r.getMessage()]
    assert len(infos) == 1
    fs.set_free(0)
    guard.refresh()
    assert len(records_at(caplog, logging.WARNING)) == 2


def test_starting_low_logs_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    guard, _ = make_guard(tmp_path, 10)
    guard.refresh()
    assert guard.is_low and len(records_at(caplog, logging.WARNING)) == 1


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=3 * RESERVE), min_size=1, max_size=30))
def test_state_follows_a_reference_model(
    tmp_path_factory: pytest.TempPathFactory, frees: list[int]
) -> None:
    """Against the dumb model: low iff free < reserve; one WARNING per turn to low."""
    root = tmp_path_factory.mktemp("guard")
    fs = FakeFs(root, total_bytes=4 * RESERVE, other_bytes=4 * RESERVE)  # starts at 0 free
    handler = _Collect()
    logging.getLogger(LOGGER).addHandler(handler)
    try:
        guard = DiskGuard(
            root, node_id="n1", reserve_bytes=RESERVE, ballast_bytes=0, statvfs=fs.statvfs
        )
        expected_warnings, low = 1, True
        for free in frees:
            fs.set_free(free)
            guard.refresh()
            expected_warnings += int(free < RESERVE and not low)
            low = free < RESERVE
            assert guard.is_low is low and guard.free_bytes == free
        assert handler.count(logging.WARNING) == expected_warnings
    finally:
        logging.getLogger(LOGGER).removeHandler(handler)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.levels: list[int] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.levels.append(record.levelno)

    def count(self, level: int) -> int:
        return self.levels.count(level)


def test_a_failing_statvfs_keeps_the_last_reading(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    guard, fs = make_guard(tmp_path, RESERVE - 5)
    fs.failing = True
    for _ in range(3):
        guard.refresh()  # never raises
    assert guard.is_low and guard.free_bytes == RESERVE - 5
    assert len(records_at(caplog, logging.ERROR)) == 1
    fs.failing = False
    fs.set_free(2 * RESERVE)
    guard.refresh()
    assert not guard.is_low


def test_status(tmp_path: Path) -> None:
    guard, _ = make_guard(tmp_path, RESERVE - 1)
    assert guard.status() == {
        "state": "low",
        "free_bytes": RESERVE - 1,
        "total_bytes": 100 * RESERVE,
        "reserve_bytes": RESERVE,
        "ballast_bytes": 0,
    }


# --- the ballast -------------------------------------------------------------


def test_default_ballast_is_a_quarter_of_the_reserve_up_to_64_mib(tmp_path: Path) -> None:
    assert default_ballast_bytes(RESERVE) == RESERVE // 4
    assert default_ballast_bytes(256 * 1024 * 1024) == BALLAST_BYTES_MAX_DEFAULT == 64 << 20
    assert default_ballast_bytes(0) == 0
    fs = FakeFs(tmp_path, total_bytes=100 * RESERVE, other_bytes=0)
    guard = DiskGuard(tmp_path, node_id="n1", reserve_bytes=RESERVE, statvfs=fs.statvfs)
    assert guard.ballast_target_bytes == RESERVE // 4


@pytest.mark.parametrize(("spare_bytes", "made"), [(-1, False), (0, True), (1, True)])
def test_ballast_made_only_with_room_beyond_the_reserve(
    tmp_path: Path, spare_bytes: int, made: bool
) -> None:
    guard, _ = make_guard(tmp_path, RESERVE + BALLAST + spare_bytes, ballast_bytes=BALLAST)
    assert guard.ballast_bytes == 0, "the constructor never creates it"
    guard.refresh()
    ballast = tmp_path / BALLAST_NAME
    assert ballast.exists() is made
    assert guard.ballast_bytes == (BALLAST if made else 0)
    if made:
        assert ballast.stat().st_size == BALLAST
        assert ballast.stat().st_blocks * 512 >= BALLAST, "allocated, not sparse"
        assert guard.free_bytes == RESERVE + spare_bytes
    assert not guard.is_low, "making the ballast never turns the state low"


def test_ballast_released_for_an_open_that_needs_the_room(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    guard, fs = make_guard(tmp_path, 3 * RESERVE, ballast_bytes=BALLAST)
    guard.refresh()
    assert guard.ballast_bytes == BALLAST
    fs.set_free(1000)  # something else filled the disk
    assert guard.release_ballast_for_open(needed_bytes=1000) is False
    assert (tmp_path / BALLAST_NAME).exists()
    assert guard.release_ballast_for_open(needed_bytes=1001) is True
    assert not (tmp_path / BALLAST_NAME).exists()
    assert guard.ballast_bytes == 0 and guard.free_bytes == 1000 + BALLAST
    assert any("released" in r.getMessage() for r in records_at(caplog, logging.WARNING))
    assert guard.release_ballast_for_open(needed_bytes=10 * RESERVE) is False, "nothing left"


def test_ballast_made_again_once_space_returns(tmp_path: Path) -> None:
    guard, fs = make_guard(tmp_path, 3 * RESERVE, ballast_bytes=BALLAST)
    guard.refresh()
    fs.set_free(10)
    guard.release_ballast_for_open(needed_bytes=RESERVE)
    for free in (RESERVE, RESERVE + BALLAST - 1):
        fs.set_free(free)
        guard.refresh()
        assert guard.ballast_bytes == 0
    fs.set_free(RESERVE + BALLAST)
    guard.refresh()
    assert guard.ballast_bytes == BALLAST and (tmp_path / BALLAST_NAME).stat().st_size == BALLAST
    assert guard.state == "ok"


def test_an_existing_ballast_is_adopted_and_a_shrunk_one_remade(tmp_path: Path) -> None:
    guard, _ = make_guard(tmp_path, 3 * RESERVE, ballast_bytes=2 * BALLAST)
    guard.refresh()
    assert (tmp_path / BALLAST_NAME).stat().st_size == 2 * BALLAST
    again, _ = make_guard(tmp_path, 3 * RESERVE, ballast_bytes=2 * BALLAST)
    assert again.ballast_bytes == 2 * BALLAST
    smaller, _ = make_guard(tmp_path, 3 * RESERVE, ballast_bytes=BALLAST)
    smaller.refresh()
    assert (tmp_path / BALLAST_NAME).stat().st_size == BALLAST == smaller.ballast_bytes


def test_a_failed_allocation_backs_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[int] = []

    def no_space(fd: int, offset: int, length: int) -> None:
        attempts.append(length)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(diskspace.os, "posix_fallocate", no_space)
    guard, _ = make_guard(tmp_path, 3 * RESERVE, ballast_bytes=BALLAST)
    guard.refresh()
    assert attempts == [BALLAST] and not (tmp_path / BALLAST_NAME).exists()
    for _ in range(BALLAST_RETRY_REFRESHES):
        guard.refresh()
    assert len(attempts) == 1
    guard.refresh()
    assert len(attempts) == 2


def test_zero_ballast_is_never_made(tmp_path: Path) -> None:
    guard, _ = make_guard(tmp_path, 50 * RESERVE, ballast_bytes=0)
    guard.refresh()
    assert not (tmp_path / BALLAST_NAME).exists()
    assert guard.release_ballast_for_open(needed_bytes=100 * RESERVE) is False


def test_no_space_texts() -> None:
    assert is_no_space(
        "IO error: No space left on device: While appending to file: /d/000004.log: "
        "No space left on device"
    )
    assert is_no_space("No space left on device (os error 28)")
    assert not is_no_space("IO error: Writer has previous error.")
    assert not is_no_space("IO error: Input/output error")
