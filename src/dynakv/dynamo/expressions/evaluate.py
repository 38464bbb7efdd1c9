"""Resolved conditions and projections, evaluated against one item.

``evaluate_condition(condition, item)`` is ConditionExpression /
FilterExpression semantics as DynamoDB has them: a path that does not exist
makes a comparison false, never an error (and ``<>`` true); values of
different types are not equal and not ordered; ``<``, ``<=``, ``>``, ``>=``
and BETWEEN order only strings (by code point = UTF-8 bytes), numbers and
binaries (unsigned bytes); ``size`` of a type without a size is no value. Every
error a condition can raise was raised by resolution already, so evaluation
only ever answers true or false.

``project(projection, item)`` keeps the listed paths, nested as in the item
(``a.b[2]`` keeps ``{"a": {"b": [<element 2>]}}``); paths the item lacks are
left out. ``get_path`` is the one place that walks a document path.

``item`` is ``None`` when there is no item. Must never mutate an item and
never raise on item contents.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any, Final

from dynakv.dynamo.expressions import ast
from dynakv.dynamo.values import (
    BS,
    NS,
    SS,
    AttributeValue,
    B,
    Item,
    L,
    M,
    N,
    S,
    compare_ordered,
)


def get_path(item: Item | None, path: ast.Path) -> AttributeValue | None:
    """The value at ``path`` in ``item``, or ``None`` if any step is missing or mistyped."""
    if item is None:
        return None
    elements = path.elements
    first = elements[0]
    assert isinstance(first, str), path
    value = item.get(first)
    for element in elements[1:]:
        if isinstance(element, int):
            if not isinstance(value, L) or element >= len(value.value):
                return None
            value = value.value[element]
        else:
            assert isinstance(element, str), path
            if not isinstance(value, M):
                return None
            value = value.value.get(element)
    return value


def size_of(value: AttributeValue | None) -> N | None:
    """DynamoDB's ``size()``: bytes of a string or binary, members of a collection."""
    if isinstance(value, S):
        return N(Decimal(len(value.value.encode())))
    if isinstance(value, B | L | SS | NS | BS):
        return N(Decimal(len(value.value)))
    if isinstance(value, M):
        return N(Decimal(len(value.value)))
    return None


def operand_value(operand: ast.Operand, item: Item | None) -> AttributeValue | None:
    if isinstance(operand, ast.Constant):
        return operand.value
    if isinstance(operand, ast.Path):
        return get_path(item, operand)
    if isinstance(operand, ast.Call):
        assert operand.function == "size", operand  # the only function that is an operand
        return size_of(operand_value(operand.arguments[0], item))
    raise AssertionError(f"unresolved operand {operand!r}")


_ORDER_TESTS: Final[dict[ast.Comparator, Callable[[int], bool]]] = {
    ast.Comparator.LT: lambda order: order < 0,
    ast.Comparator.LE: lambda order: order <= 0,
    ast.Comparator.GT: lambda order: order > 0,
    ast.Comparator.GE: lambda order: order >= 0,
}


def _compare(node: ast.Comparison, item: Item | None) -> bool:
    left = operand_value(node.left, item)
    right = operand_value(node.right, item)
    if node.comparator is ast.Comparator.EQ:
        return left is not None and left == right
    if node.comparator is ast.Comparator.NE:
        return left is None or right is None or left != right
    if left is None or right is None:
        return False
    order = compare_ordered(left, right)
    return order is not None and _ORDER_TESTS[node.comparator](order)


def _between(node: ast.Between, item: Item | None) -> bool:
    value = operand_value(node.operand, item)
    lower = operand_value(node.lower, item)
    upper = operand_value(node.upper, item)
    if value is None or lower is None or upper is None:
        return False
    above = compare_ordered(value, lower)
    below = compare_ordered(value, upper)
    bounds = compare_ordered(lower, upper)
    if above is None or below is None or bounds is None or bounds > 0:
        return False
    return above >= 0 and below <= 0


def _member(node: ast.In, item: Item | None) -> bool:
    value = operand_value(node.operand, item)
    if value is None:
        return False
    return any(value == operand_value(choice, item) for choice in node.choices)


