"""Expression text to parsed AST: lark's LALR(1) parser, DynamoDB's static checks, a cache.

``parse(kind, text)`` returns the parsed (unresolved) tree of one expression
or raises ``ValidationException`` with DynamoDB's wording, prefixed
``Invalid <kind>: ``. Everything that does not depend on the request's
ExpressionAttributeNames / Values or on an item is checked here, once per
distinct text: the 4 KB length limit, syntax, reserved words used as bare
names, document paths deeper than 32 levels, IN lists longer than DynamoDB
takes, repeated UPDATE clauses, the 300-operator limit, and which functions
may appear where with how many operands.

Parsed trees are immutable and cached by (kind, text) in a bounded LRU, so
a hot expression costs one dict lookup. Failures are not cached. Must never
resolve references or look at values: that is ``resolve``'s job.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from enum import StrEnum
from typing import Final

import lark
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from dynakv.dynamo.errors import ValidationException
from dynakv.dynamo.expressions import ast
from dynakv.dynamo.expressions.grammar import GRAMMAR
from dynakv.dynamo.expressions.reserved import is_reserved

EXPRESSION_BYTES_MAX: Final = 4096
PATH_DEPTH_MAX: Final = 32
IN_OPERANDS_MAX: Final = 100  # the left operand counts: DynamoDB takes at most 99 choices
OPERATORS_MAX: Final = 300
PARSE_CACHE_ENTRIES_MAX: Final = 4096

CONDITION_FUNCTIONS: Final = {
    "attribute_exists": 1,
    "attribute_not_exists": 1,
    "attribute_type": 2,
    "begins_with": 2,
    "contains": 2,
}
OPERAND_FUNCTIONS: Final = {"size": 1}
UPDATE_FUNCTIONS: Final = {"if_not_exists": 2, "list_append": 2}
PATH_FUNCTIONS: Final = frozenset({"attribute_exists", "attribute_not_exists", "if_not_exists"})
_KNOWN_FUNCTIONS: Final = {**CONDITION_FUNCTIONS, **OPERAND_FUNCTIONS, **UPDATE_FUNCTIONS}


class ExpressionKind(StrEnum):
    CONDITION = "ConditionExpression"
    FILTER = "FilterExpression"
    KEY_CONDITION = "KeyConditionExpression"
    UPDATE = "UpdateExpression"
    PROJECTION = "ProjectionExpression"


_START_RULES: Final = {
    ExpressionKind.CONDITION: "condition",
    ExpressionKind.FILTER: "condition",
    ExpressionKind.KEY_CONDITION: "condition",
    ExpressionKind.UPDATE: "update",
    ExpressionKind.PROJECTION: "projection",
}

Parsed = ast.Condition | ast.Update | ast.Projection


class _Invalid(Exception):
    """A static check failed inside the parser; ``parse`` adds the ``Invalid <kind>:`` prefix."""


def invalid(kind: ExpressionKind, detail: str) -> ValidationException:
    return ValidationException(f"Invalid {kind}: {detail}")


class _ToAst(lark.Transformer[lark.Token, object]):
    """Builds AST nodes while the LALR parser reduces (no intermediate parse tree)."""

    def comparator(self, children: list[lark.Token]) -> ast.Comparator:
        return ast.Comparator(str(children[0]))

    def comparison(self, children: list[object]) -> ast.Comparison:
        left, comparator, right = children
        assert isinstance(comparator, ast.Comparator)
        return ast.Comparison(comparator, _operand(left), _operand(right))

    def between(self, children: list[object]) -> ast.Between:
        operand, lower, upper = (_operand(child) for child in children)
        return ast.Between(operand, lower, upper)

    def membership(self, children: list[object]) -> ast.In:
        if len(children) > IN_OPERANDS_MAX:
            raise _Invalid(
                "The IN operator is provided with too many operands; "
                f"number of operands: {len(children)}"
            )
        operands = tuple(_operand(child) for child in children)
        return ast.In(operands[0], operands[1:])

    def function_condition(self, children: list[object]) -> ast.FunctionCondition:
        assert isinstance(children[0], ast.Call)
        return ast.FunctionCondition(children[0])

    def negation(self, children: list[object]) -> ast.Not:
        return ast.Not(_condition(children[0]))

    def conjunction(self, children: list[object]) -> ast.And:
        return ast.And(tuple(_condition(child) for child in children))

    def disjunction(self, children: list[object]) -> ast.Or:
        return ast.Or(tuple(_condition(child) for child in children))

    def call(self, children: list[object]) -> ast.Call:
        name = children[0]
        assert isinstance(name, lark.Token)
        return ast.Call(str(name), tuple(_operand(child) for child in children[1:]))

    def value_ref(self, children: list[lark.Token]) -> ast.ValueRef:
        return ast.ValueRef(str(children[0]))

    def path(self, children: list[lark.Token]) -> ast.Path:
        if len(children) > PATH_DEPTH_MAX:
            raise _Invalid(
                f"The document path has too many nesting levels; nesting levels: {len(children)}"
            )
        elements: list[ast.PathElement] = []
        for token in children:
            if token.type == "INDEX":
                elements.append(int(token))
            elif token.type == "NAME_REF":
                elements.append(ast.NameRef(str(token)))
            elif is_reserved(token):
                raise _Invalid(f"Attribute name is a reserved keyword; reserved keyword: {token}")
            else:
                elements.append(str(token))
        return ast.Path(tuple(elements))

    def set_action(self, children: list[object]) -> ast.SetAction:
        path, value = children
        assert isinstance(path, ast.Path)
        return ast.SetAction(path, _set_value(value))

    def plus(self, children: list[object]) -> ast.Arithmetic:
        return ast.Arithmetic("+", _operand(children[0]), _operand(children[1]))

    def minus(self, children: list[object]) -> ast.Arithmetic:
        return ast.Arithmetic("-", _operand(children[0]), _operand(children[1]))

    def set_clause(self, children: list[object]) -> tuple[str, tuple[ast.UpdateAction, ...]]:
        return "SET", tuple(child for child in children if isinstance(child, ast.SetAction))

    def remove_clause(self, children: list[object]) -> tuple[str, tuple[ast.UpdateAction, ...]]:
        return "REMOVE", tuple(ast.RemoveAction(_path(child)) for child in children)

    def add_clause(self, children: list[object]) -> tuple[str, tuple[ast.UpdateAction, ...]]:
        pairs = zip(children[::2], children[1::2], strict=True)
        return "ADD", tuple(ast.AddAction(_path(p), _operand(v)) for p, v in pairs)

    def delete_clause(self, children: list[object]) -> tuple[str, tuple[ast.UpdateAction, ...]]:
        pairs = zip(children[::2], children[1::2], strict=True)
        return "DELETE", tuple(ast.DeleteAction(_path(p), _operand(v)) for p, v in pairs)

    def update(self, children: list[object]) -> ast.Update:
        seen: set[str] = set()
        actions: list[ast.UpdateAction] = []
        for clause in children:
            assert isinstance(clause, tuple)
            name, clause_actions = clause
            if name in seen:
                raise _Invalid(
                    f'The "{name}" section can only be used once in an update expression;'
                )
            seen.add(name)
            actions.extend(clause_actions)
        return ast.Update(tuple(actions))

    def projection(self, children: list[object]) -> ast.Projection:
        return ast.Projection(tuple(_path(child) for child in children))


def _operand(node: object) -> ast.Operand:
    assert isinstance(node, ast.Path | ast.ValueRef | ast.Call), node
    return node


def _path(node: object) -> ast.Path:
    assert isinstance(node, ast.Path), node
    return node


_CONDITION_TYPES: Final = (
    ast.Comparison,
    ast.Between,
    ast.In,
    ast.FunctionCondition,
    ast.Not,
    ast.And,
    ast.Or,
)


def _condition(node: object) -> ast.Condition:
    assert isinstance(node, _CONDITION_TYPES), node
    return node


def _set_value(node: object) -> ast.SetValue:
    assert isinstance(node, ast.Path | ast.ValueRef | ast.Call | ast.Arithmetic), node
    return node


@functools.cache
def _parser() -> lark.Lark:
    """Built on first use: compiling the LALR tables takes tens of milliseconds."""
    return lark.Lark(
        GRAMMAR,
        parser="lalr",
        start=sorted(set(_START_RULES.values())),
        transformer=_ToAst(),
        maybe_placeholders=False,
    )


def _near(text: str, start: int, end: int) -> str:
    """The offending token with the word before it, as DynamoDB quotes it."""
    before = text[:start].rstrip()
    word_start = max(before.rfind(" "), before.rfind("\t"), before.rfind("\n")) + 1
    after = text[end:]
    stop = len(after) - len(after.lstrip()) if after[:1].isspace() else 0
    if stop == 0:
        gap = [i for i, char in enumerate(after) if char.isspace()]
        stop = gap[0] if gap else len(after)
    return text[word_start : end + stop].strip()


def _syntax_detail(text: str, error: UnexpectedInput) -> str:
    if isinstance(error, UnexpectedCharacters):
        start = error.pos_in_stream or 0
        token, end = text[start], start + 1
    elif isinstance(error, UnexpectedToken) and error.token.type != "$END":
        token = str(error.token)
        start = int(error.token.start_pos or 0)
        end = start + len(token)
    else:
        assert isinstance(error, UnexpectedToken | UnexpectedEOF)
        token, start, end = "<EOF>", len(text), len(text)
    return f'Syntax error; token: "{token}", near: "{_near(text, start, end)}"'


def _children(node: object) -> Iterator[object]:
    if isinstance(node, ast.And | ast.Or):
        yield from node.conditions
    elif isinstance(node, ast.Not):
        yield node.condition
    elif isinstance(node, ast.Comparison | ast.Arithmetic):
        yield from (node.left, node.right)
    elif isinstance(node, ast.Between):
        yield from (node.operand, node.lower, node.upper)
    elif isinstance(node, ast.In):
        yield node.operand
        yield from node.choices
    elif isinstance(node, ast.FunctionCondition):
        yield node.call
    elif isinstance(node, ast.Call):
        yield from node.arguments
    elif isinstance(node, ast.Update):
        yield from node.actions
    elif isinstance(node, ast.SetAction | ast.AddAction | ast.DeleteAction):
        yield node.value


def _operator_count(node: object) -> int:
    if isinstance(node, ast.And | ast.Or):
        own = len(node.conditions) - 1
    elif isinstance(
        node, ast.Not | ast.Comparison | ast.Between | ast.In | ast.Call | ast.Arithmetic
    ):
        own = 1
    else:
        own = 0
    return own + sum(_operator_count(child) for child in _children(node))


def _check_call(kind: ExpressionKind, call: ast.Call, allowed: frozenset[str]) -> None:
    name = call.function
    if name not in _KNOWN_FUNCTIONS:
        raise _Invalid(f"Invalid function name; function: {name}")
    if name not in allowed and kind is not ExpressionKind.KEY_CONDITION:
        raise _Invalid(
            f"The function is not allowed to be used this way in an expression; function: {name}"
        )
    if len(call.arguments) != _KNOWN_FUNCTIONS[name]:
        raise _Invalid(
            "Incorrect number of operands for operator or function; "
            f"operator or function: {name}, number of operands: {len(call.arguments)}"
        )
    if kind is ExpressionKind.KEY_CONDITION:
        return  # which functions a key condition takes is the key analysis's business
    if name in PATH_FUNCTIONS and not isinstance(call.arguments[0], ast.Path):
        raise _Invalid(
            f"Operator or function requires a document path; operator or function: {name}"
        )
    inner = _NESTED_UPDATE if kind is ExpressionKind.UPDATE else frozenset()
    for argument in call.arguments:
        if not isinstance(argument, ast.Call):
            continue
        if argument.function == "size" and kind is not ExpressionKind.UPDATE:
            # size() is a number, which no condition function takes: a type error in the query
            raise _Invalid(
                "Incorrect operand type for operator or function; "
                f"operator or function: {name}, operand type: N"
            )
        _check_call(kind, argument, inner)


_AS_CONDITION: Final = frozenset(CONDITION_FUNCTIONS)
_AS_OPERAND: Final = frozenset(OPERAND_FUNCTIONS)
_IN_SET: Final = frozenset(UPDATE_FUNCTIONS)
_NESTED_UPDATE: Final = frozenset({"if_not_exists"})  # list_append does not nest


def _check_functions(kind: ExpressionKind, node: object) -> None:
    if isinstance(node, ast.FunctionCondition):
        _check_call(kind, node.call, _AS_CONDITION)
        return
    if isinstance(node, ast.Call):
        _check_call(kind, node, _IN_SET if kind is ExpressionKind.UPDATE else _AS_OPERAND)
        return
    for child in _children(node):
        _check_functions(kind, child)


@functools.lru_cache(maxsize=PARSE_CACHE_ENTRIES_MAX)
def _parse_cached(kind: ExpressionKind, text: str) -> Parsed:
    try:
        tree = _parser().parse(text, start=_START_RULES[kind])
    except UnexpectedInput as error:
        raise invalid(kind, _syntax_detail(text, error)) from None
    except _Invalid as error:
        raise invalid(kind, str(error)) from None
    assert isinstance(tree, (ast.Update, ast.Projection, *_CONDITION_TYPES)), tree
    try:
        operators = _operator_count(tree)
        if operators > OPERATORS_MAX:
            raise _Invalid(
                f"The expression contains too many operators; operator count: {operators}"
            )
        _check_functions(kind, tree)
    except _Invalid as error:
        raise invalid(kind, str(error)) from None
    return tree


def parse(kind: ExpressionKind, text: str) -> Parsed:
    """The parsed tree of ``text`` as an expression of ``kind`` (cached; see module docstring)."""
    if len(text) * 4 > EXPRESSION_BYTES_MAX and len(text.encode()) > EXPRESSION_BYTES_MAX:
        raise invalid(
            kind,
            "Expression size has exceeded the maximum allowed size; "
            f"expression size: {len(text.encode())}",
        )
    if not text.strip():
        raise invalid(kind, "The expression can not be empty;")
    return _parse_cached(kind, text)


def parse_condition(text: str, kind: ExpressionKind = ExpressionKind.CONDITION) -> ast.Condition:
    assert _START_RULES[kind] == "condition", kind
    tree = parse(kind, text)
    assert isinstance(tree, _CONDITION_TYPES)
    return tree


def parse_update(text: str) -> ast.Update:
    tree = parse(ExpressionKind.UPDATE, text)
    assert isinstance(tree, ast.Update)
    return tree


def parse_projection(text: str) -> ast.Projection:
    tree = parse(ExpressionKind.PROJECTION, text)
    assert isinstance(tree, ast.Projection)
    return tree


def cache_clear() -> None:
    """Forget every cached parse (for benchmarks measuring the cold path)."""
    _parse_cached.cache_clear()
