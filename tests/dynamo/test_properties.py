"""Properties against dumb reference models: key encoding order, value round trips, number
arithmetic, and condition / update evaluation of random expressions rendered as text."""

from __future__ import annotations

from decimal import Context, Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynakv.dynamo.encoding import (
    decode_item,
    decode_sort_key,
    encode_item,
    encode_sort_key,
    prefix_successor,
    sort_key_prefix,
)
from dynakv.dynamo.errors import ValidationException
from dynakv.dynamo.expressions import SortCondition, SortOperator
from dynakv.dynamo.values import (
    BOOL,
    BS,
    NS,
    NULL_VALUE,
    SS,
    AttributeValue,
    B,
    L,
    M,
    N,
    S,
    add_numbers,
    format_number,
    normalize_number,
    parse_number,
    parse_value,
    render_value,
)
from tests.dynamo import check, item, updated

# --- strategies -----------------------------------------------------------------------------

numbers = st.builds(
    lambda sign, digits, exponent: normalize_number(
        Decimal((sign, tuple(int(d) for d in digits.rstrip("0") or "1"), exponent))
    ),
    st.integers(0, 1),
    st.text("0123456789", min_size=1, max_size=38).filter(lambda text: text[0] != "0"),
    st.integers(-130, 125 - 37),
).filter(lambda number: number.adjusted() <= 125) | st.just(Decimal(0))
texts = st.text(max_size=12)
blobs = st.binary(max_size=12)
scalars = st.one_of(
    texts.map(S),
    numbers.map(N),
    blobs.map(B),
    st.booleans().map(BOOL),
    st.just(NULL_VALUE),
    st.sets(texts, min_size=1, max_size=4).map(lambda s: SS(tuple(sorted(s)))),
    st.sets(numbers, min_size=1, max_size=4).map(lambda s: NS(tuple(sorted(s)))),
    st.sets(blobs, min_size=1, max_size=4).map(lambda s: BS(tuple(sorted(s)))),
)
attribute_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4).map(lambda xs: L(tuple(xs)))
        | st.dictionaries(st.text(min_size=1, max_size=4), inner, max_size=4).map(M)
    ),
    max_leaves=12,
)


# --- key encoding ---------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.lists(numbers, min_size=2, max_size=8))
def test_number_encoding_sorts_like_the_numbers(values: list[Decimal]) -> None:
    encoded = {value: encode_sort_key(N(value)) for value in values}
    assert sorted(values, key=lambda value: encoded[value]) == sorted(values)
    for value, data in encoded.items():
        assert decode_sort_key(data) == N(value)
        assert decode_sort_key(data + b"trailing") == N(value)  # self-delimiting


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.text(max_size=8), min_size=2, max_size=8), st.lists(blobs, min_size=2, max_size=8)
)
def test_string_and_binary_encodings_sort_like_their_bytes(
    strings: list[str], binaries: list[bytes]
) -> None:
    assert sorted(strings, key=lambda s: encode_sort_key(S(s))) == sorted(strings, key=str.encode)
    assert sorted(binaries, key=lambda b: encode_sort_key(B(b))) == sorted(binaries)
    for text in strings:
        assert decode_sort_key(encode_sort_key(S(text)) + b"\x00\x01") == S(text)
    for blob in binaries:
        assert decode_sort_key(encode_sort_key(B(blob))) == B(blob)


@settings(max_examples=300, deadline=None)
@given(blobs, st.lists(blobs, max_size=10))
def test_a_prefix_range_holds_exactly_the_values_with_that_prefix(
    prefix: bytes, values: list[bytes]
) -> None:
    lower = sort_key_prefix(B(prefix))
    upper = prefix_successor(lower)
    for value in [*values, prefix, prefix + b"\x00", prefix + b"\xff"]:
        data = encode_sort_key(B(value))
        inside = lower <= data and (upper is None or data < upper)
        assert inside is value.startswith(prefix)


sort_operators = st.sampled_from(list(SortOperator))


@settings(max_examples=300, deadline=None)
@given(sort_operators, st.lists(st.integers(-50, 50), min_size=2, max_size=2), st.integers(-60, 60))
def test_a_numeric_key_range_agrees_with_the_condition(
    operator: SortOperator, bounds: list[int], probe: int
) -> None:
    if operator is SortOperator.BEGINS_WITH:
        return
    low, high = sorted(bounds)
    values = (
        (N(Decimal(low)), N(Decimal(high)))
        if operator is SortOperator.BETWEEN
        else (N(Decimal(low)),)
    )
    condition = SortCondition(operator, values)
    value = N(Decimal(probe))
    assert condition.key_range().contains(encode_sort_key(value)) is condition.matches(value)


