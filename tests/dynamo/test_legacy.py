"""The legacy parameters: the same semantics as expressions, through the same evaluator."""

from __future__ import annotations

from decimal import Decimal

import pytest

from dynakv.dynamo.errors import ValidationException
from dynakv.dynamo.expressions import (
    KeyAttribute,
    KeySchema,
    apply_update,
    attribute_updates,
    attributes_to_get,
    check_not_mixed,
    compile_key_condition,
    evaluate_condition,
    expected_condition,
    filter_condition,
    key_conditions_query,
    project,
)
from dynakv.dynamo.values import Item
from tests.dynamo import item, substitutions, to_json

TARGET = item(a=1, s="hello", b=b"hi there", ss={"x", "y"}, l=[1, "two"], n=None)


def expected(
    spec: dict[str, dict[str, object]], target: Item | None, operator: str | None = None
) -> bool:
    condition = expected_condition(spec, operator)
    assert condition is not None
    return evaluate_condition(condition, target)


def op(operator: str, *values: object) -> dict[str, object]:
    return {"ComparisonOperator": operator, "AttributeValueList": [to_json(v) for v in values]}


@pytest.mark.parametrize(
    ("name", "spec", "result"),
    [
        ("a", op("EQ", 1), True),
        ("a", op("EQ", "1"), False),
        ("q", op("EQ", 1), False),
        ("a", op("NE", 2), True),
        ("q", op("NE", 2), True),
        ("a", op("LT", 2), True),
        ("a", op("LE", 1), True),
        ("a", op("GT", 1), False),
        ("a", op("GE", 1), True),
        ("s", op("GT", 1), False),
        ("a", op("BETWEEN", 0, 1), True),
        ("a", op("BETWEEN", "0", "9"), False),
        ("a", op("IN", 3, 1), True),
        ("q", op("IN", 1), False),
        ("s", op("BEGINS_WITH", "he"), True),
        ("b", op("BEGINS_WITH", b"hi"), True),
        ("s", op("CONTAINS", "ell"), True),
        ("ss", op("CONTAINS", "x"), True),
        ("l", op("CONTAINS", "two"), True),
        ("ss", op("NOT_CONTAINS", "z"), True),
        ("ss", op("NOT_CONTAINS", "x"), False),
        ("q", op("NOT_CONTAINS", "x"), False),  # false on a missing attribute
        ("q", op("NULL"), True),
        ("n", op("NULL"), False),  # a NULL value is an attribute that exists
        ("a", op("NOT_NULL"), True),
    ],
)
def test_comparison_operators(name: str, spec: dict[str, object], result: bool) -> None:
    assert expected({name: spec}, TARGET) is result
    found = filter_condition({name: spec}, field="ScanFilter")
    assert found is not None and evaluate_condition(found, TARGET) is result


def test_value_and_exists() -> None:
    assert expected({"a": {"Value": to_json(1)}}, TARGET)
    assert expected({"a": {"Value": to_json(1), "Exists": True}}, TARGET)
    assert not expected({"a": {"Value": to_json(2)}}, TARGET)
    assert expected({"q": {"Exists": False}}, TARGET)
    assert not expected({"a": {"Exists": False}}, TARGET)
    assert expected({"p": {"Exists": False}}, None)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"Exists": True}, "Exists is set to TRUE for attribute (a), Value must also be set"),
        (
            {"Value": to_json(1), "Exists": False},
            "Value cannot be used when Exists is false for Attribute: a",
        ),
        (
            {"Value": to_json(1), **op("EQ", 1)},
            "Value and ComparisonOperator cannot be used together",
        ),
        ({"Exists": False, **op("NULL")}, "Exists and ComparisonOperator cannot be used together"),
        ({}, "Value or ComparisonOperator must be used"),
        (op("EQ"), "Invalid number of argument(s) for the EQ ComparisonOperator"),
        (op("BETWEEN", 1), "Invalid number of argument(s) for the BETWEEN ComparisonOperator"),
        (op("NULL", 1), "Invalid number of argument(s) for the NULL ComparisonOperator"),
        (op("IN"), "Invalid number of argument(s) for the IN ComparisonOperator"),
        (op("LT", [1]), "ComparisonOperator LT is not valid for L AttributeValue type"),
        (
            op("BEGINS_WITH", 1),
            "ComparisonOperator BEGINS_WITH is not valid for N AttributeValue type",
        ),
        (
            op("CONTAINS", {"x"}),
            "ComparisonOperator CONTAINS is not valid for SS AttributeValue type",
        ),
        (op("IN", 1, "x"), "AttributeValues inside AttributeValueList must be of same type"),
        (op("BETWEEN", 1, "x"), "must be of same type"),
        (op("BETWEEN", 2, 1), "requires upper bound to be greater than or equal to lower bound"),
        (op("LIKE", 1), "Unsupported ComparisonOperator: LIKE"),
    ],
)
def test_expected_errors(spec: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationException) as error:
        expected_condition({"a": spec})
    assert message in error.value.message


