"""Attribute values: DynamoDB JSON in and out, the number rules, sets, limits, size, encodings."""

from __future__ import annotations

import base64
from decimal import Decimal

import pytest

from dynakv.dynamo.encoding import (
    check_key_value,
    decode_item,
    decode_sort_key,
    encode_item,
    encode_sort_key,
    prefix_successor,
    sort_key_prefix,
)
from dynakv.dynamo.errors import SerializationException, ValidationException
from dynakv.dynamo.values import (
    BOOL,
    BS,
    ITEM_BYTES_MAX,
    NS,
    NULL_VALUE,
    SS,
    B,
    L,
    M,
    N,
    S,
    add_numbers,
    check_item_size,
    describe,
    format_number,
    item_size,
    parse_item,
    parse_number,
    parse_value,
    render_item,
    render_value,
    value_size,
)

EVERY_TYPE = {
    "s": {"S": "hello"},
    "empty_s": {"S": ""},
    "n": {"N": "-12.5"},
    "b": {"B": base64.b64encode(b"\x00\xffbin").decode()},
    "empty_b": {"B": ""},
    "t": {"BOOL": True},
    "f": {"BOOL": False},
    "null": {"NULL": True},
    "l": {"L": [{"S": "x"}, {"N": "1"}, {"L": []}, {"M": {}}]},
    "m": {"M": {"inner": {"SS": ["b", "a"]}, "k": {"NULL": True}}},
    "ss": {"SS": ["z", "a", ""]},
    "ns": {"NS": ["3", "-1", "2.5"]},
    "bs": {"BS": [base64.b64encode(b"b").decode(), base64.b64encode(b"a").decode()]},
}


def test_every_type_round_trips_through_dynamodb_json() -> None:
    item = parse_item(EVERY_TYPE)
    assert item["s"] == S("hello")
    assert item["n"] == N(Decimal("-12.5"))
    assert item["b"] == B(b"\x00\xffbin")
    assert item["null"] == NULL_VALUE
    assert item["t"] == BOOL(True)
    assert item["ss"] == SS(("", "a", "z"))  # sets are stored sorted
    assert item["ns"] == NS((Decimal(-1), Decimal("2.5"), Decimal(3)))
    assert item["bs"] == BS((b"a", b"b"))
    assert parse_item(render_item(item)) == item
    assert render_value(item["l"]) == EVERY_TYPE["l"]


def test_types_are_distinct_even_when_python_says_equal() -> None:
    assert BOOL(True) != N(Decimal(1))
    assert S("1") != N(Decimal(1))
    assert SS(("a",)) != L((S("a"),))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3", "3"),
        ("+3", "3"),
        (".123", "0.123"),
        ("0001.23", "1.23"),
        ("1e+5", "100000"),
        ("1.50", "1.5"),
        ("-17.4E37", "-174000000000000000000000000000000000000"),
        ("0e1000", "0"),
        ("-0", "0"),
        ("1E-130", format_number(Decimal("1E-130"))),
    ],
)
def test_numbers_are_accepted_and_normalized(text: str, expected: str) -> None:
    number = parse_number(text)
    assert format_number(number) == expected
    assert Decimal(expected) == Decimal(text)


@pytest.mark.parametrize(
    "text", ["NaN", "Infinity", "-Infinity", "dog", " 1", "1 ", "1_000", "", "1e"]
)
def test_non_numbers_are_refused_with_dynamodbs_message(text: str) -> None:
    with pytest.raises(ValidationException, match="cannot be converted to a numeric value"):
        parse_number(text)


def test_number_limits() -> None:
    assert parse_number("9.9999999999999999999999999999999999999E+125")
    assert parse_number("-1E-130") == Decimal("-1E-130")
    assert parse_number("31415926535897932384626433832795028841e30")  # 38 digits
    with pytest.raises(ValidationException, match="Number overflow"):
        parse_number("1E126")
    with pytest.raises(ValidationException, match="Number overflow"):
        parse_number("-11e125")
    with pytest.raises(ValidationException, match="Number underflow"):
        parse_number("0.9e-130")
    with pytest.raises(ValidationException, match="more than 38 significant digits"):
        parse_number("3.14159265358979323846264338327950288419")
    # trailing zeros are not significant
    assert parse_number("1" + "0" * 100) == Decimal("1E100")