@settings(max_examples=300, deadline=None)
@given(
    sort_operators,
    st.lists(st.text("ab\x00é", max_size=4), min_size=2, max_size=2),
    st.text("ab\x00é", max_size=5),
)
def test_a_string_key_range_agrees_with_the_condition(
    operator: SortOperator, bounds: list[str], probe: str
) -> None:
    low, high = sorted(bounds, key=str.encode)
    values = (S(low), S(high)) if operator is SortOperator.BETWEEN else (S(low),)
    condition = SortCondition(operator, values)
    assert condition.key_range().contains(encode_sort_key(S(probe))) is condition.matches(S(probe))


# --- values and numbers --------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=6), attribute_values, max_size=5))
def test_values_round_trip_through_json_and_storage(values: dict[str, AttributeValue]) -> None:
    for value in values.values():
        assert parse_value(render_value(value)) == value
    data = encode_item(values)
    assert decode_item(data) == values
    assert encode_item(dict(reversed(list(values.items())))) == data


@settings(max_examples=300, deadline=None)
@given(numbers)
def test_number_text_round_trips(number: Decimal) -> None:
    assert parse_number(format_number(number)) == number
    assert parse_number(str(number)) == number


_EXACT = Context(prec=1000, Emax=10**6, Emin=-(10**6))


@settings(max_examples=300, deadline=None)
@given(numbers, numbers)
def test_addition_is_exact_or_refused(left: Decimal, right: Decimal) -> None:
    exact = _EXACT.add(left, right)
    try:
        expected = normalize_number(exact)
    except ValidationException:
        expected = None
    if expected is None:
        with pytest.raises(ValidationException):
            add_numbers(left, right)
    else:
        assert add_numbers(left, right) == expected == exact


# --- conditions against a reference evaluator ----------------------------------------------

NAMES = ("a", "b", "c")
plain = st.one_of(st.integers(-3, 3), st.sampled_from(["", "a", "ab", "b"]))
flat_items = st.dictionaries(st.sampled_from(NAMES), plain, max_size=3)
comparators = ("=", "<>", "<", "<=", ">", ">=")

leaves = st.one_of(
    st.tuples(
        st.just("cmp"),
        st.sampled_from(comparators),
        st.sampled_from(NAMES),
        st.one_of(
            st.tuples(st.just("val"), plain), st.tuples(st.just("attr"), st.sampled_from(NAMES))
        ),
    ),
    st.tuples(st.just("between"), st.sampled_from(NAMES), st.integers(-3, 3), st.integers(0, 3)),
    st.tuples(st.just("in"), st.sampled_from(NAMES), st.lists(plain, min_size=1, max_size=3)),
    st.tuples(st.just("exists"), st.sampled_from(NAMES), st.booleans()),
    st.tuples(st.just("begins"), st.sampled_from(NAMES), st.sampled_from(["a", "b", "ab"])),
)
trees = st.recursive(
    leaves,
    lambda inner: (
        st.tuples(st.just("not"), inner) | st.tuples(st.sampled_from(["and", "or"]), inner, inner)
    ),
    max_leaves=8,
)
_PRECEDENCE = {"or": 1, "and": 2, "not": 3}


class _Render:
    def __init__(self, parenthesize: list[bool]) -> None:
        self.values: dict[str, object] = {}
        self.parenthesize = parenthesize

    def constant(self, python: object) -> str:
        name = f":v{len(self.values)}"
        self.values[name] = python
        return name

    def __call__(self, tree: Any, parent: int = 0) -> str:
        kind = tree[0]
        own = _PRECEDENCE.get(kind, 4)
        if kind == "cmp":
            rhs = self.constant(tree[3][1]) if tree[3][0] == "val" else tree[3][1]
            text = f"{tree[2]} {tree[1]} {rhs}"
        elif kind == "between":
            low, high = tree[2], tree[2] + tree[3]
            text = f"{tree[1]} BETWEEN {self.constant(low)} AND {self.constant(high)}"
        elif kind == "in":
            text = f"{tree[1]} IN ({', '.join(self.constant(v) for v in tree[2])})"
        elif kind == "exists":
            text = f"attribute_{'' if tree[2] else 'not_'}exists({tree[1]})"
        elif kind == "begins":
            text = f"begins_with({tree[1]}, {self.constant(tree[2])})"
        elif kind == "not":
            text = f"NOT {self(tree[1], own)}"
        else:
            text = f"{self(tree[1], own)} {kind.upper()} {self(tree[2], own + 1)}"
        extra = self.parenthesize.pop() if self.parenthesize else False
        return f"({text})" if own < parent or extra else text


