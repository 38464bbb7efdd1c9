"""dynakv.Client and dynakv.AsyncClient against the real HTTP server and a fake backend.

Every behavioural test runs twice: with the blocking client, and with the
asyncio client driven from an ``asyncio.Runner`` in the test thread (the
server has its own loop in a background thread).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import dynakv
from dynakv.api.errors import InternalError
from dynakv.client import AsyncClient, Client, Item, NoEndpointReachable, ResponseLost
from dynakv.client.common import Endpoint, Resolver, Updater, parse_endpoint
from dynakv.config import Limits
from dynakv.core.consistency import Consistency
from dynakv.core.record import EMPTY_CONTEXT, context_of, decode_context, encode_context
from dynakv.errors import (
    InvalidRequest,
    KeyTooLarge,
    OutcomeUnknown,
    Overloaded,
    PreconditionFailed,
    QuorumNotReached,
    UnavailableError,
    ValueTooLarge,
)
from tests.unit.test_http_api import FakeBackend, ServerThread, wait_until

LIMITS = Limits(value_bytes_max=1000, http_body_bytes_max=4000)


class SyncView:
    """The AsyncClient behind the blocking API, so one test body covers both clients."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client
        self._runner = asyncio.Runner()

    def get(self, key: bytes | str, consistency: str = "quorum") -> Item:
        return self._runner.run(self._client.get(key, consistency))

    def put(self, key: bytes | str, value: bytes, **options: Any) -> str:
        return self._runner.run(self._client.put(key, value, **options))

    def delete(self, key: bytes | str, **options: Any) -> str:
        return self._runner.run(self._client.delete(key, **options))

    def update(self, key: bytes | str, fn: Updater, **options: Any) -> bytes | None:
        return self._runner.run(self._client.update(key, fn, **options))

    def status(self) -> dict[str, Any]:
        return self._runner.run(self._client.status())

    def local_record(self, key: bytes | str) -> dict[str, Any]:
        return self._runner.run(self._client.local_record(key))

    def close(self) -> None:
        self._runner.run(self._client.close())
        self._runner.close()


AnyClient = Client | SyncView


@pytest.fixture(params=["sync", "async"])
def client_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_client(client_kind: str) -> Iterator[Any]:
    made: list[AnyClient] = []

    def make(
        endpoints: list[str], *, timeout_s: float = 5.0, resolver: Resolver | None = None
    ) -> AnyClient:
        client: AnyClient
        if client_kind == "sync":
            client = Client(endpoints, timeout_s=timeout_s, resolver=resolver)
        else:
            client = SyncView(AsyncClient(endpoints, timeout_s=timeout_s, resolver=resolver))
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def server(backend: FakeBackend) -> Iterator[ServerThread]:
    with ServerThread(backend, LIMITS) as running:
        yield running


