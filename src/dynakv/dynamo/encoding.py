"""Items and key values as bytes: the storage encoding, the order-preserving key encoding.

``encode_item`` / ``decode_item``: an item as msgpack (msgspec), one format
byte first, maps and sets in a deterministic order, so equal items encode to
equal bytes. The node stores these bytes as a record's opaque value.

``encode_sort_key`` / ``decode_sort_key``: a key value (S, N or B) as bytes
whose unsigned lexicographic order is DynamoDB's order of the values, so a
Query is one range scan. A type byte comes first, then:

- S and B: the UTF-8 / raw bytes with 0x00 escaped as 0x00 0xFF, then a 0x00
  terminator (FoundationDB's tuple-layer scheme): a value sorts before every
  longer value it prefixes, and the encoding is prefix-free, so other fields
  may follow it;
- N: a class byte (negative, zero, positive); for non-zero numbers the
  adjusted exponent + 130 as one byte, then the significant digits two per
  byte (pair + 1, so 1..100), then a 0x00 terminator. Because numbers are
  normalized, comparing (exponent, digits) compares magnitudes; negative
  numbers complement every byte after the class byte, reversing the order.

``check_key_value`` refuses what may not be a key value: the wrong type, an
empty string or binary, more than 2048 (partition) or 1024 (sort) bytes.

Invariants: ``decode_sort_key(encode_sort_key(v)) == v``; ``a < b`` iff
``encode_sort_key(a) < encode_sort_key(b)`` for values of one type. Must never
store anything that ``values`` would not accept.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Final

import msgspec

from dynakv.dynamo.errors import ValidationException
from dynakv.dynamo.values import (
    NUMBER_EXPONENT_MIN,
    AttributeValue,
    B,
    Item,
    N,
    S,
    value_size,
)

PARTITION_KEY_BYTES_MAX: Final = 2048
SORT_KEY_BYTES_MAX: Final = 1024
ITEM_FORMAT: Final = 1
TAG_B: Final = 0x42
TAG_N: Final = 0x4E
TAG_S: Final = 0x53
_NEGATIVE: Final = 0x01
_ZERO: Final = 0x02
_POSITIVE: Final = 0x03
_TERMINATOR: Final = 0x00
_ESCAPE: Final = 0xFF

_ITEM_ENCODER: Final = msgspec.msgpack.Encoder(order="deterministic")
_ITEM_DECODER: Final = msgspec.msgpack.Decoder(dict[str, AttributeValue])


def encode_item(item: Mapping[str, AttributeValue]) -> bytes:
    return bytes((ITEM_FORMAT,)) + _ITEM_ENCODER.encode(item)


def decode_item(data: bytes) -> Item:
    """The item ``encode_item`` stored; ``ValueError`` if the bytes are not one."""
    if not data or data[0] != ITEM_FORMAT:
        raise ValueError(f"unknown item format byte {data[:1]!r}")
    try:
        return _ITEM_DECODER.decode(memoryview(data)[1:])
    except msgspec.DecodeError as error:
        raise ValueError(f"corrupt item encoding: {error}") from None


def _escape(data: bytes) -> bytes:
    return data.replace(b"\x00", b"\x00\xff")


def _encode_number(number: Decimal) -> bytes:
    if number.is_zero():
        return bytes((TAG_N, _ZERO))
    sign, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)
    adjusted = exponent + len(digits) - 1
    body = bytearray((adjusted - NUMBER_EXPONENT_MIN,))
    for index in range(0, len(digits), 2):
        low = digits[index + 1] if index + 1 < len(digits) else 0
        body.append(digits[index] * 10 + low + 1)
    body.append(_TERMINATOR)
    if sign:
        return bytes((TAG_N, _NEGATIVE)) + bytes(0xFF - byte for byte in body)
    return bytes((TAG_N, _POSITIVE)) + bytes(body)


def encode_sort_key(value: S | N | B) -> bytes:
    """Order-preserving bytes for a key value (see the module docstring)."""
    if isinstance(value, S):
        return bytes((TAG_S,)) + _escape(value.value.encode()) + b"\x00"
    if isinstance(value, B):
        return bytes((TAG_B,)) + _escape(value.value) + b"\x00"
    return _encode_number(value.value)


def sort_key_prefix(value: S | B) -> bytes:
    """The bytes every encoding of a value beginning with ``value`` begins with."""
    if isinstance(value, S):
        return bytes((TAG_S,)) + _escape(value.value.encode())
    return bytes((TAG_B,)) + _escape(value.value)


def prefix_successor(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every string starting with ``prefix``."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return None
    return trimmed[:-1] + bytes((trimmed[-1] + 1,))


def _decode_escaped(data: bytes, start: int) -> tuple[bytes, int]:
    """The unescaped bytes from ``start`` to the terminator, and the index after it."""
    out = bytearray()
    index = start
    while True:
        end = data.index(b"\x00", index)
        out += data[index:end]
        if end + 1 < len(data) and data[end + 1] == _ESCAPE:
            out.append(0)
            index = end + 2
            continue
        return bytes(out), end + 1


def _decode_number(data: bytes) -> Decimal:
    if data[1] == _ZERO:
        return Decimal(0)
    negative = data[1] == _NEGATIVE
    body = bytes(0xFF - byte for byte in data[2:]) if negative else data[2:]
    adjusted = body[0] + NUMBER_EXPONENT_MIN
    digits: list[int] = []
    for byte in body[1 : body.index(_TERMINATOR, 1)]:
        digits.extend(divmod(byte - 1, 10))
    if digits[-1] == 0:  # the pad of an odd digit count: normalized numbers end non-zero
        digits.pop()
    return Decimal((int(negative), tuple(digits), adjusted - len(digits) + 1))


def decode_sort_key(data: bytes) -> S | N | B:
    """The value ``encode_sort_key`` encoded (data may be followed by other fields)."""
    tag = data[0]
    if tag == TAG_N:
        return N(_decode_number(data))
    raw, _ = _decode_escaped(data, 1)
    if tag == TAG_S:
        return S(raw.decode())
    if tag == TAG_B:
        return B(raw)
    raise ValueError(f"unknown sort key tag {tag:#x}")


# --- key values ---------------------------------------------------------------------------


def check_key_value(
    name: str, expected_type: str, value: AttributeValue, *, partition: bool
) -> S | N | B:
    """A key attribute's value: the schema's scalar type, non-empty, within the key limits."""
    if value.type_name != expected_type:
        raise ValidationException(
            "One or more parameter values were invalid: Type mismatch for key "
            f"{name} expected: {expected_type} actual: {value.type_name}"
        )
    assert isinstance(value, S | N | B)
    if isinstance(value, S | B) and not value.value:
        raise ValidationException(
            "One or more parameter values are not valid. The AttributeValue for a key attribute "
            f"cannot contain an empty {'string' if isinstance(value, S) else 'binary'} value. "
            f"Key: {name}"
        )
    size = value_size(value)
    if partition and size > PARTITION_KEY_BYTES_MAX:
        raise ValidationException(
            "One or more parameter values were invalid: Size of hashkey has exceeded the "
            f"maximum size limit of{PARTITION_KEY_BYTES_MAX} bytes"
        )
    if not partition and size > SORT_KEY_BYTES_MAX:
        raise ValidationException(
            "One or more parameter values were invalid: Aggregated size of all range keys has "
            f"exceeded the size limit of {SORT_KEY_BYTES_MAX} bytes"
        )
    return value
