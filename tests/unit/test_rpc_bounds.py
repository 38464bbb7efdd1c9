"""The RPC server's bounds: connections, time per incomplete frame, bytes held in
incomplete frames. Each closes the offending connection only; members go on."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from dynakv.net.codec import Envelope, FrameDecoder, encode_frame
from dynakv.net.messages import Ping, Pong, ReadRequest
from tests.unit import test_rpc as rpc_tests
from tests.unit.test_rpc import (
    FRAME_BYTES_MAX,
    SERVER_ID,
    Run,
    client_of,
    eventually,
    prove,
    raw_connection,
    serving,
    until_closed_by_peer,
)

run = rpc_tests.run  # the asyncio and uvloop runners, as a fixture of this module too
Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def big_frame(request_id: int, payload_bytes: int) -> bytes:
    return encode_frame(Envelope(request_id, False, ReadRequest(0, b"k" * payload_bytes)))


@contextlib.asynccontextmanager
async def member_stream(port: int) -> AsyncIterator[Stream]:
    """A raw connection that has passed the handshake."""
    async with raw_connection(port) as (reader, writer):
        assert await prove(reader, writer) == SERVER_ID
        yield reader, writer


async def ping_raw(stream: Stream, request_id: int) -> None:
    reader, writer = stream
    writer.write(encode_frame(Envelope(request_id, False, Ping(str(request_id)))))
    decoder = FrameDecoder(FRAME_BYTES_MAX)
    while True:
        chunk = await asyncio.wait_for(reader.read(65536), 5)
        assert chunk, "closed by the server"
        replies = decoder.feed(chunk)
        if replies:
            assert replies == [Envelope(request_id, True, Pong(str(request_id)))]
            return


def test_half_a_frame_is_closed_after_frame_timeout_while_members_are_served(
    run: Run[None],
) -> None:
    async def scenario() -> None:
        async with (
            serving(frame_timeout_ms=200) as server,
            client_of(server.bound_port) as client,
            member_stream(server.bound_port) as (reader, writer),
        ):
            frame = big_frame(1, 1000)
            loop = asyncio.get_running_loop()
            started_s = loop.time()
            writer.write(frame[: len(frame) // 2])
            closed = asyncio.ensure_future(until_closed_by_peer(reader))
            while not closed.done():  # the good client is served all along
                assert await client.call(Ping(sender="a"), timeout_ms=1000) == Pong(sender="a")
                await asyncio.sleep(0.02)
            await closed
            assert 0.19 <= loop.time() - started_s < 2.0
            status = server.status()
            assert status["frames_timed_out_total"] == 1
            await eventually(lambda: server.status()["buffered_bytes"] == 0)
            assert await client.call(Ping(sender="b"), timeout_ms=1000) == Pong(sender="b")

    run(scenario())


def test_an_idle_member_and_a_steady_stream_of_split_frames_are_not_timed_out(
    run: Run[None],
) -> None:
    async def scenario() -> None:
        async with (
            serving(frame_timeout_ms=150) as server,
            member_stream(server.bound_port) as idle,
            member_stream(server.bound_port) as (reader, writer),
        ):
            # Every chunk ends one frame and begins the next, so some frame is always
            # incomplete, for far longer than frame_timeout_ms; yet each frame takes
            # less than it to arrive.
            frames = [big_frame(i, 2000) for i in range(12)]
            stream = b"".join(frames)
            cuts = [sum(len(f) for f in frames[:i]) + 100 for i in range(1, 12)]
            decoder = FrameDecoder(FRAME_BYTES_MAX)
            replies: list[Envelope] = []
            for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
                writer.write(stream[start:end])
                await asyncio.sleep(0.05)  # time passing is the point here
            while len(replies) < 12:
                chunk = await asyncio.wait_for(reader.read(65536), 5)
                assert chunk, "a steady stream was taken for a stalled frame"
                replies.extend(decoder.feed(chunk))
            assert [reply.request_id for reply in replies] == list(range(12))
            await ping_raw(idle, 99)  # idle for ~4 frame timeouts, still served
            assert server.status()["frames_timed_out_total"] == 0

    run(scenario())


def test_incomplete_frames_over_the_total_cap_are_closed(run: Run[None]) -> None:
    async def scenario() -> None:
        async with (
            serving(buffered_bytes_total_max=100_000) as server,
            client_of(server.bound_port) as client,
            contextlib.AsyncExitStack() as stack,
        ):
            streams = [
                await stack.enter_async_context(member_stream(server.bound_port)) for _ in range(4)
            ]
            frame = big_frame(1, 60_000)
            for _, writer in streams:
                writer.write(frame[:40_000])
                await writer.drain()
            # Two fit (80 000 bytes); the third would pass 100 000, and so would the fourth.
            closed = 0
            for reader, _ in streams:
                with contextlib.suppress(TimeoutError):
                    await until_closed_by_peer(reader, timeout_s=0.5)
                    closed += 1
            assert closed == 2
            status = server.status()
            assert status["buffer_overflows_total"] == 2
            assert status["buffered_bytes"] == 80_000
            assert await client.call(Ping(sender="a"), timeout_ms=1000) == Pong(sender="a")
            for _, writer in streams:  # the survivors' frames complete and are answered
                writer.write(frame[40_000:])
            for reader, _ in [s for s in streams if not s[0].at_eof()]:
                decoder = FrameDecoder(FRAME_BYTES_MAX)
                replies: list[Envelope] = []
                while not replies:
                    chunk = await asyncio.wait_for(reader.read(65536), 5)
                    assert chunk
                    replies = decoder.feed(chunk)
                assert replies[0].request_id == 1
            await eventually(lambda: server.status()["buffered_bytes"] == 0)

    run(scenario())


def test_the_connection_limit_refuses_newcomers_while_members_keep_working(
    run: Run[None],
) -> None:
    async def scenario() -> None:
        async with (
            serving(connections_max=2) as server,
            client_of(server.bound_port) as client,
        ):
            assert await client.call(Ping(sender="a"), timeout_ms=1000) == Pong(sender="a")
            async with raw_connection(server.bound_port) as second:
                await eventually(lambda: server.connection_count == 2)
                async with raw_connection(server.bound_port) as (third_reader, _):
                    await until_closed_by_peer(third_reader)
                    assert server.status()["connections_refused_total"] == 1
                    assert server.connection_count == 2
                    assert await client.call(Ping(sender="b"), timeout_ms=1000) == Pong("b")
                    assert await prove(*second) == SERVER_ID  # admitted ones go on too
            await eventually(lambda: server.connection_count == 1)
            async with member_stream(server.bound_port) as fourth:  # room again
                await ping_raw(fourth, 7)

    run(scenario())
