"""DynamoDB's JSON protocol (``x-amz-json-1.0``): targets, bodies, fields, answers, errors.

A request is ``POST /`` with ``X-Amz-Target: DynamoDB_20120810.<Operation>``
and a JSON object as its body; the answer is a JSON object (200) or an error
body ``{"__type": "<namespace>#<Type>", "message": ...}`` with the error's
status (``errors``). ``parse_target`` and ``parse_body`` refuse what is not
that shape; the ``*_field`` helpers read one top-level member with
DynamoDB's messages (a wrong JSON type is a SerializationException, a
missing or out-of-range value a ValidationException). ``from_dynakv`` turns
the node's errors into DynamoDB's: a 503 (quorum not reached, contention,
overload, disk full) is ``ServiceUnavailable``, which every SDK retries; an
unknown outcome is ``InternalServerError`` saying so (SDKs retry it too,
and a retried conditional write may then fail its condition, as on
DynamoDB); a 4xx of the HTTP layer (413, 431, 408, malformed HTTP) is a
``ValidationException`` keeping its status.

Pure: no I/O, no clock. Must never let a body that is not a JSON object
reach an operation.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from dynakv.api.wire import Response
from dynakv.dynamo.errors import (
    ConditionalCheckFailedException,
    DynamoError,
    InternalServerError,
    SerializationException,
    ServiceUnavailable,
    UnknownOperationException,
    ValidationException,
)
from dynakv.errors import DynakvError, OutcomeUnknown, UnavailableError

TARGET_PREFIX: Final = "DynamoDB_20120810."
CONTENT_TYPE_HEADERS: Final = b"content-type: application/x-amz-json-1.0\r\n"
_DECODER: Final = msgspec.json.Decoder()
_ENCODER: Final = msgspec.json.Encoder()
_OPERATION_CHARS_MAX: Final = 64


def parse_target(raw: bytes | None, operations: frozenset[str]) -> str:
    """The operation an ``X-Amz-Target`` header names, if it is one of ``operations``."""
    text = (raw or b"").decode("latin-1").strip()
    if not text.startswith(TARGET_PREFIX):
        raise UnknownOperationException("")
    operation = text[len(TARGET_PREFIX) :]
    if operation not in operations:
        raise UnknownOperationException(
            f"The operation {operation[:_OPERATION_CHARS_MAX]} is not supported by dynakv"
        )
    return operation


def parse_body(body: bytes) -> dict[str, Any]:
    """The request's JSON object (an empty body is ``{}``, as the SDKs never send one)."""
    if not body.strip():
        return {}
    try:
        document = _DECODER.decode(body)
    except msgspec.DecodeError as error:
        raise SerializationException(f"the request body is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise SerializationException("Start of structure or map found where not expected.")
    return document


# --- fields --------------------------------------------------------------------------------


def camel(name: str) -> str:
    """DynamoDB's validation messages name members in lower camel case (``tableName``)."""
    return name[:1].lower() + name[1:]


def missing(name: str) -> ValidationException:
    return ValidationException(
        f"1 validation error detected: Value null at '{camel(name)}' failed to satisfy "
        "constraint: Member must not be null"
    )


def _wrong_type(value: object, target: str) -> SerializationException:
    kind = type(value).__name__
    names = {"str": "STRING_VALUE", "bool": "BOOLEAN_VALUE", "list": "START_ARRAY"}
    names |= {"dict": "START_OBJECT", "int": "NUMBER_VALUE", "float": "NUMBER_VALUE"}
    return SerializationException(f"{names.get(kind, kind)} cannot be converted to {target}")


def str_field(body: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise missing(name)
        return None
    if not isinstance(value, str):
        raise _wrong_type(value, "String")
    return value


def bool_field(body: dict[str, Any], name: str) -> bool | None:
    value = body.get(name)
    if value is None or isinstance(value, bool):
        return value
    raise _wrong_type(value, "Boolean")


def int_field(body: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong_type(value, "Integer")
    if value < low:
        raise ValidationException(
            f"1 validation error detected: Value '{value}' at '{camel(name)}' failed to satisfy "
            f"constraint: Member must have value greater than or equal to {low}"
        )
    if value > high:
        raise ValidationException(
            f"1 validation error detected: Value '{value}' at '{camel(name)}' failed to satisfy "
            f"constraint: Member must have value less than or equal to {high}"
        )
    return value


def map_field(body: dict[str, Any], name: str, *, required: bool = False) -> dict[str, Any] | None:
    value = body.get(name)
    if value is None:
        if required:
            raise missing(name)
        return None
    if not isinstance(value, dict):
        raise _wrong_type(value, "Map")
    return value


def list_field(body: dict[str, Any], name: str, *, required: bool = False) -> list[Any] | None:
    value = body.get(name)
    if value is None:
        if required:
            raise missing(name)
        return None
    if not isinstance(value, list):
        raise _wrong_type(value, "List")
    return value


def enum_field(body: dict[str, Any], name: str, allowed: tuple[str, ...], default: str) -> str:
    value = str_field(body, name)
    if value is None:
        return default
    if value not in allowed:
        raise ValidationException(
            f"1 validation error detected: Value '{value[:64]}' at '{camel(name)}' failed to "
            f"satisfy constraint: Member must satisfy enum value set: [{', '.join(allowed)}]"
        )
    return value


# --- answers -------------------------------------------------------------------------------


def ok_response(document: dict[str, Any]) -> Response:
    return Response(200, CONTENT_TYPE_HEADERS, _ENCODER.encode(document))


def error_response(error: DynamoError, status: int | None = None) -> Response:
    """``error``'s body, with its own status unless ``status`` overrides it."""
    document: dict[str, object] = {
        "__type": f"{error.namespace}#{error.type_name}",
        "message": error.message,
    }
    if isinstance(error, ConditionalCheckFailedException) and error.item is not None:
        document["Item"] = error.item
    return Response(status or error.http_status, CONTENT_TYPE_HEADERS, _ENCODER.encode(document))


def dynakv_error_response(error: DynakvError) -> Response:
    """One of the node's errors as DynamoDB's; an HTTP-layer 4xx keeps its status."""
    status = error.http_status if 400 <= error.http_status < 500 else None
    return error_response(from_dynakv(error), status)


def from_dynakv(error: DynakvError) -> DynamoError:
    """The DynamoDB error a client sees for one of the node's (see the module docstring)."""
    if isinstance(error, UnavailableError):
        return ServiceUnavailable(f"{error.message} ({error.code})")
    if isinstance(error, OutcomeUnknown):
        return InternalServerError(f"{error.message} ({error.code}); the write may have applied")
    if 400 <= error.http_status < 500:
        return ValidationException(error.message)
    return InternalServerError(f"{error.message} ({error.code})")
