"""The clients' Idempotency-Key and session token, end to end over real HTTP to an
in-memory backend that takes the new arguments (the router passes them through)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from dynakv.api.backend import GetResult
from dynakv.client import AsyncClient, Client
from dynakv.client.common import IDEMPOTENCY_HEADER, delete_request, put_request
from dynakv.core.consistency import Consistency
from dynakv.core.idempotency import idempotency_hash
from dynakv.core.record import Context
from dynakv.core.session import SessionToken, decode_session, entry_for, session_key_hash
from dynakv.errors import OutcomeUnknown
from tests.unit.test_http_api import FakeBackend, ServerThread


class KeyedBackend(FakeBackend):
    """FakeBackend that also takes ``idempotency_hash`` and ``session`` and records them."""

    def __init__(self) -> None:
        super().__init__()
        self.keys: list[int] = []
        self.sessions: list[SessionToken | None] = []

    async def get(
        self, key: bytes, consistency: Consistency, *, session: SessionToken | None = None
    ) -> GetResult:
        self.sessions.append(session)
        return await super().get(key, consistency)

    async def put(
        self,
        key: bytes,
        value: bytes,
        consistency: Consistency,
        ttl_s: int,
        context: Context,
        *,
        idempotency_hash: int = 0,
        session: SessionToken | None = None,
    ) -> Context:
        self.keys.append(idempotency_hash)
        self.sessions.append(session)
        return await super().put(key, value, consistency, ttl_s, context)

    async def delete(
        self,
        key: bytes,
        consistency: Consistency,
        context: Context,
        *,
        idempotency_hash: int = 0,
        session: SessionToken | None = None,
    ) -> Context:
        self.keys.append(idempotency_hash)
        self.sessions.append(session)
        return await super().delete(key, consistency, context)


class Sync:
    """The async client and session behind the sync client's call shapes."""

    def __init__(self, endpoints: list[str], **options: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.client = AsyncClient(endpoints, **options)

    def put(self, key: str, value: bytes, **options: Any) -> str:
        return self.loop.run_until_complete(self.client.put(key, value, **options))

    def close(self) -> None:
        self.loop.run_until_complete(self.client.close())
        self.loop.close()


@pytest.fixture
def servers() -> Iterator[tuple[ServerThread, ServerThread]]:
    with ServerThread(KeyedBackend()) as first, ServerThread(KeyedBackend()) as second:
        yield first, second


def backends(servers: tuple[ServerThread, ServerThread]) -> tuple[KeyedBackend, KeyedBackend]:
    first, second = servers[0].backend, servers[1].backend
    assert isinstance(first, KeyedBackend) and isinstance(second, KeyedBackend)
    return first, second


def make(kind: str, endpoints: list[str], **options: Any) -> Any:
    if kind == "sync":
        return Client(endpoints, **options)
    return Sync(endpoints, **options)


def test_weak_writes_carry_a_fresh_key_and_strong_or_conditional_ones_none() -> None:
    first = put_request("k", b"v", "quorum", None, None)
    second = put_request("k", b"v", "quorum", None, None)
    assert first.headers[IDEMPOTENCY_HEADER] != second.headers[IDEMPOTENCY_HEADER]
    assert (
        put_request("k", b"v", "one", None, None, idempotency_key="mine").headers[
            IDEMPOTENCY_HEADER
        ]
        == "mine"
    )
    assert IDEMPOTENCY_HEADER in delete_request("k", "session", None).headers
    assert IDEMPOTENCY_HEADER not in put_request("k", b"v", "strong", None, None).headers
    assert (
        IDEMPOTENCY_HEADER
        not in put_request("k", b"v", "quorum", None, None, if_absent=True).headers
    )
    assert IDEMPOTENCY_HEADER not in delete_request("k", "quorum", None, if_match="x").headers
    with pytest.raises(ValueError):
        put_request("k", b"v", "quorum", None, None, idempotency_key="has space")


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_504_is_retried_at_the_next_endpoint_under_the_same_key(
    kind: str, servers: tuple[ServerThread, ServerThread]
) -> None:
    first, second = backends(servers)
    endpoints = [f"127.0.0.1:{server.port}" for server in servers]
    for backend in (first, second):
        backend.fail_with = OutcomeUnknown(required=2, acked=1, consistency="quorum", timeout_ms=1)
    client = make(kind, endpoints, retry_unknown_writes=True)
    try:
        with pytest.raises(OutcomeUnknown):  # both unknown: the unknown outcome is raised
            client.put("k", b"v", idempotency_key="order-17")
        expected = idempotency_hash(b"order-17")
        assert first.keys == second.keys == [expected], "each endpoint once, one key"
        first.fail_with = second.fail_with = None
        # One endpoint answers 504, the next applies it: success, still one key.
        sick = first if len(first.calls) else second
        sick.fail_with = OutcomeUnknown(required=2, acked=1, consistency="quorum", timeout_ms=1)
        for _ in range(2):  # whichever endpoint the client starts at
            client.put("k2", b"v")
        keys = first.keys[1:] + second.keys[1:]
        assert len(set(keys)) == 2 and all(keys)
    finally:
        client.close()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_without_retries_a_504_stays_final(
    kind: str, servers: tuple[ServerThread, ServerThread]
) -> None:
    first, second = backends(servers)
    for backend in (first, second):
        backend.fail_with = OutcomeUnknown(required=2, acked=1, consistency="quorum", timeout_ms=1)
    client = make(kind, [f"127.0.0.1:{server.port}" for server in servers])
    try:
        with pytest.raises(OutcomeUnknown):
            client.put("k", b"v")
        assert len(first.keys) + len(second.keys) == 1
    finally:
        client.close()


def test_a_session_sends_back_the_token_each_answer_carries(
    servers: tuple[ServerThread, ServerThread],
) -> None:
    first, second = backends(servers)
    writer = Client([f"127.0.0.1:{servers[0].port}"])
    reader = Client([f"127.0.0.1:{servers[1].port}"])
    try:
        session = writer.session()
        assert session.token == ""
        session.put("k", b"v")
        token = decode_session(session.token.encode())
        entry = entry_for(token, session_key_hash(b"k"))
        assert entry is not None and entry.clock, "the write's version is in the token"
        assert first.sessions[-1] is not None and first.keys[-1] != 0
        # Another client resumes the session elsewhere: its read carries the token.
        resumed = reader.session(session.token)
        item = resumed.get("k")
        assert item.value is None  # the second backend never saw the write
        assert second.sessions[-1] == token, "the read was asked as a session read"
        assert resumed.token == session.token  # nothing newer was seen
    finally:
        writer.close()
        reader.close()


def test_an_async_session_keeps_its_token() -> None:
    async def scenario(port: int) -> None:
        async with AsyncClient([f"127.0.0.1:{port}"]) as client:
            session = client.session()
            await session.put("k", b"v")
            assert session.token
            assert (await session.get("k")).value == b"v"
            await session.delete("k")
            after = decode_session(session.token.encode())
            assert entry_for(after, session_key_hash(b"k")) is not None

    with ServerThread(KeyedBackend()) as server:
        asyncio.run(scenario(server.port))
        backend = server.backend
        assert isinstance(backend, KeyedBackend)
        assert all(s is not None for s in backend.sessions)
