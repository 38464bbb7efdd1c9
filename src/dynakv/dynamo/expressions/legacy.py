"""The legacy parameters, translated into the same resolved AST the expressions produce.

``Expected`` + ``ConditionalOperator`` (conditional writes), ``QueryFilter`` /
``ScanFilter``, ``KeyConditions``, ``AttributeUpdates`` and
``AttributesToGet`` come as DynamoDB JSON; each function here validates one
of them with DynamoDB's messages and returns a resolved tree that
``evaluate`` / ``update`` / ``keys`` handle like any expression. Attribute
names in these parameters are literal top-level names: no ``#`` references,
no reserved-word check.

ComparisonOperator semantics, as the service has them: EQ, NE (true when the
attribute is missing), LE, LT, GE, GT, BETWEEN (S, N or B operands only, one
type), IN (S, N or B, one type), BEGINS_WITH (S or B), CONTAINS and
NOT_CONTAINS (an S, N or B operand; NOT_CONTAINS is false on a missing
attribute), NULL and NOT_NULL (no operands). Legacy ADD also appends to a
list, which the UpdateExpression ADD refuses; it becomes ``SET a =
list_append(if_not_exists(a, []), v)``. Must never look at an item.
"""

from __future__ import annotations

from typing import Final

from dynakv.dynamo.errors import SerializationException, ValidationException
from dynakv.dynamo.expressions import ast
from dynakv.dynamo.expressions.keys import (
    KeyQuery,
    KeySchema,
    KeyTerm,
    SortOperator,
    build_key_query,
)
from dynakv.dynamo.values import (
    AttributeValue,
    L,
    check_attribute_name,
    compare_ordered,
    describe,
    parse_value,
)

_INVALID: Final = "One or more parameter values were invalid: "
_SCALARS: Final = frozenset({"S", "N", "B"})
_OPERAND_COUNTS: Final = {
    "EQ": 1,
    "NE": 1,
    "LE": 1,
    "LT": 1,
    "GE": 1,
    "GT": 1,
    "BEGINS_WITH": 1,
    "CONTAINS": 1,
    "NOT_CONTAINS": 1,
    "BETWEEN": 2,
    "NULL": 0,
    "NOT_NULL": 0,
}
_ORDERING: Final = {
    "LE": ast.Comparator.LE,
    "LT": ast.Comparator.LT,
    "GE": ast.Comparator.GE,
    "GT": ast.Comparator.GT,
}
_KEY_OPERATORS: Final = frozenset({"EQ", "LE", "LT", "GE", "GT", "BEGINS_WITH", "BETWEEN"})


def _mapping(payload: object, field: str) -> dict[str, object]:
    if not isinstance(payload, dict):
        raise SerializationException(f"Start of structure or map expected for {field}")
    return payload


def _operands(operator: str, spec: dict[str, object]) -> tuple[AttributeValue, ...]:
    raw = spec.get("AttributeValueList")
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise SerializationException("Start of list expected for AttributeValueList")
    values = tuple(parse_value(value) for value in raw)
    expected = _OPERAND_COUNTS.get(operator)
    if (expected is None and not values) or (expected is not None and len(values) != expected):
        raise ValidationException(
            f"{_INVALID}Invalid number of argument(s) for the {operator} ComparisonOperator"
        )
    return values


def _check_scalars(
    operator: str, values: tuple[AttributeValue, ...], allowed: frozenset[str]
) -> None:
    for value in values:
        if value.type_name not in allowed:
            raise ValidationException(
                f"{_INVALID}ComparisonOperator {operator} is not valid for {value.type_name} "
                "AttributeValue type"
            )
    if len({value.type_name for value in values}) > 1:
        raise ValidationException(
            f"{_INVALID}AttributeValues inside AttributeValueList must be of same type"
        )


