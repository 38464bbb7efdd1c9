"""Issue 5 against real node processes: crafted numbers from clients, a member
whose clock runs fast, non-members on the RPC port, and partial frames and
silent connections in bulk. After each, every node
answers normal requests and every acknowledged write is still readable."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynakv.core.record import Context, Record, Sibling, encode_context
from dynakv.core.ring import partition_of
from dynakv.core.versions import LOGICAL_BITS
from dynakv.errors import PeerUnreachable, RemoteError
from dynakv.net.codec import WIRE_VERSION, Envelope, encode_frame
from dynakv.net.messages import Message, Ping, Pong, WriteRequest
from dynakv.net.rpc import PeerClient
from dynakv.node.dev import DevCluster
from tests.integration.conftest import Cluster, make_cluster, wait_for

pytestmark = pytest.mark.integration

U64_MAX = 2**64 - 1
SKEW_MS = 120_000


def crafted_contexts() -> dict[str, str]:
    now_ms = time.time_ns() // 1_000_000
    far = (now_ms + 10 * 60_000) << LOGICAL_BITS
    return {
        "the hostile test's token": "AZKTkqJuMc___________5KibjLP__________6Som4zz___________AA",
        "counter 2^64-1": encode_context(Context(clock=(("n1", U64_MAX),))),
        "counter 2^63": encode_context(Context(clock=(("n1", 2**63),))),
        "timestamp ten minutes ahead": encode_context(Context(max_timestamp=far)),
        "counter ten minutes ahead": encode_context(Context(clock=(("n2", far),))),
        "too many clock entries": encode_context(
            Context(clock=tuple((f"n{i:04d}", 1) for i in range(300)))
        ),
        "a node id of 300 characters": encode_context(Context(clock=(("n" * 300, 1),))),
        "a negative counter": encode_context(Context(clock=(("n1", -1),))),
        "a zero counter": encode_context(Context(clock=(("n1", 0),))),
    }


def assert_serves_and_keeps(cluster: Cluster, acknowledged: dict[bytes, bytes]) -> None:
    """Every node answers a normal write and read, and every acknowledged value is there."""
    for index in range(3):
        key = f"after-{index}-{time.monotonic_ns()}".encode()
        put = cluster.put(index, key, b"fine")
        assert put.status == 204, put
        got = cluster.get((index + 1) % 3, key)
        assert (got.status, got.body) == (200, b"fine"), got
    for key, value in acknowledged.items():
        got = cluster.get(0, key, query="consistency=quorum")
        assert (got.status, got.body) == (200, value), (key, got)


def test_crafted_contexts_get_a_400_and_leave_the_key_writable(cluster: Cluster) -> None:
    acknowledged = {}
    for name, token in crafted_contexts().items():
        key = f"brick-{len(acknowledged)}".encode()
        first = cluster.put(0, key, b"before")
        assert first.status == 204, first
        acknowledged[key] = b"before"
        for index in range(3):
            refused = cluster.put(index, key, b"x", query="consistency=all", context=token)
            assert refused.status == 400, (name, refused)
            error = refused.json()["error"]
            assert error["field"] == "X-Dynakv-Context", (name, error)
            deleted = cluster.request(
                index, "DELETE", f"/v1/kv/{key.decode()}", headers={"X-Dynakv-Context": token}
            )
            assert deleted.status == 400, (name, deleted)
        # Nothing was stored: the key still reads as before, and stays writable.
        got = cluster.get(1, key, query="consistency=all")
        assert (got.status, got.body) == (200, b"before"), (name, got)
        for index in range(3):
            again = cluster.put(index, key, b"after", context=got.context)
            assert again.status == 204, (name, again)
            got = cluster.get(index, key, query="consistency=all")
        acknowledged[key] = b"after"
    assert_serves_and_keeps(cluster, acknowledged)


def _skew_n3(spec: DevCluster) -> None:
    config = spec.data_dir / "n3" / "node.toml"
    config.write_text(f"clock_skew_ms = {SKEW_MS}\n" + config.read_text())


@pytest.fixture
def skewed_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Three nodes; n3's wall clock runs SKEW_MS ahead of the others'."""
    yield from make_cluster(tmp_path, before_start=_skew_n3)


