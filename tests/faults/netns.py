"""The fault suite's network: hosts in network namespaces on a private bridge,
partitions made with iptables, and client sockets opened on the bridge's side.

Owns, for one run (names carry the creating process's PID, ``dkvf<pid>-``)::

    dkvf<pid>-br   a bridge br0 with CLIENT_ADDRESS (10.77.0.1/24): the clients' host
    dkvf<pid>-n1   eth0 = 10.77.0.11/24, a veth whose peer is a port of br0
    dkvf<pid>-n2   eth0 = 10.77.0.12/24 ...

Every interface, address and rule lives in a namespace this module made, so
each run may use the same /24; inside a node's namespace its own address is
the only one on the wire, so peers see the right source with no binding.

Faults are rules in the *receiver's* INPUT chain, as FAULTS.md found works: a
drop of every packet from a source (a partition), or of TCP SYNs only (a one-way
cut: the source can no longer connect to the receiver, the receiver can still
connect to it, and connections already open stay up). ``heal`` flushes them.

The test process stays in the machine's namespace: ``open_socket`` makes a
socket inside the bridge namespace (``setns`` on the calling thread, then
back), after which it is an ordinary socket any thread may use.

Invariants: teardown deletes every namespace it made (killing by PID whatever
still runs in one first); a run removes the namespaces of runs whose process
is gone, never those of a live one; every command has a timeout.
Must never: touch the machine's own interfaces, routes or firewall, or run
iptables outside a namespace it made.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import socket
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final

PREFIX: Final = "dkvf"
SUBNET: Final = "10.77.0"
CLIENT_ADDRESS: Final = f"{SUBNET}.1"
NODE_HOST_BASE: Final = 11
NODES_MAX: Final = 32
COMMAND_TIMEOUT_S: Final = 30.0
_CLONE_NEWNET: Final = 0x40000000
_STALE = re.compile(rf"^{PREFIX}(\d+)-")


class CommandFailed(RuntimeError):
    """A harness command exited non-zero; the message has its argv and stderr."""


def run(*argv: str) -> str:
    """Run one command (bounded in time); its stdout, or CommandFailed."""
    result = subprocess.run(
        argv, check=False, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S
    )
    if result.returncode != 0:
        raise CommandFailed(f"{' '.join(argv)}: exit {result.returncode}: {result.stderr.strip()}")
    return result.stdout


@dataclass(frozen=True, slots=True)
class Network:
    """One run's namespaces: the bridge (the clients' host) and ``size`` nodes."""

    run_id: str
    size: int

    @property
    def bridge_namespace(self) -> str:
        return f"{self.run_id}-br"

    def namespace(self, index: int) -> str:
        assert 0 <= index < self.size, index
        return f"{self.run_id}-n{index + 1}"

    def address(self, index: int) -> str:
        assert 0 <= index < self.size, index
        return f"{SUBNET}.{NODE_HOST_BASE + index}"

    def namespaces(self) -> list[str]:
        return [*(self.namespace(i) for i in range(self.size)), self.bridge_namespace]

    def exec_argv(self, index: int, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside node ``index``'s namespace. ``ip netns exec``
        execs the command itself, so the PID is the command's, not a wrapper's."""
        return ["ip", "netns", "exec", self.namespace(index), *argv]


# --- life cycle ---------------------------------------------------------------


@contextlib.contextmanager
def network(size: int) -> Iterator[Network]:
    """A fresh network of ``size`` nodes, always torn down on exit."""
    assert 1 <= size <= NODES_MAX, size
    remove_stale_namespaces()
    net = Network(run_id=f"{PREFIX}{os.getpid()}", size=size)
    try:
        _build(net)
        yield net
    finally:
        teardown(net)


def _build(net: Network) -> None:
    bridge = net.bridge_namespace
    run("ip", "netns", "add", bridge)
    run("ip", "-n", bridge, "link", "set", "lo", "up")
    run("ip", "-n", bridge, "link", "add", "br0", "type", "bridge")
    run("ip", "-n", bridge, "addr", "add", f"{CLIENT_ADDRESS}/24", "dev", "br0")
    run("ip", "-n", bridge, "link", "set", "br0", "up")
    for index in range(net.size):
        namespace, port = net.namespace(index), f"p{index + 1}"
        run("ip", "netns", "add", namespace)
        # Both ends are created directly in their namespaces: nothing appears,
        # even for a moment, among the machine's own interfaces.
        run(
            "ip", "link", "add", "eth0", "netns", namespace,
            "type", "veth", "peer", "name", port, "netns", bridge,
        )  # fmt: skip
        run("ip", "-n", namespace, "addr", "add", f"{net.address(index)}/24", "dev", "eth0")
        run("ip", "-n", namespace, "link", "set", "eth0", "up")
        run("ip", "-n", namespace, "link", "set", "lo", "up")
        run("ip", "-n", bridge, "link", "set", port, "master", "br0")
        run("ip", "-n", bridge, "link", "set", port, "up")


