"""DynamoDB's expression language: parse (cached), resolve, evaluate; and the legacy parameters.

One request, as the protocol layer uses it::

    subs = Substitutions.from_request(body.get("ExpressionAttributeNames"),
                                      body.get("ExpressionAttributeValues"))
    condition = compile_condition(body["ConditionExpression"], subs)
    update = compile_update(body["UpdateExpression"], subs)
    subs.check_all_used()                    # after every expression of the request
    if not evaluate_condition(condition, old_item):
        raise ConditionalCheckFailedException()
    new_item = apply_update(update, old_item)

Parsing is cached by text (``parser``); resolution (``resolve``) substitutes
references and makes every check that does not need an item, so evaluation
(``evaluate``, ``update``, ``keys``) raises only errors that depend on the
item. ``legacy`` builds the same resolved trees from Expected, QueryFilter,
ScanFilter, KeyConditions, AttributeUpdates and AttributesToGet. Nothing here
imports the node or does I/O.
"""

from __future__ import annotations

from dynakv.dynamo.expressions import ast
from dynakv.dynamo.expressions.evaluate import evaluate_condition, get_path, project
from dynakv.dynamo.expressions.keys import (
    KeyAttribute,
    KeyQuery,
    KeyRange,
    KeySchema,
    SortCondition,
    SortOperator,
    key_query,
)
from dynakv.dynamo.expressions.legacy import (
    attribute_updates,
    attributes_to_get,
    check_not_mixed,
    expected_condition,
    filter_condition,
    key_conditions_query,
)
from dynakv.dynamo.expressions.parser import (
    ExpressionKind,
    parse_condition,
    parse_projection,
    parse_update,
)
from dynakv.dynamo.expressions.resolve import (
    Substitutions,
    resolve_condition,
    resolve_projection,
)
from dynakv.dynamo.expressions.update import (
    apply_update,
    check_key_unchanged,
    resolve_update,
    updated_paths,
)

__all__ = [
    "ExpressionKind",
    "KeyAttribute",
    "KeyQuery",
    "KeyRange",
    "KeySchema",
    "SortCondition",
    "SortOperator",
    "Substitutions",
    "apply_update",
    "ast",
    "attribute_updates",
    "attributes_to_get",
    "check_key_unchanged",
    "check_not_mixed",
    "compile_condition",
    "compile_key_condition",
    "compile_projection",
    "compile_update",
    "evaluate_condition",
    "expected_condition",
    "filter_condition",
    "get_path",
    "key_conditions_query",
    "parse_condition",
    "parse_projection",
    "parse_update",
    "project",
    "updated_paths",
]


def compile_condition(
    text: str, subs: Substitutions, kind: ExpressionKind = ExpressionKind.CONDITION
) -> ast.Condition:
    """A ConditionExpression (or, with ``kind``, a FilterExpression), parsed and resolved."""
    subs.note_expression()
    return resolve_condition(parse_condition(text, kind), subs, kind)


def compile_update(text: str, subs: Substitutions) -> ast.Update:
    subs.note_expression()
    return resolve_update(parse_update(text), subs)


def compile_projection(text: str, subs: Substitutions) -> ast.Projection:
    subs.note_expression()
    return resolve_projection(parse_projection(text), subs, ExpressionKind.PROJECTION)


def compile_key_condition(text: str, subs: Substitutions, schema: KeySchema) -> KeyQuery:
    kind = ExpressionKind.KEY_CONDITION
    subs.note_expression()
    return key_query(resolve_condition(parse_condition(text, kind), subs, kind), schema)
