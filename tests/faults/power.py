"""Power loss for a node's data directory: a loop-mounted XFS of its own,
cut with ``xfs_io -x -c shutdown``.

Owns the disks of one run: a sparse image per node (``dkvf<pid>-<name>.xfs``,
at least ``XFS_BYTES_MIN``: mkfs.xfs refuses smaller), its loop device, and
its mount point. ``cut_power`` shuts the file system down *without* flushing
its log, so whatever was not fsynced is gone once it is unmounted and mounted
again (log recovery), and whatever was fsynced survives: a power cut, without
cutting the machine's.

Invariants: a disk is always unmounted and its loop device detached on exit
from ``disks`` (lazily if something still holds it after a deadline); a run
removes the loop devices of runs whose process is gone. Every command and
every retry loop is bounded in time.
Must never: touch a mount or loop device whose image is not one of ours.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from tests.faults.netns import PREFIX, CommandFailed, alive, run

XFS_BYTES_MIN: Final = 300 * 1024 * 1024
UNMOUNT_DEADLINE_S: Final = 20.0
REMOUNT_ATTEMPTS_MAX: Final = 3
_STALE = re.compile(rf"^{PREFIX}(\d+)-.*\.xfs$")


@dataclass(frozen=True, slots=True)
class Disk:
    """One node's file system: ``mount_point`` is its data directory."""

    image: Path
    device: str
    mount_point: Path


@contextlib.contextmanager
def disks(directory: Path, names: list[str], size_bytes: int) -> Iterator[list[Disk]]:
    """A fresh XFS per name, mounted at ``directory/<name>``; released on exit."""
    assert size_bytes >= XFS_BYTES_MIN, f"XFS needs at least {XFS_BYTES_MIN} bytes"
    remove_stale_disks()
    made: list[Disk] = []
    try:
        for name in names:
            made.append(_make(directory, name, size_bytes))
        yield made
    finally:
        for disk in made:
            release(disk)


def _make(directory: Path, name: str, size_bytes: int) -> Disk:
    image = directory / f"{PREFIX}{os.getpid()}-{name}.xfs"
    with image.open("wb") as file:
        file.truncate(size_bytes)  # sparse: costs only what is written
    run("mkfs.xfs", "-q", "-f", str(image))
    device = run("losetup", "--find", "--show", str(image)).strip()
    disk = Disk(image=image, device=device, mount_point=directory / name)
    try:
        disk.mount_point.mkdir(exist_ok=True)
        run("mount", device, str(disk.mount_point))
    except BaseException:
        _detach(device)
        raise
    return disk


def cut_power(disk: Disk) -> None:
    """Shut the file system down as a power cut would: the log is not flushed,
    so nothing that was not fsynced reaches the image. Every later I/O on it
    fails (EIO) until it is unmounted and mounted again."""
    run("xfs_io", "-x", "-c", "shutdown", str(disk.mount_point))


def remount(disk: Disk) -> None:
    """Unmount (every process using it must be gone) and mount again; the
    mount replays the log, as a boot after the power cut would. The mount must
    answer (a stat of its root) before this returns; a mount still showing the
    shut-down file system is unmounted and mounted again, a bounded few times."""
    for _attempt in range(REMOUNT_ATTEMPTS_MAX):
        unmount(disk.mount_point, lazy_fallback=False)
        run("mount", disk.device, str(disk.mount_point))
        try:
            os.stat(disk.mount_point)
            return
        except OSError:
            time.sleep(0.2)  # retry pacing of a bounded loop
    raise CommandFailed(f"{disk.mount_point} still fails after {REMOUNT_ATTEMPTS_MAX} remounts")


def is_mounted(mount_point: Path) -> bool:
    """From the mount table: ``os.path.ismount`` stats the path, which fails
    (EIO) on a file system that was shut down."""
    target = str(mount_point).replace(" ", "\\040")
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == target for line in mounts if line.strip())


def unmount(mount_point: Path, *, lazy_fallback: bool = True) -> None:
    """Unmount, retrying while the kernel still holds it (a process that just
    died); past the deadline detach lazily, or raise if not ``lazy_fallback``."""
    deadline = time.monotonic() + UNMOUNT_DEADLINE_S
    while is_mounted(mount_point):
        try:
            run("umount", str(mount_point))
            return
        except CommandFailed:
            if time.monotonic() > deadline:
                if not lazy_fallback:
                    raise
                run("umount", "--lazy", str(mount_point))
                return
            time.sleep(0.1)  # retry pacing of a bounded loop


def release(disk: Disk) -> None:
    """Unmount and detach; never raises (it runs in ``finally``)."""
    with contextlib.suppress(CommandFailed, subprocess.TimeoutExpired):
        unmount(disk.mount_point)
    _detach(disk.device)


def _detach(device: str) -> None:
    """Detach a loop device (if still mounted somewhere, once it is unmounted)."""
    subprocess.run(["losetup", "-d", device], check=False, capture_output=True, timeout=30)


def remove_stale_disks() -> list[str]:
    """Unmount and detach the loop devices of fault runs whose process is gone.
    Returns the devices released."""
    listing = subprocess.run(
        ["losetup", "--list", "--json", "--output", "NAME,BACK-FILE"],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if listing.returncode != 0 or not listing.stdout.strip():
        return []
    released = []
    for device in json.loads(listing.stdout).get("loopdevices", []):
        back_file = (device.get("back-file") or "").split(" ")[0]
        match = _STALE.match(Path(back_file).name)
        if match is None or alive(int(match.group(1))):
            continue
        for mount_point in _mount_points(device["name"]):
            with contextlib.suppress(CommandFailed):
                unmount(mount_point)
        _detach(device["name"])
        released.append(device["name"])
    return released


def _mount_points(device: str) -> list[Path]:
    result = subprocess.run(
        ["findmnt", "--list", "--noheadings", "--output", "TARGET", "--source", device],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return [Path(line) for line in result.stdout.splitlines() if line.strip()]
