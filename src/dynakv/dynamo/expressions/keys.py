"""Key conditions: a Query's KeyConditionExpression (or KeyConditions) as a range on the sort key.

A key condition is an equality on the partition key and, optionally, one
condition on the sort key: ``=``, ``<``, ``<=``, ``>``, ``>=``, BETWEEN or
``begins_with``. ``key_query`` checks a resolved condition against the
table's key schema with DynamoDB's messages and returns a ``KeyQuery``: the
partition key value and a ``SortCondition``, whose ``key_range()`` is the
range of ``encoding.encode_sort_key`` bytes it selects, so a Query is one
bounded scan of one partition.

Invariants: every value in a ``KeyQuery`` has the key attribute's type and is
a valid key value; a BETWEEN's bounds are in order. Must never look at items.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from dynakv.dynamo.encoding import (
    check_key_value,
    encode_sort_key,
    prefix_successor,
    sort_key_prefix,
)
from dynakv.dynamo.errors import ValidationException
from dynakv.dynamo.expressions import ast
from dynakv.dynamo.expressions.parser import ExpressionKind, invalid
from dynakv.dynamo.values import B, N, S, compare_ordered

KeyValue = S | N | B
_KIND: Final = ExpressionKind.KEY_CONDITION


@dataclass(frozen=True, slots=True)
class KeyAttribute:
    name: str
    type_name: str  # "S", "N" or "B"


@dataclass(frozen=True, slots=True)
class KeySchema:
    partition: KeyAttribute
    sort: KeyAttribute | None = None


class SortOperator(StrEnum):
    EQ = "EQ"
    LT = "LT"
    LE = "LE"
    GT = "GT"
    GE = "GE"
    BETWEEN = "BETWEEN"
    BEGINS_WITH = "BEGINS_WITH"


@dataclass(frozen=True, slots=True)
class KeyRange:
    """A range of encoded sort keys; a ``None`` bound is unbounded."""

    lower: bytes | None
    lower_inclusive: bool
    upper: bytes | None
    upper_inclusive: bool

    def contains(self, encoded: bytes) -> bool:
        if self.lower is not None and (
            encoded < self.lower or (encoded == self.lower and not self.lower_inclusive)
        ):
            return False
        return (
            self.upper is None
            or encoded < self.upper
            or (encoded == self.upper and self.upper_inclusive)
        )


@dataclass(frozen=True, slots=True)
class SortCondition:
    operator: SortOperator
    values: tuple[KeyValue, ...]

    def key_range(self) -> KeyRange:
        if self.operator is SortOperator.BEGINS_WITH:
            prefix = self.values[0]
            assert isinstance(prefix, S | B)
            lower = sort_key_prefix(prefix)
            return KeyRange(lower, True, prefix_successor(lower), False)
        encoded = [encode_sort_key(value) for value in self.values]
        match self.operator:
            case SortOperator.EQ:
                return KeyRange(encoded[0], True, encoded[0], True)
            case SortOperator.LT | SortOperator.LE:
                return KeyRange(None, False, encoded[0], self.operator is SortOperator.LE)
            case SortOperator.GT | SortOperator.GE:
                return KeyRange(encoded[0], self.operator is SortOperator.GE, None, False)
            case _:
                assert self.operator is SortOperator.BETWEEN
                return KeyRange(encoded[0], True, encoded[1], True)

    def matches(self, value: KeyValue) -> bool:
        """Whether a sort key value satisfies the condition (the same answer as ``key_range``)."""
        if self.operator is SortOperator.BEGINS_WITH:
            prefix = self.values[0]
            if isinstance(value, S) and isinstance(prefix, S):
                return value.value.startswith(prefix.value)
            return (
                isinstance(value, B)
                and isinstance(prefix, B)
                and value.value.startswith(prefix.value)
            )
        orders = [compare_ordered(value, bound) for bound in self.values]
        if any(order is None for order in orders):
            return False
        first = orders[0]
        assert first is not None
        match self.operator:
            case SortOperator.EQ:
                return first == 0
            case SortOperator.LT:
                return first < 0
            case SortOperator.LE:
                return first <= 0
            case SortOperator.GT:
                return first > 0
            case SortOperator.GE:
                return first >= 0
            case _:
                last = orders[1]
                assert last is not None
                return first >= 0 and last <= 0


@dataclass(frozen=True, slots=True)
class KeyQuery:
    partition_value: KeyValue
    sort: SortCondition | None


@dataclass(frozen=True, slots=True)
class KeyTerm:
    """One condition on one key attribute, before the schema is consulted."""

    name: str
    operator: SortOperator
    values: tuple[ast.Constant, ...]


_FLIPPED: Final = {
    ast.Comparator.EQ: SortOperator.EQ,
    ast.Comparator.LT: SortOperator.GT,
    ast.Comparator.LE: SortOperator.GE,
    ast.Comparator.GT: SortOperator.LT,
    ast.Comparator.GE: SortOperator.LE,
}
_DIRECT: Final = {
    ast.Comparator.EQ: SortOperator.EQ,
    ast.Comparator.LT: SortOperator.LT,
    ast.Comparator.LE: SortOperator.LE,
    ast.Comparator.GT: SortOperator.GT,
    ast.Comparator.GE: SortOperator.GE,
}


def _key_name(operand: ast.Operand) -> str:
    assert isinstance(operand, ast.Path)
    if len(operand.elements) != 1:
        raise ValidationException(
            "KeyConditionExpressions cannot have conditions on nested attributes"
        )
    name = operand.elements[0]
    assert isinstance(name, str)
    return name


def _one_path(operands: tuple[ast.Operand, ...]) -> None:
    paths = sum(isinstance(operand, ast.Path) for operand in operands)
    if paths > 1:
        raise ValidationException(
            "Invalid condition in KeyConditionExpression: Multiple attribute names used in one "
            "condition"
        )
    if paths == 0:
        raise ValidationException(
            "Invalid condition in KeyConditionExpression: No key attribute specified"
        )
    for operand in operands:
        if isinstance(operand, ast.Call):
            raise ValidationException(
                f"Invalid operator used in KeyConditionExpression: {operand.function}"
            )


def _unsupported(operator: str) -> ValidationException:
    return ValidationException(f"Invalid operator used in KeyConditionExpression: {operator}")


def _term(condition: ast.Condition) -> KeyTerm:
    if isinstance(condition, ast.Or):
        raise _unsupported("OR")
    if isinstance(condition, ast.Not):
        raise _unsupported("NOT")
    if isinstance(condition, ast.In):
        raise _unsupported("IN")
    if isinstance(condition, ast.Comparison):
        if condition.comparator is ast.Comparator.NE:
            raise _unsupported("<>")
        _one_path((condition.left, condition.right))
        key_left = isinstance(condition.left, ast.Path)
        side = condition.left if key_left else condition.right
        value = condition.right if key_left else condition.left
        operator = (_DIRECT if key_left else _FLIPPED)[condition.comparator]
        assert isinstance(value, ast.Constant)
        return KeyTerm(_key_name(side), operator, (value,))
    if isinstance(condition, ast.Between):
        _one_path((condition.operand, condition.lower, condition.upper))
        if not isinstance(condition.operand, ast.Path):
            raise ValidationException(
                "Invalid condition in KeyConditionExpression: the key attribute must be "
                "BETWEEN's first operand"
            )
        lower, upper = condition.lower, condition.upper
        assert isinstance(lower, ast.Constant) and isinstance(upper, ast.Constant)
        return KeyTerm(_key_name(condition.operand), SortOperator.BETWEEN, (lower, upper))
    assert isinstance(condition, ast.FunctionCondition), condition
    call = condition.call
    if call.function != "begins_with":
        raise _unsupported(call.function)
    attribute, prefix = call.arguments
    _one_path((attribute, prefix))
    if not (isinstance(attribute, ast.Path) and isinstance(prefix, ast.Constant)):
        raise ValidationException(
            "Invalid condition in KeyConditionExpression: begins_with takes the key attribute "
            "first and a value second"
        )
    return KeyTerm(_key_name(attribute), SortOperator.BEGINS_WITH, (prefix,))


def _predicates(condition: ast.Condition) -> list[ast.Condition]:
    if isinstance(condition, ast.And):
        return [leaf for inner in condition.conditions for leaf in _predicates(inner)]
    return [condition]


def _key_values(term: KeyTerm, attribute: KeyAttribute, *, partition: bool) -> tuple[KeyValue, ...]:
    values: list[KeyValue] = []
    for constant in term.values:
        if constant.value.type_name != attribute.type_name:
            raise ValidationException(
                "One or more parameter values were invalid: Condition parameter type does not "
                "match schema type"
            )
        values.append(
            check_key_value(
                attribute.name, attribute.type_name, constant.value, partition=partition
            )
        )
    return tuple(values)


def build_key_query(terms: list[KeyTerm], schema: KeySchema) -> KeyQuery:
    """The query the terms describe, checked against the key schema (shared with KeyConditions)."""
    remaining: dict[str, KeyTerm] = {}
    for term in terms:
        if term.name in remaining:
            raise ValidationException(
                "KeyConditionExpressions must only contain one condition per key"
            )
        remaining[term.name] = term
    partition = remaining.pop(schema.partition.name, None)
    if partition is None:
        raise ValidationException(
            f"Query condition missed key schema element: {schema.partition.name}"
        )
    if partition.operator is not SortOperator.EQ:
        raise ValidationException("Query key condition not supported")
    (partition_value,) = _key_values(partition, schema.partition, partition=True)
    if not remaining:
        return KeyQuery(partition_value, None)
    ((name, term),) = remaining.items()
    if schema.sort is None:
        raise ValidationException("Query key condition not supported")
    if name != schema.sort.name:
        raise ValidationException(f"Query condition missed key schema element: {schema.sort.name}")
    if term.operator is SortOperator.BEGINS_WITH and schema.sort.type_name == "N":
        raise invalid(
            _KIND,
            "Incorrect operand type for operator or function; "
            "operator or function: begins_with, operand type: N",
        )
    return KeyQuery(
        partition_value,
        SortCondition(term.operator, _key_values(term, schema.sort, partition=False)),
    )


def key_query(condition: ast.Condition, schema: KeySchema) -> KeyQuery:
    """A resolved KeyConditionExpression as a ``KeyQuery`` (see the module docstring)."""
    predicates = _predicates(condition)
    for predicate in predicates:  # the operators come first, as DynamoDB reports them
        if isinstance(predicate, ast.Or | ast.Not):
            raise _unsupported("OR" if isinstance(predicate, ast.Or) else "NOT")
    if len(predicates) > 2:
        raise ValidationException("Conditions can be of length 1 or 2 only")
    return build_key_query([_term(predicate) for predicate in predicates], schema)