@pytest.fixture
def client(server: ServerThread, make_client: Any) -> AnyClient:
    result: AnyClient = make_client([f"127.0.0.1:{server.port}"])
    return result


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens: connecting is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class HangUp:
    """Accepts connections, reads a request, and closes without answering."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.accepted = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with connection:
                self.accepted += 1
                connection.recv(65536)

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self._thread.join(5)


@pytest.fixture
def hang_up() -> Iterator[HangUp]:
    server = HangUp()
    yield server
    server.close()


# --- the data API ------------------------------------------------------------------------------


def test_put_get_delete(client: AnyClient, backend: FakeBackend) -> None:
    absent = client.get("k")
    assert (absent.value, absent.siblings) == (None, [])
    assert decode_context(absent.context) == EMPTY_CONTEXT

    context = client.put("k", b"v1")
    assert decode_context(context).clock == (("fake", 1),)
    item = client.get("k")
    assert item == Item(b"v1", [], context, item.etag)
    assert item.etag is not None and absent.etag is None

    deleted = client.delete("k", context=item.context)
    assert backend.calls[-1].context == decode_context(item.context)
    gone = client.get("k")
    assert gone.value is None
    assert gone.context == deleted


def test_binary_and_text_keys(client: AnyClient, backend: FakeBackend) -> None:
    key = b"\x00a/b c%\xff"
    client.put(key, b"binary")
    assert backend.calls[-1].key == key
    assert client.get(key).value == b"binary"
    client.put("clé", b"text")
    assert backend.calls[-1].key == "clé".encode()
    assert client.get("clé".encode()).value == b"text"


def test_options_reach_the_backend(client: AnyClient, backend: FakeBackend) -> None:
    client.put("k", b"v", consistency="all", ttl_s=30)
    client.get("k", consistency=Consistency.ONE)
    client.delete("k", consistency="one")
    put, get, delete = backend.calls
    assert (put.consistency, put.ttl_s, put.value) == (Consistency.ALL, 30, b"v")
    assert get.consistency is Consistency.ONE
    assert delete.consistency is Consistency.ONE


def test_conditional_writes_compare_and_set_on_the_etag(
    client: AnyClient, backend: FakeBackend
) -> None:
    client.put("k", b"a", if_absent=True)
    with pytest.raises(PreconditionFailed) as exists:
        client.put("k", b"b", if_absent=True)
    read = client.get("k")
    assert exists.value.current_etag == read.etag is not None
    client.put("k", b"b", if_match=read.etag)
    with pytest.raises(PreconditionFailed) as stale:
        client.delete("k", if_match=read.etag)
    assert stale.value.current_etag == client.get("k").etag != read.etag
    client.delete("k", if_match=client.get("k").etag)
    assert client.get("k").value is None
    assert [call.op for call in backend.calls if call.op != "get"] == ["write_strong"] * 5
    with pytest.raises(ValueError, match="not both"):
        client.put("k", b"x", if_match=read.etag, if_absent=True)


def test_update_retries_when_another_writer_came_first(
    client: AnyClient, backend: FakeBackend, server: ServerThread
) -> None:
    seen: list[bytes | None] = []
    with Client([f"127.0.0.1:{server.port}"]) as other:

        def increment(current: bytes | None) -> bytes:
            seen.append(current)
            if len(seen) == 1:
                other.put("n", b"10")  # lands between update's read and its write
            return str(int(current or b"0") + 1).encode()

        assert client.update("n", increment) == b"11"
    assert seen == [None, b"10"]
    reads = [c.consistency for c in backend.calls if c.op == "get"]
    assert reads == [Consistency.STRONG] * 2
    assert [c.condition is not None for c in backend.calls if c.op == "write_strong"] == [True] * 2
    assert client.get("n").value == b"11"


def test_update_gives_up_after_retries_max(client: AnyClient, server: ServerThread) -> None:
    calls = 0
    with Client([f"127.0.0.1:{server.port}"]) as other:

        def always_beaten(current: bytes | None) -> bytes:
            nonlocal calls
            calls += 1
            other.put("n", str(calls).encode(), context=other.get("n").context)
            return b"mine"

        with pytest.raises(PreconditionFailed):
            client.update("n", always_beaten, retries_max=2)
    assert calls == 3
    assert client.get("n").value == b"3"


def test_update_deletes_when_the_function_returns_none(client: AnyClient) -> None:
    assert client.update("d", lambda current: None) is None  # absent: nothing to do
    assert client.update("d", lambda current: b"v", ttl_s=60) == b"v"
    assert client.update("d", lambda current: None) is None
    assert client.get("d").value is None


def test_siblings_without_a_resolver(client: AnyClient) -> None:
    client.put("s", b"a")
    client.put("s", b"b")
    item = client.get("s")
    assert item.value is None
    assert item.siblings == [b"a", b"b"]
    client.put("s", b"ab", context=item.context)
    resolved = client.get("s")
    assert (resolved.value, resolved.siblings) == (b"ab", [])
    client.put("s", b"c")
    with pytest.raises(ValueError, match="siblings"):
        client.update("s", lambda current: b"x")


def test_siblings_with_a_resolver(server: ServerThread, make_client: Any) -> None:
    seen: list[list[bytes]] = []

    def longest(values: list[bytes]) -> bytes:
        seen.append(values)
        return max(values, key=len)

    client = make_client([f"127.0.0.1:{server.port}"], resolver=longest)
    client.put("s", b"short")
    client.put("s", b"longer")
    item = client.get("s")
    assert (item.value, item.siblings) == (b"longer", [b"short", b"longer"])
    assert seen == [[b"short", b"longer"]]
    client.put("s", item.value, context=item.context)
    assert client.get("s").siblings == []


def test_status_and_local_record(client: AnyClient, backend: FakeBackend) -> None:
    assert client.status() == backend.status_document
    assert client.local_record(b"\x00")["record"] is None
    client.put(b"\x00", b"v")
    [sibling] = client.local_record(b"\x00")["record"]["siblings"]
    assert sibling["value"] == "dg=="


# --- typed errors ------------------------------------------------------------------------------


def test_request_errors_are_typed(client: AnyClient, backend: FakeBackend) -> None:
    with pytest.raises(KeyTooLarge) as key_error:
        client.put(b"k" * 2049, b"v")
    assert (key_error.value.size, key_error.value.max) == (2049, 2048)
    with pytest.raises(ValueTooLarge) as value_error:
        client.put("k", b"v" * 1001)
    assert (value_error.value.size, value_error.value.max) == (1001, 1000)
    with pytest.raises(InvalidRequest) as bad_level:
        client.get("k", consistency="most")
    assert bad_level.value.field == "consistency"
    with pytest.raises(InvalidRequest) as bad_context:
        client.put("k", b"v", context="!!")
    assert bad_context.value.field == "X-Dynakv-Context"
    with pytest.raises(InvalidRequest) as empty_key:
        client.get(b"")
    assert empty_key.value.field == "key"
    assert backend.calls == []


def test_backend_errors_are_typed(client: AnyClient, backend: FakeBackend) -> None:
    backend.fail_with = QuorumNotReached(required=2, acked=1, consistency="quorum")
    with pytest.raises(QuorumNotReached) as quorum:
        client.put("k", b"v")
    assert (quorum.value.required, quorum.value.acked, quorum.value.consistency) == (2, 1, "quorum")
    assert quorum.value.retry_after_s == 1
    backend.fail_with = Overloaded(resource="coordinator", limit=8)
    with pytest.raises(Overloaded) as overloaded:
        client.get("k")
    assert (overloaded.value.resource, overloaded.value.limit) == ("coordinator", 8)
    backend.fail_with = OutcomeUnknown(required=2, acked=1, consistency="all", timeout_ms=900)
    with pytest.raises(OutcomeUnknown) as unknown:
        client.delete("k")
    assert unknown.value.timeout_ms == 900
    backend.fail_with = RuntimeError("bug")
    with pytest.raises(InternalError):
        client.get("k")


# --- failover ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dead_first", [True, False])
def test_a_dead_endpoint_fails_over_to_a_live_one(
    server: ServerThread, make_client: Any, dead_first: bool
) -> None:
    live, dead = f"127.0.0.1:{server.port}", f"127.0.0.1:{closed_port()}"
    client = make_client([dead, live] if dead_first else [live, dead])
    for index in range(4):
        client.put(f"k{index}", b"v")
        assert client.get(f"k{index}").value == b"v"


def test_every_endpoint_dead_is_no_endpoint_reachable(make_client: Any) -> None:
    endpoints = [f"127.0.0.1:{closed_port()}", f"127.0.0.1:{closed_port()}"]
    client = make_client(endpoints)
    with pytest.raises(NoEndpointReachable) as caught:
        client.get("k")
    assert isinstance(caught.value, UnavailableError)
    assert caught.value.code == "NoEndpointReachable"
    assert sorted(caught.value.endpoints) == sorted(endpoints)
    assert len(caught.value.reasons) == 2
    with pytest.raises(NoEndpointReachable):
        client.put("k", b"v")  # nothing was sent, so a write fails over (and fails) too


def test_503_tries_each_other_endpoint_once(make_client: Any) -> None:
    sick, healthy = FakeBackend(), FakeBackend()
    sick.fail_with = QuorumNotReached(required=2, acked=0, consistency="quorum")
    with ServerThread(sick) as first, ServerThread(healthy) as second:
        client = make_client([f"127.0.0.1:{first.port}", f"127.0.0.1:{second.port}"])
        for index in range(3):
            client.put(f"k{index}", b"v")
        assert len(healthy.calls) == 3
        assert len(sick.calls) <= 1  # the client sticks to the endpoint that answered
        sick_calls = len(sick.calls)
        healthy.fail_with = Overloaded(resource="coordinator", limit=1)
        with pytest.raises(QuorumNotReached):  # healthy first (it answered last), then sick
            client.get("k0")
        assert (len(sick.calls), len(healthy.calls)) == (sick_calls + 1, 4)


def test_4xx_and_504_do_not_fail_over(make_client: Any) -> None:
    first, second = FakeBackend(), FakeBackend()
    with ServerThread(first) as one, ServerThread(second) as two:
        client = make_client([f"127.0.0.1:{one.port}", f"127.0.0.1:{two.port}"])
        client.status()  # learn which endpoint the client talks to
        target, other = (first, second) if first.calls else (second, first)
        target.fail_with = OutcomeUnknown(required=2, acked=1, consistency="quorum", timeout_ms=1)
        with pytest.raises(OutcomeUnknown):
            client.put("k", b"v")
        target.fail_with = InvalidRequest("nope", field="x")
        with pytest.raises(InvalidRequest):
            client.get("k")
        assert other.calls == []


def test_a_lost_answer_fails_a_read_over_but_not_a_write(
    server: ServerThread, make_client: Any, hang_up: HangUp, backend: FakeBackend
) -> None:
    endpoints = [f"127.0.0.1:{hang_up.port}", f"127.0.0.1:{server.port}"]
    # consecutive clients start at consecutive endpoints: one of two starts at the hang-up
    writers = [make_client(endpoints), make_client(endpoints)]
    outcomes = []
    for writer in writers:
        try:
            writer.put("k", b"v")
            outcomes.append("stored")
        except ResponseLost as lost:
            assert isinstance(lost, OutcomeUnknown)
            assert lost.endpoint == f"127.0.0.1:{hang_up.port}"
            outcomes.append("lost")
    assert sorted(outcomes) == ["lost", "stored"]
    assert [c.op for c in backend.calls] == ["put"]  # the lost write was not sent elsewhere

    accepted = hang_up.accepted
    readers = [make_client(endpoints), make_client(endpoints)]
    for reader in readers:
        assert reader.get("k").value == b"v"  # a read moves on to the live endpoint
    assert hang_up.accepted == accepted + 1


def test_every_endpoint_hanging_up_on_a_read(make_client: Any, hang_up: HangUp) -> None:
    client = make_client([f"127.0.0.1:{hang_up.port}"])
    with pytest.raises(NoEndpointReachable):
        client.get("k")
    with pytest.raises(ResponseLost):
        client.put("k", b"v")


def test_a_stale_keep_alive_connection_is_reopened(backend: FakeBackend, make_client: Any) -> None:
    with ServerThread(backend, idle_timeout_s=0.1) as running:
        client = make_client([f"127.0.0.1:{running.port}"])
        client.put("k", b"v1")
        assert running.server is not None
        wait_until(lambda: running.server is not None and not running.server.connections)
        client.put("k", b"v2", context=client.get("k").context)  # get: reopened
        wait_until(lambda: running.server is not None and not running.server.connections)
        client.put("k", b"v3", context=backend_context(backend))  # put on a stale connection
        assert client.get("k").value == b"v3"


def backend_context(backend: FakeBackend) -> str:
    return encode_context(context_of(backend.records[b"k"]))


# --- construction ------------------------------------------------------------------------------


def test_endpoint_parsing() -> None:
    assert parse_endpoint("127.0.0.1:8001") == Endpoint("127.0.0.1", 8001)
    assert parse_endpoint("http://node-1:80/") == Endpoint("node-1", 80)
    assert parse_endpoint("[::1]:9000") == Endpoint("::1", 9000)
    assert str(Endpoint("::1", 9000)) == "[::1]:9000"
    for bad in ("nohost", "host:", "host:0", "host:99999", ":80"):
        with pytest.raises(ValueError, match="endpoint"):
            parse_endpoint(bad)
    with pytest.raises(ValueError, match="endpoint"):
        Client([])


def test_package_facade_and_context_managers(server: ServerThread) -> None:
    assert dynakv.Client is Client
    assert dynakv.AsyncClient is AsyncClient
    with dynakv.Client([f"127.0.0.1:{server.port}"]) as client:
        client.put("k", b"v")

    async def use_async() -> bytes | None:
        async with dynakv.AsyncClient([f"127.0.0.1:{server.port}"]) as async_client:
            results = await asyncio.gather(*(async_client.get("k") for _ in range(8)))
            return results[0].value

    assert asyncio.run(use_async()) == b"v"
