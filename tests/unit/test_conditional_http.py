"""ETags, conditional writes and ``consistency=strong`` at the HTTP layer.

Raw HTTP/1.1 against the real server and ``test_http_api.FakeBackend`` (whose
``write_strong`` judges conditions on the real ETag code), so each test says
exactly which bytes go in and which headers come out.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dynakv.core.consistency import Consistency
from dynakv.core.etag import ETAG_CHARS, IfAbsent, IfMatch
from dynakv.errors import Contended
from tests.unit.test_http_api import SMALL, FakeBackend, Raw, ServerThread, kv


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture(params=["asyncio", "uvloop"])
def conn(request: pytest.FixtureRequest, backend: FakeBackend) -> Iterator[Raw]:
    with (
        ServerThread(backend, SMALL, loop_kind=str(request.param)) as server,
        Raw(server.port) as raw,
    ):
        yield raw


def etag(reply_headers: dict[str, str]) -> str:
    """The opaque token inside a quoted ``ETag`` header."""
    value = reply_headers["etag"]
    assert value.startswith('"') and value.endswith('"'), value
    token = value[1:-1]
    assert len(token) == ETAG_CHARS
    return token


def test_every_get_of_a_live_value_carries_its_etag(conn: Raw) -> None:
    assert "etag" not in conn.request("GET", kv("k")).headers  # 404: no version
    put = conn.request("PUT", kv("k"), b"v1")
    assert "etag" not in put.headers, "a weak write does not know the merged version"
    for level in ("one", "quorum", "all", "strong"):
        got = conn.request("GET", kv("k", f"consistency={level}"))
        assert got.status == 200
        assert etag(got.headers) == etag(conn.request("GET", kv("k")).headers)
    conn.request("PUT", kv("k"), b"v2")
    assert etag(conn.request("GET", kv("k")).headers) != etag(got.headers), "a new write, a new tag"
    conn.request("PUT", kv("k"), b"v3")  # blind under siblings: two values, one tag for both
    siblings = conn.request("GET", kv("k"))
    assert siblings.status == 300 and "etag" in siblings.headers


def test_create_only_writes_once_then_answers_412_with_the_current_etag(
    conn: Raw, backend: FakeBackend
) -> None:
    created = conn.request("PUT", kv("k"), b"first", {"If-None-Match": "*"})
    assert created.status == 204
    first_tag = etag(created.headers)
    again = conn.request("PUT", kv("k"), b"second", {"If-None-Match": "*"})
    assert again.status == 412
    error = again.error()
    assert (error["code"], error["current_etag"]) == ("PreconditionFailed", first_tag)
    assert etag(again.headers) == first_tag
    assert conn.request("GET", kv("k")).body == b"first"
    writes = [call for call in backend.calls if call.op == "write_strong"]
    assert [call.condition for call in writes] == [IfAbsent(), IfAbsent()]


def test_if_match_is_compare_and_set(conn: Raw, backend: FakeBackend) -> None:
    conn.request("PUT", kv("k"), b"a")
    read = etag(conn.request("GET", kv("k")).headers)
    swapped = conn.request("PUT", kv("k"), b"b", {"If-Match": f'"{read}"'})
    assert swapped.status == 204
    assert etag(swapped.headers) == etag(conn.request("GET", kv("k")).headers) != read
    stale = conn.request("PUT", kv("k"), b"c", {"If-Match": f'"{read}"'})
    assert stale.status == 412
    assert stale.error()["current_etag"] == etag(swapped.headers)
    assert conn.request("GET", kv("k")).body == b"b"
    assert backend.calls[-2].condition == IfMatch(read)


def test_a_conditional_delete_removes_the_version_it_names(conn: Raw) -> None:
    conn.request("PUT", kv("k"), b"a")
    tag = etag(conn.request("GET", kv("k")).headers)
    wrong = conn.request("DELETE", kv("k"), headers={"If-Match": '"AAAAAAAAAAAAAAAAAAAAAA"'})
    assert wrong.status == 412
    deleted = conn.request("DELETE", kv("k"), headers={"If-Match": f'"{tag}"'})
    assert deleted.status == 204
    assert "etag" not in deleted.headers, "a tombstone has no ETag"
    gone = conn.request("DELETE", kv("k"), headers={"If-Match": f'"{tag}"'})
    assert gone.status == 412 and gone.error()["current_etag"] is None
    assert "etag" not in gone.headers
    assert conn.request("GET", kv("k")).status == 404


def test_a_tag_that_is_not_ours_never_matches(conn: Raw) -> None:
    conn.request("PUT", kv("k"), b"a")
    reply = conn.request("PUT", kv("k"), b"b", {"If-Match": '"not-an-etag"'})
    assert reply.status == 412


def test_consistency_strong_writes_take_the_strong_path(conn: Raw, backend: FakeBackend) -> None:
    put = conn.request("PUT", kv("k", "consistency=strong&ttl=30"), b"v")
    assert put.status == 204 and "etag" in put.headers
    assert conn.request("DELETE", kv("k", "consistency=strong")).status == 204
    assert conn.request("GET", kv("k", "consistency=strong")).status == 404
    assert [(c.op, c.consistency, c.ttl_s, c.value) for c in backend.calls] == [
        ("write_strong", Consistency.STRONG, 30, b"v"),
        ("write_strong", Consistency.STRONG, 0, None),
        ("get", Consistency.STRONG, None, None),
    ]
    assert all(call.condition is None for call in backend.calls)


def test_a_conditional_write_at_a_weak_level_still_runs_strong(
    conn: Raw, backend: FakeBackend
) -> None:
    reply = conn.request("PUT", kv("k", "consistency=one"), b"v", {"If-None-Match": "*"})
    assert reply.status == 204
    assert [call.op for call in backend.calls] == ["write_strong"]


@pytest.mark.parametrize(
    ("headers", "field"),
    [
        ({"If-Match": "abc"}, "If-Match"),  # unquoted
        ({"If-Match": "*"}, "If-Match"),  # "any version": not supported, say so
        ({"If-Match": 'W/"abc"'}, "If-Match"),  # weak tags never match strongly
        ({"If-Match": '"a", "b"'}, "If-Match"),  # a list
        ({"If-Match": '""'}, "If-Match"),
        ({"If-Match": '"' + "x" * 200 + '"'}, "If-Match"),  # longer than any ETag
        ({"If-None-Match": '"abc"'}, "If-None-Match"),  # only * (create only)
        ({"If-Match": '"abc"', "If-None-Match": "*"}, "If-Match"),  # both
    ],
)
@pytest.mark.parametrize("method", ["PUT", "DELETE"])
def test_malformed_conditions_are_400_and_reach_nothing(
    conn: Raw, backend: FakeBackend, headers: dict[str, str], field: str, method: str
) -> None:
    reply = conn.request(method, kv("k"), b"v" if method == "PUT" else b"", headers)
    assert reply.status == 400
    assert (reply.error()["code"], reply.error()["field"]) == ("InvalidRequest", field)
    assert backend.calls == []


def test_a_repeated_if_match_header_is_a_list_and_refused(conn: Raw, backend: FakeBackend) -> None:
    raw = (
        b'PUT /v1/kv/k HTTP/1.1\r\nHost: t\r\nIf-Match: "abc"\r\nIf-Match: "def"\r\n'
        b"Content-Length: 1\r\n\r\nv"
    )
    conn.send(raw)
    reply = conn.reply()
    assert reply.status == 400 and reply.error()["field"] == "If-Match"
    assert backend.calls == []


def test_strong_path_errors_render_as_their_status(conn: Raw, backend: FakeBackend) -> None:
    backend.fail_with = Contended(rounds=8)
    reply = conn.request("PUT", kv("k", "consistency=strong"), b"v")
    assert reply.status == 503
    assert reply.error()["code"] == "Contended" and reply.error()["rounds"] == 8
    assert reply.headers["retry-after"] == "1"


def test_conditions_on_a_get_are_ignored(conn: Raw) -> None:
    conn.request("PUT", kv("k"), b"v")
    reply = conn.request("GET", kv("k"), headers={"If-Match": "garbage", "If-None-Match": "*"})
    assert (reply.status, reply.body) == (200, b"v")