def teardown(net: Network) -> None:
    """Kill what still runs in the run's namespaces (by PID), then delete them.
    Never raises for a namespace that is already gone."""
    existing = set(list_namespaces())
    for namespace in net.namespaces():
        if namespace in existing:
            _delete(namespace)


def _delete(namespace: str) -> None:
    for pid in _pids_in(namespace):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    subprocess.run(
        ["ip", "netns", "delete", namespace],
        check=False,
        capture_output=True,
        timeout=COMMAND_TIMEOUT_S,
    )


def _pids_in(namespace: str) -> list[int]:
    result = subprocess.run(
        ["ip", "netns", "pids", namespace],
        check=False,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
    )
    return [int(word) for word in result.stdout.split() if word.isdigit()]


def list_namespaces() -> list[str]:
    return [line.split()[0] for line in run("ip", "netns", "list").splitlines() if line.strip()]


def remove_stale_namespaces() -> list[str]:
    """Delete the namespaces of fault runs whose process is gone (namespaces
    outlive a killed run); those of live runs are left alone. Returns the names."""
    removed = []
    for namespace in list_namespaces():
        match = _STALE.match(namespace)
        if match is None or alive(int(match.group(1))):
            continue
        _delete(namespace)
        removed.append(namespace)
    return removed


def alive(pid: int) -> bool:
    """Whether a process with this PID exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- faults -------------------------------------------------------------------


def drop(net: Network, *, receiver: int, source: int, syn_only: bool = False) -> None:
    """In ``receiver``'s namespace, drop what arrives from ``source``: every
    packet, or only TCP connection requests (``syn_only``)."""
    assert receiver != source, "a node is never partitioned from itself"
    match = ["-p", "tcp", "--syn"] if syn_only else []
    run(
        "ip", "netns", "exec", net.namespace(receiver),
        "iptables", "-A", "INPUT", "-s", net.address(source), *match, "-j", "DROP",
    )  # fmt: skip


def partition(net: Network, side: Sequence[int], other_side: Sequence[int]) -> None:
    """No packet crosses between the two sides, in either direction."""
    assert not set(side) & set(other_side), (side, other_side)
    for a in side:
        for b in other_side:
            drop(net, receiver=b, source=a)
            drop(net, receiver=a, source=b)


def cut_one_way(net: Network, *, source: int, receiver: int) -> None:
    """``source`` can no longer open a connection to ``receiver``; the reverse
    direction, and connections already open, still work."""
    drop(net, receiver=receiver, source=source, syn_only=True)


def heal(net: Network) -> None:
    """Remove every fault rule in every node's namespace."""
    for index in range(net.size):
        run("ip", "netns", "exec", net.namespace(index), "iptables", "-F", "INPUT")


def rules(net: Network, index: int) -> list[str]:
    """Node ``index``'s INPUT rules, as ``iptables -S`` prints them."""
    output = run("ip", "netns", "exec", net.namespace(index), "iptables", "-S", "INPUT")
    return [line for line in output.splitlines() if line.startswith("-A ")]


# --- the clients' side ----------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def open_socket(net: Network) -> socket.socket:
    """A TCP socket in the bridge namespace (it keeps that namespace for life).
    Only the calling thread switches, and only around ``socket()``."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{net.bridge_namespace}", os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            return socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        finally:
            _setns(own)  # on failure the thread would stay in the bridge: fatal
    finally:
        os.close(own)


def _setns(descriptor: int) -> None:
    if _libc.setns(descriptor, _CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"setns: {os.strerror(error)}")


def connect(net: Network, host: str, port: int, timeout_s: float) -> socket.socket:
    """A connection from the clients' host to ``host:port`` on the bridge."""
    sock = open_socket(net)
    try:
        sock.settimeout(timeout_s)
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock
