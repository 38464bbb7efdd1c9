"""UpdateExpression: resolution checks, and applying a resolved update to an item.

``resolve_update`` substitutes references and refuses, whatever the item:
constants of the wrong type for ``+``/``-``, ``list_append``, ADD (a number or
a set) and DELETE (a set), and paths that overlap or conflict.

``apply_update(update, item)`` returns the new item, as DynamoDB computes it:

- every right-hand side is computed from the item as it was before the
  update (``SET a = b, b = a`` swaps); a path operand that is missing is an
  error, except as ``if_not_exists``'s first argument;
- list indexes refer to the positions before the update: SETs apply first
  (an index past the end appends, in index order), then REMOVEs from the
  highest index down, so removals shift only what follows them;
- SET, ADD and DELETE need every container above their target to exist with
  the right type ("The document path provided in the update expression is
  invalid for update"); REMOVE of a missing leaf does nothing, and on an item
  that does not exist REMOVE does nothing at all;
- ADD creates a missing number or set, adds numbers exactly (38 digits) and
  unions sets; DELETE subtracts from a set and removes the attribute when the
  set becomes empty.

The input item is never mutated: changed containers are rebuilt along the
path. Item size is the caller's to check (``values.check_item_size``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from dynakv.dynamo.errors import ValidationException
from dynakv.dynamo.expressions import ast
from dynakv.dynamo.expressions.evaluate import get_path
from dynakv.dynamo.expressions.parser import ExpressionKind, invalid
from dynakv.dynamo.expressions.resolve import (
    LONG_TYPE_NAMES,
    Substitutions,
    check_disjoint_paths,
    operand_type_error,
    resolve_operand,
    resolve_path,
)
from dynakv.dynamo.values import (
    BS,
    NESTING_DEPTH_MAX,
    NS,
    SS,
    AttributeValue,
    Item,
    L,
    M,
    N,
    SetValue,
    add_numbers,
    value_depth,
)

_KIND: Final = ExpressionKind.UPDATE
_SET_TYPES: Final = frozenset({"SS", "NS", "BS"})
_ADDABLE_TYPES: Final = _SET_TYPES | {"N"}

Change = Callable[[AttributeValue | None], AttributeValue | None]


def _path_invalid() -> ValidationException:
    return ValidationException(
        "The document path provided in the update expression is invalid for update"
    )


def _missing_attribute() -> ValidationException:
    return ValidationException(
        "The provided expression refers to an attribute that does not exist in the item"
    )


def _wrong_data_type() -> ValidationException:
    return ValidationException("An operand in the update expression has an incorrect data type")


# --- resolution ---------------------------------------------------------------------------


def _resolve_set_value(value: ast.SetValue, subs: Substitutions) -> ast.SetValue:
    if not isinstance(value, ast.Arithmetic):
        return resolve_operand(value, subs, _KIND)
    left = resolve_operand(value.left, subs, _KIND)
    right = resolve_operand(value.right, subs, _KIND)
    for operand in (left, right):
        if isinstance(operand, ast.Constant) and operand.value.type_name != "N":
            raise operand_type_error(_KIND, value.operator, operand.value.type_name)
    return ast.Arithmetic(value.operator, left, right)


def _resolve_set_operand(
    operator: str, value: ast.Operand, subs: Substitutions, allowed: frozenset[str]
) -> ast.Operand:
    resolved = resolve_operand(value, subs, _KIND)
    assert isinstance(resolved, ast.Constant)  # the grammar takes only :value here
    type_name = resolved.value.type_name
    if type_name not in allowed:
        raise invalid(
            _KIND,
            "Incorrect operand type for operator or function; "
            f"operator: {operator}, operand type: {LONG_TYPE_NAMES[type_name]}",
        )
    return resolved


def _resolve_action(action: ast.UpdateAction, subs: Substitutions) -> ast.UpdateAction:
    path = resolve_path(action.path, subs, _KIND)
    if isinstance(action, ast.SetAction):
        return ast.SetAction(path, _resolve_set_value(action.value, subs))
    if isinstance(action, ast.RemoveAction):
        return ast.RemoveAction(path)
    if isinstance(action, ast.AddAction):
        return ast.AddAction(path, _resolve_set_operand("ADD", action.value, subs, _ADDABLE_TYPES))
    return ast.DeleteAction(path, _resolve_set_operand("DELETE", action.value, subs, _SET_TYPES))


def resolve_update(update: ast.Update, subs: Substitutions) -> ast.Update:
    """A resolved update, refused if its constants or paths can never work (module docstring)."""
    actions = tuple(_resolve_action(action, subs) for action in update.actions)
    check_disjoint_paths(tuple(action.path for action in actions), _KIND)
    return ast.Update(actions)


def updated_paths(update: ast.Update) -> tuple[ast.Path, ...]:
    """The paths a resolved update writes or removes (for ReturnValues UPDATED_OLD/NEW)."""
    return tuple(action.path for action in update.actions)


def check_key_unchanged(update: ast.Update, key_names: tuple[str, ...]) -> None:
    for action in update.actions:
        name = action.path.elements[0]
        if name in key_names:
            raise ValidationException(
                f"One or more parameter values were invalid: Cannot update attribute {name}. "
                "This attribute is part of the key"
            )


# --- right-hand sides ------------------------------------------------------------------------


def _operand(operand: ast.Operand, item: Item | None) -> AttributeValue:
    if isinstance(operand, ast.Constant):
        return operand.value
    if isinstance(operand, ast.Path):
        value = get_path(item, operand)
        if value is None:
            raise _missing_attribute()
        return value
    assert isinstance(operand, ast.Call), operand
    if operand.function == "if_not_exists":
        path = operand.arguments[0]
        assert isinstance(path, ast.Path), operand
        existing = get_path(item, path)
        return existing if existing is not None else _operand(operand.arguments[1], item)
    assert operand.function == "list_append", operand
    first, second = (_operand(argument, item) for argument in operand.arguments)
    for value in (first, second):
        if not isinstance(value, L):
            raise operand_type_error(_KIND, "list_append", value.type_name)
    assert isinstance(first, L) and isinstance(second, L)
    return L(first.value + second.value)


def _set_value(value: ast.SetValue, item: Item | None) -> AttributeValue:
    if not isinstance(value, ast.Arithmetic):
        return _operand(value, item)
    left = _operand(value.left, item)
    right = _operand(value.right, item)
    for operand in (left, right):
        if not isinstance(operand, N):
            raise operand_type_error(_KIND, value.operator, operand.type_name)
    assert isinstance(left, N) and isinstance(right, N)
    addend = right.value if value.operator == "+" else right.value.copy_negate()
    return N(add_numbers(left.value, addend))


# --- ADD and DELETE ------------------------------------------------------------------------------


def _union(current: AttributeValue, value: SetValue) -> SetValue:
    if isinstance(current, SS) and isinstance(value, SS):
        return SS(tuple(sorted(set(current.value) | set(value.value))))
    if isinstance(current, NS) and isinstance(value, NS):
        return NS(tuple(sorted(set(current.value) | set(value.value))))
    if isinstance(current, BS) and isinstance(value, BS):
        return BS(tuple(sorted(set(current.value) | set(value.value))))
    raise _wrong_data_type()


def _difference(current: AttributeValue, value: SetValue) -> SetValue | None:
    result: SetValue
    if isinstance(current, SS) and isinstance(value, SS):
        result = SS(tuple(member for member in current.value if member not in set(value.value)))
    elif isinstance(current, NS) and isinstance(value, NS):
        result = NS(tuple(member for member in current.value if member not in set(value.value)))
    elif isinstance(current, BS) and isinstance(value, BS):
        result = BS(tuple(member for member in current.value if member not in set(value.value)))
    else:
        raise _wrong_data_type()
    return result if result.value else None  # DynamoDB has no empty sets: the attribute goes


def _assigning(value: AttributeValue) -> Change:
    return lambda _current: value


def _adding(value: AttributeValue) -> Change:
    def change(current: AttributeValue | None) -> AttributeValue:
        if current is None:
            return value
        if isinstance(value, N):
            if not isinstance(current, N):
                raise _wrong_data_type()
            return N(add_numbers(current.value, value.value))
        assert isinstance(value, SS | NS | BS)
        return _union(current, value)

    return change


def _deleting(value: AttributeValue) -> Change:
    assert isinstance(value, SS | NS | BS)
    return lambda current: None if current is None else _difference(current, value)


def _removing(_current: AttributeValue | None) -> None:
    return None


# --- changing one path ---------------------------------------------------------------------------


def _changed_in(
    container: AttributeValue, elements: tuple[ast.PathElement, ...], change: Change
) -> AttributeValue:
    """``container`` rebuilt with ``change`` applied at ``elements`` below it."""
    head, rest = elements[0], elements[1:]
    if isinstance(head, int):
        if not isinstance(container, L):
            raise _path_invalid()
        members = list(container.value)
        if rest:
            if head >= len(members):
                raise _path_invalid()
            members[head] = _changed_in(members[head], rest, change)
            return L(tuple(members))
        new = change(members[head] if head < len(members) else None)
        if new is None:
            if head < len(members):
                del members[head]
        elif head < len(members):
            members[head] = new
        else:
            members.append(new)  # past the end: append
        return L(tuple(members))
    assert isinstance(head, str)
    if not isinstance(container, M):
        raise _path_invalid()
    fields = dict(container.value)
    if rest:
        child = fields.get(head)
        if child is None:
            raise _path_invalid()
        fields[head] = _changed_in(child, rest, change)
        return M(fields)
    new = change(fields.get(head))
    if new is None:
        fields.pop(head, None)
    else:
        fields[head] = new
    return M(fields)


def _change(item: Item, path: ast.Path, change: Change) -> None:
    """Apply ``change`` at ``path`` in ``item`` (a working copy, changed in place)."""
    first = path.elements[0]
    assert isinstance(first, str), path
    if len(path.elements) == 1:
        new = change(item.get(first))
        if new is None:
            item.pop(first, None)
        else:
            item[first] = new
        return
    container = item.get(first)
    if container is None:
        raise _path_invalid()
    item[first] = _changed_in(container, path.elements[1:], change)


def _check_parent(item: Item, path: ast.Path) -> None:
    """REMOVE of a missing leaf is fine, but only below a container of the right type."""
    if len(path.elements) == 1:
        return
    parent = get_path(item, ast.Path(path.elements[:-1]))
    wanted = L if isinstance(path.elements[-1], int) else M
    if not isinstance(parent, wanted):
        raise _path_invalid()


def _path_order(path: ast.Path) -> tuple[tuple[int, int | str], ...]:
    return tuple((1, e) if isinstance(e, int) else (0, str(e)) for e in path.elements)


def apply_update(update: ast.Update, item: Item | None) -> Item:
    """The item after the resolved ``update`` (``item`` is ``None`` when it does not exist)."""
    original: Item = item if item is not None else {}
    sets = [action for action in update.actions if isinstance(action, ast.SetAction)]
    # Every right-hand side sees the item as it was before any action.
    values = {id(action): _set_value(action.value, item) for action in sets}
    working = dict(original)
    for action in sorted(sets, key=lambda action: _path_order(action.path)):
        value = values[id(action)]
        if len(action.path.elements) - 1 + value_depth(value) > NESTING_DEPTH_MAX:
            raise ValidationException("Nesting Levels have exceeded supported limits")
        _change(working, action.path, _assigning(value))
    for other in update.actions:
        if isinstance(other, ast.AddAction | ast.DeleteAction):
            assert isinstance(other.value, ast.Constant)
            making = _adding if isinstance(other, ast.AddAction) else _deleting
            _change(working, other.path, making(other.value.value))
    removes = [action for action in update.actions if isinstance(action, ast.RemoveAction)]
    for remove in sorted(removes, key=lambda action: _path_order(action.path), reverse=True):
        if get_path(original, remove.path) is None:
            if item is not None:
                _check_parent(original, remove.path)
            continue
        _change(working, remove.path, _removing)
    return working
