"""Rule trees: each operator, nested trees and validation, on the database under test.

Run the suite with DATABASE_URL=postgres://… as well: the expectations are the same.
"""

import datetime as dt
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from segments import rules
from segments.models import Profile
from segments.rules import RuleError, compile_rules, rule_errors, validate_rules
from tests.segments.factories import ProfileFactory
from tests.segments.rule_trees import LONGEST, cond

TODAY = timezone.now().date().isoformat()


@pytest.fixture
def people(db):
    """a…g: numbers vs strings vs booleans, missing and null attributes, lists, nesting."""
    specs: dict[str, dict[str, Any]] = {
        "a": {
            "attributes": {
                "country": "FR",
                "age": 30,
                "vip": True,
                "tags": ["vip", "beta"],
                "name": "Alice Martin",
                "joined": "2024-05-01",
                "score": 7.5,
                "last_seen": TODAY,
            },
            "email": "alice@example.com",
            "consent_sms": False,
        },
        "b": {
            "attributes": {
                "country": "BE",
                "age": 16,
                "vip": False,
                "tags": [],
                "name": "bob",
                "last_seen": "2000-01-01",
            },
            "email": "",
            "phone": "",
        },
        "c": {"attributes": {"country": "FR", "age": "30"}},
        "d": {"attributes": {"country": "DE", "age": 18, "vip": 1}},
        "e": {"attributes": {"country": None, "age": None}},
        "f": {"attributes": {}},
        "g": {"attributes": {"country": "", "address": {"city": "Lyon"}}},
    }
    for name, fields in specs.items():
        ProfileFactory.create(external_id=name, **fields)
    Profile.objects.filter(external_id="b").update(
        created_at=dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    )


def matching(tree):
    return sorted(Profile.objects.filter(compile_rules(tree)).values_list("external_id", flat=True))


def assert_refused(tree, message):
    """The tree is refused wherever rules are read: `message` is among the errors that
    name each bad node by its path, and validating or compiling the tree raises."""
    errors = rule_errors(tree)
    assert any(message in error for error in errors), errors[:3]
    with pytest.raises(RuleError):
        validate_rules(tree)
    with pytest.raises(RuleError):
        compile_rules(tree)


ATTRIBUTE_CASES = [
    (cond("attributes.country", "eq", "FR"), "ac"),
    (cond("attributes.age", "eq", 30), "a"),
    (cond("attributes.age", "eq", 30.0), "a"),
    (cond("attributes.age", "eq", "30"), "c"),
    (cond("attributes.vip", "eq", True), "a"),
    (cond("attributes.vip", "eq", 1), "d"),
    (cond("attributes.vip", "eq", False), "b"),
    (cond("attributes.age", "ne", 30), "bcd"),
    (cond("attributes.country", "in", ["FR", "BE"]), "abc"),
    (cond("attributes.age", "in", [16, 18]), "bd"),
    (cond("attributes.country", "not_in", ["FR"]), "bdg"),
    (cond("attributes.age", "gt", 17), "ad"),
    (cond("attributes.age", "gte", 18), "ad"),
    (cond("attributes.age", "lt", 18), "b"),
    (cond("attributes.age", "lte", 16), "b"),
    (cond("attributes.score", "gt", 7), "a"),
    (cond("attributes.name", "contains", "MART"), "a"),
    (cond("attributes.tags", "contains", "beta"), "a"),
    (cond("attributes.name", "startswith", "BO"), "b"),
    (cond("attributes.country", "exists", True), "abcdg"),
    (cond("attributes.country", "exists", False), "ef"),
    (cond("attributes.country", "empty", True), "efg"),
    (cond("attributes.country", "empty", False), "abcd"),
    (cond("attributes.tags", "empty", True), "bcdefg"),
    (cond("attributes.joined", "before", "2024-06-01"), "a"),
    (cond("attributes.joined", "after", "2024-06-01"), ""),
    (cond("attributes.joined", "after", "2024-01-01"), "a"),
    (cond("attributes.last_seen", "within_days", 7), "a"),
    (cond("attributes.address.city", "eq", "Lyon"), "g"),
    (cond("attributes.nothing", "ne", "x"), ""),
    (cond("attributes.nothing", "not_in", ["x"]), ""),
]

