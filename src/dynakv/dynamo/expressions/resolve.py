"""Parsed trees to resolved trees: substitute ``#name`` / ``:value`` and check what that reveals.

``Substitutions`` holds one request's ExpressionAttributeNames and
ExpressionAttributeValues (validated as DynamoDB validates them) and records
which entries the request's expressions used; ``check_all_used`` then refuses
the request if any entry was not ("Value provided in ExpressionAttributeValues
unused in expressions: keys: {:x}"). Use is recorded at resolution, never at
evaluation, so a short-circuiting OR cannot make a used value look unused.

Resolution also makes the checks that need the values but not an item, so
they fail the request whatever the item holds: operand types of constants
(``a < :list``, ``size(:number)``, ``:s + 1``, ``ADD a :string``), BETWEEN
bounds out of order or of different types, ``attribute_type``'s type name,
and update or projection paths that overlap or conflict once names are known.
Must never look at an item.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from dynakv.dynamo.errors import SerializationException, ValidationException
from dynakv.dynamo.expressions import ast
from dynakv.dynamo.expressions.parser import ExpressionKind, invalid
from dynakv.dynamo.values import (
    TYPE_NAMES,
    AttributeValue,
    S,
    check_attribute_name,
    compare_ordered,
    describe,
    parse_value,
    value_size,
)

REFERENCE_BYTES_MAX: Final = 255  # "#name" or ":value" itself, as DynamoDB limits it
VALUES_BYTES_MAX: Final = 2 * 1024 * 1024  # all of one request's substitution values
_NAME_KEY: Final = re.compile(r"#[A-Za-z0-9_]+")
_VALUE_KEY: Final = re.compile(r":[A-Za-z0-9_]+")
_ORDERED_TYPES: Final = frozenset({"S", "N", "B"})
_SIZED_TYPES: Final = frozenset({"S", "B", "L", "M", "SS", "NS", "BS"})
LONG_TYPE_NAMES: Final = {
    "S": "STRING",
    "N": "NUMBER",
    "B": "BINARY",
    "BOOL": "BOOLEAN",
    "NULL": "NULL",
    "L": "LIST",
    "M": "MAP",
    "SS": "STRING_SET",
    "NS": "NUMBER_SET",
    "BS": "BINARY_SET",
}


class Substitutions:
    """One request's name and value substitutions, and which of them its expressions used."""

    __slots__ = ("_expressions", "_names", "_used_names", "_used_values", "_values")

    def __init__(
        self,
        names: Mapping[str, str] | None = None,
        values: Mapping[str, AttributeValue] | None = None,
    ) -> None:
        self._names = dict(names or {})
        self._values = dict(values or {})
        self._used_names: set[str] = set()
        self._used_values: set[str] = set()
        self._expressions = 0

    @classmethod
    def from_request(cls, names: object = None, values: object = None) -> Substitutions:
        """From the request's JSON fields (``None`` when absent), validated like DynamoDB does."""
        return cls(_parse_names(names), _parse_values(values))

    def name(self, reference: str, kind: ExpressionKind) -> str:
        if reference not in self._names:
            raise invalid(
                kind,
                "An expression attribute name used in the document path is not defined; "
                f"attribute name: {reference}",
            )
        self._used_names.add(reference)
        return self._names[reference]

    def value(self, reference: str, kind: ExpressionKind) -> AttributeValue:
        if reference not in self._values:
            raise invalid(
                kind,
                "An expression attribute value used in expression is not defined; "
                f"attribute value: {reference}",
            )
        self._used_values.add(reference)
        return self._values[reference]

    def note_expression(self) -> None:
        """An expression of the request is being resolved against these substitutions."""
        self._expressions += 1

    def check_all_used(self) -> None:
        """After every expression of the request was resolved: refuse unused entries."""
        for field, given in (("Names", self._names), ("Values", self._values)):
            if given and not self._expressions:
                raise ValidationException(
                    f"ExpressionAttribute{field} can only be specified when using expressions"
                )
        for field, given, used in (
            ("Names", self._names, self._used_names),
            ("Values", self._values, self._used_values),
        ):
            unused = sorted(set(given) - used)
            if unused:
                raise ValidationException(
                    f"Value provided in ExpressionAttribute{field} unused in expressions: "
                    f"keys: {{{', '.join(unused)}}}"
                )


