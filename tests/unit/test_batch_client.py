"""``get_many`` / ``put_many`` of both clients against a real HTTP server on the
fake backend: results in the caller's order, one request per 100 reads or 25
writes, a key's own error returned in its place, and siblings resolved as
``get`` resolves them."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from dynakv.client import AsyncClient, Client, Item
from dynakv.client.common import BATCH_GETS_MAX, BATCH_WRITES_MAX, chunks
from dynakv.core.consistency import Consistency
from dynakv.core.record import Context
from dynakv.errors import DynakvError, QuorumNotReached
from tests.unit.test_http_api import FakeBackend, ServerThread


class Counting(FakeBackend):
    """Counts POST /v1/batch requests through the number of distinct gathers: every
    operation of one request starts before any of them finishes."""

    def __init__(self, failing: frozenset[bytes] = frozenset()) -> None:
        super().__init__()
        self.failing = failing

    async def put(
        self, key: bytes, value: bytes, consistency: Consistency, ttl_s: int, context: Context
    ) -> Context:
        if key in self.failing:
            raise QuorumNotReached(required=2, acked=0, consistency=consistency.value)
        return await super().put(key, value, consistency, ttl_s, context)


def _keys(count: int) -> list[bytes]:
    return [f"key-{index:04d}".encode() for index in range(count)]


def test_chunks_cover_every_item_once_in_order() -> None:
    items = list(range(53))
    parts = chunks(items, 25)
    assert [len(part) for part in parts] == [25, 25, 3]
    assert [item for part in parts for item in part] == items
    assert chunks([], 25) == []


def test_sync_put_many_then_get_many_in_order() -> None:
    backend = Counting(failing=frozenset({b"key-0007"}))
    keys = _keys(BATCH_WRITES_MAX + 5)
    with ServerThread(backend) as server, Client([f"127.0.0.1:{server.port}"]) as client:
        written = client.put_many([(key, key + b"!") for key in keys], ttl_s=30)
        reads = client.get_many([*keys, b"absent"], consistency="one")
    assert len(written) == len(keys)
    for key, outcome in zip(keys, written, strict=True):
        if key == b"key-0007":
            assert isinstance(outcome, QuorumNotReached) and outcome.acked == 0
        else:
            assert isinstance(outcome, str) and outcome
    assert len(reads) == len(keys) + 1
    for key, item in zip([*keys, b"absent"], reads, strict=True):
        assert isinstance(item, Item)
        expected = None if key in (b"key-0007", b"absent") else key + b"!"
        assert item.value == expected
    puts = [call for call in backend.calls if call.op == "put"]
    assert {call.ttl_s for call in puts} == {30}
    assert {call.consistency for call in puts} == {Consistency.QUORUM}
    gets = [call for call in backend.calls if call.op == "get"]
    assert [call.key for call in gets] == [*keys, b"absent"]  # started in the caller's order
    assert {call.consistency for call in gets} == {Consistency.ONE}


def test_sync_put_many_deletes_on_none_and_splits_requests() -> None:
    backend = Counting()
    keys = _keys(BATCH_GETS_MAX + 1)
    with ServerThread(backend) as server, Client([f"127.0.0.1:{server.port}"]) as client:
        assert all(isinstance(c, str) for c in client.put_many([(k, b"v") for k in keys[:3]]))
        context = client.get_many([keys[0]])[0]
        assert isinstance(context, Item)
        deleted = client.put_many([(keys[0], None, context.context), (keys[1], b"w", None)])
        reads = client.get_many(keys)
    assert isinstance(deleted[0], str) and isinstance(deleted[1], str)
    assert [call.op for call in backend.calls if call.key == keys[0]][-2:] == ["delete", "get"]
    values = [item.value if isinstance(item, Item) else item for item in reads]
    assert values[:3] == [None, None, b"v"] and values[3:] == [None] * (len(keys) - 3)
    second = reads[1]
    assert isinstance(second, Item) and sorted(second.siblings) == [b"v", b"w"]  # blind put
    deletes = [call for call in backend.calls if call.op == "delete"]
    assert len(deletes) == 1 and deletes[0].context is not None and deletes[0].context.clock


def test_async_many_match_the_sync_client() -> None:
    backend = Counting(failing=frozenset({b"bad"}))

    async def scenario(port: int) -> tuple[list[Any], list[Any]]:
        async with AsyncClient([f"127.0.0.1:{port}"]) as client:
            written = await client.put_many([(b"a", b"1"), (b"bad", b"2"), ("c", b"3")])
            reads = await client.get_many([b"a", b"bad", "c"])
        return written, reads

    with ServerThread(backend) as server:
        written, reads = asyncio.run(scenario(server.port))
    assert isinstance(written[0], str) and isinstance(written[2], str)
    assert isinstance(written[1], DynakvError) and written[1].code == "QuorumNotReached"
    assert [item.value for item in reads] == [b"1", None, b"3"]


@pytest.mark.parametrize("resolver", [None, max])
def test_get_many_resolves_siblings_like_get(resolver: Any) -> None:
    backend = Counting()
    with (
        ServerThread(backend) as server,
        Client([f"127.0.0.1:{server.port}"], resolver=resolver) as client,
    ):
        client.put(b"k", b"x")
        client.put(b"k", b"y")  # no context: a sibling of the first
        many = client.get_many([b"k"])[0]
        single = client.get(b"k")
    assert isinstance(many, Item)
    assert sorted(many.siblings) == sorted(single.siblings) == [b"x", b"y"]
    assert many.value == single.value == (None if resolver is None else b"y")
    assert many.context == single.context and many.etag == single.etag
