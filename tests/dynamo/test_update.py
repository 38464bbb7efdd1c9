"""UpdateExpression: SET, REMOVE, ADD and DELETE, top-level and nested, as DynamoDB has them."""

from __future__ import annotations

import copy
from decimal import Decimal

import pytest

from dynakv.dynamo.errors import ValidationException
from dynakv.dynamo.expressions import (
    ast,
    check_key_unchanged,
    compile_update,
    parse_update,
    updated_paths,
)
from tests.dynamo import item, substitutions, updated

MISSING_ATTRIBUTE = "The provided expression refers to an attribute that does not exist in the item"
BAD_PATH = "The document path provided in the update expression is invalid for update"


def test_set_merges_into_the_item_and_creates_it() -> None:
    assert updated("SET b = :v", None, {":v": 4}) == item(b=4)
    assert updated("SET removed = :v REMOVE setx", item(setx=1), {":v": 4}) == item(removed=4)
    assert updated("set x = :v, y = :v", item(a="hi"), {":v": 4}) == item(a="hi", x=4, y=4)
    assert updated("  sEt   b=:v  ", item(b=1), {":v": 5}) == item(b=5)


def test_right_hand_sides_read_the_item_before_the_update() -> None:
    target = item(a="hello", b="bye")
    assert updated("SET a = b, b = a", target) == item(a="bye", b="hello")
    assert updated("REMOVE a SET c = a", target) == item(b="bye", c="hello")
    assert updated("SET a = a", target) == target
    with pytest.raises(ValidationException, match=MISSING_ATTRIBUTE):
        updated("SET x = :v, y = x", target, {":v": 4})
    with pytest.raises(ValidationException, match=MISSING_ATTRIBUTE):
        updated("SET c = z", None)


def test_the_input_item_is_never_changed() -> None:
    target = item(a={"b": [1, {"c": 2}]}, s={"x", "y"}, n=1)
    before = copy.deepcopy(target)
    updated(
        "SET a.b[1].c = :v, a.b[5] = :v REMOVE a.b[0] ADD n :v DELETE s :s",
        target,
        {":v": 9, ":s": {"x"}},
    )
    assert target == before


def test_plus_and_minus() -> None:
    target = item(a=2)
    assert updated("SET a = a + :v", target, {":v": 3}) == item(a=5)
    assert updated("SET a = :v - a", target, {":v": 7}) == item(a=5)
    assert updated("SET b = :x + :y", None, {":x": 1, ":y": Decimal("1E22")}) == item(
        b=Decimal("10000000000000000000001")
    )
    assert updated("SET b = :x - :y", None, {":x": Decimal("1E22"), ":y": 1}) == item(
        b=Decimal("9999999999999999999999")
    )
    big = Decimal("12345678901234567890123456789012345678")
    assert updated("SET b = :x - :y", None, {":x": big, ":y": 0}) == item(
        b=big
    )  # no 28-digit context
    assert updated(
        "SET #n = if_not_exists(#n, :zero) + :one", None, {":zero": 0, ":one": 1}, {"#n": "n"}
    ) == item(n=1)


def test_plus_errors() -> None:
    with pytest.raises(ValidationException, match=MISSING_ATTRIBUTE):
        updated("SET a = a + :v", item(b=1), {":v": 1})
    with pytest.raises(ValidationException, match="operator or function: \\+, operand type: S"):
        updated("SET b = :x + :y", None, {":x": "dog", ":y": 3})
    with pytest.raises(ValidationException, match="operator or function: -, operand type: L"):
        updated("SET b = :x - :y", None, {":x": 3, ":y": [1]})
    with pytest.raises(ValidationException, match="operator or function: \\+, operand type: S"):
        updated("SET b = a + :y", item(a="x"), {":y": 3})  # from the item: found when applied
    with pytest.raises(ValidationException, match="Syntax error"):
        updated("SET b = :x + :y + :z", None, {":x": 1, ":y": 2, ":z": 3})
    with pytest.raises(ValidationException, match="Number overflow"):
        updated("SET b = :x + :y", None, {":x": Decimal("9E125"), ":y": Decimal("9E125")})
    with pytest.raises(ValidationException, match="Number overflow"):
        updated("SET b = :x - :y", None, {":x": Decimal("1E50"), ":y": 1})


