"""The client's deadline queue (``net.client``): calls of one timeout share one
sweeping timer instead of a timer each, and still time out at their deadline
(no sooner, at most ``DEADLINE_SWEEP_S`` and scheduling later); a shorter
timeout behind a longer one keeps its own timer; answered calls never time out;
the queue is compacted at its bound without losing an outstanding call."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from dynakv.errors import RpcTimeout
from dynakv.net import client as client_module
from dynakv.net.messages import Message, Ping, Pong
from tests.unit.test_rpc import Run, client_of, run, serving

__all__ = ["run"]  # the fixture, imported for its name

SLACK_S = 1.0  # scheduling on a shared, busy machine


def _handler(held: set[str]) -> Any:
    """Answers a Ping at once, unless its sender is in ``held`` (then never)."""

    async def handle(message: Message) -> Message:
        assert isinstance(message, Ping)
        if message.sender in held:
            await asyncio.Event().wait()
        return Pong(sender=message.sender)

    return handle


def test_many_calls_time_out_together_at_their_deadline(run: Run[None]) -> None:
    async def scenario() -> None:
        async with (
            serving(_handler({"held"}), inflight_max=256) as server,
            client_of(server.bound_port) as client,
        ):
            assert await client.call(Ping(sender="warm"), timeout_ms=1000) == Pong(sender="warm")
            started = time.monotonic()
            futures = [client.start_call(Ping(sender="held"), 300) for _ in range(50)]
            answered = await client.start_call(Ping(sender="quick"), 300)
            assert answered == Pong(sender="quick")
            results = await asyncio.gather(*futures, return_exceptions=True)
            elapsed_s = time.monotonic() - started
            assert all(isinstance(result, RpcTimeout) for result in results), results
            assert 0.3 <= elapsed_s < 0.3 + client_module.DEADLINE_SWEEP_S + SLACK_S
            assert client.timeouts_total == 50  # the answered call did not time out
            assert client.inflight == 0

    run(scenario())


def test_a_shorter_timeout_behind_a_longer_one_is_not_held_back(run: Run[None]) -> None:
    async def scenario() -> None:
        async with (
            serving(_handler({"held"})) as server,
            client_of(server.bound_port) as client,
        ):
            await client.call(Ping(sender="warm"), timeout_ms=1000)
            long_call = client.start_call(Ping(sender="held"), 10_000)
            started = time.monotonic()
            with pytest.raises(RpcTimeout):
                await client.start_call(Ping(sender="held"), 200)
            assert time.monotonic() - started < 0.2 + SLACK_S  # not at the 10 s deadline
            assert not long_call.done()
            long_call.cancel()

    run(scenario())


def test_compaction_keeps_every_outstanding_call(
    run: Run[None], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "DEADLINES_MAX", 8)

    async def scenario() -> None:
        async with (
            serving(_handler({"held"}), inflight_max=256) as server,
            client_of(server.bound_port, inflight_max=6) as client,
        ):
            await client.call(Ping(sender="warm"), timeout_ms=1000)
            connection = client._connection
            assert connection is not None
            held = [client.start_call(Ping(sender="held"), 3000) for _ in range(3)]
            held_ids = set(connection.calls)
            for index in range(30):  # answered calls fill the queue past its bound
                assert await client.start_call(Ping(sender=str(index)), 3000) == Pong(
                    sender=str(index)
                )
            queued = {request_id for _, request_id in connection._deadlines}
            assert held_ids <= queued  # still timed by the queue
            assert len(connection._deadlines) <= 8 + 1
            results = await asyncio.gather(*held, return_exceptions=True)
            assert all(isinstance(result, RpcTimeout) for result in results), results
            assert client.timeouts_total == 3

    run(scenario())