def _parse_names(payload: object) -> dict[str, str]:
    if payload is None:
        return {}
    if not isinstance(payload, dict):
        raise SerializationException("Start of structure or map found where not expected")
    if not payload:
        raise ValidationException("ExpressionAttributeNames must not be empty")
    names: dict[str, str] = {}
    for key, name in payload.items():
        _check_key(key, _NAME_KEY, "ExpressionAttributeNames")
        if not isinstance(name, str):
            raise SerializationException("Unexpected value type in ExpressionAttributeNames")
        if not name:
            raise ValidationException(
                "ExpressionAttributeNames contains invalid value: Empty attribute name "
                f"for key {key}"
            )
        check_attribute_name(name)
        names[key] = name
    return names


def _parse_values(payload: object) -> dict[str, AttributeValue]:
    if payload is None:
        return {}
    if not isinstance(payload, dict):
        raise SerializationException("Start of structure or map found where not expected")
    if not payload:
        raise ValidationException("ExpressionAttributeValues must not be empty")
    values: dict[str, AttributeValue] = {}
    for key, value in payload.items():
        _check_key(key, _VALUE_KEY, "ExpressionAttributeValues")
        try:
            values[key] = parse_value(value)
        except ValidationException as error:
            raise ValidationException(
                f"ExpressionAttributeValues contains invalid value: {error.message} for key {key}"
            ) from None
    if sum(value_size(value) for value in values.values()) > VALUES_BYTES_MAX:
        raise ValidationException(
            "ExpressionAttributeValues exceeds the maximum size of all substitution values"
        )
    return values


def _check_key(key: object, syntax: re.Pattern[str], field: str) -> None:
    if not isinstance(key, str) or syntax.fullmatch(key) is None:
        raise ValidationException(f'{field} contains invalid key: Syntax error; key: "{key}"')
    if len(key) > REFERENCE_BYTES_MAX:  # the syntax is ASCII: characters are bytes
        raise ValidationException(
            f"{field} contains invalid key: The key exceeds the maximum length of "
            f'{REFERENCE_BYTES_MAX} bytes; key: "{key}"'
        )


# --- resolution ---------------------------------------------------------------------------


def resolve_path(path: ast.Path, subs: Substitutions, kind: ExpressionKind) -> ast.Path:
    if not any(isinstance(element, ast.NameRef) for element in path.elements):
        return path
    return ast.Path(
        tuple(
            subs.name(element.name, kind) if isinstance(element, ast.NameRef) else element
            for element in path.elements
        )
    )


def resolve_operand(operand: ast.Operand, subs: Substitutions, kind: ExpressionKind) -> ast.Operand:
    if isinstance(operand, ast.Path):
        return resolve_path(operand, subs, kind)
    if isinstance(operand, ast.ValueRef):
        return ast.Constant(subs.value(operand.name, kind))
    if isinstance(operand, ast.Call):
        arguments = tuple(resolve_operand(argument, subs, kind) for argument in operand.arguments)
        call = ast.Call(operand.function, arguments)
        _check_call_constants(call, kind)
        return call
    return operand


def operand_type_error(kind: ExpressionKind, function: str, type_name: str) -> ValidationException:
    return invalid(
        kind,
        "Incorrect operand type for operator or function; "
        f"operator or function: {function}, operand type: {type_name}",
    )


def _constant_type(operand: ast.Operand) -> str | None:
    return operand.value.type_name if isinstance(operand, ast.Constant) else None


def _check_call_constants(call: ast.Call, kind: ExpressionKind) -> None:
    arguments = call.arguments
    if call.function == "size":
        type_name = _constant_type(arguments[0])
        if type_name is not None and type_name not in _SIZED_TYPES:
            raise operand_type_error(kind, "size", type_name)
    elif call.function == "begins_with":
        for argument in arguments:
            type_name = _constant_type(argument)
            if type_name is not None and type_name not in ("S", "B"):
                raise operand_type_error(kind, "begins_with", type_name)
    elif call.function == "attribute_type":
        wanted = arguments[1]
        if not isinstance(wanted, ast.Constant):
            raise operand_type_error(kind, "attribute_type", "document path")
        if not (isinstance(wanted.value, S) and wanted.value.value in TYPE_NAMES):
            raise invalid(
                kind,
                "Invalid attribute type name found in type condition; type: "
                f"{describe(wanted.value)}, valid types: B, BOOL, BS, L, M, N, NS, NULL, S, SS",
            )
    elif call.function == "list_append":
        for argument in arguments:
            type_name = _constant_type(argument)
            if type_name is not None and type_name != "L":
                raise operand_type_error(kind, "list_append", type_name)


