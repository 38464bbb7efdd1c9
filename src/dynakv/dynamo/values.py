"""DynamoDB attribute values: the model, its JSON form, its limits and its size.

An attribute value is one of ten frozen msgspec Structs named after DynamoDB's
type descriptors (``S``, ``N``, ``B``, ``BOOL``, ``NULL``, ``L``, ``M``, ``SS``,
``NS``, ``BS``); an item is a ``dict[str, AttributeValue]``. ``parse_value`` /
``parse_item`` turn DynamoDB JSON (already decoded into Python objects) into
the model with DynamoDB's own ValidationException / SerializationException
messages; ``render_value`` / ``render_item`` turn it back.

Invariants, established by parsing and kept by every operation here:

- a number is a ``Decimal`` normalized exactly (no trailing zeros, zero is
  ``0``), with at most 38 significant digits and magnitude within
  1E-130 .. 9.99...9E+125; arithmetic goes through ``add_numbers`` (38-digit
  context, errors instead of rounding), never through floats;
- a set is a non-empty, sorted tuple without duplicates, so equal sets are
  equal tuples and encodings are deterministic;
- containers nest at most ``NESTING_DEPTH_MAX`` levels (a top-level value is
  level 1).

Values are treated as immutable: an ``M``'s dict is never changed after
construction (updates build new containers). Storage and key encodings live
in ``dynakv.dynamo.encoding``. This module never does I/O.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from decimal import Context, Decimal, Inexact, InvalidOperation
from typing import ClassVar, Final, TypeAlias, assert_never

import msgspec

from dynakv.dynamo.errors import SerializationException, ValidationException

NUMBER_DIGITS_MAX: Final = 38
NUMBER_EXPONENT_MAX: Final = 125  # adjusted exponent: 9.99..E+125 is the largest magnitude
NUMBER_EXPONENT_MIN: Final = -130  # 1E-130 is the smallest non-zero magnitude
NUMBER_TEXT_CHARS_MAX: Final = 1024  # longer input cannot be a valid 38-digit number anyway
NESTING_DEPTH_MAX: Final = 32
ITEM_BYTES_MAX: Final = 400 * 1024
ATTRIBUTE_NAME_BYTES_MAX: Final = 65535


class S(msgspec.Struct, frozen=True, array_like=True, tag=0):
    type_name: ClassVar[str] = "S"
    value: str


class N(msgspec.Struct, frozen=True, array_like=True, tag=1):
    type_name: ClassVar[str] = "N"
    value: Decimal


class B(msgspec.Struct, frozen=True, array_like=True, tag=2):
    type_name: ClassVar[str] = "B"
    value: bytes


class BOOL(msgspec.Struct, frozen=True, array_like=True, tag=3):
    type_name: ClassVar[str] = "BOOL"
    value: bool


class NULL(msgspec.Struct, frozen=True, array_like=True, tag=4):
    type_name: ClassVar[str] = "NULL"


class L(msgspec.Struct, frozen=True, array_like=True, tag=5):
    type_name: ClassVar[str] = "L"
    value: tuple[AttributeValue, ...]


class M(msgspec.Struct, frozen=True, array_like=True, tag=6):
    type_name: ClassVar[str] = "M"
    value: dict[str, AttributeValue]


class SS(msgspec.Struct, frozen=True, array_like=True, tag=7):
    type_name: ClassVar[str] = "SS"
    value: tuple[str, ...]


class NS(msgspec.Struct, frozen=True, array_like=True, tag=8):
    type_name: ClassVar[str] = "NS"
    value: tuple[Decimal, ...]


class BS(msgspec.Struct, frozen=True, array_like=True, tag=9):
    type_name: ClassVar[str] = "BS"
    value: tuple[bytes, ...]


AttributeValue: TypeAlias = S | N | B | BOOL | NULL | L | M | SS | NS | BS
SetValue: TypeAlias = SS | NS | BS
Item: TypeAlias = dict[str, AttributeValue]

TYPE_NAMES: Final = frozenset({"S", "N", "B", "BOOL", "NULL", "L", "M", "SS", "NS", "BS"})
NULL_VALUE: Final = NULL()

# Exact arithmetic or an error: DynamoDB refuses results it cannot hold in 38 digits. Only
# Inexact is an error: Rounded alone means trailing zeros were dropped (1E38 + 0), which is exact.
_ARITHMETIC: Final = Context(prec=NUMBER_DIGITS_MAX, traps=[Inexact, InvalidOperation])
_NUMBER_SYNTAX: Final = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_ZERO: Final = Decimal(0)
_PLAIN_NUMBER_CHARS_MAX: Final = 48


# --- numbers ---------------------------------------------------------------------------


def parse_number(text: str) -> Decimal:
    """DynamoDB's number syntax (no NaN, Infinity, spaces or underscores), normalized."""
    if len(text) > NUMBER_TEXT_CHARS_MAX or _NUMBER_SYNTAX.fullmatch(text) is None:
        raise ValidationException(f"The parameter cannot be converted to a numeric value: {text}")
    try:
        number = Decimal(text)
    except InvalidOperation:  # an exponent beyond what Decimal can hold
        raise ValidationException(
            f"The parameter cannot be converted to a numeric value: {text}"
        ) from None
    return normalize_number(number)