def _comparison(name: str, operator: object, spec: dict[str, object]) -> ast.Condition:
    """One attribute's ComparisonOperator condition as a resolved condition."""
    if not isinstance(operator, str) or operator not in (*_OPERAND_COUNTS, "IN"):
        raise ValidationException(f"{_INVALID}Unsupported ComparisonOperator: {operator}")
    values = _operands(operator, spec)
    path = ast.Path((name,))
    constants = tuple(ast.Constant(value) for value in values)
    if operator in ("EQ", "NE"):
        comparator = ast.Comparator.EQ if operator == "EQ" else ast.Comparator.NE
        return ast.Comparison(comparator, path, constants[0])
    if operator in _ORDERING:
        _check_scalars(operator, values, _SCALARS)
        return ast.Comparison(_ORDERING[operator], path, constants[0])
    if operator in ("NULL", "NOT_NULL"):
        function = "attribute_not_exists" if operator == "NULL" else "attribute_exists"
        return ast.FunctionCondition(ast.Call(function, (path,)))
    if operator == "BEGINS_WITH":
        _check_scalars(operator, values, frozenset({"S", "B"}))
        return ast.FunctionCondition(ast.Call("begins_with", (path, constants[0])))
    if operator in ("CONTAINS", "NOT_CONTAINS"):
        _check_scalars(operator, values, _SCALARS)
        found = ast.FunctionCondition(ast.Call("contains", (path, constants[0])))
        if operator == "CONTAINS":
            return found
        exists = ast.FunctionCondition(ast.Call("attribute_exists", (path,)))
        return ast.And((exists, ast.Not(found)))
    _check_scalars(operator, values, _SCALARS)
    if operator == "IN":
        return ast.In(path, constants)
    _check_bounds(values)
    return ast.Between(path, constants[0], constants[1])


def _check_bounds(values: tuple[AttributeValue, ...]) -> None:
    order = compare_ordered(values[0], values[1])
    if order is not None and order > 0:
        raise ValidationException(
            f"{_INVALID}The BETWEEN operator requires upper bound to be greater than or equal "
            f"to lower bound; lower bound operand: AttributeValue: {describe(values[0])}, "
            f"upper bound operand: AttributeValue: {describe(values[1])}"
        )


def _expected_one(name: str, payload: object) -> ast.Condition:
    spec = _mapping(payload, "Expected")
    value, exists, operator = spec.get("Value"), spec.get("Exists"), spec.get("ComparisonOperator")
    if value is not None:
        if operator is not None:
            raise ValidationException(
                f"{_INVALID}Value and ComparisonOperator cannot be used together for Attribute: "
                f"{name}"
            )
        if exists is False:
            raise ValidationException(
                f"{_INVALID}Value cannot be used when Exists is false for Attribute: {name}"
            )
        return ast.Comparison(
            ast.Comparator.EQ, ast.Path((name,)), ast.Constant(parse_value(value))
        )
    if exists is not None:
        if operator is not None:
            raise ValidationException(
                f"{_INVALID}Exists and ComparisonOperator cannot be used together for Attribute: "
                f"{name}"
            )
        if exists is not False:
            raise ValidationException(
                f"{_INVALID}Exists is set to TRUE for attribute ({name}), Value must also be set"
            )
        return ast.FunctionCondition(ast.Call("attribute_not_exists", (ast.Path((name,)),)))
    if operator is None:
        raise ValidationException(
            f"{_INVALID}Value or ComparisonOperator must be used for Attribute: {name}"
        )
    return _comparison(name, operator, spec)


def _combine(conditions: list[ast.Condition], conditional_operator: object) -> ast.Condition:
    if conditional_operator not in (None, "AND", "OR"):
        raise ValidationException(
            f"{_INVALID}'ConditionalOperator' parameter must be AND, OR or missing. "
            f"Found {conditional_operator}."
        )
    if len(conditions) == 1:
        return conditions[0]
    if conditional_operator == "OR":
        return ast.Or(tuple(conditions))
    return ast.And(tuple(conditions))


def expected_condition(
    expected: object, conditional_operator: object = None
) -> ast.Condition | None:
    """``Expected`` (+ ``ConditionalOperator``) as a resolved condition; ``None``: no condition."""
    if expected is None or expected == {}:
        if conditional_operator is not None:
            raise ValidationException(
                f"{_INVALID}ConditionalOperator cannot be used without Expected or with an empty "
                "Expected"
            )
        return None
    entries = _mapping(expected, "Expected")
    conditions = [_expected_one(name, spec) for name, spec in entries.items()]
    return _combine(conditions, conditional_operator)


