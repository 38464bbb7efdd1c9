"""The expression AST: frozen, slotted dataclasses, shared by every expression kind.

The parser produces *parsed* trees: paths may hold ``NameRef`` (``#n``)
elements and operands may be ``ValueRef`` (``:v``). Resolution (``resolve``)
turns them into *resolved* trees, where every path element is an attribute
name (``str``) or a list index (``int``) and every value is a ``Constant``.
The legacy parameters translate straight into resolved trees. Evaluation only
ever sees resolved trees.

Invariants: nodes are immutable (tuples, never lists), so a parsed tree can be
cached and shared between requests. This module holds no behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TypeAlias

from dynakv.dynamo.values import AttributeValue


@dataclass(frozen=True, slots=True)
class NameRef:
    """``#name``: an attribute name from ExpressionAttributeNames."""

    name: str


PathElement: TypeAlias = str | int | NameRef


@dataclass(frozen=True, slots=True)
class Path:
    """A document path: ``a.b[2].#c`` is ``("a", "b", 2, NameRef("#c"))``."""

    elements: tuple[PathElement, ...]


@dataclass(frozen=True, slots=True)
class ValueRef:
    """``:value``: a value from ExpressionAttributeValues."""

    name: str


@dataclass(frozen=True, slots=True)
class Constant:
    """A value that came with the request (a resolved ``ValueRef`` or a legacy value)."""

    value: AttributeValue


@dataclass(frozen=True, slots=True)
class Call:
    """A function applied to operands: ``size(a)``, ``if_not_exists(a, :v)``."""

    function: str
    arguments: tuple[Operand, ...]


Operand: TypeAlias = Path | ValueRef | Constant | Call


class Comparator(StrEnum):
    EQ = "="
    NE = "<>"
    LT = "<"
    LE = "<="
    GT = ">"
    GE = ">="


@dataclass(frozen=True, slots=True)
class Comparison:
    comparator: Comparator
    left: Operand
    right: Operand


@dataclass(frozen=True, slots=True)
class Between:
    operand: Operand
    lower: Operand
    upper: Operand


@dataclass(frozen=True, slots=True)
class In:
    operand: Operand
    choices: tuple[Operand, ...]


@dataclass(frozen=True, slots=True)
class FunctionCondition:
    """A boolean function used as a condition: ``attribute_exists(a)``."""

    call: Call


@dataclass(frozen=True, slots=True)
class Not:
    condition: Condition


@dataclass(frozen=True, slots=True)
class And:
    conditions: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class Or:
    conditions: tuple[Condition, ...]


Condition: TypeAlias = Comparison | Between | In | FunctionCondition | Not | And | Or


@dataclass(frozen=True, slots=True)
class Arithmetic:
    """``left + right`` or ``left - right`` on the right-hand side of SET."""

    operator: str
    left: Operand
    right: Operand


SetValue: TypeAlias = Operand | Arithmetic


@dataclass(frozen=True, slots=True)
class SetAction:
    path: Path
    value: SetValue


@dataclass(frozen=True, slots=True)
class RemoveAction:
    path: Path


@dataclass(frozen=True, slots=True)
class AddAction:
    path: Path
    value: Operand


@dataclass(frozen=True, slots=True)
class DeleteAction:
    path: Path
    value: Operand


UpdateAction: TypeAlias = SetAction | RemoveAction | AddAction | DeleteAction


@dataclass(frozen=True, slots=True)
class Update:
    """An UpdateExpression (or translated AttributeUpdates): actions in clause order."""

    actions: tuple[UpdateAction, ...]


@dataclass(frozen=True, slots=True)
class Projection:
    """A ProjectionExpression (or translated AttributesToGet)."""

    paths: tuple[Path, ...]