def normalize_number(number: Decimal) -> Decimal:
    """Strip trailing zeros exactly and check DynamoDB's precision and magnitude limits."""
    if not number.is_finite():
        raise ValidationException(f"The parameter cannot be converted to a numeric value: {number}")
    if number.is_zero():
        return _ZERO
    sign, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)
    end = len(digits)
    while digits[end - 1] == 0:
        end -= 1
    exponent += len(digits) - end
    digits = digits[:end]
    adjusted = exponent + len(digits) - 1
    if adjusted > NUMBER_EXPONENT_MAX:
        raise ValidationException(
            "Number overflow. Attempting to store a number with magnitude larger than "
            "supported range"
        )
    if adjusted < NUMBER_EXPONENT_MIN:
        raise ValidationException(
            "Number underflow. Attempting to store a number with magnitude smaller than "
            "supported range"
        )
    if len(digits) > NUMBER_DIGITS_MAX:
        raise ValidationException("Attempting to store more than 38 significant digits in a Number")
    return Decimal((sign, digits, exponent))


def add_numbers(left: Decimal, right: Decimal) -> Decimal:
    """``left + right`` exactly within 38 digits, or DynamoDB's overflow error."""
    try:
        total = _ARITHMETIC.add(left, right)
    except Inexact:
        # DynamoDB reports a result needing more than 38 digits as an overflow too.
        raise ValidationException(
            "Number overflow. Attempting to store a number with magnitude larger than "
            "supported range"
        ) from None
    return normalize_number(total)


def format_number(number: Decimal) -> str:
    """The canonical text of a normalized number: plain when short, else scientific."""
    plain = format(number, "f")
    if len(plain) <= _PLAIN_NUMBER_CHARS_MAX:
        return plain
    return format(number, "E")


def compare_ordered(left: AttributeValue, right: AttributeValue) -> int | None:
    """-1, 0 or 1 for two S, two N or two B values in DynamoDB's order; None for other pairs.

    Strings compare by code point, which is the order of their UTF-8 bytes;
    binaries compare as unsigned bytes.
    """
    if isinstance(left, S) and isinstance(right, S):
        return (left.value > right.value) - (left.value < right.value)
    if isinstance(left, N) and isinstance(right, N):
        return (left.value > right.value) - (left.value < right.value)
    if isinstance(left, B) and isinstance(right, B):
        return (left.value > right.value) - (left.value < right.value)
    return None


# --- parsing DynamoDB JSON ---------------------------------------------------------------


def _json_kind(payload: object) -> str:
    if payload is None:
        return "NULL_VALUE"
    if isinstance(payload, bool):
        return "TRUE_VALUE" if payload else "FALSE_VALUE"
    if isinstance(payload, int | float):
        return "NUMBER_VALUE"
    if isinstance(payload, str):
        return "STRING_VALUE"
    if isinstance(payload, list):
        return "START_ARRAY"
    return "START_OBJECT"


