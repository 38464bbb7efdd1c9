"""Condition, projection and key condition expressions: syntax, semantics, limits, messages."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest

from dynakv.dynamo.errors import ValidationException
from dynakv.dynamo.expressions import (
    ExpressionKind,
    KeyAttribute,
    KeyQuery,
    KeySchema,
    SortOperator,
    Substitutions,
    ast,
    compile_condition,
    compile_key_condition,
    parse_condition,
)
from dynakv.dynamo.expressions import parser as parser_module
from dynakv.dynamo.values import B, N, S
from tests.dynamo import check, item, projected, substitutions

ITEM = item(
    a=1,
    b=2,
    c=3,
    s="hello",
    bin=b"hi there",
    l=[2, "dog", 7],
    m={"x": 2, "y": {"z": 1}},
    ns={2, 4, 7},
    ss={"a", "b"},
    t=True,
    nul=None,
    e=["hi", {1, 2}, [3, 4]],
)


# --- syntax ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "a < b aNd b < c",
        "a < b oR c < b",
        "nOt c < b",
        "b bEtWeEn a AnD c",
        "a iN (b, c)",
        "  a<b  ",
        "a.#n[1] = :v",
        "#_ = :v",
        "#123 = :v",
        "a = :_",
        "a = :123",
        "Andrew = :v",
        "betweenness = :v",
        "notes = :v",
        "a IN(:v)",
        "NOT(a = :v)",
        "x.removed = :v",
    ],
)
def test_keywords_are_case_insensitive_and_references_are_tokens(text: str) -> None:
    parse_condition(text)


@pytest.mark.parametrize(
    ("text", "near"),
    [
        ("_123 = :v", '"_", near: "_123'),
        ("123a = :v", '"123"'),
        ("hi-there = :v", '"-"'),
        ("a != :v", '"!"'),
        ("a = ", '"<EOF>"'),
        ("a IN ()", '")"'),
        ("a = :", '":"'),
        ("a[:x] = :v", '":x"'),
        ("a", '"<EOF>"'),
        ("a < b < c", '"<"'),
    ],
)
def test_syntax_errors_name_the_token(text: str, near: str) -> None:
    with pytest.raises(
        ValidationException, match=r"^Invalid ConditionExpression: Syntax error; token: "
    ) as error:
        parse_condition(text)
    assert near in error.value.message


def test_reserved_words_need_a_name_reference() -> None:
    with pytest.raises(
        ValidationException, match="Attribute name is a reserved keyword; reserved keyword: status"
    ):
        parse_condition("status = :s")
    with pytest.raises(ValidationException, match="reserved keyword: Size"):
        parse_condition("a.Size = :s")
    target = item(status="on")
    assert check("#s = :s", target, {":s": "on"}, {"#s": "status"})


def test_function_names_are_case_sensitive() -> None:
    with pytest.raises(
        ValidationException, match="Invalid function name; function: ATTRIBUTE_EXISTS"
    ):
        parse_condition("ATTRIBUTE_EXISTS(a)")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("size(a)", "not allowed to be used this way in an expression; function: size"),
        (
            "attribute_exists(a) < :v",
            "not allowed to be used this way in an expression; function: attribute_exists",
        ),
        ("if_not_exists(a, a) = :v", "not allowed to be used this way; function: if_not_exists"),
        ("list_append(a, a) = :v", "not allowed to be used this way; function: list_append"),
        ("dog(a) = :v", "Invalid function name; function: dog"),
        (
            "size(a, a) = :v",
            "Incorrect number of operands for operator or function; "
            "operator or function: size, number of operands: 2",
        ),
        ("begins_with(a)", "number of operands: 1"),
        (
            "attribute_exists(:v)",
            "Operator or function requires a document path; operator or function: attribute_exists",
        ),
        ("size(size(a)) = :v", "operator or function: size, operand type: N"),
    ],
)
def test_functions_are_checked_where_they_appear(text: str, message: str) -> None:
    with pytest.raises(ValidationException, match=r"^Invalid ConditionExpression: ") as error:
        parse_condition(text)
    assert message.split("; function", maxsplit=1)[0] in error.value.message
    assert message.rsplit(";", maxsplit=1)[-1].strip() in error.value.message


def test_precedence_is_not_then_and_then_or() -> None:
    a_lt_b = ast.Comparison(ast.Comparator.LT, ast.Path(("a",)), ast.Path(("b",)))
    c_lt_b = ast.Comparison(ast.Comparator.LT, ast.Path(("c",)), ast.Path(("b",)))
    b_lt_c = ast.Comparison(ast.Comparator.LT, ast.Path(("b",)), ast.Path(("c",)))
    assert parse_condition("a < b OR c < b AND b < c") == ast.Or(
        (a_lt_b, ast.And((c_lt_b, b_lt_c)))
    )
    assert parse_condition("NOT a < b AND c < b") == ast.And((ast.Not(a_lt_b), c_lt_b))
    between = parse_condition("b BETWEEN a AND c AND a < b")
    assert isinstance(between, ast.And) and isinstance(between.conditions[0], ast.Between)
    # and the evaluations that depend on it (a=1, b=2, c=3):
    assert check("a < b OR c < b AND b < c", ITEM)
    assert not check("NOT a < b AND c < b", ITEM)
    assert check("NOT NOT NOT NOT a < b", ITEM)
    assert check("(a < b OR b < a) AND (b < c AND (a < b OR b < c))", ITEM)
    assert not check("NOT (a < b OR b < a)", ITEM)


# --- comparisons ---------------------------------------------------------------------------


SAMPLES = [
    1,
    "hello",
    True,
    b"xyz",
    None,
    ["hello", 42],
    {"hello": "world"},
    {"hello", "world"},
    {1, 2, 3},
    {b"xyz", b"hi"},
]


@pytest.mark.parametrize("left", range(len(SAMPLES)))
def test_equality_is_typed(left: int) -> None:
    target = item(a=SAMPLES[left])
    for right, sample in enumerate(SAMPLES):
        assert check("a = :v", target, {":v": sample}) is (left == right)
        assert check("a <> :v", target, {":v": sample}) is (left != right)
        assert check("a IN (:x, :v)", target, {":x": "other", ":v": sample}) is (left == right)


def test_missing_attributes_compare_false_except_not_equal() -> None:
    assert not check("q = :v", ITEM, {":v": 1})
    assert not check("q = z", ITEM)
    assert check("q <> :v", ITEM, {":v": 1})
    assert check("q <> z", ITEM)
    for operator in ("<", "<=", ">", ">="):
        assert not check(f"q {operator} z", ITEM)
        assert not check(f"q {operator} :v", ITEM, {":v": 1})
    assert not check("q BETWEEN z AND x", ITEM)
    assert not check("q IN (:v)", ITEM, {":v": 1})
    assert check("p <> :p", None, {":p": "k"})  # no item at all


def test_ordering_works_on_strings_numbers_and_unsigned_bytes() -> None:
    target = item(n=Decimal("1.5"), s="cat", b=bytes([127]))
    assert check(
        "n < :v AND n <= :w AND n > :x AND n >= :w",
        target,
        {":v": 2, ":w": Decimal("1.5"), ":x": 1},
    )
    assert check("s < :v AND s > :w", target, {":v": "dog", ":w": "aardvark"})
    assert check("b < :v", target, {":v": bytes([128])})
    assert not check("n < :v", target, {":v": "17"})  # different types: false, not an error
    assert not check("l < :v", ITEM, {":v": 1})  # an item's list is simply not ordered


@pytest.mark.parametrize("operator", ["<", "<=", ">", ">="])
def test_ordering_a_constant_of_an_unordered_type_is_an_error(operator: str) -> None:
    with pytest.raises(
        ValidationException, match=f"operator or function: {operator}, operand type: L"
    ):
        check(f"a {operator} :v", ITEM, {":v": [1, 2]})
    with pytest.raises(ValidationException, match="operand type: L"):
        check(f":v {operator} a", None, {":v": [1, 2]})


def test_between() -> None:
    assert check("b BETWEEN :lo AND :hi", ITEM, {":lo": 2, ":hi": 7})
    assert not check("b BETWEEN :lo AND :hi", ITEM, {":lo": 3, ":hi": 7})
    assert not check("b BETWEEN :lo AND :hi", ITEM, {":lo": "0", ":hi": "9"})
    assert check("b BETWEEN a AND c", ITEM)
    assert not check("b BETWEEN c AND a", ITEM)  # bounds from the item in the wrong order: false
    with pytest.raises(
        ValidationException,
        match=re.escape(
            "requires upper bound to be greater than or equal to lower bound; lower bound "
            "operand: AttributeValue: {N:2}, upper bound operand: AttributeValue: {N:1}"
        ),
    ):
        check("b BETWEEN :lo AND :hi", None, {":lo": 2, ":hi": 1})
    with pytest.raises(ValidationException, match="same data type for lower and upper bounds"):
        check("b BETWEEN :lo AND :hi", ITEM, {":lo": 2, ":hi": "dog"})
    with pytest.raises(ValidationException, match="operator or function: BETWEEN, operand type: L"):
        check("b BETWEEN :lo AND :hi", ITEM, {":lo": [1], ":hi": [2]})


def test_in_takes_99_choices_and_mixed_types() -> None:
    values = {f":v{index}": index for index in range(99)}
    text = f"b IN ({', '.join(values)})"
    assert check(text, ITEM, values)
    assert not check(text, item(b=174), values)
    assert check("b IN (:x, :y)", ITEM, {":x": "dog", ":y": 2})
    values[":v99"] = 99
    with pytest.raises(
        ValidationException,
        match="The IN operator is provided with too many operands; number of operands: 101",
    ):
        check(f"b IN ({', '.join(values)})", ITEM, values)


# --- functions --------------------------------------------------------------------------------


def test_attribute_exists_and_not_exists() -> None:
    assert check("attribute_exists(a) AND attribute_exists(m.y.z) AND attribute_exists(l[2])", ITEM)
    assert check(
        "attribute_not_exists(q) AND attribute_not_exists(m.q) AND attribute_not_exists(l[3])", ITEM
    )
    assert check("attribute_exists(nul)", ITEM)  # a NULL value exists
    assert check("attribute_not_exists(p)", None)


@pytest.mark.parametrize(
    ("name", "type_name"),
    [
        ("s", "S"),
        ("ss", "SS"),
        ("a", "N"),
        ("ns", "NS"),
        ("bin", "B"),
        ("t", "BOOL"),
        ("nul", "NULL"),
        ("l", "L"),
        ("m", "M"),
    ],
)
def test_attribute_type(name: str, type_name: str) -> None:
    assert check(f"attribute_type({name}, :t)", ITEM, {":t": type_name})
    assert not check(
        f"attribute_type({name}, :t)", ITEM, {":t": "BS" if type_name != "BS" else "S"}
    )
    assert not check("attribute_type(q, :t)", ITEM, {":t": type_name})


def test_attribute_type_wants_a_known_type_name_from_the_request() -> None:
    assert check("attribute_type(:v, :t)", None, {":v": 0, ":t": "N"})
    with pytest.raises(ValidationException, match="DOG"):
        check("attribute_type(a, :t)", ITEM, {":t": "DOG"})
    with pytest.raises(ValidationException, match="attribute_type"):
        check("attribute_type(a, s)", ITEM)


def test_begins_with() -> None:
    assert check("begins_with(s, :p)", ITEM, {":p": "hell"})
    assert check("begins_with(bin, :p)", ITEM, {":p": b"hi"})
    assert not check("begins_with(s, :p)", ITEM, {":p": "dog"})
    assert not check("begins_with(s, :p)", ITEM, {":p": b"he"})
    assert not check("begins_with(a, :p)", ITEM, {":p": "1"})  # an item's number: false
    assert check("begins_with(:str, s)", ITEM, {":str": "hellohi"})
    with pytest.raises(
        ValidationException, match="operator or function: begins_with, operand type: N"
    ):
        check("begins_with(s, :p)", ITEM, {":p": 2})


def test_contains() -> None:
    assert check("contains(s, :v)", ITEM, {":v": "ell"})
    assert check("contains(ns, :v)", ITEM, {":v": 4})
    assert check("contains(ss, :v)", ITEM, {":v": "a"})
    assert check("contains(l, :v)", ITEM, {":v": "dog"})
    assert check("contains(bin, :v)", ITEM, {":v": b"here"})
    assert check("contains(e, :v)", ITEM, {":v": {1, 2}})
    assert check("contains(e, :v)", ITEM, {":v": [3, 4]})
    assert not check("contains(bin, :v)", ITEM, {":v": b"dog"})
    assert not check("contains(ns, :v)", ITEM, {":v": "4"})
    assert not check("contains(q, :v)", ITEM, {":v": "x"})
    assert not check("contains(a, :v)", ITEM, {":v": 1})


def test_size() -> None:
    sizes = {"s": 5, "ns": 3, "l": 3, "bin": 8, "m": 2, "ss": 2}
    for name, size in sizes.items():
        assert check(f"size({name}) = :n", ITEM, {":n": size}), name
    assert check(
        "size(s) > :n AND size(s) >= :n AND size(s) < :m AND size(s) <> :m",
        ITEM,
        {":n": 5 - 1, ":m": 7},
    )
    assert check("size(s) = :n", item(s="é"), {":n": 2})  # bytes, not characters
    for name in ("a", "t", "nul", "q"):
        assert not check(f"size({name}) = :n", ITEM, {":n": 1})
        assert check(f"size({name}) <> :n", ITEM, {":n": 1})
    assert not check("size(s) = :n", ITEM, {":n": "5"})
    assert check("size(ss) = b", ITEM)
    assert check("size(:v) = :n", None, {":v": "abc", ":n": 3})
    with pytest.raises(ValidationException, match="operator or function: size, operand type: N"):
        check("size(:v) = :n", None, {":v": 5, ":n": 3})


# --- references and limits ---------------------------------------------------------------


def test_names_and_values_must_all_be_defined_and_used() -> None:
    with pytest.raises(
        ValidationException,
        match="An expression attribute name used in the document path is not defined; "
        "attribute name: #n",
    ):
        check("#n = :v", ITEM, {":v": 1}, {"#x": "a"})
    with pytest.raises(
        ValidationException,
        match="An expression attribute value used in expression is not defined; "
        "attribute value: :v",
    ):
        check("a = :v", ITEM, {":w": 1})
    with pytest.raises(
        ValidationException,
        match=r"^Value provided in ExpressionAttributeValues unused in expressions: "
        r"keys: \{:val3\}$",
    ):
        check("a = :v", ITEM, {":v": 1, ":val3": 2})
    with pytest.raises(
        ValidationException,
        match=r"ExpressionAttributeNames unused in expressions: keys: \{#b, #c\}",
    ):
        check("#a = :v", ITEM, {":v": 1}, {"#a": "a", "#b": "b", "#c": "c"})
    # a short-circuited OR still used every reference it names
    assert check("#a = :one OR #b = :two", ITEM, {":one": 1, ":two": 2}, {"#a": "a", "#b": "b"})


def test_substitutions_without_expressions_are_refused() -> None:
    Substitutions.from_request(None, None).check_all_used()
    with pytest.raises(
        ValidationException,
        match=r"^ExpressionAttributeNames can only be specified when using expressions$",
    ):
        substitutions({"#a": "a"}).check_all_used()
    with pytest.raises(ValidationException, match=r"^ExpressionAttributeValues can only be"):
        substitutions(None, {":v": 1}).check_all_used()


def test_one_request_shares_its_substitutions_across_expressions() -> None:
    subs = substitutions({"#a": "a", "#b": "b"}, {":v": 1, ":w": 2})
    compile_condition("#a = :v", subs)
    with pytest.raises(ValidationException, match="unused"):
        subs.check_all_used()
    compile_condition("#b = :w", subs, ExpressionKind.FILTER)
    subs.check_all_used()


@pytest.mark.parametrize(
    ("names", "values", "message"),
    [
        ({}, None, "ExpressionAttributeNames must not be empty"),
        (None, {}, "ExpressionAttributeValues must not be empty"),
        ({"a": "b"}, None, 'ExpressionAttributeNames contains invalid key: Syntax error; key: "a"'),
        (
            None,
            {"v": {"S": "x"}},
            'ExpressionAttributeValues contains invalid key: Syntax error; key: "v"',
        ),
        (
            None,
            {":v": {"SS": []}},
            "ExpressionAttributeValues contains invalid value: One or more parameter values were "
            "invalid: An string set  may not be empty for key :v",
        ),
        ({"#a": ""}, None, "Empty attribute name"),
        ({"#" + "n" * 255: "a"}, None, "The key exceeds the maximum length of 255 bytes"),
        (None, {":" + "v" * 255: {"S": "x"}}, "The key exceeds the maximum length of 255 bytes"),
        (None, {":v": {"S": "x" * (2 * 1024 * 1024 + 1)}}, "maximum size of all substitution"),
    ],
)
def test_substitutions_are_validated(names: object, values: object, message: str) -> None:
    with pytest.raises(ValidationException) as error:
        Substitutions.from_request(names, values)
    assert error.value.message == message or message in error.value.message


def test_a_dot_in_a_name_reference_is_part_of_the_name() -> None:
    target = item(**{"a.b": 1, "a": {"b": 2}})
    assert check("#ab = :v", target, {":v": 1}, {"#ab": "a.b"})
    assert check("a.b = :v", target, {":v": 2})


def test_expression_limits() -> None:
    padded = "a = :v" + " " * (4096 - len("a = :v"))
    assert check(padded, ITEM, {":v": 1})
    with pytest.raises(
        ValidationException,
        match="Expression size has exceeded the maximum allowed size; expression size: 4097",
    ):
        parse_condition(padded + " ")
    with pytest.raises(
        ValidationException,
        match=r"^Invalid ConditionExpression: The expression can not be empty;$",
    ):
        parse_condition("  ")
    parse_condition("a" + ".b" * 31 + " = :v")
    with pytest.raises(
        ValidationException,
        match="The document path has too many nesting levels; nesting levels: 33",
    ):
        parse_condition("a" + ".b" * 32 + " = :v")
    parse_condition(" AND ".join(["a = :v"] * 150))  # 150 comparisons + 149 ANDs
    with pytest.raises(ValidationException, match="too many operators; operator count: 301"):
        parse_condition(" AND ".join(["a = :v"] * 151))


def test_parses_are_cached_by_text_and_bounded() -> None:
    parser_module.cache_clear()
    first = parse_condition("a = :cached")
    assert parse_condition("a = :cached") is first
    assert parser_module._parse_cached.cache_info().maxsize == parser_module.PARSE_CACHE_ENTRIES_MAX
    for attempt in range(2):  # failures are not cached, they fail every time
        with pytest.raises(ValidationException):
            parse_condition("a = ", ExpressionKind.FILTER)
        assert parser_module._parse_cached.cache_info().currsize == 1, attempt
    with pytest.raises(ValidationException, match=r"^Invalid FilterExpression: "):
        parse_condition("size(a)", ExpressionKind.FILTER)


# --- projections ----------------------------------------------------------------------------


def test_projections_keep_nested_structure() -> None:
    target = item(a={"b": [2, 4, {"x": "hi", "y": "yo"}], "c": 5}, b="hello")
    assert projected("a.b", target) == item(a={"b": [2, 4, {"x": "hi", "y": "yo"}]})
    assert projected("a.b[0]", target) == item(a={"b": [2]})
    assert projected("a.b[2].y", target) == item(a={"b": [{"y": "yo"}]})
    assert projected("a.b[2], a.b[0]", target) == item(a={"b": [2, {"x": "hi", "y": "yo"}]})
    assert projected("a.b[0], a.c", target) == item(a={"b": [2], "c": 5})
    assert projected("a.c, b", target) == item(a={"c": 5}, b="hello")
    assert projected("a.x, a.b[0], x, a.b[3].x", target) == item(a={"b": [2]})
    for missing in ("x", "a.b[3]", "a.x", "a.x.y", "a.b.x", "a[0]", "a.b[0].x", "a.b[0][0]"):
        assert projected(missing, target) == {}, missing
    assert projected("#n1.#n2", target, {"#n1": "a", "#n2": "c"}) == item(a={"c": 5})


@pytest.mark.parametrize(
    "text",
    [
        "a, a",
        "a.b, a.b",
        "a[1], a[1]",
        "a, a.b",
        "a.b, a",
        "a.b, a.b[2]",
        "a, a.b[2].c",
        "a.b.d.e, a.b",
    ],
)
def test_overlapping_projection_paths_are_refused(text: str) -> None:
    with pytest.raises(
        ValidationException,
        match=r"^Invalid ProjectionExpression: Two document paths overlap with each other",
    ):
        projected(text, ITEM)


@pytest.mark.parametrize("text", ["a.b, a[1]", "a[1], a.b", "a.b[1], a.b.c"])
def test_conflicting_projection_paths_are_refused(text: str) -> None:
    with pytest.raises(
        ValidationException,
        match=r"Two document paths conflict with each other; must remove or rewrite one of these "
        r"paths; path one: \[a",
    ):
        projected(text, ITEM)


@pytest.mark.parametrize("text", ["a, b", "a.b, a.c", "a.b.d, a.b.e", "a[1], a[2]", "a.b, a.c[2]"])
def test_disjoint_projection_paths_are_fine(text: str) -> None:
    projected(text, ITEM)


def test_projection_messages_render_paths_like_dynamodb() -> None:
    with pytest.raises(
        ValidationException, match=r"path one: \[a, b, \[0\]\], path two: \[a, b, \[0\]\]$"
    ):
        projected("a.b[0], #a.b[0]", ITEM, {"#a": "a"})


# --- key conditions ---------------------------------------------------------------------------


SCHEMA = KeySchema(KeyAttribute("p", "S"), KeyAttribute("c", "N"))


def key(
    text: str,
    values: dict[str, object],
    names: dict[str, str] | None = None,
    schema: KeySchema = SCHEMA,
) -> KeyQuery:
    subs = substitutions(names, values)
    query = compile_key_condition(text, subs, schema)
    subs.check_all_used()
    return query


@pytest.mark.parametrize(
    ("text", "operator", "bounds"),
    [
        ("p = :p AND c = :c", SortOperator.EQ, (5,)),
        ("p = :p AND c < :c", SortOperator.LT, (5,)),
        ("p = :p AND c <= :c", SortOperator.LE, (5,)),
        ("p = :p AND c > :c", SortOperator.GT, (5,)),
        ("p = :p AND c >= :c", SortOperator.GE, (5,)),
        (":c < c AND :p = p", SortOperator.GT, (5,)),
        (":c >= c AND p = :p", SortOperator.LE, (5,)),
        ("p = :p AnD c BeTwEeN :c AnD :d", SortOperator.BETWEEN, (5, 7)),
        ("((c = :c) AND (p = :p))", SortOperator.EQ, (5,)),
    ],
)
def test_key_conditions_become_a_sort_key_condition(
    text: str, operator: SortOperator, bounds: tuple[int, ...]
) -> None:
    values: dict[str, object] = {":p": "k", ":c": 5}
    if ":d" in text:
        values[":d"] = 7
    query = key(text, values)
    assert query.partition_value == S("k")
    assert query.sort is not None
    assert query.sort.operator is operator
    assert query.sort.values == tuple(N(Decimal(bound)) for bound in bounds)


def test_key_condition_on_the_partition_alone_and_begins_with() -> None:
    assert key("#p = :p", {":p": "k"}, {"#p": "p"}).sort is None
    schema = KeySchema(KeyAttribute("p", "B"), KeyAttribute("c", "S"))
    query = key("p = :p AND begins_with(c, :c)", {":p": b"k", ":c": "00"}, schema=schema)
    assert query.partition_value == B(b"k")
    assert query.sort is not None and query.sort.operator is SortOperator.BEGINS_WITH
    assert query.sort.matches(S("001")) and not query.sort.matches(S("010"))
    hash_only = KeySchema(KeyAttribute("p", "S"))
    assert key("p = :p", {":p": "k"}, schema=hash_only).sort is None


@pytest.mark.parametrize(
    ("text", "values", "message"),
    [
        (
            "p = :p AND p = :p",
            {":p": "k"},
            "KeyConditionExpressions must only contain one condition per key",
        ),
        ("p < :p", {":p": "k"}, "Query key condition not supported"),
        ("c = :c", {":c": 3}, "Query condition missed key schema element: p"),
        ("p = :p AND a < :a", {":p": "k", ":a": 3}, "Query condition missed key schema element: c"),
        (
            "p = :p AND c < :c AND a < :a",
            {":p": "k", ":c": 3, ":a": 3},
            "Conditions can be of length 1 or 2 only",
        ),
        (
            "p = :p AND a.b < :a",
            {":p": "k", ":a": 3},
            "KeyConditionExpressions cannot have conditions on nested attributes",
        ),
        (
            "p = :p AND c <> :c",
            {":p": "k", ":c": 5},
            "Invalid operator used in KeyConditionExpression: <>",
        ),
        (
            "p = :p AND c IN (:c)",
            {":p": "k", ":c": 5},
            "Invalid operator used in KeyConditionExpression: IN",
        ),
        (
            "c = :c OR p = :p",
            {":p": "k", ":c": 5},
            "Invalid operator used in KeyConditionExpression: OR",
        ),
        (
            "NOT c = :c AND p = :p",
            {":p": "k", ":c": 5},
            "Invalid operator used in KeyConditionExpression: NOT",
        ),
        (
            "p = :p AND attribute_exists(c)",
            {":p": "k"},
            "Invalid operator used in KeyConditionExpression: attribute_exists",
        ),
        ("p = :p AND dog(c, :c)", {":p": "k", ":c": 5}, "Invalid function name; function: dog"),
        ("p = :p AND BEGINS_WITH(c, :c)", {":p": "k", ":c": 5}, "function: BEGINS_WITH"),
        (
            "p = :p AND begins_with(c, :c)",
            {":p": "k", ":c": 3},
            "operator or function: begins_with, operand type: N",
        ),
        ("p = :num", {":num": 3}, "Condition parameter type does not match schema type"),
        (
            "p = :p AND c = :s",
            {":p": "k", ":s": "x"},
            "Condition parameter type does not match schema type",
        ),
        (
            "p = :p AND c BETWEEN :d AND :c",
            {":p": "k", ":c": 1, ":d": 2},
            "requires upper bound to be greater than or equal to lower bound",
        ),
        (":p = :a", {":p": "k", ":a": 3}, "No key attribute specified"),
        ("p = c", {}, "Multiple attribute names used in one condition"),
        ("p = :p AND c BETWEEN :c AND :p", {":p": "k", ":c": 5}, "same data type"),
        ("p = :e", {":e": ""}, "cannot contain an empty string value. Key: p"),
    ],
)
def test_key_condition_errors(text: str, values: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationException, match=message.replace("(", r"\(").replace(")", r"\)")):
        key(text, values)


def test_key_ranges_bound_the_encoded_sort_keys() -> None:
    from dynakv.dynamo.encoding import encode_sort_key

    query = key("p = :p AND c BETWEEN :c AND :d", {":p": "k", ":c": 4, ":d": 7})
    assert query.sort is not None
    key_range = query.sort.key_range()
    inside = [
        number for number in range(12) if key_range.contains(encode_sort_key(N(Decimal(number))))
    ]
    assert inside == [4, 5, 6, 7]
    query = key("p = :p AND c < :c", {":p": "k", ":c": 4})
    assert query.sort is not None
    assert query.sort.key_range().upper == encode_sort_key(N(Decimal(4)))
    assert not query.sort.key_range().upper_inclusive