def test_conditional_operator() -> None:
    both = {"a": op("EQ", 1), "s": op("EQ", "nope")}
    assert not expected(both, TARGET)
    assert not expected(both, TARGET, "AND")
    assert expected(both, TARGET, "OR")
    with pytest.raises(
        ValidationException, match="'ConditionalOperator' parameter must be AND, OR"
    ):
        expected_condition(both, "XOR")
    with pytest.raises(
        ValidationException, match="ConditionalOperator cannot be used without Expected"
    ):
        expected_condition(None, "AND")
    assert expected_condition(None) is None
    assert expected_condition({}) is None
    assert filter_condition(None) is None


def test_key_conditions_match_the_expression_form() -> None:
    schema = KeySchema(KeyAttribute("p", "S"), KeyAttribute("c", "N"))
    legacy = key_conditions_query({"p": op("EQ", "k"), "c": op("BETWEEN", 4, 7)}, schema)
    subs = substitutions(None, {":p": "k", ":lo": 4, ":hi": 7})
    assert legacy == compile_key_condition("p = :p AND c BETWEEN :lo AND :hi", subs, schema)
    for operator in ("NE", "IN", "CONTAINS", "NULL"):
        with pytest.raises(
            ValidationException,
            match="Attempted conditional constraint is not an indexable operation",
        ):
            key_conditions_query({"p": op("EQ", "k"), "c": op(operator, 1)}, schema)
    with pytest.raises(ValidationException, match="Query condition missed key schema element: p"):
        key_conditions_query({"c": op("EQ", 1)}, schema)
    with pytest.raises(ValidationException, match="requires upper bound"):
        key_conditions_query({"p": op("EQ", "k"), "c": op("BETWEEN", 7, 4)}, schema)


def test_attribute_updates() -> None:
    target = item(a=1, s={"x", "y"}, l=[1], gone="x")
    update = attribute_updates(
        {
            "a": {"Action": "ADD", "Value": to_json(2)},
            "s": {"Action": "DELETE", "Value": to_json({"x"})},
            "l": {"Action": "ADD", "Value": to_json([2])},
            "new_list": {"Action": "ADD", "Value": to_json(["z"])},
            "new_set": {"Action": "ADD", "Value": to_json({"q"})},
            "put": {"Value": to_json("v")},
            "gone": {"Action": "DELETE"},
        }
    )
    assert apply_update(update, target) == item(
        a=3, s={"y"}, l=[1, 2], new_list=["z"], new_set={"q"}, put="v"
    )
    assert apply_update(attribute_updates({}), None) == {}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"Action": "PUT"}, "Only DELETE action is allowed when no attribute value is specified"),
        ({"Action": "ADD"}, "Only DELETE action is allowed when no attribute value is specified"),
        ({"Action": "ADD", "Value": to_json("s")}, "ADD action is not supported for the type S"),
        (
            {"Action": "DELETE", "Value": to_json(1)},
            "DELETE action with value is not supported for the type N",
        ),
        (
            {"Action": "REPLACE", "Value": to_json(1)},
            "Unsupported AttributeUpdates Action: REPLACE",
        ),
        ({"Action": "PUT", "Value": {"SS": []}}, "An string set  may not be empty"),
    ],
)
def test_attribute_update_errors(spec: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationException) as error:
        attribute_updates({"a": spec})
    assert message in error.value.message


def test_attributes_to_get() -> None:
    assert project(attributes_to_get(["a", "s", "missing"]), TARGET) == item(a=1, s="hello")
    with pytest.raises(ValidationException, match="Duplicate value in attribute name: a"):
        attributes_to_get(["a", "a"])
    with pytest.raises(
        ValidationException, match="Member must have length greater than or equal to 1"
    ):
        attributes_to_get([])


def test_legacy_numbers_keep_their_precision() -> None:
    update = attribute_updates({"a": {"Action": "ADD", "Value": to_json(Decimal("1E22"))}})
    assert apply_update(update, item(a=1)) == item(a=Decimal("10000000000000000000001"))


def test_mixing_legacy_and_expression_parameters_is_refused() -> None:
    check_not_mixed(("AttributesToGet",), ())
    with pytest.raises(
        ValidationException,
        match=r"Non-expression parameters: \{AttributesToGet\} "
        r"Expression parameters: \{ProjectionExpression\}",
    ):
        check_not_mixed(("AttributesToGet",), ("ProjectionExpression",))