def _expect_str(payload: object, target: str = "String") -> str:
    if not isinstance(payload, str):
        raise SerializationException(f"{_json_kind(payload)} cannot be converted to {target}")
    return payload


def _expect_list(payload: object) -> list[object]:
    if not isinstance(payload, list):
        raise SerializationException(f"{_json_kind(payload)} cannot be converted to List")
    return payload


def _decode_base64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SerializationException(
            f"Base64 encoded length is expected a multiple of 4 bytes but found: {len(text)}"
            if len(text) % 4
            else "Invalid Base64 encoding in a binary value"
        ) from None


def _check_set(type_word: str, texts: list[str], unique_count: int) -> None:
    if not texts:
        raise ValidationException(
            f"One or more parameter values were invalid: An {type_word} set  may not be empty"
        )
    if unique_count != len(texts):
        raise ValidationException(
            "One or more parameter values were invalid: Input collection "
            f"[{', '.join(texts)}] contains duplicates."
        )


def _parse_set(type_name: str, payload: object) -> SetValue:
    texts = [_expect_str(element) for element in _expect_list(payload)]
    if type_name == "SS":
        strings = sorted(set(texts))
        _check_set("string", texts, len(strings))
        return SS(tuple(strings))
    if type_name == "NS":
        numbers = sorted({parse_number(text) for text in texts})
        _check_set("number", texts, len(numbers))
        return NS(tuple(numbers))
    blobs = sorted({_decode_base64(text) for text in texts})
    _check_set("binary", texts, len(blobs))
    return BS(tuple(blobs))


def _parse_container(type_name: str, payload: object, depth: int) -> L | M:
    if depth >= NESTING_DEPTH_MAX:
        raise ValidationException("Nesting Levels have exceeded supported limits")
    if type_name == "L":
        return L(tuple(_parse(element, depth + 1) for element in _expect_list(payload)))
    if not isinstance(payload, dict):
        raise SerializationException(f"{_json_kind(payload)} cannot be converted to Map")
    return M({_expect_str(name): _parse(element, depth + 1) for name, element in payload.items()})


def _parse(payload: object, depth: int) -> AttributeValue:
    if not isinstance(payload, dict):
        raise SerializationException(f"{_json_kind(payload)} cannot be converted to AttributeValue")
    # Like the service, ignore unknown members and members set to null.
    members = [(name, inner) for name, inner in payload.items() if name in TYPE_NAMES]
    members = [(name, inner) for name, inner in members if inner is not None]
    if not members:
        raise ValidationException(
            "Supplied AttributeValue is empty, must contain exactly one of the supported datatypes"
        )
    if len(members) > 1:
        raise ValidationException(
            "Supplied AttributeValue has more than one datatypes set, must contain exactly one "
            "of the supported datatypes"
        )
    type_name, inner = members[0]
    if type_name == "S":
        return S(_expect_str(inner))
    if type_name == "N":
        return N(parse_number(_expect_str(inner)))
    if type_name == "B":
        return B(_decode_base64(_expect_str(inner)))
    if type_name == "BOOL":
        if not isinstance(inner, bool):
            raise SerializationException(f"{_json_kind(inner)} cannot be converted to Boolean")
        return BOOL(inner)
    if type_name == "NULL":
        if inner is not True:
            raise ValidationException(
                "One or more parameter values were invalid: Null attribute value types must "
                "have the value of true"
            )
        return NULL_VALUE
    if type_name in ("L", "M"):
        return _parse_container(type_name, inner, depth)
    return _parse_set(type_name, inner)


def parse_value(payload: object) -> AttributeValue:
    """One attribute value from DynamoDB JSON (``{"S": "x"}``), validated."""
    return _parse(payload, 1)


def parse_item(payload: object) -> Item:
    """An item (attribute name -> DynamoDB JSON value), validated; its size is not checked."""
    if not isinstance(payload, dict):
        raise SerializationException(f"{_json_kind(payload)} cannot be converted to Map")
    item: Item = {}
    for name, value in payload.items():
        check_attribute_name(_expect_str(name))
        item[name] = _parse(value, 1)
    return item