def _check_ordered(operand: ast.Operand, function: str, kind: ExpressionKind) -> None:
    type_name = _constant_type(operand)
    if type_name is not None and type_name not in _ORDERED_TYPES:
        raise operand_type_error(kind, function, type_name)


def _check_between_bounds(node: ast.Between, kind: ExpressionKind) -> None:
    for operand in (node.operand, node.lower, node.upper):
        _check_ordered(operand, "BETWEEN", kind)
    lower, upper = node.lower, node.upper
    if not (isinstance(lower, ast.Constant) and isinstance(upper, ast.Constant)):
        return
    bounds = (
        f"lower bound operand: AttributeValue: {describe(lower.value)}, "
        f"upper bound operand: AttributeValue: {describe(upper.value)}"
    )
    if lower.value.type_name != upper.value.type_name:
        raise invalid(
            kind,
            f"The BETWEEN operator requires same data type for lower and upper bounds; {bounds}",
        )
    order = compare_ordered(lower.value, upper.value)
    assert order is not None  # both are constants of one ordered type
    if order > 0:
        raise invalid(
            kind,
            "The BETWEEN operator requires upper bound to be greater than or equal to lower "
            f"bound; {bounds}",
        )


def resolve_condition(
    condition: ast.Condition, subs: Substitutions, kind: ExpressionKind
) -> ast.Condition:
    """A resolved condition, with the constant checks of the module docstring made."""
    if isinstance(condition, ast.And):
        return ast.And(tuple(resolve_condition(c, subs, kind) for c in condition.conditions))
    if isinstance(condition, ast.Or):
        return ast.Or(tuple(resolve_condition(c, subs, kind) for c in condition.conditions))
    if isinstance(condition, ast.Not):
        return ast.Not(resolve_condition(condition.condition, subs, kind))
    if isinstance(condition, ast.Comparison):
        left = resolve_operand(condition.left, subs, kind)
        right = resolve_operand(condition.right, subs, kind)
        if condition.comparator not in (ast.Comparator.EQ, ast.Comparator.NE):
            _check_ordered(left, condition.comparator, kind)
            _check_ordered(right, condition.comparator, kind)
        return ast.Comparison(condition.comparator, left, right)
    if isinstance(condition, ast.Between):
        between = ast.Between(
            resolve_operand(condition.operand, subs, kind),
            resolve_operand(condition.lower, subs, kind),
            resolve_operand(condition.upper, subs, kind),
        )
        _check_between_bounds(between, kind)
        return between
    if isinstance(condition, ast.In):
        return ast.In(
            resolve_operand(condition.operand, subs, kind),
            tuple(resolve_operand(choice, subs, kind) for choice in condition.choices),
        )
    call = resolve_operand(condition.call, subs, kind)
    assert isinstance(call, ast.Call)
    return ast.FunctionCondition(call)


# --- paths that may not share one request ---------------------------------------------------


def render_path(path: ast.Path) -> str:
    """DynamoDB's form in messages: ``[a, b, [2]]``."""
    parts = [
        f"[{element}]" if isinstance(element, int) else str(element) for element in path.elements
    ]
    return f"[{', '.join(parts)}]"


def check_disjoint_paths(paths: tuple[ast.Path, ...], kind: ExpressionKind) -> None:
    """No path may contain another (overlap) or index where another names (conflict)."""
    for later, path in enumerate(paths):
        for earlier in paths[:later]:
            for one, two in zip(earlier.elements, path.elements, strict=False):
                if one == two:
                    continue
                if isinstance(one, int) != isinstance(two, int):
                    raise invalid(
                        kind,
                        "Two document paths conflict with each other; must remove or rewrite one "
                        f"of these paths; path one: {render_path(earlier)}, "
                        f"path two: {render_path(path)}",
                    )
                break
            else:
                raise invalid(
                    kind,
                    "Two document paths overlap with each other; must remove or rewrite one of "
                    f"these paths; path one: {render_path(earlier)}, path two: {render_path(path)}",
                )


def resolve_projection(
    projection: ast.Projection, subs: Substitutions, kind: ExpressionKind
) -> ast.Projection:
    paths = tuple(resolve_path(path, subs, kind) for path in projection.paths)
    check_disjoint_paths(paths, kind)
    return ast.Projection(paths)