def test_a_member_whose_clock_runs_fast_cannot_drag_the_others(skewed_cluster: Cluster) -> None:
    cluster = skewed_cluster
    # The fast node writes some keys itself (at `one`: only it holds them).
    for i in range(10):
        put = cluster.put(2, f"fast-{i}".encode(), b"from-the-future", query="consistency=one")
        assert put.status == 204, put
    # The others go on with read-then-write updates, on those keys too, and
    # none of their contexts is refused.
    acknowledged = {}
    for round_number in range(3):
        for i in range(20):
            key = (f"fast-{i}" if i < 10 else f"plain-{i}").encode()
            index = i % 2  # n1 or n2, never the fast node
            got = cluster.get(index, key, query="consistency=quorum")
            assert got.status in (200, 404), got
            value = f"round-{round_number}".encode()
            put = cluster.put(index, key, value, context=got.context)
            assert put.status == 204, (key, put)
            acknowledged[key] = value
    for key, value in acknowledged.items():
        got = cluster.get(0, key, query="consistency=quorum")
        assert (got.status, got.body) == (200, value), (key, got)
    # Neither normal node adopted the fast clock, and both name the fast node.
    for index in (0, 1):
        status = cluster.request(index, "GET", "/v1/status").json()
        clock = status["clock"]
        assert clock["hlc_ms"] - clock["wall_ms"] < 5_000, clock
        refused = clock["refused_from_peers"]["peers"]
        assert "n3" in refused, refused
        assert "clock_offset_ms_max" in refused["n3"]["last_reason"]


def _forged_write(key: bytes) -> bytes:
    """A well-formed replica write frame, as a member would send it after its handshake."""
    record = Record((Sibling(b"forged", "n1", 1 << 60, (), 1 << 40),))
    message = WriteRequest(partition_of(key, 1024), key, record)
    return encode_frame(Envelope(1, False, message))


def _answered(raw: socket.socket) -> bytes:
    """What the server sent before closing (or resetting) the connection."""
    received = b""
    raw.settimeout(10)
    try:
        while (chunk := raw.recv(4096)) and len(received) < 65536:
            received += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return received


def _rpc_call(port: int, secret: bytes, message: Message) -> Message:
    async def call() -> Message:
        client = PeerClient(f"127.0.0.1:{port}", secret=secret, node_id="n1", name="probe")
        try:
            return await client.call(message, 3000)
        finally:
            await client.close()

    return asyncio.run(call())


def test_a_non_member_cannot_write_or_read_over_rpc(cluster: Cluster) -> None:
    key = b"owned"
    assert cluster.put(0, key, b"acknowledged", query="consistency=all").status == 204
    rpc_base = cluster.spec.rpc_base_port
    for index in range(3):
        # A replica write framed exactly as a member's, without the handshake.
        with socket.create_connection(("127.0.0.1", rpc_base + index), timeout=5) as raw:
            raw.sendall(_forged_write(key))
            assert _answered(raw) == b"", "a frame before the handshake got an answer"
        # The handshake with the wrong secret, claiming to be a member.
        with pytest.raises(PeerUnreachable, match="handshake failed"):
            _rpc_call(rpc_base + index, b"not-the-cluster-secret-at-all", Ping(sender="n1"))
    # The real secret gets in: the refusals above are about the secret, nothing else.
    secret = cluster.spec.secret_path.read_bytes().strip()
    assert _rpc_call(rpc_base + 1, secret, Ping(sender="n1")) == Pong(sender="n2")
    for index in range(3):
        got = cluster.get(index, key, query="consistency=one")
        assert (got.status, got.body) == (200, b"acknowledged"), got
    # Each refusal was logged with the peer's address, never with the secret.
    log = (cluster.spec.data_dir / "n1" / "node.log").read_text()
    refusals = [line for line in log.splitlines() if "handshake" in line and "127.0.0.1" in line]
    assert refusals, log[-2000:]
    assert secret.decode() not in log
    assert_serves_and_keeps(cluster, {key: b"acknowledged"})