def check_attribute_name(name: str) -> None:
    if not name:
        raise ValidationException(
            "One or more parameter values were invalid: An attribute name may not be empty"
        )
    if len(name) * 4 > ATTRIBUTE_NAME_BYTES_MAX and len(name.encode()) > ATTRIBUTE_NAME_BYTES_MAX:
        raise ValidationException(
            "One or more parameter values were invalid: An attribute name exceeds the "
            f"maximum length of {ATTRIBUTE_NAME_BYTES_MAX} bytes"
        )


# --- rendering ----------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def render_value(value: AttributeValue) -> dict[str, object]:
    """The DynamoDB JSON form of ``value`` (before ``json.dumps``)."""
    if isinstance(value, S | BOOL):
        return {value.type_name: value.value}
    if isinstance(value, N):
        return {"N": format_number(value.value)}
    if isinstance(value, B):
        return {"B": _b64(value.value)}
    if isinstance(value, NULL):
        return {"NULL": True}
    if isinstance(value, L):
        return {"L": [render_value(element) for element in value.value]}
    if isinstance(value, M):
        return {"M": {name: render_value(element) for name, element in value.value.items()}}
    if isinstance(value, SS):
        return {"SS": list(value.value)}
    if isinstance(value, NS):
        return {"NS": [format_number(number) for number in value.value]}
    if isinstance(value, BS):
        return {"BS": [_b64(blob) for blob in value.value]}
    assert_never(value)


def render_item(item: Mapping[str, AttributeValue]) -> dict[str, object]:
    return {name: render_value(value) for name, value in item.items()}


def describe(value: AttributeValue) -> str:
    """DynamoDB's short form in error messages: ``{N:5}``."""
    rendered = render_value(value)[value.type_name]
    return f"{{{value.type_name}:{rendered}}}"


# --- size ---------------------------------------------------------------------------------


def number_size(number: Decimal) -> int:
    """About one byte per two significant digits, plus one (DynamoDB's documented rule)."""
    digits = len(number.as_tuple().digits)
    return (digits + 1) // 2 + 1


def value_size(value: AttributeValue) -> int:
    """Bytes ``value`` counts toward the item size limit, as DynamoDB documents it."""
    if isinstance(value, S):
        return len(value.value.encode())
    if isinstance(value, N):
        return number_size(value.value)
    if isinstance(value, B):
        return len(value.value)
    if isinstance(value, BOOL | NULL):
        return 1
    if isinstance(value, L):
        return 3 + sum(value_size(element) + 1 for element in value.value)
    if isinstance(value, M):
        return 3 + sum(
            len(name.encode()) + value_size(element) + 1 for name, element in value.value.items()
        )
    if isinstance(value, SS):
        return sum(len(element.encode()) for element in value.value)
    if isinstance(value, NS):
        return sum(number_size(number) for number in value.value)
    if isinstance(value, BS):
        return sum(len(blob) for blob in value.value)
    assert_never(value)


def value_depth(value: AttributeValue) -> int:
    """Nesting levels of ``value``: 1 for a scalar or a set, one more per container level."""
    if isinstance(value, L):
        return 1 + max((value_depth(element) for element in value.value), default=0)
    if isinstance(value, M):
        return 1 + max((value_depth(element) for element in value.value.values()), default=0)
    return 1


def item_size(item: Mapping[str, AttributeValue]) -> int:
    return sum(len(name.encode()) + value_size(value) for name, value in item.items())


def check_item_size(
    item: Mapping[str, AttributeValue], *, updating: bool = False, limit_bytes: int = ITEM_BYTES_MAX
) -> int:
    """The item's size, or DynamoDB's error when it is over ``limit_bytes``."""
    size = item_size(item)
    if size > limit_bytes:
        if updating:
            raise ValidationException("Item size to update has exceeded the maximum allowed size")
        raise ValidationException("Item size has exceeded the maximum allowed size")
    return size