def test_if_not_exists() -> None:
    assert updated("SET a = if_not_exists(a, :v)", None, {":v": 2}) == item(a=2)
    assert updated("SET a = if_not_exists(a, :v)", item(a=2), {":v": 3}) == item(a=2)
    assert updated("SET b = if_not_exists(a, :v)", item(a=2), {":v": 6}) == item(a=2, b=2)
    assert updated("SET x = if_not_exists(b, if_not_exists(c, :v))", None, {":v": 3}) == item(x=3)
    with pytest.raises(
        ValidationException, match="requires a document path; operator or function: if_not_exists"
    ):
        parse_update("SET b = if_not_exists(:v, :w)")
    with pytest.raises(ValidationException, match="Syntax error"):
        parse_update("SET c = if_not_exists(c, :a + :b)")


def test_list_append() -> None:
    assert updated(
        "SET a = list_append(:x, :y)", None, {":x": [4, "hello"], ":y": ["hi", 7]}
    ) == item(a=[4, "hello", "hi", 7])
    target = item(a=["hi", 2])
    assert updated("SET a = list_append(a, :v)", target, {":v": [4]}) == item(a=["hi", 2, 4])
    assert updated("SET a = list_append(:v, a)", target, {":v": ["dog"]}) == item(
        a=["dog", "hi", 2]
    )
    assert updated("SET b = list_append(a, a)", target) == item(a=["hi", 2], b=["hi", 2, "hi", 2])
    idiom = "SET l = list_append(if_not_exists(l, :empty), :new)"
    assert updated(idiom, None, {":empty": [], ":new": [1]}) == item(l=[1])
    assert updated(idiom, item(l=[0]), {":empty": [], ":new": [1]}) == item(l=[0, 1])
    with pytest.raises(
        ValidationException, match="operator or function: list_append, operand type: S"
    ):
        updated("SET a = list_append(:x, :y)", None, {":x": [1], ":y": "hi"})
    for value in (7, "hello", b"hi", {1, 2}, {"a": 3}):
        with pytest.raises(ValidationException, match="list_append, operand type"):
            updated("SET a = list_append(b, :x)", item(b=value), {":x": [1]})
    with pytest.raises(ValidationException, match=MISSING_ATTRIBUTE):
        updated("SET a = list_append(b, :x)", item(a=1), {":x": [1]})
    with pytest.raises(
        ValidationException,
        match="not allowed to be used this way in an expression; function: list_append",
    ):
        parse_update("SET a = list_append(list_append(:a, :b), :c)")
    with pytest.raises(ValidationException, match="Invalid function name; function: LIST_APPEND"):
        parse_update("SET a = LIST_APPEND(:a, :b)")
    with pytest.raises(ValidationException, match="number of operands: 1"):
        parse_update("SET a = list_append(:a)")


def test_nested_set() -> None:
    target = item(a={"b": 3, "c": ["hi", {"x": {"y": [3, 5, 7]}}]}, d=5)
    assert (
        updated("SET a.b = :v", target, {":v": 7})["a"]
        == item(a={"b": 7, "c": ["hi", {"x": {"y": [3, 5, 7]}}]})["a"]
    )
    assert (
        updated("SET a.c[1].#n.y[1] = :v", target, {":v": 9}, {"#n": "x"})["a"]
        == item(a={"b": 3, "c": ["hi", {"x": {"y": [3, 9, 7]}}]})["a"]
    )
    assert (
        updated("SET a.z = a.c[1].x.y[2]", target)["a"]
        == item(a={"b": 3, "c": ["hi", {"x": {"y": [3, 5, 7]}}], "z": 7})["a"]
    )
    assert (
        updated("SET a.z2 = :v", target, {":v": "x"})["a"]
        == item(a={"b": 3, "c": ["hi", {"x": {"y": [3, 5, 7]}}], "z2": "x"})["a"]
    )
    assert updated("SET #a = :v", None, {":v": 3}, {"#a": "a.b"}) == item(**{"a.b": 3})


