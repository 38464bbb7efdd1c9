"""``POST /v1/batch`` over real sockets, against the in-memory fake backend of
``test_http_api``: each operation's own result, in order; the bounds; a bad
operation refused before anything runs; one failing operation failing alone;
and, against a dict, that batches of puts, deletes and gets read back what a
dumb reference model says."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynakv.api.routes import BATCH_GETS_MAX, BATCH_WRITES_MAX, parse_batch
from dynakv.config import Limits
from dynakv.core.consistency import Consistency
from dynakv.core.record import ConflictPolicy, Context
from dynakv.errors import InvalidRequest, KeyTooLarge, QuorumNotReached
from tests.unit.test_http_api import FakeBackend, Raw, Reply, ServerThread


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def batch(port: int, ops: list[dict[str, Any]], query: str = "consistency=quorum") -> Reply:
    body = json.dumps({"ops": ops}).encode()
    with Raw(port) as raw:
        return raw.request("POST", f"/v1/batch?{query}", body, {"Content-Type": "application/json"})


class FailingKeys(FakeBackend):
    """Fails every operation on a key in ``failing`` with QuorumNotReached."""

    def __init__(self, failing: set[bytes]) -> None:
        super().__init__()
        self.failing = failing

    async def get(self, key: bytes, consistency: Consistency) -> Any:
        if key in self.failing:
            raise QuorumNotReached(required=2, acked=1, consistency=consistency.value)
        return await super().get(key, consistency)

    async def put(
        self, key: bytes, value: bytes, consistency: Consistency, ttl_s: int, context: Context
    ) -> Context:
        if key in self.failing:
            raise QuorumNotReached(required=2, acked=1, consistency=consistency.value)
        return await super().put(key, value, consistency, ttl_s, context)


def test_each_operation_has_its_own_result_in_order() -> None:
    backend = FakeBackend()
    with ServerThread(backend) as server:
        written = batch(
            server.port,
            [
                {"op": "put", "key": b64(b"a"), "value": b64(b"one"), "ttl": 60},
                {"op": "put", "key": b64(b"b"), "value": b64(b"\x00two")},
                {"op": "get", "key": b64(b"nothing")},
            ],
        )
        assert written.status == 200
        results = written.json()["results"]
        assert [r["status"] for r in results] == [204, 204, 404]
        assert all(r["context"] for r in results[:2])
        read = batch(
            server.port,
            [
                {"op": "get", "key": b64(b"b")},
                {"op": "delete", "key": b64(b"a"), "context": results[0]["context"]},
                {"op": "get", "key": b64(b"a")},
            ],
            "consistency=one",
        ).json()["results"]
    assert read[0]["status"] == 200 and base64.b64decode(read[0]["value"]) == b"\x00two"
    assert read[0]["etag"]
    assert read[1]["status"] == 204
    puts = [c for c in backend.calls if c.op == "put"]
    assert {(c.key, c.ttl_s, c.consistency) for c in puts} == {
        (b"a", 60, Consistency.QUORUM),
        (b"b", 0, Consistency.QUORUM),
    }
    deletes = [c for c in backend.calls if c.op == "delete"]
    assert deletes[0].consistency is Consistency.ONE and deletes[0].context is not None
    assert deletes[0].context.clock  # the context we sent back came through


def test_a_failing_operation_fails_alone() -> None:
    backend = FailingKeys({b"bad"})
    with ServerThread(backend) as server:
        reply = batch(
            server.port,
            [
                {"op": "put", "key": b64(b"good"), "value": b64(b"v")},
                {"op": "put", "key": b64(b"bad"), "value": b64(b"v")},
                {"op": "get", "key": b64(b"bad")},
            ],
        )
    assert reply.status == 200
    results = reply.json()["results"]
    assert results[0]["status"] == 204
    for failed in results[1:]:
        assert failed["status"] == 503
        assert failed["error"]["code"] == "QuorumNotReached"
        assert failed["error"]["acked"] == 1
    assert b"good" in backend.records and b"bad" not in backend.records


def test_strong_batch_writes_go_through_the_strong_path() -> None:
    backend = FakeBackend()
    with ServerThread(backend) as server:
        reply = batch(
            server.port,
            [{"op": "put", "key": b64(b"k"), "value": b64(b"v")}],
            "consistency=strong",
        )
    result = reply.json()["results"][0]
    assert result["status"] == 204 and result["etag"]
    assert [c.op for c in backend.calls] == ["write_strong"]
    assert backend.calls[0].condition is None


@pytest.mark.parametrize(
    ("ops", "field"),
    [
        ([{"op": "get", "key": b64(b"k")}] * (BATCH_GETS_MAX + 1), "ops"),
        ([{"op": "put", "key": b64(b"k"), "value": ""}] * (BATCH_WRITES_MAX + 1), "ops"),
        ([], "ops"),
        ([{"op": "scan", "key": b64(b"k")}], "ops[0].op"),
        ([{"op": "get", "key": b64(b"k")}, {"op": "get", "key": ""}], "ops[1].key"),
        ([{"op": "get", "key": b64(b"k"), "value": b64(b"v")}], "ops[0].value"),
        ([{"op": "put", "key": b64(b"k")}], "ops[0].value"),
        ([{"op": "delete", "key": b64(b"k"), "ttl": 5}], "ops[0].ttl"),
        ([{"op": "put", "key": b64(b"k"), "value": "", "ttl": 0}], "ttl"),
        ([{"op": "get", "key": b64(b"k"), "context": "x"}], "ops[0].context"),
        ([{"op": "put", "key": b64(b"k"), "value": "", "context": "!!"}], "X-Dynakv-Context"),
        ([{"op": "get", "key": "not base64!"}], "body"),
        ([{"op": "get", "key": b64(b"k"), "extra": 1}], "body"),
    ],
)
def test_a_bad_operation_refuses_the_whole_batch(ops: list[dict[str, Any]], field: str) -> None:
    backend = FakeBackend()
    with ServerThread(backend) as server:
        reply = batch(server.port, ops)
    assert reply.status == 400, reply.body
    assert reply.error()["field"] == field
    assert backend.calls == []  # validated completely before anything ran


def test_batch_method_level_and_body_bounds() -> None:
    limits = Limits(value_bytes_max=10, http_body_bytes_max=2000, key_bytes_max=9)
    backend = FakeBackend()
    with ServerThread(backend, limits) as server, Raw(server.port) as raw:
        assert raw.request("GET", "/v1/batch").status == 405
        session = batch(server.port, [{"op": "get", "key": b64(b"k")}], "consistency=session")
        assert session.status == 400 and session.error()["field"] == "consistency"
        big_value = batch(server.port, [{"op": "put", "key": b64(b"k"), "value": b64(b"x" * 11)}])
        assert big_value.status == 413 and big_value.error()["code"] == "ValueTooLarge"
        big_key = batch(server.port, [{"op": "get", "key": b64(b"k" * 10)}])
        assert big_key.error()["code"] == "KeyTooLarge"
        reserved = batch(server.port, [{"op": "get", "key": b64(b"\x00dynakv\x00x")}])
        assert reserved.error()["code"] == "KeyReserved"
        body = batch(server.port, [{"op": "get", "key": b64(b"k" * 8)}] * 100)
        assert body.status == 413 and body.error()["code"] == "BodyTooLarge"
    assert backend.calls == []


def test_parse_batch_names_the_limit() -> None:
    limits = Limits(key_bytes_max=4)
    with pytest.raises(KeyTooLarge):
        parse_batch(json.dumps({"ops": [{"op": "get", "key": b64(b"12345")}]}).encode(), limits)
    with pytest.raises(InvalidRequest):
        parse_batch(b"[]", limits)


_KEYS = st.sampled_from([b"k0", b"k1", b"k2", b"k3", b"k4"])
_OPERATION = st.tuples(st.sampled_from(["put", "delete"]), st.binary(min_size=0, max_size=8))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.dictionaries(_KEYS, _OPERATION, min_size=1, max_size=BATCH_WRITES_MAX), max_size=6)
)
def test_batches_read_back_what_a_dict_holds(batches: list[dict[bytes, tuple[str, bytes]]]) -> None:
    """Each batch writes distinct keys (one batch's operations are unordered), under
    last-writer-wins; a batch of gets of every key then reads what the dict holds."""
    backend = FakeBackend(policy=ConflictPolicy.LWW)
    model: dict[bytes, bytes] = {}
    keys = [b"k0", b"k1", b"k2", b"k3", b"k4"]
    with ServerThread(backend) as server:
        for writes in batches:
            ops: list[dict[str, Any]] = []
            for key, (op, value) in sorted(writes.items()):
                if op == "put":
                    ops.append({"op": "put", "key": b64(key), "value": b64(value)})
                    model[key] = value
                else:
                    ops.append({"op": "delete", "key": b64(key)})
                    model.pop(key, None)
            results = batch(server.port, ops).json()["results"]
            assert [r["status"] for r in results] == [204] * len(ops)
        read = batch(server.port, [{"op": "get", "key": b64(k)} for k in keys]).json()["results"]
    for key, result in zip(keys, read, strict=True):
        if key in model:
            assert result["status"] == 200 and base64.b64decode(result["value"]) == model[key]
        else:
            assert result["status"] == 404


def test_operations_that_wait_and_those_that_do_not_keep_their_places() -> None:
    """Operations are stepped at once; the ones that suspend (a slow key) finish
    later as tasks, and every result still lands at its own index."""
    backend = FakeBackend()
    backend.delays_s = {b"slow-a": 0.05, b"slow-b": 0.01}
    with ServerThread(backend) as server:
        batch(server.port, [{"op": "put", "key": b64(b"fast"), "value": b64(b"f")}])
        reply = batch(
            server.port,
            [
                {"op": "get", "key": b64(b"slow-a")},
                {"op": "get", "key": b64(b"fast")},
                {"op": "put", "key": b64(b"slow-b"), "value": b64(b"s")},
                {"op": "get", "key": b64(b"absent")},
            ],
        )
    results = reply.json()["results"]
    assert [r["status"] for r in results] == [404, 200, 204, 404]
    assert base64.b64decode(results[1]["value"]) == b"f"
    assert backend.records[b"slow-b"] is not None
