"""net.rpc over real sockets on 127.0.0.1, under both asyncio's loop and uvloop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pytest
import uvloop

from dynakv.core.record import Record, Sibling
from dynakv.errors import (
    InvalidRequest,
    LocalProtocolError,
    Overloaded,
    PeerUnreachable,
    QuorumNotReached,
    RemoteError,
    RpcTimeout,
)
from dynakv.net.codec import Envelope, FrameDecoder, encode_frame
from dynakv.net.handshake import (
    NONCE_BYTES,
    ClientHandshake,
    HandshakeDecoder,
    encode_handshake_frame,
)
from dynakv.net.messages import Message, Ping, Pong, ReadReply, ReadRequest
from dynakv.net.rpc import PeerClient, PeerPool, RpcServer, error_reply, split_address

T = TypeVar("T")
Run = Callable[[Coroutine[Any, Any, T]], T]
FRAME_BYTES_MAX = 64 * 1024
SECRET = b"test cluster secret, 32 bytes ok"
SERVER_ID = "n2"
CLIENT_ID = "n1"


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Run[Any]:
    def runner(coroutine: Coroutine[Any, Any, T]) -> T:
        if request.param == "uvloop":
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(coroutine)
        return asyncio.run(coroutine)

    return runner


async def pong(message: Message) -> Message:
    assert isinstance(message, Ping)
    return Pong(sender=message.sender)


@contextlib.asynccontextmanager
async def serving(
    handler: Callable[[Message], Awaitable[Message]] = pong,
    *,
    port: int = 0,
    inflight_max: int = 64,
    **options: Any,
) -> AsyncIterator[RpcServer]:
    """A started server for ``handler`` (which ignores the sender); ``options`` go
    to ``RpcServer`` (a ``handler_with_sender`` option replaces ``handler``)."""
    full_handler = options.pop("handler_with_sender", None) or (
        lambda message, sender: handler(message)
    )
    options.setdefault("secret", SECRET)
    options.setdefault("node_id", SERVER_ID)
    server = RpcServer(
        full_handler,
        host="127.0.0.1",
        port=port,
        inflight_max=inflight_max,
        frame_bytes_max=FRAME_BYTES_MAX,
        **options,
    )
    await server.start()
    try:
        yield server
    finally:
        await server.close()


@contextlib.asynccontextmanager
async def client_of(port: int, **options: Any) -> AsyncIterator[PeerClient]:
    options.setdefault("frame_bytes_max", FRAME_BYTES_MAX)
    options.setdefault("secret", SECRET)
    options.setdefault("node_id", CLIENT_ID)
    client = PeerClient(f"127.0.0.1:{port}", name="peer", **options)
    try:
        yield client
    finally:
        await client.close()


HANDSHAKE_FRAME_BYTES_MAX = 256


async def prove(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    secret: bytes = SECRET,
    node_id: str = CLIENT_ID,
) -> str:
    """Run the client's side of the handshake on a raw stream; the server's node id."""
    handshake = ClientHandshake(secret=secret, node_id=node_id, nonce=os.urandom(NONCE_BYTES))
    writer.write(encode_handshake_frame(handshake.start(), HANDSHAKE_FRAME_BYTES_MAX))
    decoder = HandshakeDecoder(HANDSHAKE_FRAME_BYTES_MAX)
    while handshake.peer_node_id is None:
        chunk = await asyncio.wait_for(reader.read(4096), 5)
        assert chunk, "the server closed the connection during the handshake"
        for message in decoder.feed(chunk):
            reply = handshake.receive(message)
            if reply is not None:
                writer.write(encode_handshake_frame(reply, HANDSHAKE_FRAME_BYTES_MAX))
    assert decoder.buffered_bytes == 0
    return handshake.peer_node_id


@contextlib.asynccontextmanager
async def raw_connection(
    port: int,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def until_closed_by_peer(reader: asyncio.StreamReader, timeout_s: float = 5.0) -> None:
    """Return once the other end closes (EOF or a reset); TimeoutError if it does not."""
    async with asyncio.timeout(timeout_s):
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def eventually(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        await asyncio.sleep(0.005)


def test_request_reply(run: Run[None]) -> None:
    async def scenario() -> None:
        async with serving() as server, client_of(server.bound_port) as client:
            assert client.is_up and not client.is_connected
            assert await client.call(Ping(sender="a"), timeout_ms=1000) == Pong(sender="a")
            assert client.is_connected and client.inflight == 0
            assert await client.call(Ping(sender="b"), timeout_ms=1000) == Pong(sender="b")
            assert server.connection_count == 1

    run(scenario())


def test_peer_pool(run: Run[None]) -> None:
    async def scenario() -> None:
        async with serving() as server:
            pool = PeerPool(
                {SERVER_ID: f"127.0.0.1:{server.bound_port}", "n3": f"127.0.0.1:{closed_port()}"},
                secret=SECRET,
                node_id=CLIENT_ID,
                connect_timeout_ms=500,
                reconnect_backoff_ms_max=1000,
                inflight_max=16,
                frame_bytes_max=FRAME_BYTES_MAX,
            )
            try:
                assert await pool.call("n2", Ping(sender="n1"), 1000) == Pong(sender="n1")
                with pytest.raises(PeerUnreachable) as caught:
                    await pool.call("n3", Ping(sender="n1"), 1000)
                assert caught.value.peer == "n3"
                assert pool.get("n2").name == "n2"
                assert pool.is_up("n2") and not pool.is_up("n3")
                status = pool.status()
                assert list(status) == ["n2", "n3"]
                assert status["n2"]["up"] is True and status["n2"]["inflight"] == 0
                assert status["n3"]["up"] is False and "failed" in str(status["n3"]["last_error"])
            finally:
                await pool.close()

    run(scenario())


def test_1000_concurrent_calls_on_one_connection_match_their_replies(run: Run[None]) -> None:
    rng = random.Random(7)
    completed: list[int] = []

    async def slow_pong(message: Message) -> Message:
        assert isinstance(message, Ping)
        await asyncio.sleep(rng.random() * 0.01)
        completed.append(int(message.sender))
        return Pong(sender=message.sender)

    async def scenario() -> None:
        async with (
            serving(slow_pong, inflight_max=1000) as server,
            client_of(server.bound_port, inflight_max=1000) as client,
        ):
            replies = await asyncio.gather(
                *(client.call(Ping(sender=str(i)), timeout_ms=5000) for i in range(1000))
            )
            assert replies == [Pong(sender=str(i)) for i in range(1000)]
            assert server.connection_count == 1
            assert client.inflight == 0

    completed.clear()
    run(scenario())
    assert sorted(completed) == list(range(1000))
    assert completed != sorted(completed), "replies should have gone out of order"


def test_handler_dynakv_error_becomes_remote_error(run: Run[None]) -> None:
    async def refuse(message: Message) -> Message:
        raise QuorumNotReached(required=2, acked=1, consistency="quorum")

    async def scenario() -> None:
        async with serving(refuse) as server, client_of(server.bound_port) as client:
            with pytest.raises(RemoteError) as caught:
                await client.call(Ping(sender="a"), timeout_ms=1000)
            error = caught.value
            assert error.peer == "peer" and error.remote_code == "QuorumNotReached"
            assert error.remote_message == "quorum needs 2 replica(s); 1 answered"  # type: ignore[attr-defined]
            assert error.remote_facts == {  # type: ignore[attr-defined]
                "acked": 1,
                "consistency": "quorum",
                "required": 2,
            }

    run(scenario())


def test_handler_crash_is_internal_error_and_server_keeps_serving(
    run: Run[None], caplog: pytest.LogCaptureFixture
) -> None:
    async def fragile(message: Message) -> Message:
        assert isinstance(message, Ping)
        if message.sender == "bad":
            raise ValueError("not today")
        return Pong(sender=message.sender)

    async def scenario() -> None:
        async with serving(fragile) as server, client_of(server.bound_port) as client:
            with pytest.raises(RemoteError) as caught:
                await client.call(Ping(sender="bad"), timeout_ms=1000)
            assert caught.value.remote_code == "InternalError"
            assert "not today" in caught.value.message
            assert await client.call(Ping(sender="ok"), timeout_ms=1000) == Pong(sender="ok")

    with caplog.at_level(logging.ERROR, logger="dynakv.net.rpc"):
        run(scenario())
    crashes = [r for r in caplog.records if r.exc_info is not None]
    assert len(crashes) == 1 and isinstance(crashes[0].exc_info[1], ValueError)  # type: ignore[index]


def test_closed_port_is_unreachable_quickly_then_in_backoff(run: Run[None]) -> None:
    async def scenario() -> None:
        async with client_of(closed_port(), reconnect_backoff_ms_max=5000) as client:
            started = time.monotonic()
            with pytest.raises(PeerUnreachable, match="failed"):
                await client.call(Ping(sender="a"), timeout_ms=5000)
            assert time.monotonic() - started < 1.0
            assert not client.is_up and "failed" in str(client.last_error)
            with pytest.raises(PeerUnreachable, match="backoff"):
                await client.call(Ping(sender="a"), timeout_ms=5000)

    run(scenario())


def test_handler_that_never_answers_times_out(run: Run[None]) -> None:
    async def never(message: Message) -> Message:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def scenario() -> None:
        async with serving(never) as server, client_of(server.bound_port) as client:
            started = time.monotonic()
            with pytest.raises(RpcTimeout) as caught:
                await client.call(Ping(sender="a"), timeout_ms=200)
            elapsed_s = time.monotonic() - started
            assert 0.15 <= elapsed_s < 1.0, elapsed_s
            assert caught.value.timeout_ms == 200
            assert client.is_up and client.inflight == 0

    run(scenario())


def test_server_closed_mid_call_fails_the_call_promptly_as_unknown(run: Run[None]) -> None:
    arrived = asyncio.Event()

    async def stuck(message: Message) -> Message:
        arrived.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def scenario() -> None:
        arrived.clear()
        async with serving(stuck) as server, client_of(server.bound_port) as client:
            call = asyncio.ensure_future(client.call(Ping(sender="a"), timeout_ms=10_000))
            await asyncio.wait_for(arrived.wait(), 5)
            started = time.monotonic()
            await server.close()
            # The request was delivered (the handler ran): its outcome is unknown.
            with pytest.raises(RpcTimeout):
                await call
            assert time.monotonic() - started < 1.0
            # The next call finds nobody listening: certainly not delivered.
            with pytest.raises(PeerUnreachable):
                await client.call(Ping(sender="b"), timeout_ms=1000)

    run(scenario())


def test_connection_lost_before_the_frame_was_written_is_unreachable(run: Run[None]) -> None:
    async def scenario() -> None:
        async with serving() as server, client_of(server.bound_port) as client:
            await client.call(Ping(sender="warm"), timeout_ms=1000)
            call = asyncio.ensure_future(client.call(Ping(sender="a"), timeout_ms=5000))
            await asyncio.sleep(0)  # the call has queued its frame; the flush has not run
            await client.close()
            with pytest.raises(PeerUnreachable, match="before sending"):
                await call

    run(scenario())


def test_reconnects_when_the_server_comes_back_on_the_same_port(run: Run[None]) -> None:
    async def scenario() -> None:
        async with serving() as first:
            port = first.bound_port
            client = PeerClient(
                f"127.0.0.1:{port}",
                secret=SECRET,
                node_id=CLIENT_ID,
                reconnect_backoff_ms_max=100,
            )
            assert await client.call(Ping(sender="a"), timeout_ms=1000) == Pong(sender="a")
        try:
            await eventually(lambda: not client.is_connected)  # it noticed the close
            with pytest.raises(PeerUnreachable):
                await client.call(Ping(sender="b"), timeout_ms=1000)
            async with serving(port=port):
                replies: list[Message] = []

                async def try_call() -> bool:
                    with contextlib.suppress(PeerUnreachable):
                        replies.append(await client.call(Ping(sender="c"), timeout_ms=1000))
                    return bool(replies)

                deadline = time.monotonic() + 5
                while not await try_call():
                    assert time.monotonic() < deadline, client.last_error
                    await asyncio.sleep(0.01)
                assert replies == [Pong(sender="c")]
                assert client.is_up and client.is_connected
        finally:
            await client.close()

    run(scenario())


class _HangUp(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


def test_peer_that_hangs_up_at_once_is_never_taken_for_connected(run: Run[None]) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        rude = await loop.create_server(_HangUp, "127.0.0.1", 0)
        port = int(rude.sockets[0].getsockname()[1])
        async with client_of(port, reconnect_backoff_ms_max=50) as client:
            for _ in range(3):
                with contextlib.suppress(PeerUnreachable, RpcTimeout):
                    await client.call(Ping(sender="a"), timeout_ms=1000)
                    raise AssertionError("a peer that hangs up cannot answer")
            await eventually(lambda: not client.is_connected)
            rude.close()
            await rude.wait_closed()
            async with serving(port=port):
                replies: list[Message] = []
                deadline = time.monotonic() + 5
                while not replies:
                    assert time.monotonic() < deadline, client.last_error
                    with contextlib.suppress(PeerUnreachable, RpcTimeout):
                        replies.append(await client.call(Ping(sender="b"), timeout_ms=1000))
                    await asyncio.sleep(0.01)
                assert replies == [Pong(sender="b")]

    run(scenario())


def test_client_inflight_max_is_overloaded(run: Run[None]) -> None:
    async def scenario() -> None:
        release = asyncio.Event()

        async def gated(message: Message) -> Message:
            await release.wait()
            return await pong(message)

        async with serving(gated) as server, client_of(server.bound_port, inflight_max=2) as client:
            calls = [
                asyncio.ensure_future(client.call(Ping(sender=str(i)), timeout_ms=5000))
                for i in range(2)
            ]
            await eventually(lambda: client.inflight == 2)
            with pytest.raises(Overloaded) as caught:
                await client.call(Ping(sender="x"), timeout_ms=5000)
            assert caught.value.limit == 2
            release.set()
            assert await asyncio.gather(*calls) == [Pong(sender="0"), Pong(sender="1")]

    run(scenario())


def test_server_inflight_max_replies_overloaded(run: Run[None]) -> None:
    async def scenario() -> None:
        release = asyncio.Event()
        arrived: list[Message] = []

        async def gated(message: Message) -> Message:
            arrived.append(message)
            await release.wait()
            return await pong(message)

        async with serving(gated, inflight_max=2) as server, client_of(server.bound_port) as client:
            calls = [
                asyncio.ensure_future(client.call(Ping(sender=str(i)), timeout_ms=5000))
                for i in range(2)
            ]
            await eventually(lambda: len(arrived) == 2)  # both hold the server's slots
            with pytest.raises(RemoteError) as caught:
                await client.call(Ping(sender="x"), timeout_ms=5000)
            assert caught.value.remote_code == "Overloaded"
            release.set()
            assert await asyncio.gather(*calls) == [Pong(sender="0"), Pong(sender="1")]
            assert await client.call(Ping(sender="y"), timeout_ms=5000) == Pong(sender="y")

    run(scenario())


@pytest.mark.parametrize("authenticated", [False, True], ids=["before", "after"])
@pytest.mark.parametrize(
    "garbage",
    [
        b"\xff" * 64,  # a length far over frame_bytes_max
        b"\x00\x00\x00\x09\x01\x00\x00\x00\x00abcd",  # a bad checksum
        encode_frame(Envelope(1, True, Pong(sender="x"))),  # a reply sent to a server
    ],
    ids=["length", "checksum", "reply"],
)
def test_garbage_closes_that_connection_only(
    run: Run[None], garbage: bytes, authenticated: bool
) -> None:
    async def scenario() -> None:
        async with serving() as server, client_of(server.bound_port) as client:
            assert await client.call(Ping(sender="a"), timeout_ms=1000) == Pong(sender="a")
            async with raw_connection(server.bound_port) as (reader, writer):
                if authenticated:
                    assert await prove(reader, writer) == SERVER_ID
                writer.write(garbage)
                assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
            assert await client.call(Ping(sender="b"), timeout_ms=1000) == Pong(sender="b")
            await eventually(lambda: server.connection_count == 1)

    run(scenario())


def test_raw_pipelined_frames_get_matching_replies(run: Run[None]) -> None:
    async def scenario() -> None:
        async with serving() as server, raw_connection(server.bound_port) as (reader, writer):
            assert await prove(reader, writer) == SERVER_ID
            writer.write(
                b"".join(encode_frame(Envelope(i, False, Ping(str(i)))) for i in range(50))
            )
            decoder = FrameDecoder(FRAME_BYTES_MAX)
            replies: list[Envelope] = []
            while len(replies) < 50:
                chunk = await asyncio.wait_for(reader.read(65536), 5)
                assert chunk, "closed before every reply arrived"
                replies.extend(decoder.feed(chunk))
            assert sorted((e.request_id, e.is_reply, e.body) for e in replies) == [
                (i, True, Pong(str(i))) for i in range(50)
            ]

    run(scenario())


def test_oversized_request_and_reply(run: Run[None]) -> None:
    big_record = Record((Sibling(b"v" * FRAME_BYTES_MAX, "n1", 1, (), 1, 0),))

    async def big(message: Message) -> Message:
        return ReadReply(record=big_record)

    async def scenario() -> None:
        async with serving(big) as server, client_of(server.bound_port) as client:
            with pytest.raises(LocalProtocolError):
                await client.call(ReadRequest(partition=0, key=b"k" * FRAME_BYTES_MAX), 1000)
            with pytest.raises(RemoteError) as caught:
                await client.call(ReadRequest(partition=0, key=b"k"), timeout_ms=1000)
            assert caught.value.remote_code == "LocalProtocolError"
            assert client.inflight == 0

    run(scenario())


def test_outgoing_socket_binds_to_local_host(run: Run[None]) -> None:
    async def scenario() -> None:
        async with (
            serving() as server,
            client_of(server.bound_port, local_host="127.0.0.2") as client,
        ):
            assert await client.call(Ping(sender="a"), timeout_ms=1000) == Pong(sender="a")
            (connection,) = server._connections
            assert connection.peer_name.startswith("127.0.0.2:")

    run(scenario())


def test_cancelled_caller_leaves_no_call_behind(run: Run[None]) -> None:
    async def scenario() -> None:
        arrived = asyncio.Event()
        release = asyncio.Event()

        async def gated(message: Message) -> Message:
            arrived.set()
            await release.wait()
            return await pong(message)

        async with serving(gated) as server, client_of(server.bound_port) as client:
            call = asyncio.ensure_future(client.call(Ping(sender="a"), timeout_ms=5000))
            await asyncio.wait_for(arrived.wait(), 5)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            assert client.inflight == 0
            release.set()  # the late reply is dropped; the connection keeps working
            assert await client.call(Ping(sender="b"), timeout_ms=1000) == Pong(sender="b")

    run(scenario())


def test_error_reply_keeps_scalar_facts_and_stringifies_the_rest() -> None:
    error = InvalidRequest("bad", field="key", size=2**70, tags=["a"], ok=True, none=None, n=3)
    reply = error_reply(error)
    assert (reply.code, reply.message) == ("InvalidRequest", "bad")
    assert reply.facts == {
        "field": "key",
        "n": 3,
        "none": None,
        "ok": True,
        "size": str(2**70),
        "tags": "['a']",
    }
    assert encode_frame(Envelope(1, True, reply))  # always encodable


@pytest.mark.parametrize(
    ("address", "expected"),
    [("127.0.0.1:9001", ("127.0.0.1", 9001)), ("[::1]:7", ("::1", 7)), ("h:0", ("h", 0))],
)
def test_split_address(address: str, expected: tuple[str, int]) -> None:
    assert split_address(address) == expected


@pytest.mark.parametrize("address", ["nohost", ":9001", "h:port", "h:"])
def test_split_address_rejects(address: str) -> None:
    with pytest.raises(ValueError, match="host:port"):
        split_address(address)