def test_set_past_the_end_of_a_list_appends_in_index_order() -> None:
    target = item(a=["one", "two", "three"])
    assert updated("SET a[7] = :v", target, {":v": "hello"}) == item(
        a=["one", "two", "three", "hello"]
    )
    text = "SET a[84] = :a1, a[37] = :a2, a[17] = :a3, a[50] = :a4"
    values = {":a1": "a1", ":a2": "a2", ":a3": "a3", ":a4": "a4"}
    assert updated(text, target, values) == item(a=["one", "two", "three", "a3", "a2", "a4", "a1"])
    assert updated("SET l[0] = :v", item(l=[]), {":v": "first"}) == item(l=["first"])


@pytest.mark.parametrize(
    "text",
    [
        "SET a.c = :v",
        "SET b.c = :v",
        "SET c.c = :v",
        "SET a[0] = :v",
        "SET m[0] = :v",
        "SET b[5].c = :v",
        "REMOVE a.c",
        "REMOVE b.c",
        "REMOVE c.c",
        "REMOVE a[0]",
        "REMOVE m[0]",
        "ADD c.d :v",
        "DELETE c.d :s",
    ],
)
def test_paths_through_missing_or_mistyped_containers_are_invalid(text: str) -> None:
    target = item(a="hello", b=["hi"], m={"k": 1})
    values = {key: python for key, python in (("v", 7), ("s", {"x"})) if f":{key}" in text}
    with pytest.raises(ValidationException, match=BAD_PATH):
        updated(text, target, {f":{key}": python for key, python in values.items()})


def test_set_under_a_missing_item_is_invalid_but_remove_does_nothing() -> None:
    with pytest.raises(ValidationException, match=BAD_PATH):
        updated("SET c.c = :v", None, {":v": 7})
    assert updated("REMOVE x.y, z[0], w", None) == {}


def test_remove() -> None:
    target = item(a={"b": 3, "c": ["hi", {"x": {"y": [3, 5, 7]}, "q": 2}]}, k=1)
    assert updated("REMOVE k", target) == item(
        a={"b": 3, "c": ["hi", {"x": {"y": [3, 5, 7]}, "q": 2}]}
    )
    assert (
        updated("REMOVE a.c[1].x.y[1], a.c[1].q", target)["a"]
        == item(a={"b": 3, "c": ["hi", {"x": {"y": [3, 7]}}]})["a"]
    )
    lists = item(a=[4, 5, 6], m={"x": 3})
    assert updated("REMOVE a[17], m.y, nothing", lists) == lists  # missing leaves: nothing to do
    assert updated("REMOVE a[0], a[2]", lists) == item(a=[5], m={"x": 3})
    assert updated("REMOVE m.x", item(m={"x": 1})) == item(m={})
    assert updated("REMOVE l[0]", item(l=[1])) == item(l=[])


def test_list_indexes_refer_to_the_list_before_the_update() -> None:
    target = item(a=[2, 3, 4, 5, 6, 7])
    for text in ("REMOVE a[1] SET a[3] = :v", "SET a[3] = :v REMOVE a[1]"):
        assert updated(text, target, {":v": 17}) == item(a=[2, 4, 17, 6, 7])
    assert updated("REMOVE a[6] SET a[9] = :v", target, {":v": 17}) == item(
        a=[2, 3, 4, 5, 6, 7, 17]
    )
    assert updated("REMOVE a[1], a[4]", target) == item(a=[2, 4, 5, 7])


