"""`dynakv dev` (what `make run` calls) and the client commands, as a user runs them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dynakv.node.dev import is_healthy
from tests.integration.conftest import free_port_block, wait_for

pytestmark = pytest.mark.integration


def _dynakv(
    *args: str, endpoints: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "dynakv", *args, "--endpoints", endpoints],
        input=stdin,
        capture_output=True,
        timeout=30,
        check=False,
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.split(") ", 1)[1][0] != "Z"


def test_dev_cluster_serves_the_cli_and_stops_on_sigterm(tmp_path: Path) -> None:
    base = free_port_block(6)
    log_path = tmp_path / "dev.out"
    with log_path.open("wb") as log:
        dev = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dynakv",
                "dev",
                "--data-dir",
                str(tmp_path / "dev"),
                "--http-base-port",
                str(base),
                "--rpc-base-port",
                str(base + 3),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    node_pids: list[int] = []
    try:
        wait_for(lambda: "Ctrl-C stops every node" in log_path.read_text(), "dev banner")
        node_pids = [int(p) for p in re.findall(r"pid (\d+)", log_path.read_text())]
        assert len(node_pids) == 3
        assert all(is_healthy("127.0.0.1", base + i) for i in range(3))
        endpoints = ",".join(f"127.0.0.1:{base + i}" for i in range(3))

        put = _dynakv("put", "cli-key", "cli-value", endpoints=endpoints)
        assert put.returncode == 0, put.stderr
        got = _dynakv("get", "cli-key", "--consistency", "all", endpoints=endpoints)
        assert (got.returncode, got.stdout) == (0, b"cli-value"), got.stderr
        from_stdin = _dynakv("put", "stdin-key", endpoints=endpoints, stdin=b"\x00bytes")
        assert from_stdin.returncode == 0
        assert _dynakv("get", "stdin-key", endpoints=endpoints).stdout == b"\x00bytes"
        assert _dynakv("delete", "cli-key", endpoints=endpoints).returncode == 0
        assert _dynakv("get", "cli-key", endpoints=endpoints).returncode == 3
        status = _dynakv("status", endpoints=endpoints)
        assert status.returncode == 0, status.stderr
        assert b"n1" in status.stdout and b"n3" in status.stdout
        bad = _dynakv("get", "k" * 3000, endpoints=endpoints)
        assert bad.returncode == 1 and b"KeyTooLarge" in bad.stderr
    finally:
        dev.send_signal(signal.SIGTERM)
        assert dev.wait(timeout=30) == 0, log_path.read_text()
    assert "all nodes stopped." in log_path.read_text()
    for pid in node_pids:
        wait_for(lambda pid=pid: not _pid_alive(pid), f"node pid {pid} to exit", timeout_s=10)