def filter_condition(
    filter_payload: object, conditional_operator: object = None, *, field: str = "QueryFilter"
) -> ast.Condition | None:
    """``QueryFilter`` / ``ScanFilter`` (+ ``ConditionalOperator``) as a resolved condition."""
    if filter_payload is None or filter_payload == {}:
        return None
    entries = _mapping(filter_payload, field)
    conditions = []
    for name, payload in entries.items():
        spec = _mapping(payload, field)
        conditions.append(_comparison(name, spec.get("ComparisonOperator"), spec))
    return _combine(conditions, conditional_operator)


def key_conditions_query(key_conditions: object, schema: KeySchema) -> KeyQuery:
    """``KeyConditions`` as the same ``KeyQuery`` a KeyConditionExpression gives."""
    entries = _mapping(key_conditions, "KeyConditions")
    terms: list[KeyTerm] = []
    for name, payload in entries.items():
        spec = _mapping(payload, "KeyConditions")
        operator = spec.get("ComparisonOperator")
        if not isinstance(operator, str) or operator not in _KEY_OPERATORS:
            raise ValidationException(
                "Attempted conditional constraint is not an indexable operation"
            )
        values = _operands(operator, spec)
        if operator == "BETWEEN":
            _check_bounds(values)
        terms.append(
            KeyTerm(name, SortOperator(operator), tuple(ast.Constant(value) for value in values))
        )
    if len(terms) > 2:
        raise ValidationException("Conditions can be of length 1 or 2 only")
    return build_key_query(terms, schema)


def _attribute_update(name: str, payload: object) -> ast.UpdateAction:
    spec = _mapping(payload, "AttributeUpdates")
    action = spec.get("Action", "PUT")
    raw = spec.get("Value")
    path = ast.Path((name,))
    if action not in ("PUT", "ADD", "DELETE"):
        raise ValidationException(f"{_INVALID}Unsupported AttributeUpdates Action: {action}")
    if raw is None:
        if action != "DELETE":
            raise ValidationException(
                f"{_INVALID}Only DELETE action is allowed when no attribute value is specified"
            )
        return ast.RemoveAction(path)
    value = parse_value(raw)
    if action == "PUT":
        return ast.SetAction(path, ast.Constant(value))
    if action == "DELETE":
        if value.type_name not in ("SS", "NS", "BS"):
            raise ValidationException(
                f"{_INVALID}DELETE action with value is not supported for the type "
                f"{value.type_name}"
            )
        return ast.DeleteAction(path, ast.Constant(value))
    if isinstance(value, L):
        empty = ast.Call("if_not_exists", (path, ast.Constant(L(()))))
        return ast.SetAction(path, ast.Call("list_append", (empty, ast.Constant(value))))
    if value.type_name not in ("N", "SS", "NS", "BS"):
        raise ValidationException(
            f"{_INVALID}ADD action is not supported for the type {value.type_name}"
        )
    return ast.AddAction(path, ast.Constant(value))


def attribute_updates(payload: object) -> ast.Update:
    """``AttributeUpdates`` as a resolved update (one action per attribute)."""
    entries = _mapping(payload, "AttributeUpdates")
    actions = []
    for name, spec in entries.items():
        check_attribute_name(name)
        actions.append(_attribute_update(name, spec))
    return ast.Update(tuple(actions))


def attributes_to_get(payload: object) -> ast.Projection:
    """``AttributesToGet`` as a projection of top-level attributes."""
    if not isinstance(payload, list):
        raise SerializationException("Start of list expected for AttributesToGet")
    if not payload:
        raise ValidationException(
            "1 validation error detected: Value '[]' at 'attributesToGet' failed to satisfy "
            "constraint: Member must have length greater than or equal to 1"
        )
    seen: set[str] = set()
    for name in payload:
        if not isinstance(name, str):
            raise SerializationException("Unexpected value type in AttributesToGet")
        check_attribute_name(name)
        if name in seen:
            raise ValidationException(f"{_INVALID}Duplicate value in attribute name: {name}")
        seen.add(name)
    return ast.Projection(tuple(ast.Path((name,)) for name in payload))


def check_not_mixed(non_expression: tuple[str, ...], expression: tuple[str, ...]) -> None:
    """Refuse a request that gives both legacy and expression parameters (names it gave)."""
    if non_expression and expression:
        raise ValidationException(
            "Can not use both expression and non-expression parameters in the same request: "
            f"Non-expression parameters: {{{', '.join(non_expression)}}} "
            f"Expression parameters: {{{', '.join(expression)}}}"
        )