def test_add_numbers_and_sets() -> None:
    assert updated("ADD a :v", item(a=3), {":v": 4}) == item(a=7)
    assert updated("ADD b :v", item(a="x"), {":v": 7}) == item(a="x", b=7)
    assert updated("ADD b :v", None, {":v": Decimal("-1.5")}) == item(b=Decimal("-1.5"))
    assert updated("ADD a :v", item(a={"dog", "cat"}), {":v": {"pig", "cat"}}) == item(
        a={"dog", "cat", "pig"}
    )
    assert updated("ADD a :v", item(a={1, 2}), {":v": {3}}) == item(a={1, 2, 3})
    assert updated("ADD a :v", item(a={b"x"}), {":v": {b"y"}}) == item(a={b"x", b"y"})
    assert updated("ADD b :v", None, {":v": {"dog"}}) == item(b={"dog"})
    assert updated("ADD a.n :v", item(a={"n": 1}), {":v": 1}) == item(a={"n": 2})


def test_add_type_errors() -> None:
    with pytest.raises(
        ValidationException,
        match="Incorrect operand type for operator or function; "
        "operator: ADD, operand type: STRING",
    ):
        updated("ADD a :v", item(a=3), {":v": "hello"})
    with pytest.raises(ValidationException, match="operator: ADD, operand type: LIST"):
        updated("ADD a :v", item(a=[1, 2]), {":v": [3, 4]})
    with pytest.raises(
        ValidationException, match="An operand in the update expression has an incorrect data type"
    ):
        updated("ADD b :v", item(b="hi"), {":v": 1})
    with pytest.raises(ValidationException, match="incorrect data type"):
        updated("ADD a :v", item(a=[1, 2]), {":v": {3, 4}})
    with pytest.raises(ValidationException, match="incorrect data type"):
        updated("ADD a :v", item(a={"x"}), {":v": {3}})


def test_delete_from_sets() -> None:
    target = item(a={"dog", "cat", "mouse"}, b="hi")
    assert updated("DELETE a :v", target, {":v": {"cat", "mouse"}}) == item(a={"dog"}, b="hi")
    assert updated("DELETE a :v", target, {":v": {"pig"}}) == target
    assert updated("DELETE a :v", item(a={"dog"}, b="hi"), {":v": {"dog"}}) == item(b="hi")
    assert updated("DELETE q :v", target, {":v": {"dog"}}) == target
    assert updated("DELETE n :v", item(n={1, 2}), {":v": {Decimal("1.0")}}) == item(n={2})
    with pytest.raises(ValidationException, match="operator: DELETE, operand type: STRING"):
        updated("DELETE a :v", target, {":v": "hello"})
    with pytest.raises(ValidationException, match="incorrect data type"):
        updated("DELETE b :v", target, {":v": {"hi"}})


@pytest.mark.parametrize(
    "text",
    [
        "SET a = :v1, a.b = :v2",
        "SET a.b = :v1, a = :v2",
        "SET a.b = :v1, a.b = :v2",
        "SET a.b.c.d.e = :v1, a.b = :v2",
        "SET a[1] = :v1, a = :v2",
        "SET a[1][1] = :v1, a[1] = :v2",
        "SET a[1][1][1][1] = :v1, a[1][1][1][1] = :v2",
        "SET a = :v1 REMOVE a",
        "REMOVE a SET a = :v1, b = :v2",
        "SET #a1 = :v1, #a2 = :v2",
        "ADD a :s DELETE a :s",
    ],
)
def test_overlapping_update_paths_are_refused(text: str) -> None:
    names = {"#a1": "a", "#a2": "a"} if "#a1" in text else None
    values = {":s": {"x"}} if ":s" in text else {":v1": 2, ":v2": "there"}
    with pytest.raises(
        ValidationException,
        match=r"^Invalid UpdateExpression: Two document paths overlap with each other; must remove "
        r"or rewrite one of these paths; path one: \[",
    ):
        updated(text, None, values, names)


