"""DynamoDB's errors, as the service names them, and nothing else.

Each error carries ``type_name`` (the suffix of the ``__type`` field DynamoDB
puts in a 400 body, e.g. ``ValidationException``) and ``message`` (the text
DynamoDB shows, word for word where we know it). The protocol layer maps them
to HTTP; this module must never import the HTTP or node machinery.

    DynamoError                          root; never raised itself
    ├── ValidationException              the request is invalid; nothing was changed
    ├── SerializationException           the JSON does not have the shape DynamoDB expects
    └── ConditionalCheckFailedException  a condition evaluated to false; nothing was changed
"""

from __future__ import annotations

from typing import ClassVar


class DynamoError(Exception):
    """Root of the DynamoDB-facing errors."""

    type_name: ClassVar[str] = "DynamoError"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.message,))


class ValidationException(DynamoError):
    type_name = "ValidationException"


class SerializationException(DynamoError):
    type_name = "SerializationException"


class ConditionalCheckFailedException(DynamoError):
    type_name = "ConditionalCheckFailedException"

    def __init__(self, message: str = "The conditional request failed") -> None:
        super().__init__(message)