FIELD_CASES = [
    (cond("email", "eq", "alice@example.com"), "a"),
    (cond("email", "ne", "alice@example.com"), "cdefg"),
    (cond("email", "contains", "EXAMPLE"), "acdefg"),
    (cond("email", "startswith", "ALI"), "a"),
    (cond("email", "exists", False), "b"),
    (cond("email", "empty", False), "acdefg"),
    (cond("external_id", "in", ["a", "b", "zz"]), "ab"),
    (cond("external_id", "not_in", ["a", "b"]), "cdefg"),
    (cond("phone", "empty", True), "b"),
    (cond("created_at", "within_days", 30), "acdefg"),
    (cond("created_at", "before", "2021-01-01"), "b"),
    (cond("created_at", "after", "2021-01-01T00:00:00Z"), "acdefg"),
    (cond("consent.sms", "eq", False), "a"),
    (cond("consent.sms", "ne", False), "bcdefg"),
    (cond("consent.email", "eq", True), "abcdefg"),
    (cond("consent.push", "eq", False), ""),
]

TREE_CASES = [
    ({}, "abcdefg"),
    ({"all": []}, "abcdefg"),
    ({"any": []}, ""),
    ({"not": cond("attributes.country", "eq", "FR")}, "bdefg"),
    (
        {
            "all": [
                cond("attributes.country", "in", ["FR", "BE", "DE"]),
                {"any": [cond("attributes.age", "gte", 18), cond("attributes.vip", "eq", True)]},
                {"not": cond("consent.sms", "eq", False)},
            ]
        },
        "d",
    ),
    (
        {
            "any": [
                {
                    "all": [
                        cond("attributes.country", "eq", "FR"),
                        cond("attributes.age", "eq", "30"),
                    ]
                },
                {"not": {"any": [cond("attributes.country", "exists", True), {"all": []}]}},
                cond("attributes.address.city", "startswith", "ly"),
            ]
        },
        "cg",
    ),
]


@pytest.mark.parametrize(("tree", "expected"), ATTRIBUTE_CASES, ids=lambda v: str(v))
def test_attribute_operators(people, tree, expected):
    assert matching(tree) == sorted(expected)


@pytest.mark.parametrize(("tree", "expected"), FIELD_CASES, ids=lambda v: str(v))
def test_field_and_consent_operators(people, tree, expected):
    assert matching(tree) == sorted(expected)


@pytest.mark.parametrize(("tree", "expected"), TREE_CASES, ids=lambda v: str(v))
def test_nested_trees(people, tree, expected):
    assert matching(tree) == sorted(expected)


def test_a_tree_compiles_to_one_query(people, django_assert_num_queries):
    tree = TREE_CASES[4][0]
    with django_assert_num_queries(1):
        assert Profile.objects.filter(compile_rules(tree)).count() == 1


def test_every_operator_is_covered_on_this_database():
    covered = {case[0]["op"] for case in ATTRIBUTE_CASES + FIELD_CASES}
    from segments.rules import OPERATORS

    assert covered == set(OPERATORS), connection.vendor


@pytest.mark.parametrize(
    ("tree", "message"),
    [
        (
            {
                "all": [
                    cond("attributes.age", "gte", 1),
                    {"any": [{"field": "attributes.age", "op": "gtx", "value": 1}]},
                ]
            },
            'all[1].any[0].op: unknown operator "gtx"',
        ),
        ("everyone", "rules: a node must be an object, got a string"),
        ({"all": "x"}, 'all: "all" needs a list of nodes'),
        ({"not": [cond("email", "eq", "x")]}, "not: a node must be an object, got a list"),
        (cond("attributes.age", "gt", "abc"), 'value: "gt" needs a number, got "abc"'),
        (cond("attributes.age", "gt", True), 'value: "gt" needs a number, got true'),
        (cond("nope", "eq", 1), 'field: unknown field "nope"'),
        (cond("consent.fax", "eq", True), 'field: unknown consent channel "fax"'),
        (cond("consent.sms", "eq", "no"), 'value: "eq" on consent needs true or false'),
        (cond("created_at", "contains", "x"), 'op: operator "contains" does not apply'),
        (cond("created_at", "before", "yesterday"), 'value: "before" needs an ISO-8601 date'),
        (cond("attributes.age", "in", []), 'value: "in" needs a non-empty list'),
        (cond("attributes.age", "in", [1, [2]]), "value: item 1 is a list"),
        (cond("attributes.a__b", "eq", 1), 'field: bad attribute key "a__b"'),
        (cond("attributes.x", "within_days", 0), 'value: "within_days" needs a whole number'),
        ({"field": "email", "op": "eq"}, 'value: missing; "eq" needs a value'),
        ({"field": "email", "op": "eq", "value": "x", "extra": 1}, "unknown key(s) extra"),
        ({"all": [], "any": []}, "found all, any"),
        ({"all": [{"op": "eq", "value": 1}]}, "all[0]: a node is all/any/not or a condition"),
    ],
)
def test_invalid_trees_are_refused_with_the_node_path(tree, message):
    assert_refused(tree, message)