@pytest.mark.parametrize("text", ["SET a.b = :v1, a[1] = :v2", "SET a.b.c = :v1, a.b[2] = :v2"])
def test_conflicting_update_paths_are_refused(text: str) -> None:
    with pytest.raises(ValidationException, match="Two document paths conflict with each other"):
        updated(text, None, {":v1": 2, ":v2": "there"})


def test_disjoint_nested_updates_all_apply() -> None:
    target = item(a={"x": 3, "y": 4, "c": {"y": 3}}, b={"x": 1, "y": 2})
    result = updated(
        "SET a.b = :v1, a.c.d = :v2, b.x = :v3 REMOVE a.x, b.y",
        target,
        {":v1": 10, ":v2": "dog", ":v3": 17},
    )
    assert result == item(a={"y": 4, "b": 10, "c": {"y": 3, "d": "dog"}}, b={"x": 17})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "SET a = :v SET b = :v",
            'The "SET" section can only be used once in an update expression;',
        ),
        ("SET a = :v REMOVE b SET c = :v", 'The "SET" section can only be used once'),
        ("REMOVE a REMOVE b", 'The "REMOVE" section can only be used once'),
        ("HELLO b = :v", 'Syntax error; token: "HELLO"'),
        ("SET :a = :b", "Syntax error"),
        ("SET a[#x] = :v", "Syntax error"),
        ("SET a = f(b, c, d)", "Invalid function name; function: f"),
        ("SET a = f123_hi(b)", "function: f123_hi"),
        ("SET a = _f(b)", "Syntax error"),
        ("SET a = size(b)", "not allowed to be used this way in an expression; function: size"),
        ("SET status = :v", "reserved keyword: status"),
        ("", "The expression can not be empty;"),
    ],
)
def test_update_syntax_and_static_errors(text: str, message: str) -> None:
    with pytest.raises(ValidationException, match=r"^Invalid UpdateExpression: ") as error:
        parse_update(text)
    assert message in error.value.message


def test_update_references_must_be_defined_and_used() -> None:
    with pytest.raises(
        ValidationException,
        match="An expression attribute value used in expression is not defined; "
        "attribute value: :val1",
    ):
        updated("SET b = :val1", None, {":val2": 4})
    with pytest.raises(ValidationException, match="attribute name: #name"):
        updated("SET #name = :v", None, {":v": 1}, {"#wrong": "x"})
    with pytest.raises(ValidationException, match=r"unused in expressions: keys: \{:val2\}"):
        updated("SET a = :val1", None, {":val1": 3, ":val2": 4})
    with pytest.raises(
        ValidationException,
        match=r"ExpressionAttributeNames unused in expressions: keys: \{#three\}",
    ):
        updated("SET #one = #two", item(a=1), None, {"#one": "c", "#two": "a", "#three": "z"})


def test_updated_paths_and_key_attributes() -> None:
    subs = substitutions(None, {":v": 1})
    update = compile_update("SET a.b = :v REMOVE c[2] ADD d :v", subs)
    assert updated_paths(update) == (ast.Path(("a", "b")), ast.Path(("c", 2)), ast.Path(("d",)))
    check_key_unchanged(update, ("p", "s"))
    with pytest.raises(
        ValidationException, match=r"Cannot update attribute c\. This attribute is part of the key"
    ):
        check_key_unchanged(update, ("p", "c"))


def test_an_update_cannot_nest_values_past_32_levels() -> None:
    deep: object = "leaf"
    for _ in range(30):
        deep = [deep]
    path = "a" + ".b" * 1  # the value lands at level 2, so 31 more levels fit
    assert updated(f"SET {path} = :v", item(a={}), {":v": deep})
    with pytest.raises(ValidationException, match="Nesting Levels have exceeded supported limits"):
        updated(f"SET {path}.c = :v", item(a={"b": {}}), {":v": deep})