def test_partial_frames_and_silent_connections_in_bulk_do_not_stop_service(
    cluster: Cluster,
) -> None:
    rpc_port = cluster.spec.rpc_base_port
    held: list[socket.socket] = []
    try:
        # 60 would-be peers each hold half a handshake frame on n1's RPC port ...
        for _ in range(60):
            raw = socket.create_connection(("127.0.0.1", rpc_port), timeout=5)
            # A header announcing a 150-byte frame (within the handshake cap),
            # then only 20 bytes of it: the server must wait, bounded.
            raw.sendall(struct.pack(">IBI", 150, WIRE_VERSION, 0) + bytes(20))
            held.append(raw)
        # ... and 200 clients connect to n1's HTTP port and never send a byte.
        for _ in range(200):
            held.append(socket.create_connection(("127.0.0.1", cluster.port(0)), timeout=5))
        acknowledged = {}
        for i in range(30):
            key = f"busy-{i}".encode()
            put = cluster.put(0, key, b"served", query="consistency=quorum")
            assert put.status == 204, put
            acknowledged[key] = b"served"
        rpc_status = cluster.request(0, "GET", "/v1/status").json()["rpc_server"]
        assert rpc_status["connections"] >= 60, rpc_status  # all held while we were served
        # The half frames are dropped at the handshake deadline (2 s by default).
        wait_for(
            lambda: (
                cluster.request(0, "GET", "/v1/status").json()["rpc_server"]["connections"] <= 4
            ),
            "the half-open RPC connections to be closed",
            timeout_s=15,
        )
        assert_serves_and_keeps(cluster, acknowledged)
    finally:
        for raw in held:
            raw.close()


def test_a_member_sending_numbers_out_of_bounds_is_refused_and_named(cluster: Cluster) -> None:
    key = b"edge-record"
    assert cluster.put(0, key, b"acknowledged", query="consistency=all").status == 204
    secret = cluster.spec.secret_path.read_bytes().strip()
    partition = partition_of(key, 1024)
    now_ms = time.time_ns() // 1_000_000
    crafted = {
        "timestamp 2^64-1": Sibling(b"x", "n1", 1, (), U64_MAX),
        "counter 2^64-1": Sibling(b"x", "n1", U64_MAX, (), 5),
        "timestamp two minutes ahead": Sibling(b"x", "n1", 1, (), (now_ms + SKEW_MS) << 16),
        "expiry 2^64-1": Sibling(b"x", "n1", 1, (), 5, U64_MAX),
        "a past counter 2^64-1": Sibling(b"x", "n1", 1, (("n2", U64_MAX),), 5),
        "a value over 400 KiB": Sibling(b"x" * (400 * 1024 + 1), "n1", 1, (), 5),
    }
    port = cluster.spec.rpc_base_port + 1
    for name, sibling in crafted.items():
        with pytest.raises(RemoteError) as refused:
            _rpc_call(port, secret, WriteRequest(partition, key, Record((sibling,))))
        assert refused.value.remote_code == "RemoteProtocolError", name
    status = cluster.request(1, "GET", "/v1/status").json()["clock"]["refused_from_peers"]
    assert status["peers"]["n1"]["refused"] >= len(crafted), status
    for index in range(3):
        got = cluster.get(index, key, query="consistency=one")
        assert (got.status, got.body) == (200, b"acknowledged"), got
    assert_serves_and_keeps(cluster, {key: b"acknowledged"})