TOO_LONG = LONGEST + "x"


def nested(condition):
    """The condition as the second child of an `any` that is the second child of an `all`:
    its path is all[1].any[0]."""
    return {"all": [cond("email", "exists", True), {"any": [condition]}]}


# Values the databases cannot compare, each refused with the path of its node.
BAD_VALUES = [
    (
        nested(cond("created_at", "before", "2024-02-30")),
        'all[1].any[0].value: "before" is not a calendar date',
    ),
    (
        nested(cond("attributes.joined", "after", "9999-99-99")),
        'all[1].any[0].value: "after" is not a calendar date',
    ),
    (cond("attributes.joined", "before", "0000-01-01"), 'value: "before" is not a calendar date'),
    (cond("created_at", "after", "2023-02-29T10:00:00Z"), 'value: "after" is not a calendar date'),
    (
        cond("created_at", "before", "2024-05-01T24:00:00Z"),
        'value: "before" is not a calendar date',
    ),
    (cond("created_at", "after", "20240501"), 'value: "after" needs an ISO-8601 date'),
    (cond("created_at", "after", "10000-01-01"), 'value: "after" needs an ISO-8601 date'),
    (cond("created_at", "before", 20240501), 'value: "before" needs an ISO-8601 date'),
    (
        cond("created_at", "before", "9999-12-31T23:00:00-05:00"),
        'value: "before" is outside the supported range',
    ),
    (
        cond("attributes.joined", "after", "0001-01-01T00:30:00+01:00"),
        'value: "after" is outside the supported range',
    ),
    (
        nested(cond("attributes.age", "gt", 10**30)),
        "all[1].any[0].value: the value is beyond the 64-bit range",
    ),
    (
        cond("attributes.age", "eq", rules.MAX_INTEGER + 1),
        "value: the value is beyond the 64-bit range",
    ),
    (
        cond("attributes.age", "lte", rules.MIN_INTEGER - 1),
        "value: the value is beyond the 64-bit range",
    ),
    (cond("attributes.age", "in", [1, 2**64]), "value: item 1 is beyond the 64-bit range"),
    (
        cond("attributes.age", "not_in", [1, 2, -(2**70)]),
        "value: item 2 is beyond the 64-bit range",
    ),
    # A decimal stored by PostgreSQL reads back as the integer it is: 1e20 as 10**20.
    (cond("attributes.age", "gt", 1e20), "value: the value is beyond the 64-bit range"),
    (cond("attributes.age", "in", [0.5, -9.3e18]), "value: item 1 is beyond the 64-bit range"),
    (cond("attributes.age", "gt", float("nan")), "value: the value is not a finite number"),
    (cond("attributes.age", "ne", float("inf")), "value: the value is not a finite number"),
    (cond("attributes.age", "in", [1.5, float("-inf")]), "value: item 1 is not a finite number"),
    (cond("attributes.name", "contains", TOO_LONG), "value: the value holds 1,001 characters"),
    (cond("email", "startswith", TOO_LONG), "value: the value holds 1,001 characters"),
    (cond("external_id", "eq", TOO_LONG), "value: the value holds 1,001 characters"),
    (cond("external_id", "in", ["a", TOO_LONG]), "value: item 1 holds 1,001 characters"),
    (cond("attributes.name", "eq", "a\x00b"), "value: the value holds a NUL character"),
    (cond("external_id", "in", ["a", "\ud800"]), "value: item 1 is not valid Unicode"),
]


