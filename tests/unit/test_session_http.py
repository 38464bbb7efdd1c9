"""The native router's session and idempotency headers, over real HTTP to a test
backend: what reaches the backend, and the token on every answer, errors too."""

from __future__ import annotations

import http.client
from collections.abc import Iterator

import pytest

from dynakv.core.consistency import Consistency
from dynakv.core.idempotency import idempotency_hash
from dynakv.core.session import (
    EMPTY_SESSION,
    decode_session,
    encode_session,
    entry_for,
    observe,
    session_key_hash,
)
from dynakv.errors import QuorumNotReached
from tests.unit.test_http_api import FakeBackend, ServerThread
from tests.unit.test_idempotency_client import KeyedBackend


class Http:
    def __init__(self, port: int) -> None:
        self.port = port

    def __call__(
        self, method: str, path: str, body: bytes | None = None, **headers: str
    ) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            names = {name.replace("_", "-"): value for name, value in headers.items()}
            connection.request(method, path, body=body, headers=names)
            response = connection.getresponse()
            answer = {k.lower(): v for k, v in response.getheaders()}
            return response.status, answer, response.read()
        finally:
            connection.close()


@pytest.fixture
def keyed() -> Iterator[tuple[KeyedBackend, Http]]:
    backend = KeyedBackend()
    with ServerThread(backend) as server:
        yield backend, Http(server.port)


def test_a_session_write_runs_at_quorum_and_answers_a_token_naming_the_key(
    keyed: tuple[KeyedBackend, Http],
) -> None:
    backend, call = keyed
    status, headers, _ = call("PUT", "/v1/kv/k?consistency=session&ttl=5", b"v")
    assert status == 204
    assert backend.calls[-1].consistency is Consistency.QUORUM and backend.calls[-1].ttl_s == 5
    assert backend.sessions[-1] == EMPTY_SESSION
    token = decode_session(headers["x-dynakv-session"].encode())
    entry = entry_for(token, session_key_hash(b"k"))
    assert entry is not None and entry.clock
    # The token goes back in; the read is a session read and the token comes back.
    status, headers, body = call(
        "GET", "/v1/kv/k?consistency=session", x_dynakv_session=encode_session(token)
    )
    assert (status, body) == (200, b"v")
    assert backend.sessions[-1] == token
    assert decode_session(headers["x-dynakv-session"].encode()) == token


def test_an_error_still_answers_the_token_unchanged(keyed: tuple[KeyedBackend, Http]) -> None:
    backend, call = keyed
    token = observe(EMPTY_SESSION, 7, (("n1", 3),), 3)
    backend.fail_with = QuorumNotReached(required=2, acked=1, consistency="quorum")
    status, headers, _ = call(
        "GET", "/v1/kv/k?consistency=session", x_dynakv_session=encode_session(token)
    )
    assert status == 503
    assert headers["x-dynakv-session"] == encode_session(token)


def test_a_token_on_another_level_is_updated_but_not_used_to_pick_replicas(
    keyed: tuple[KeyedBackend, Http],
) -> None:
    backend, call = keyed
    call("PUT", "/v1/kv/k", b"v")
    status, headers, _ = call("GET", "/v1/kv/k?consistency=one")
    assert status == 200 and "x-dynakv-session" not in headers  # no token, no session
    status, headers, _ = call("GET", "/v1/kv/k?consistency=one", x_dynakv_session="")
    assert status == 200 and "x-dynakv-session" in headers  # an empty one starts a session
    token = encode_session(EMPTY_SESSION)
    status, headers, _ = call("GET", "/v1/kv/k?consistency=one", x_dynakv_session=token)
    assert backend.sessions[-1] is None and backend.calls[-1].consistency is Consistency.ONE
    assert entry_for(decode_session(headers["x-dynakv-session"].encode()), session_key_hash(b"k"))


def test_the_idempotency_key_reaches_weak_writes_only(keyed: tuple[KeyedBackend, Http]) -> None:
    backend, call = keyed
    assert call("PUT", "/v1/kv/k", b"v", idempotency_key="abc")[0] == 204
    assert call("DELETE", "/v1/kv/k?consistency=one", idempotency_key="abd")[0] == 204
    assert backend.keys == [idempotency_hash(b"abc"), idempotency_hash(b"abd")]
    assert call("PUT", "/v1/kv/k?consistency=strong", b"v", idempotency_key="abe")[0] == 204
    assert backend.calls[-1].op == "write_strong" and len(backend.keys) == 2


@pytest.mark.parametrize(
    ("headers", "field"),
    [
        ({"idempotency_key": "a b"}, "Idempotency-Key"),
        ({"idempotency_key": "x" * 129}, "Idempotency-Key"),
        ({"x_dynakv_session": "%%"}, "X-Dynakv-Session"),
    ],
)
def test_a_bad_header_is_a_400_naming_it_and_nothing_is_written(
    keyed: tuple[KeyedBackend, Http], headers: dict[str, str], field: str
) -> None:
    backend, call = keyed
    status, _, body = call("PUT", "/v1/kv/k?consistency=session", b"v", **headers)
    assert status == 400 and field.encode() in body
    assert backend.calls == []


def test_a_backend_without_sessions_serves_them_as_quorum_reads() -> None:
    backend = FakeBackend()
    with ServerThread(backend) as server:
        call = Http(server.port)
        status, headers, _ = call("GET", "/v1/kv/k?consistency=session")
        assert status == 404 and "x-dynakv-session" in headers
        assert backend.calls[-1].consistency is Consistency.QUORUM
        assert call("PUT", "/v1/kv/k", b"v", idempotency_key="abc")[0] == 204
