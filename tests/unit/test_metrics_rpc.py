"""The RPC clients' call counters (read by GET /metrics): every call counted once,
every failure counted once by the error its caller saw, over real sockets."""

from __future__ import annotations

import asyncio
import socket

import pytest

from dynakv.errors import Overloaded, PeerUnreachable, QuorumNotReached, RemoteError, RpcTimeout
from dynakv.net.messages import Message, Ping, Pong
from dynakv.net.rpc import PeerPool, RpcCounters
from tests.unit.test_rpc import CLIENT_ID, SECRET, Run, client_of, run, serving

__all__ = ["run"]  # the fixture, shared with test_rpc

NONE: RpcCounters = RpcCounters(0, 0, 0, 0, 0)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_answered_calls_count_as_calls_only(run: Run[None]) -> None:
    async def scenario() -> None:
        async with serving() as server, client_of(server.bound_port) as client:
            assert client.counters() == NONE
            await client.call(Ping(sender="a"), timeout_ms=1000)  # connects: the slow path
            futures = [client.start_call(Ping(sender=str(i)), 1000) for i in range(5)]
            assert await asyncio.gather(*futures) == [Pong(sender=str(i)) for i in range(5)]
            assert client.counters() == RpcCounters(6, 0, 0, 0, 0)

    run(scenario())


def test_an_error_reply_counts_as_remote(run: Run[None]) -> None:
    async def refuse(message: Message) -> Message:
        raise QuorumNotReached(required=2, acked=1, consistency="quorum")

    async def scenario() -> None:
        async with serving(refuse) as server, client_of(server.bound_port) as client:
            with pytest.raises(RemoteError):
                await client.call(Ping(sender="a"), timeout_ms=1000)
            with pytest.raises(RemoteError):
                await client.start_call(Ping(sender="b"), 1000)
            assert client.counters() == RpcCounters(2, 0, 0, 2, 0)

    run(scenario())


def test_no_reply_in_time_counts_as_timeout(run: Run[None]) -> None:
    release = asyncio.Event()

    async def stall(message: Message) -> Message:
        await release.wait()
        return Pong(sender="late")

    async def scenario() -> None:
        async with serving(stall) as server, client_of(server.bound_port) as client:
            with pytest.raises(RpcTimeout):
                await client.call(Ping(sender="a"), timeout_ms=50)
            with pytest.raises(RpcTimeout):
                await client.start_call(Ping(sender="b"), 50)
            release.set()
            assert client.counters() == RpcCounters(2, 2, 0, 0, 0)

    run(scenario())


def test_a_closed_port_counts_as_unreachable(run: Run[None]) -> None:
    async def scenario() -> None:
        async with client_of(closed_port(), connect_timeout_ms=500) as client:
            for _ in range(3):  # a refused connect, then calls during the backoff
                with pytest.raises(PeerUnreachable):
                    await client.start_call(Ping(sender="a"), 1000)
            assert client.counters() == RpcCounters(3, 0, 3, 0, 0)

    run(scenario())


def test_calls_past_inflight_max_count_as_overloaded(run: Run[None]) -> None:
    release = asyncio.Event()

    async def stall(message: Message) -> Message:
        await release.wait()
        return Pong(sender="ok")

    async def scenario() -> None:
        async with serving(stall) as server, client_of(server.bound_port, inflight_max=1) as client:
            first = client.start_call(Ping(sender="a"), 5000)
            await asyncio.sleep(0)
            with pytest.raises(Overloaded):
                await client.start_call(Ping(sender="b"), 5000)
            release.set()
            await first
            assert client.counters() == RpcCounters(2, 0, 0, 0, 1)

    run(scenario())


def test_a_connection_lost_after_sending_counts_as_timeout(run: Run[None]) -> None:
    """The server goes away with the request written: RpcTimeout (outcome unknown)."""
    arrived = asyncio.Event()

    async def hang(message: Message) -> Message:
        arrived.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def scenario() -> None:
        async with serving(hang) as server, client_of(server.bound_port) as client:
            pending = client.start_call(Ping(sender="a"), 5000)
            await asyncio.wait_for(arrived.wait(), 5)
            await server.close()
            with pytest.raises(RpcTimeout):
                await pending
            assert client.counters() == RpcCounters(1, 1, 0, 0, 0)

    run(scenario())


def test_the_pool_reports_each_peers_counters(run: Run[None]) -> None:
    async def scenario() -> None:
        async with serving() as server:
            pool = PeerPool(
                {"n2": f"127.0.0.1:{server.bound_port}", "n3": f"127.0.0.1:{closed_port()}"},
                secret=SECRET,
                node_id=CLIENT_ID,
                connect_timeout_ms=500,
            )
            try:
                await pool.call("n2", Ping(sender="n1"), 1000)
                with pytest.raises(PeerUnreachable):
                    await pool.call("n3", Ping(sender="n1"), 1000)
                assert pool.counters() == {
                    "n2": RpcCounters(1, 0, 0, 0, 0),
                    "n3": RpcCounters(1, 0, 1, 0, 0),
                }
            finally:
                await pool.close()

    run(scenario())
