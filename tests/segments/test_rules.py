"""Rule trees: each operator, nested trees and validation, on the database under test.

Run the suite with DATABASE_URL=postgres://… as well: the expectations are the same.
"""

import datetime as dt
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from segments.models import Profile
from segments.rules import RuleError, compile_rules, rule_errors, validate_rules
from tests.segments.factories import ProfileFactory

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


def cond(field, op, value):
    return {"field": field, "op": op, "value": value}


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
    errors = rule_errors(tree)
    assert any(message in error for error in errors), errors
    with pytest.raises(RuleError):
        validate_rules(tree)
    with pytest.raises(RuleError):
        compile_rules(tree)


def test_every_bad_node_is_reported():
    errors = rule_errors(
        {"all": [cond("attributes.age", "gtx", 1), cond("email", "eq", 3), cond("x", "eq", 1)]}
    )
    assert [e.split(":")[0] for e in errors] == ["all[0].op", "all[1].value", "all[2].field"]
