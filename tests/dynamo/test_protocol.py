"""The JSON protocol's pure parts: targets, bodies, fields, error bodies, the node's errors."""

from __future__ import annotations

import json

import pytest

from dynakv.api.errors import BodyTooLarge
from dynakv.dynamo.errors import (
    ConditionalCheckFailedException,
    SerializationException,
    UnknownOperationException,
    ValidationException,
)
from dynakv.dynamo.protocol import (
    dynakv_error_response,
    enum_field,
    error_response,
    int_field,
    parse_body,
    parse_target,
    str_field,
)
from dynakv.errors import Contended, OutcomeUnknown, QuorumNotReached

OPERATIONS = frozenset({"GetItem", "PutItem"})


def test_targets_name_a_served_operation() -> None:
    assert parse_target(b"DynamoDB_20120810.GetItem", OPERATIONS) == "GetItem"
    for raw in (None, b"", b"DynamoDB_20111205.GetItem", b"DynamoDB_20120810.Scan"):
        with pytest.raises(UnknownOperationException):
            parse_target(raw, OPERATIONS)


def test_bodies_are_json_objects() -> None:
    assert parse_body(b"") == {}
    assert parse_body(b'{"a": 1}') == {"a": 1}
    for bad in (b"[1]", b"{", b'"text"'):
        with pytest.raises(SerializationException):
            parse_body(bad)


def test_fields_have_dynamodb_messages() -> None:
    with pytest.raises(ValidationException, match="Value null at 'tableName'"):
        str_field({}, "TableName", required=True)
    with pytest.raises(SerializationException, match="NUMBER_VALUE cannot be converted to String"):
        str_field({"TableName": 5}, "TableName")
    with pytest.raises(ValidationException, match="less than or equal to 100"):
        int_field({"Limit": 101}, "Limit", 1, 100)
    with pytest.raises(SerializationException):
        int_field({"Limit": True}, "Limit", 1, 100)
    with pytest.raises(ValidationException, match=r"enum value set: \[A, B\]"):
        enum_field({"Mode": "C"}, "Mode", ("A", "B"), "A")
    assert enum_field({}, "Mode", ("A", "B"), "A") == "A"


def test_error_bodies_carry_the_type_and_the_item_when_there_is_one() -> None:
    response = error_response(ConditionalCheckFailedException(item={"pk": {"S": "a"}}))
    document = json.loads(response.body)
    assert response.status == 400
    assert document == {
        "__type": "com.amazonaws.dynamodb.v20120810#ConditionalCheckFailedException",
        "message": "The conditional request failed",
        "Item": {"pk": {"S": "a"}},
    }
    assert b"application/x-amz-json-1.0" in response.headers


@pytest.mark.parametrize(
    ("error", "status", "type_name"),
    [
        (QuorumNotReached(required=2, acked=1, consistency="quorum"), 503, "ServiceUnavailable"),
        (Contended(rounds=8), 503, "ServiceUnavailable"),
        (
            OutcomeUnknown(required=2, acked=1, consistency="strong", timeout_ms=2000),
            500,
            "InternalServerError",
        ),
        (BodyTooLarge(size=5, max=4), 413, "ValidationException"),
    ],
)
def test_the_nodes_errors_become_dynamodbs(error: Exception, status: int, type_name: str) -> None:
    from dynakv.errors import DynakvError

    assert isinstance(error, DynakvError)
    response = dynakv_error_response(error)
    assert response.status == status
    assert json.loads(response.body)["__type"].endswith("#" + type_name)