def _same_type(left: object, right: object) -> bool:
    return (
        left is not None and right is not None and isinstance(left, int) == isinstance(right, int)
    )


def _reference(tree: Any, target: dict[str, object]) -> bool:
    kind = tree[0]
    if kind == "not":
        return not _reference(tree[1], target)
    if kind in ("and", "or"):
        results = [_reference(tree[1], target), _reference(tree[2], target)]
        return all(results) if kind == "and" else any(results)
    left = target.get(tree[1]) if kind != "cmp" else target.get(tree[2])
    if kind == "exists":
        return (left is not None) is tree[2]
    if kind == "begins":
        return isinstance(left, str) and left.startswith(tree[2])
    if kind == "in":
        return any(_same_type(left, v) and left == v for v in tree[2])
    if kind == "between":
        return _same_type(left, 0) and tree[2] <= left <= tree[2] + tree[3]  # type: ignore[operator]
    right = tree[3][1] if tree[3][0] == "val" else target.get(tree[3][1])
    equal = _same_type(left, right) and left == right
    if tree[1] == "=":
        return equal
    if tree[1] == "<>":
        return not equal
    if not _same_type(left, right):
        return False
    return {"<": left < right, "<=": left <= right, ">": left > right, ">=": left >= right}[tree[1]]  # type: ignore[operator]


@settings(max_examples=400, deadline=None)
@given(trees, flat_items, st.lists(st.booleans(), max_size=10))
def test_conditions_agree_with_a_reference_evaluator(
    tree: Any, target: dict[str, object], parens: list[bool]
) -> None:
    render = _Render(parens)
    text = render(tree)
    assert check(text, item(**target), render.values) is _reference(tree, target), text


# --- updates against a reference ---------------------------------------------------------------

UPDATE_NAMES = ("a", "b", "c", "d")
actions = st.tuples(
    st.sampled_from(["set", "set_plus", "remove", "add"]),
    st.sampled_from(UPDATE_NAMES),
    st.integers(-5, 5),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(actions, min_size=1, max_size=4, unique_by=lambda action: action[1]),
    st.dictionaries(
        st.sampled_from(UPDATE_NAMES), st.one_of(st.integers(-5, 5), st.just("s")), max_size=4
    ),
)
def test_top_level_updates_agree_with_a_reference(
    chosen: list[tuple[str, str, int]], target: dict[str, object]
) -> None:
    clauses: dict[str, list[str]] = {"SET": [], "REMOVE": [], "ADD": []}
    values: dict[str, object] = {}
    expected: dict[str, object] | None = dict(target)
    for index, (kind, name, number) in enumerate(chosen):
        placeholder = f":v{index}"
        source = UPDATE_NAMES[(UPDATE_NAMES.index(name) + 1) % len(UPDATE_NAMES)]
        if kind == "set":
            clauses["SET"].append(f"{name} = {placeholder}")
            values[placeholder] = number
        elif kind == "set_plus":
            clauses["SET"].append(f"{name} = {source} + {placeholder}")
            values[placeholder] = number
        elif kind == "remove":
            clauses["REMOVE"].append(name)
        else:
            clauses["ADD"].append(f"{name} {placeholder}")
            values[placeholder] = number
        if expected is None:
            continue
        current, read = target.get(name), target.get(source)  # right-hand sides read the old item
        if kind == "set":
            expected[name] = number
        elif kind == "remove":
            expected.pop(name, None)
        elif kind == "set_plus":
            expected = None if not isinstance(read, int) else {**expected, name: read + number}
        else:
            expected = (
                None if isinstance(current, str) else {**expected, name: (current or 0) + number}
            )
    text = " ".join(f"{clause} {', '.join(parts)}" for clause, parts in clauses.items() if parts)
    if expected is None:
        with pytest.raises(ValidationException):
            updated(text, item(**target), values or None)
    else:
        assert updated(text, item(**target), values or None) == item(**expected), text
