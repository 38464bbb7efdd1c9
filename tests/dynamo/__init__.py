"""Tests of the DynamoDB data model and expression language (dynakv.dynamo).

The helpers here write test data the way boto3 users think of it (Python
values) and run one request's expressions the way the protocol layer will.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from decimal import Decimal

from dynakv.dynamo.expressions import (
    Substitutions,
    apply_update,
    compile_condition,
    compile_projection,
    compile_update,
    evaluate_condition,
    project,
)
from dynakv.dynamo.values import Item, parse_item, parse_value


def to_json(value: object) -> dict[str, object]:
    """A Python value as DynamoDB JSON, as boto3's serializer would send it."""
    if isinstance(value, bool):
        return {"BOOL": value}
    if value is None:
        return {"NULL": True}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, int | Decimal):
        return {"N": str(value)}
    if isinstance(value, bytes):
        return {"B": base64.b64encode(value).decode()}
    if isinstance(value, list):
        return {"L": [to_json(element) for element in value]}
    if isinstance(value, dict):
        return {"M": {name: to_json(element) for name, element in value.items()}}
    assert isinstance(value, set | frozenset) and value, value
    sample = next(iter(value))
    if isinstance(sample, str):
        return {"SS": sorted(value)}
    if isinstance(sample, bytes):
        return {"BS": [base64.b64encode(blob).decode() for blob in value]}
    return {"NS": [str(number) for number in value]}


def item(**attributes: object) -> Item:
    return parse_item({name: to_json(value) for name, value in attributes.items()})


def value(python: object) -> object:
    return parse_value(to_json(python))


def substitutions(
    names: Mapping[str, str] | None = None, values: Mapping[str, object] | None = None
) -> Substitutions:
    return Substitutions.from_request(
        dict(names) if names else None,
        {key: to_json(python) for key, python in values.items()} if values else None,
    )


def check(
    text: str,
    target: Item | None,
    values: Mapping[str, object] | None = None,
    names: Mapping[str, str] | None = None,
) -> bool:
    """Compile a ConditionExpression as one request would, then evaluate it on ``target``."""
    subs = substitutions(names, values)
    condition = compile_condition(text, subs)
    subs.check_all_used()
    return evaluate_condition(condition, target)


def updated(
    text: str,
    target: Item | None,
    values: Mapping[str, object] | None = None,
    names: Mapping[str, str] | None = None,
) -> Item:
    subs = substitutions(names, values)
    update = compile_update(text, subs)
    subs.check_all_used()
    return apply_update(update, target)


def projected(text: str, target: Item, names: Mapping[str, str] | None = None) -> Item:
    subs = substitutions(names)
    projection = compile_projection(text, subs)
    subs.check_all_used()
    return project(projection, target)
