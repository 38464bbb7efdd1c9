"""DynamoDB's errors, as the service names them, and nothing else.

Each error carries ``type_name`` (the suffix of the ``__type`` field DynamoDB
puts in an error body, e.g. ``ValidationException``), ``namespace`` (the part
before ``#``: DynamoDB's own errors are ``com.amazonaws.dynamodb.v20120810``,
the front door's ``com.amazon.coral.service``), ``http_status``, and
``message`` (the text DynamoDB shows, word for word where we know it). The
protocol layer renders them; this module must never import the HTTP or node
machinery.

    DynamoError                              root; never raised itself
    ├── ValidationException                  400 the request is invalid; nothing was changed
    ├── SerializationException               400 the JSON does not have the shape expected
    ├── ConditionalCheckFailedException      400 a condition was false; nothing was changed
    │                                            (``item``: the current item, when asked for)
    ├── ResourceNotFoundException            400 no such table
    ├── ResourceInUseException               400 the table exists, or is being deleted
    ├── LimitExceededException               400 too many tables
    ├── UnknownOperationException            400 X-Amz-Target names no operation we serve
    ├── MissingAuthenticationTokenException  400 signatures are required and none was sent
    ├── UnrecognizedClientException          400 the access key is not a configured one
    ├── InvalidSignatureException            400 the signature does not verify (or expired)
    ├── InternalServerError                  500 a bug, or an outcome we cannot know
    └── ServiceUnavailable                   503 the cluster could not serve it now; retry
"""

from __future__ import annotations

from typing import ClassVar, Final

DYNAMODB_NAMESPACE: Final = "com.amazonaws.dynamodb.v20120810"
SERVICE_NAMESPACE: Final = "com.amazon.coral.service"


class DynamoError(Exception):
    """Root of the DynamoDB-facing errors."""

    type_name: ClassVar[str] = "DynamoError"
    namespace: ClassVar[str] = DYNAMODB_NAMESPACE
    http_status: ClassVar[int] = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.message,))


class ValidationException(DynamoError):
    type_name = "ValidationException"


class SerializationException(DynamoError):
    type_name = "SerializationException"
    namespace = SERVICE_NAMESPACE


class ConditionalCheckFailedException(DynamoError):
    """``item`` is the item the condition was judged on, rendered as DynamoDB JSON,
    when the request asked for it (``ReturnValuesOnConditionCheckFailure=ALL_OLD``)."""

    type_name = "ConditionalCheckFailedException"

    def __init__(
        self,
        message: str = "The conditional request failed",
        item: dict[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.item = item

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.message, self.item))


class ResourceNotFoundException(DynamoError):
    type_name = "ResourceNotFoundException"


class ResourceInUseException(DynamoError):
    type_name = "ResourceInUseException"


class LimitExceededException(DynamoError):
    type_name = "LimitExceededException"


class UnknownOperationException(DynamoError):
    type_name = "UnknownOperationException"
    namespace = SERVICE_NAMESPACE


class MissingAuthenticationTokenException(DynamoError):
    type_name = "MissingAuthenticationTokenException"
    namespace = SERVICE_NAMESPACE


class UnrecognizedClientException(DynamoError):
    type_name = "UnrecognizedClientException"


class InvalidSignatureException(DynamoError):
    type_name = "InvalidSignatureException"
    namespace = SERVICE_NAMESPACE


class InternalServerError(DynamoError):
    type_name = "InternalServerError"
    http_status = 500


class ServiceUnavailable(DynamoError):
    type_name = "ServiceUnavailable"
    namespace = SERVICE_NAMESPACE
    http_status = 503
