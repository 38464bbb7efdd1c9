"""``DiskGuard``: the data directory's free space, its state, and the ballast.

Owns the node's view of the file system holding its data directory: free and
total bytes (one ``statvfs`` per ``refresh``), the state against the reserve,
and the *ballast*, a preallocated file that keeps space for a start-up.

Invariants:

- ``state`` is "low" exactly when ``free_bytes < reserve_bytes`` at the last
  refresh. While low, ``check_value_write`` raises ``InsufficientStorage``
  (507, naming the node and its free bytes). The caller checks only writes
  that carry a live value: reads, deletes and tombstone replication go on,
  and use the reserve. Writes resume at the first refresh that finds the
  space back: no restart.
- One WARNING when the state turns low, one INFO when it turns ok again.
- The ballast, ``reserve.ballast`` in the data directory, is
  ``ballast_bytes`` allocated (``posix_fallocate``) so nothing else can take
  that space. ``release_ballast_for_open`` deletes it before the engine
  opens when the free space is below what the open may write (RocksDB
  replays its WAL into a new table file), so a node restarts on a disk that
  filled up. ``refresh`` (re)creates it only when ``free_bytes >=
  reserve_bytes + the bytes it adds``, so creating it never turns the state
  low.
- The ballast does not back the running node. While running, the reserve is
  RocksDB's room (flushes, compactions, tombstones); space given back at run
  time would go to whatever is filling the disk, and the restart that needs
  it most would find none. A graceful stop on a full disk needs no space
  either: the engine's close logs its failed flush and the next open replays
  the (fsynced) WAL, from the ballast if need be.

Never raises from ``refresh`` (a failed ``statvfs`` or ``fallocate`` is
logged and the last reading stands); never touches any file but its ballast.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Final, Literal, Protocol

from dynakv.errors import InsufficientStorage

log = logging.getLogger(__name__)

BALLAST_NAME: Final = "reserve.ballast"
BALLAST_BYTES_MAX_DEFAULT: Final = 64 * 1024 * 1024
# After a failed ballast allocation, refreshes to skip before the next try.
BALLAST_RETRY_REFRESHES: Final = 60
_NO_SPACE_MARKERS: Final = ("no space left on device", "os error 28", "enospc")

State = Literal["ok", "low"]


class FsStats(Protocol):
    """The part of ``os.statvfs_result`` we read."""

    @property
    def f_bavail(self) -> int: ...
    @property
    def f_blocks(self) -> int: ...
    @property
    def f_frsize(self) -> int: ...


def default_ballast_bytes(reserve_bytes: int) -> int:
    """A quarter of the reserve, at most 64 MiB: room for a WAL replay at start-up
    (a WAL this node fills stays near RocksDB's 64 MiB write buffer), small
    beside the reserve it is carved from."""
    return min(BALLAST_BYTES_MAX_DEFAULT, reserve_bytes // 4)


def free_bytes(path: Path) -> int:
    """Bytes available to us on the file system holding ``path`` (or its nearest parent)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    stats = os.statvfs(probe)
    return stats.f_bavail * stats.f_frsize


def is_no_space(reason: str) -> bool:
    """Whether an error text (RocksDB status, OSError) says the file system is full."""
    lowered = reason.lower()
    return any(marker in lowered for marker in _NO_SPACE_MARKERS)


class DiskGuard:
    def __init__(
        self,
        path: Path,
        *,
        node_id: str,
        reserve_bytes: int,
        ballast_bytes: int | None = None,
        statvfs: Callable[[Path], FsStats] = os.statvfs,
    ) -> None:
        """Watch the file system of the data directory ``path`` (created if missing).

        ``ballast_bytes`` defaults to ``default_ballast_bytes(reserve_bytes)``;
        0 disables the ballast. Takes one reading; creates no ballast yet.
        """
        assert reserve_bytes >= 0, reserve_bytes
        self.path = path
        self.node_id = node_id
        self.reserve_bytes = reserve_bytes
        self.ballast_target_bytes = (
            default_ballast_bytes(reserve_bytes) if ballast_bytes is None else ballast_bytes
        )
        assert self.ballast_target_bytes >= 0, self.ballast_target_bytes
        self.ballast_path = path / BALLAST_NAME
        self._statvfs = statvfs
        path.mkdir(parents=True, exist_ok=True)
        self._free_bytes = 0
        self._total_bytes = 0
        self._state: State = "ok"
        self._statvfs_failing = False
        self._ballast_retry_in = 0
        self._ballast_bytes = self._ballast_size_on_disk()
        self._sample()

    @property
    def free_bytes(self) -> int:
        return self._free_bytes

    @property
    def total_bytes(self) -> int:
        return self._total_bytes

    @property
    def ballast_bytes(self) -> int:
        """Bytes the ballast holds now (0 when released or not yet created)."""
        return self._ballast_bytes

    @property
    def state(self) -> State:
        return self._state

    @property
    def is_low(self) -> bool:
        return self._state == "low"

    def refresh(self) -> None:
        """Read the free space again; (re)create the ballast when there is room."""
        self._sample()
        self._maintain_ballast()

    def check_value_write(self) -> None:
        """Raise ``InsufficientStorage`` while free space is below the reserve."""
        if self._state == "low":
            raise self.insufficient()

    def insufficient(self) -> InsufficientStorage:
        return InsufficientStorage(
            node=self.node_id, free_bytes=self._free_bytes, reserve_bytes=self.reserve_bytes
        )

    def status(self) -> dict[str, object]:
        return {
            "state": self._state,
            "free_bytes": self._free_bytes,
            "total_bytes": self._total_bytes,
            "reserve_bytes": self.reserve_bytes,
            "ballast_bytes": self._ballast_bytes,
        }

    def release_ballast_for_open(self, needed_bytes: int) -> bool:
        """Before the engine opens: delete the ballast if free space is below
        ``needed_bytes`` (what the open may write). True if it was released."""
        self._sample()
        free_before_bytes = self._free_bytes
        if free_before_bytes >= needed_bytes or self._ballast_bytes == 0:
            return False
        self._remove_ballast()
        self._sample()
        log.warning(
            "disk ballast released for start-up node=%s free_bytes=%d (was %d) needed_bytes=%d",
            self.node_id,
            self._free_bytes,
            free_before_bytes,
            needed_bytes,
        )
        return True

    # --- internals -----------------------------------------------------------

    def _sample(self) -> None:
        try:
            stats = self._statvfs(self.path)
        except OSError as exc:
            if not self._statvfs_failing:
                log.error(
                    "disk check failed node=%s path=%s error=%s", self.node_id, self.path, exc
                )
            self._statvfs_failing = True
            return
        self._statvfs_failing = False
        self._free_bytes = stats.f_bavail * stats.f_frsize
        self._total_bytes = stats.f_blocks * stats.f_frsize
        state: State = "low" if self._free_bytes < self.reserve_bytes else "ok"
        if state == self._state:
            return
        self._state = state
        if state == "low":
            log.warning(
                "disk low: refusing writes of values node=%s free_bytes=%d reserve_bytes=%d",
                self.node_id,
                self._free_bytes,
                self.reserve_bytes,
            )
        else:
            log.info(
                "disk ok: accepting writes again node=%s free_bytes=%d reserve_bytes=%d",
                self.node_id,
                self._free_bytes,
                self.reserve_bytes,
            )

    def _maintain_ballast(self) -> None:
        missing_bytes = self.ballast_target_bytes - self._ballast_bytes
        if missing_bytes < 0:  # the configured size shrank since it was made
            self._remove_ballast()
            missing_bytes = self.ballast_target_bytes
        if missing_bytes == 0 or self._statvfs_failing:
            return
        if self._ballast_retry_in > 0:
            self._ballast_retry_in -= 1
            return
        if self._free_bytes < self.reserve_bytes + missing_bytes:
            return
        try:
            with self.ballast_path.open("ab") as ballast:
                os.posix_fallocate(ballast.fileno(), 0, self.ballast_target_bytes)
        except OSError as exc:
            log.warning("disk ballast not created node=%s error=%s", self.node_id, exc)
            self._ballast_retry_in = BALLAST_RETRY_REFRESHES
            self._remove_ballast()
            self._sample()
            return
        self._ballast_bytes = self.ballast_target_bytes
        log.info(
            "disk ballast in place node=%s ballast_bytes=%d", self.node_id, self._ballast_bytes
        )
        self._sample()

    def _remove_ballast(self) -> None:
        try:
            self.ballast_path.unlink(missing_ok=True)
        except OSError as exc:
            log.error("disk ballast not removed node=%s error=%s", self.node_id, exc)
            return
        self._ballast_bytes = 0

    def _ballast_size_on_disk(self) -> int:
        try:
            return self.ballast_path.stat().st_size
        except FileNotFoundError:
            return 0