def test_long_numbers_render_in_scientific_notation() -> None:
    assert format_number(Decimal("1E+125")) == "1E+125"
    assert format_number(Decimal("-1.5E-100")) == "-1.5E-100"
    assert Decimal(format_number(Decimal("1E+125"))) == Decimal("1E+125")


def test_arithmetic_is_exact_within_38_digits_or_an_error() -> None:
    assert add_numbers(Decimal(1), Decimal("1E22")) == Decimal("10000000000000000000001")
    big = Decimal("12345678901234567890123456789012345678")
    assert add_numbers(big, Decimal(0)) == big
    with pytest.raises(ValidationException, match="Number overflow"):
        add_numbers(Decimal("1E50"), Decimal(1))  # needs 51 digits
    with pytest.raises(ValidationException, match="Number overflow"):
        add_numbers(Decimal("9E125"), Decimal("9E125"))
    assert add_numbers(Decimal("1.5"), Decimal("-1.5")) == 0


@pytest.mark.parametrize(
    ("payload", "error", "message"),
    [
        ({}, ValidationException, "Supplied AttributeValue is empty"),
        ({"X": "1"}, ValidationException, "Supplied AttributeValue is empty"),
        ({"S": None}, ValidationException, "Supplied AttributeValue is empty"),
        ({"S": "a", "N": "1"}, ValidationException, "more than one datatypes"),
        ({"N": 123}, SerializationException, "NUMBER_VALUE cannot be converted to String"),
        ({"S": 5}, SerializationException, "NUMBER_VALUE cannot be converted to String"),
        ({"BOOL": "true"}, SerializationException, "cannot be converted to Boolean"),
        ({"NULL": False}, ValidationException, "Null attribute value types must have the value"),
        ({"B": "abc"}, SerializationException, "multiple of 4"),
        ({"SS": []}, ValidationException, "An string set  may not be empty"),
        ({"NS": []}, ValidationException, "An number set  may not be empty"),
        ({"BS": []}, ValidationException, "An binary set  may not be empty"),
        ({"SS": ["a", "a"]}, ValidationException, r"Input collection \[a, a\] contains duplicates"),
        ({"NS": ["1", "1.0"]}, ValidationException, "contains duplicates"),
        ({"L": {}}, SerializationException, "cannot be converted to List"),
        ("S", SerializationException, "cannot be converted to AttributeValue"),
    ],
)
def test_malformed_values_get_dynamodbs_errors(
    payload: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        parse_value(payload)


def _nested(depth: int) -> dict[str, object]:
    value: dict[str, object] = {"S": "leaf"}
    for _ in range(depth - 1):
        value = {"L": [value]}
    return value


def test_nesting_is_limited_to_32_levels() -> None:
    assert isinstance(parse_value(_nested(32)), L)
    with pytest.raises(ValidationException, match="Nesting Levels have exceeded supported limits"):
        parse_value(_nested(33))


def test_attribute_names_may_not_be_empty() -> None:
    with pytest.raises(ValidationException, match="may not be empty"):
        parse_item({"": {"S": "x"}})


def test_sizes_follow_the_documented_rules() -> None:
    assert value_size(S("héllo")) == 6  # UTF-8 bytes
    assert value_size(N(Decimal("123"))) == 3  # two digits per byte, plus one
    assert value_size(N(Decimal("1"))) == 2
    assert value_size(N(Decimal("1234"))) == 3
    assert value_size(B(b"\x00" * 10)) == 10
    assert value_size(BOOL(False)) == value_size(NULL_VALUE) == 1
    assert value_size(L(())) == value_size(M({})) == 3
    assert value_size(L((S("ab"), S("c")))) == 3 + (2 + 1) + (1 + 1)
    assert value_size(M({"key": S("ab")})) == 3 + 3 + 2 + 1
    assert value_size(SS(("ab", "c"))) == 3
    assert item_size({"name": S("ab"), "n": N(Decimal(7))}) == (4 + 2) + (1 + 2)


def test_item_size_limit() -> None:
    name = "a"
    fits = {name: S("x" * (ITEM_BYTES_MAX - len(name)))}
    assert check_item_size(fits) == ITEM_BYTES_MAX
    too_big = {name: S("x" * (ITEM_BYTES_MAX - len(name) + 1))}
    with pytest.raises(
        ValidationException, match=r"^Item size has exceeded the maximum allowed size$"
    ):
        check_item_size(too_big)
    with pytest.raises(ValidationException, match="Item size to update has exceeded"):
        check_item_size(too_big, updating=True)


def test_key_values() -> None:
    assert check_key_value("p", "S", S("x"), partition=True) == S("x")
    with pytest.raises(ValidationException, match="Type mismatch for key p expected: S actual: N"):
        check_key_value("p", "S", N(Decimal(1)), partition=True)
    with pytest.raises(ValidationException, match=r"cannot contain an empty string value\. Key: p"):
        check_key_value("p", "S", S(""), partition=True)
    check_key_value("p", "B", B(b"x" * 2048), partition=True)
    with pytest.raises(ValidationException, match="Size of hashkey has exceeded"):
        check_key_value("p", "B", B(b"x" * 2049), partition=True)
    with pytest.raises(ValidationException, match="Aggregated size of all range keys"):
        check_key_value("c", "S", S("x" * 1025), partition=False)


def test_describe_is_dynamodbs_short_form() -> None:
    assert describe(N(Decimal(5))) == "{N:5}"
    assert describe(S("dog")) == "{S:dog}"


def test_item_encoding_round_trips_and_is_deterministic() -> None:
    item = parse_item(EVERY_TYPE)
    assert decode_item(encode_item(item)) == item
    reordered = dict(reversed(list(item.items())))
    inner = item["m"]
    assert isinstance(inner, M)
    reordered["m"] = M(dict(reversed(list(inner.value.items()))))
    assert reordered == item
    assert encode_item(reordered) == encode_item(item)


@pytest.mark.parametrize("data", [b"", b"\x02\x80", b"\x01\xc1", b"\x01\x81\xa1a\x92\x63\x01"])
def test_corrupt_item_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(ValueError, match="item"):
        decode_item(data)


def test_sort_key_encoding_orders_strings_with_prefixes_first() -> None:
    ordered = ["", "a", "a\x00", "a\x00\x00", "a\x01", "ab", "b", "é"]
    encoded = [encode_sort_key(S(text)) for text in ordered]
    assert encoded == sorted(encoded)
    assert [decode_sort_key(data) for data in encoded] == [S(text) for text in ordered]


def test_sort_key_encoding_orders_numbers() -> None:
    texts = [
        "-1E+125",
        "-100",
        "-1.5",
        "-1.25",
        "-1",
        "-1E-130",
        "0",
        "1E-130",
        "0.5",
        "1",
        "1.25",
        "1.5",
        "10",
        "100",
        "9.9999999999999999999999999999999999999E+125",
    ]
    numbers = [parse_number(text) for text in texts]
    assert numbers == sorted(numbers)
    encoded = [encode_sort_key(N(number)) for number in numbers]
    assert encoded == sorted(encoded)
    assert [decode_sort_key(data) for data in encoded] == [N(number) for number in numbers]


def test_sort_key_prefix_range_covers_exactly_the_prefixed_values() -> None:
    prefix = sort_key_prefix(S("ab"))
    upper = prefix_successor(prefix)
    assert upper is not None
    for text, inside in [
        ("ab", True),
        ("abc", True),
        ("ab\x00", True),
        ("a", False),
        ("ac", False),
    ]:
        data = encode_sort_key(S(text))
        assert (prefix <= data < upper) is inside, text
    assert prefix_successor(b"\xff\xff") is None
    assert prefix_successor(b"a\xff") == b"b"