@pytest.mark.parametrize(("tree", "message"), BAD_VALUES, ids=lambda v: str(v)[:80])
def test_values_the_databases_cannot_compare_are_refused_with_the_node_path(tree, message):
    assert_refused(tree, message)


def test_every_bad_node_is_reported():
    errors = rule_errors(
        {"all": [cond("attributes.age", "gtx", 1), cond("email", "eq", 3), cond("x", "eq", 1)]}
    )
    assert [e.split(":")[0] for e in errors] == ["all[0].op", "all[1].value", "all[2].field"]


def nodes(count):
    """An `any` of conditions: `count` nodes, the `any` included."""
    return {"any": [cond("attributes.age", "eq", index) for index in range(count - 1)]}


def nested_nots(depth):
    """A condition under `depth` NOTs: its depth in the tree."""
    tree = cond("attributes.age", "exists", True)
    for _ in range(depth):
        tree = {"not": tree}
    return tree


def lists(total, *, op="in"):
    """An `all` of full lists (and one shorter) holding `total` values together."""
    full, rest = divmod(total, rules.MAX_LIST_VALUES)
    sizes = [rules.MAX_LIST_VALUES] * full + ([rest] if rest else [])
    return {
        "all": [
            cond(f"attributes.k{index}", op, list(range(size))) for index, size in enumerate(sizes)
        ]
    }


ABOVE_THE_LIMITS = [
    (
        nodes(rules.MAX_NODES + 1),
        f"any[{rules.MAX_NODES - 1}]: a tree holds at most {rules.MAX_NODES:,} nodes",
    ),
    (
        {"all": [{"not": cond("email", "eq", "x")}] * (rules.MAX_NODES // 2)},
        f"all[{rules.MAX_NODES // 2 - 1}].not: a tree holds at most {rules.MAX_NODES:,} nodes",
    ),
    (
        cond("attributes.k", "in", list(range(rules.MAX_LIST_VALUES + 1))),
        f'value: "in" takes at most {rules.MAX_LIST_VALUES:,} values',
    ),
    (
        cond("external_id", "not_in", [str(n) for n in range(rules.MAX_LIST_VALUES + 1)]),
        f'value: "not_in" takes at most {rules.MAX_LIST_VALUES:,} values',
    ),
    (
        lists(rules.MAX_TREE_LIST_VALUES + 1),
        f"all[{rules.MAX_TREE_LIST_VALUES // rules.MAX_LIST_VALUES}].value: the lists of a "
        f"tree hold at most {rules.MAX_TREE_LIST_VALUES:,} values together",
    ),
    (
        nested_nots(rules.MAX_DEPTH + 1),
        f"the tree is nested deeper than {rules.MAX_DEPTH} levels",
    ),
]


@pytest.mark.parametrize(("tree", "message"), ABOVE_THE_LIMITS, ids=lambda v: str(v)[:60])
def test_trees_above_the_limits_are_refused_with_the_node_path(tree, message):
    assert_refused(tree, message)


AT_THE_LIMITS = [
    nodes(rules.MAX_NODES),
    {"all": [{"not": cond("email", "eq", "x")}] * ((rules.MAX_NODES - 1) // 2)},
    cond("attributes.k", "in", list(range(rules.MAX_LIST_VALUES))),
    lists(rules.MAX_TREE_LIST_VALUES, op="not_in"),
    nested_nots(rules.MAX_DEPTH),
    cond("attributes.name", "contains", LONGEST),
    cond("external_id", "in", ["a", LONGEST]),
    cond("attributes.age", "in", [rules.MIN_INTEGER, rules.MAX_INTEGER, 9.2e18, 0.5]),
    cond("attributes.age", "gt", -9.2e18),
    cond("created_at", "after", "0001-01-01"),
    cond("created_at", "before", "9999-12-31T23:59:59.999999Z"),
    cond("attributes.joined", "after", "0001-01-01T01:00:00+01:00"),
    cond("attributes.joined", "before", "9999-12-31 18:59:59-05:00"),
    cond("created_at", "after", "2024-02-29T10:00"),
]


@pytest.mark.parametrize("tree", AT_THE_LIMITS, ids=lambda v: str(v)[:60])
def test_trees_at_the_limits_are_valid(tree):
    assert rule_errors(tree) == []