def contains(container: AttributeValue | None, member: AttributeValue | None) -> bool:
    """DynamoDB's ``contains``: a substring, a byte subsequence, a set member, a list element."""
    if container is None or member is None:
        return False
    if isinstance(container, S):
        return isinstance(member, S) and member.value in container.value
    if isinstance(container, B):
        return isinstance(member, B) and member.value in container.value
    if isinstance(container, SS):
        return isinstance(member, S) and member.value in container.value
    if isinstance(container, NS):
        return isinstance(member, N) and member.value in container.value
    if isinstance(container, BS):
        return isinstance(member, B) and member.value in container.value
    if isinstance(container, L):
        return member in container.value
    return False


def begins_with(value: AttributeValue | None, prefix: AttributeValue | None) -> bool:
    if isinstance(value, S) and isinstance(prefix, S):
        return value.value.startswith(prefix.value)
    if isinstance(value, B) and isinstance(prefix, B):
        return value.value.startswith(prefix.value)
    return False


def _function(call: ast.Call, item: Item | None) -> bool:
    arguments = call.arguments
    if call.function == "attribute_exists":
        return operand_value(arguments[0], item) is not None
    if call.function == "attribute_not_exists":
        return operand_value(arguments[0], item) is None
    first = operand_value(arguments[0], item)
    second = operand_value(arguments[1], item)
    if call.function == "attribute_type":
        assert isinstance(second, S), call  # resolution checked the type name
        return first is not None and first.type_name == second.value
    if call.function == "begins_with":
        return begins_with(first, second)
    if call.function == "contains":
        return contains(first, second)
    raise AssertionError(f"not a condition function: {call.function}")


def _all(node: ast.And, item: Item | None) -> bool:
    return all(evaluate_condition(inner, item) for inner in node.conditions)


def _any(node: ast.Or, item: Item | None) -> bool:
    return any(evaluate_condition(inner, item) for inner in node.conditions)


def _negate(node: ast.Not, item: Item | None) -> bool:
    return not evaluate_condition(node.condition, item)


def _function_condition(node: ast.FunctionCondition, item: Item | None) -> bool:
    return _function(node.call, item)


# One dict lookup per node instead of a chain of isinstance tests: filters run this per item.
_EVALUATORS: Final[dict[type, Callable[[Any, Item | None], bool]]] = {
    ast.Comparison: _compare,
    ast.And: _all,
    ast.Or: _any,
    ast.Not: _negate,
    ast.FunctionCondition: _function_condition,
    ast.Between: _between,
    ast.In: _member,
}


def evaluate_condition(condition: ast.Condition, item: Item | None) -> bool:
    """Whether ``item`` (``None``: no item) satisfies the resolved ``condition``."""
    return _EVALUATORS[type(condition)](condition, item)


# --- projection ---------------------------------------------------------------------------

_Skeleton = dict[str | int, "_Skeleton | AttributeValue"]


def _materialize(node: _Skeleton | AttributeValue) -> AttributeValue:
    if not isinstance(node, dict):
        return node
    if all(isinstance(key, int) for key in node):
        # A projected list keeps its chosen elements, in their original order.
        return L(tuple(_materialize(node[index]) for index in sorted(node)))
    return M({str(key): _materialize(inner) for key, inner in node.items()})


def project(projection: ast.Projection, item: Item) -> Item:
    """The part of ``item`` the projection's paths select, nested as in ``item``.

    The paths are disjoint (resolution refused overlaps), so no path's value
    lands inside another's.
    """
    root: _Skeleton = {}
    for path in projection.paths:
        value = get_path(item, path)
        if value is None:
            continue
        node = root
        for element in path.elements[:-1]:
            assert not isinstance(element, ast.NameRef), path
            child = node.setdefault(element, {})
            assert isinstance(child, dict), path
            node = child
        last = path.elements[-1]
        assert not isinstance(last, ast.NameRef), path
        node[last] = value
    return {str(name): _materialize(value) for name, value in root.items()}
