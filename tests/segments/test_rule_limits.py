"""Rule trees at the limits of `segments.rules`, through every door, on the database under test.

A tree at each limit is saved through the API and evaluated the three ways a segment is
used (estimate, preview, snapshot) with the members a plain-Python reading of the rules
finds in the data; anything beyond a limit, and any value the databases cannot compare,
is refused at save (API and admin form) with the path of its node, and a segment stored
before the limits is reported, not run. Run the suite with DATABASE_URL=postgres://… too.

On SQLite the connection is held to SQLite's own default limits during these tests (32,766
parameters a statement; 1,000 levels of expression, the default already), whatever the
local build allows: what passes here passes on any build.
"""

import datetime as dt
import json
import sqlite3
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.urls import reverse

from segments import rules
from segments.choices import SegmentKind
from segments.models import Profile, Segment
from segments.services import audience_snapshot_create
from tests.campaigns.factories import activate_acknowledged, make_campaign
from tests.segments.factories import ProfileFactory
from tests.segments.rule_trees import LONGEST, cond

pytestmark = pytest.mark.django_db

SQLITE_DEFAULT_VARIABLE_NUMBER = 32_766
FLOAT_MAX = 1.7976931348623157e308
MISSING = object()


@pytest.fixture(autouse=True)
def sqlite_default_limits():
    if connection.vendor != "sqlite":
        yield
        return
    connection.ensure_connection()
    raw = connection.connection
    before = raw.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, SQLITE_DEFAULT_VARIABLE_NUMBER)
    assert raw.getlimit(sqlite3.SQLITE_LIMIT_EXPR_DEPTH) <= 1000
    yield
    raw.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, before)


# --- the data, and the rules read in plain Python -----------------------------------------


@pytest.fixture
def crowd(db) -> list[Profile]:
    """60 profiles whose attributes differ in type, presence and blankness, key by key."""
    profiles = []
    for i in range(60):
        attributes: dict[str, Any] = {
            # A number, or for every fifth profile the same digits as a string.
            "n": str(i) if i % 5 == 0 else i,
            "code": f"c{i:03d}",
            "flag": i % 3 == 0,
            "tags": [f"t{i % 4}"],
            f"k{i % 50}": "x" if i % 2 else "",
            "big": [rules.MAX_INTEGER, rules.MIN_INTEGER, FLOAT_MAX, -FLOAT_MAX, 0.5][i % 5],
            "day": ["0001-01-01", "9999-12-31T23:59:59Z", "2024-02-29"][i % 3],
            "deep": {"er": {"est": i % 7}},
        }
        if i % 11 == 0:
            attributes["name"] = LONGEST + f" {i}"
        if i % 13 == 0:
            attributes.pop("code")
        profiles.append(
            ProfileFactory.create(
                external_id=f"p{i:03d}",
                email="" if i % 6 == 0 else f"p{i}@example.com",
                attributes=attributes,
            )
        )
    Profile.objects.filter(external_id="p007").update(
        created_at=dt.datetime(1, 1, 1, tzinfo=dt.UTC)
    )
    Profile.objects.filter(external_id="p008").update(
        created_at=dt.datetime(9999, 12, 31, 12, tzinfo=dt.UTC)
    )
    return list(Profile.objects.order_by("id"))


def _attribute(profile: Profile, path: tuple[str, ...]) -> Any:
    value: Any = profile.attributes
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return MISSING
        value = value[key]
    return MISSING if value is None else value


def _same(left: Any, right: Any) -> bool:
    """Typed equality: a number never equals a boolean or a string."""
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left == right
    if isinstance(left, str) or isinstance(right, str):
        return isinstance(left, str) and isinstance(right, str) and left == right
    if isinstance(left, int | float) and isinstance(right, int | float):
        return left == right
    return False


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _attribute_matches(value: Any, op: str, wanted: Any) -> bool:
    present = value is not MISSING
    if op == "eq":
        return present and _same(value, wanted)
    if op == "ne":
        return present and not _same(value, wanted)
    if op == "in":
        return present and any(_same(value, item) for item in wanted)
    if op == "not_in":
        return present and not any(_same(value, item) for item in wanted)
    if op in ("gt", "gte", "lt", "lte"):
        compare = {
            "gt": lambda a, b: a > b,
            "gte": lambda a, b: a >= b,
            "lt": lambda a, b: a < b,
            "lte": lambda a, b: a <= b,
        }[op]
        return _is_number(value) and compare(value, wanted)
    if op == "contains":
        if isinstance(value, list):
            return wanted in value
        return isinstance(value, str) and wanted.lower() in value.lower()
    if op == "startswith":
        return isinstance(value, str) and value.lower().startswith(wanted.lower())
    if op == "exists":
        return present == wanted
    if op == "empty":
        blank = not present or value in ("", [], {})
        return blank == wanted
    if op in ("before", "after"):
        return isinstance(value, str) and (value < wanted if op == "before" else value > wanted)
    raise AssertionError(op)


def _text_matches(value: str, op: str, wanted: Any) -> bool:
    if op == "eq":
        return value == wanted
    if op == "ne":
        return value != "" and value != wanted
    if op == "in":
        return value in wanted
    if op == "not_in":
        return value != "" and value not in wanted
    if op == "contains":
        return wanted.lower() in value.lower()
    if op == "startswith":
        return value.lower().startswith(wanted.lower())
    if op == "exists":
        return (value != "") == wanted
    if op == "empty":
        return (value == "") == wanted
    raise AssertionError(op)


def matches(node: dict[str, Any], profile: Profile) -> bool:
    """Whether the profile is a member, read from the rules' documented meaning."""
    if "all" in node:
        return all(matches(child, profile) for child in node["all"])
    if "any" in node:
        return any(matches(child, profile) for child in node["any"])
    if "not" in node:
        return not matches(node["not"], profile)
    field, op, wanted = node["field"], node["op"], node["value"]
    if field.startswith("attributes."):
        path = tuple(field.removeprefix("attributes.").split("."))
        return _attribute_matches(_attribute(profile, path), op, wanted)
    if field == "created_at":
        moment = rules.parse_moment(wanted)
        assert isinstance(moment, dt.datetime)
        return profile.created_at < moment if op == "before" else profile.created_at > moment
    return _text_matches(getattr(profile, field), op, wanted)


# --- trees at the limits -----------------------------------------------------------------


# Conditions that cost the most SQL (type checks, negations, lists, LIKE): a few profiles
# pass each rare one, most pass each common one.
def _rare(index: int) -> dict[str, Any]:
    kinds = [
        cond(f"attributes.z{index}", "empty", False),
        {"not": cond("attributes.code", "exists", True)},
        cond("attributes.deep.er.est", "not_in", [*range(7), "x"]),
        cond("attributes.n", "exists", False),
        cond("attributes.tags", "contains", f"T{index % 4}"),
        cond("email", "startswith", f"zz{index}"),
    ]
    return kinds[index % len(kinds)]


def _common(index: int) -> dict[str, Any]:
    kinds = [
        cond(f"attributes.z{index}", "empty", True),
        {"not": cond("attributes.code", "contains", "9")},
        cond("attributes.deep.er.est", "not_in", [index % 7, "x", True]),
        cond(f"attributes.z{index}", "exists", False),
        cond("attributes.n", "ne", index),
        cond("email", "contains", "@EXAMPLE"),
    ]
    return kinds[index % len(kinds)]


def _chain(depth: int, seed: int) -> dict[str, Any]:
    """A tree whose deepest node is `depth` levels below its root, alternating any, not and
    all along one path, each group holding the deeper part and a heavy condition (rare in
    an any, common in an all): the most parentheses SQL can nest."""
    leaf = cond("attributes.deep.er.est", "not_in", [seed % 7, "7", False])
    tree: dict[str, Any] = {"not": leaf}
    for level in range(depth - 1):
        if level % 3 == 1:
            tree = {"not": tree}
        elif level % 3 == 0:
            tree = {"any": [_rare(seed + level), tree]}
        else:
            tree = {"all": [_common(seed + level), tree]}
    return tree


def _size(node: Any) -> int:
    if "not" in node:
        return 1 + _size(node["not"])
    children = node.get("all", node.get("any"))
    return 1 + sum(_size(child) for child in children) if children is not None else 1


def _forked_chains() -> dict[str, Any]:
    """Two levels of equally deep halves, each ending in chains to the deepest level: the
    parser holds an operand of every level above while it reads the chains."""
    chain_depth = rules.MAX_DEPTH - 2
    return {
        "all": [
            {"any": [_chain(chain_depth, seed) for seed in (0, 1)]},
            {"any": [_chain(chain_depth, seed) for seed in (2, 3)]},
        ]
    }


def _fill(group: str, make: Any, nodes: int) -> dict[str, Any]:
    """A `group` of as many `make(index)` children as fit in `nodes` nodes."""
    children: list[dict[str, Any]] = []
    used = 1
    index = 0
    while used + _size(make(index)) <= nodes:
        children.append(make(index))
        used += _size(make(index))
        index += 1
    return {group: children}


def _list(field: str, op: str, matching: list[Any], filler: Any) -> dict[str, Any]:
    """A full list: the values that may match, then values that match nothing."""
    values = list(matching)
    values += [filler(index) for index in range(rules.MAX_LIST_VALUES - len(values))]
    return cond(field, op, values)


FULL_LISTS = {
    "in-numbers-strings-booleans": _list(
        "attributes.n",
        "in",
        [*range(0, 60, 4), *[str(i) for i in range(0, 60, 10)], True, False],
        lambda index: f"none-{index}",
    ),
    "in-does-not-mix-1-and-true": _list(
        "attributes.flag", "in", [1, 0, True], lambda index: 1000 + index
    ),
    "not_in-strings": _list(
        "attributes.code", "not_in", [f"c{i:03d}" for i in range(0, 60, 3)], str
    ),
    "in-external-id": _list(
        "external_id", "in", [f"p{i:03d}" for i in range(0, 60, 7)], lambda i: f"q{i}"
    ),
    "not_in-email": _list("email", "not_in", ["p1@example.com", ""], lambda i: f"{i}@x"),
    "in-nested-path": _list("attributes.deep.er.est", "in", [1, 3, "5"], lambda i: -i - 1),
}


def _all_the_lists() -> dict[str, Any]:
    """Lists holding MAX_TREE_LIST_VALUES values together, in an `any` of `all`s."""
    count = rules.MAX_TREE_LIST_VALUES // rules.MAX_LIST_VALUES
    pool = list(FULL_LISTS.values())
    chosen = [pool[index % len(pool)] for index in range(count)]
    return {"any": [{"all": chosen[index : index + 2]} for index in range(0, count, 2)]}


AT_THE_LIMITS: dict[str, dict[str, Any]] = {
    **{f"list-{name}": tree for name, tree in FULL_LISTS.items()},
    "lists-of-the-whole-tree": _all_the_lists(),
    "widest-any": _fill("any", _rare, rules.MAX_NODES),
    # Conditions nobody fails (no profile has a "z…" attribute), and the two that decide.
    "widest-all": {
        "all": [
            *[cond(f"attributes.z{index}", "empty", True) for index in range(rules.MAX_NODES - 4)],
            cond("attributes.n", "gt", 20),
            {"not": cond("attributes.flag", "eq", True)},
        ]
    },
    "widest-all-of-nots": _fill(
        "all", lambda index: {"not": cond(f"attributes.k{index % 50}", "eq", "")}, rules.MAX_NODES
    ),
    "deepest-chain": _chain(rules.MAX_DEPTH, 0),
    "deepest-forked-chains": _forked_chains(),
    "longest-strings": {
        "any": [
            cond("email", "contains", LONGEST),
            cond("attributes.name", "startswith", LONGEST),
            cond("attributes.name", "contains", LONGEST[2:] + " 2"),
            cond("external_id", "in", [LONGEST, "p001"]),
        ]
    },
    # The bounds of the 64-bit range (stored attributes may go beyond: FLOAT_MAX).
    "widest-numbers": {
        "any": [
            cond("attributes.big", "eq", rules.MAX_INTEGER),
            {
                "all": [
                    cond("attributes.big", "lte", rules.MIN_INTEGER),
                    cond("attributes.big", "gte", rules.MIN_INTEGER),
                ]
            },
            {
                "all": [
                    cond("attributes.big", "gt", 9.2e18),
                    cond("attributes.big", "not_in", [rules.MAX_INTEGER, 0.5]),
                ]
            },
        ]
    },
    "earliest-and-latest-dates": {
        "any": [
            cond("created_at", "before", "0001-01-01T00:00:01Z"),
            cond("created_at", "after", "9999-12-31T06:00:00+01:00"),
            cond("attributes.day", "after", "9999-12-31T23:59:58.999999Z"),
            cond("attributes.day", "before", "0001-01-01T00:00:01"),
        ]
    },
}


def test_the_trees_are_at_the_limits():
    trees = AT_THE_LIMITS
    assert _size(trees["widest-any"]) == rules.MAX_NODES
    assert _size(trees["widest-all"]) == rules.MAX_NODES
    assert _size(trees["widest-all-of-nots"]) >= rules.MAX_NODES - 1
    assert _size(trees["deepest-forked-chains"]) <= rules.MAX_NODES
    values = [
        len(node["value"])
        for group in trees["lists-of-the-whole-tree"]["any"]
        for node in group["all"]
    ]
    assert sum(values) == rules.MAX_TREE_LIST_VALUES
    assert all(len(tree["value"]) == rules.MAX_LIST_VALUES for tree in FULL_LISTS.values())
    for name in ("deepest-chain", "deepest-forked-chains"):
        errors = rules.rule_errors(trees[name])
        assert errors == [], errors
        deeper = {"not": trees[name]}
        assert any("nested deeper" in error for error in rules.rule_errors(deeper)), name


@pytest.mark.parametrize("name", AT_THE_LIMITS)
def test_a_tree_at_the_limits_is_saved_and_evaluated_every_way(api_client, crowd, name):
    tree = AT_THE_LIMITS[name]
    members = [profile.pk for profile in crowd if matches(tree, profile)]
    # The data must tell members from others, or the counts would prove nothing.
    assert 0 < len(members) < len(crowd), (name, len(members))

    response = api_client.post(
        "/api/segments/", {"name": name, "kind": "rules", "rules": tree}, format="json"
    )
    assert response.status_code == 201, str(response.json())[:500]
    segment = Segment.objects.get(pk=response.json()["id"])

    estimate = api_client.get(f"/api/segments/{segment.pk}/estimate/")
    assert estimate.status_code == 200, estimate.json()
    assert estimate.json() == {"count": len(members), "exact": True, "margin": 0}

    preview = api_client.get(f"/api/segments/{segment.pk}/preview/", {"limit": 100})
    assert preview.status_code == 200, preview.json()
    by_id = {profile.pk: profile.external_id for profile in crowd}
    assert [row["external_id"] for row in preview.json()] == [by_id[pk] for pk in members]

    snapshot = audience_snapshot_create(segment=segment)
    assert snapshot.size == len(members)
    assert sorted(snapshot.members.values_list("profile_id", flat=True)) == members


def test_the_admin_page_of_a_segment_at_the_limits_shows_its_count(admin_client, crowd):
    tree = AT_THE_LIMITS["deepest-forked-chains"]
    members = [profile for profile in crowd if matches(tree, profile)]
    segment = Segment.objects.create(name="Deep", kind=SegmentKind.RULES, rules=tree)
    page = admin_client.get(reverse("admin:segments_segment_change", args=[segment.pk]))
    assert page.status_code == 200
    assert f"<strong>{len(members)}</strong> profiles match now" in page.content.decode()


# --- refused at every door ---------------------------------------------------------------


def nested(condition: dict[str, Any]) -> dict[str, Any]:
    """The condition at path all[1].any[0]."""
    return {"all": [cond("email", "exists", True), {"any": [condition]}]}


REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    "impossible-date": (
        nested(cond("created_at", "before", "2024-02-30")),
        'all[1].any[0].value: "before" is not a calendar date',
    ),
    "date-out-of-range": (
        nested(cond("attributes.joined", "after", "9999-99-99")),
        'all[1].any[0].value: "after" is not a calendar date',
    ),
    "30-digit-number": (
        nested(cond("attributes.age", "gt", 10**29)),
        "all[1].any[0].value: the value is beyond the 64-bit range",
    ),
    "string-too-long": (
        nested(cond("attributes.name", "contains", LONGEST + "x")),
        "all[1].any[0].value: the value holds 1,001 characters",
    ),
    "list-too-long": (
        nested(cond("attributes.code", "in", list(range(rules.MAX_LIST_VALUES + 1)))),
        f'all[1].any[0].value: "in" takes at most {rules.MAX_LIST_VALUES:,} values',
    ),
    "too-many-nodes": (
        {"any": [cond("attributes.n", "eq", index) for index in range(2000)]},
        f"any[{rules.MAX_NODES - 1}]: a tree holds at most {rules.MAX_NODES:,} nodes",
    ),
    "too-many-list-values": (
        {
            "all": [
                cond(f"attributes.k{index}", "in", list(range(rules.MAX_LIST_VALUES)))
                for index in range(rules.MAX_TREE_LIST_VALUES // rules.MAX_LIST_VALUES + 1)
            ]
        },
        f"all[{rules.MAX_TREE_LIST_VALUES // rules.MAX_LIST_VALUES}].value: the lists of a "
        f"tree hold at most {rules.MAX_TREE_LIST_VALUES:,} values together",
    ),
}


# Refused too, and never stored: neither database holds these strings.
AT_THE_DOORS = {
    **REFUSED,
    "nul-character": (
        nested(cond("attributes.name", "eq", "a\x00b")),
        "all[1].any[0].value: the value holds a NUL character",
    ),
    "lone-surrogate": (
        nested(cond("external_id", "in", ["a", "\ud800"])),
        "all[1].any[0].value: item 1 is not valid Unicode",
    ),
}


@pytest.mark.parametrize("name", AT_THE_DOORS)
def test_the_api_refuses_a_tree_with_the_node_path(api_client, name):
    tree, message = AT_THE_DOORS[name]
    response = api_client.post(
        "/api/segments/",
        json.dumps({"name": "Refused", "kind": "rules", "rules": tree}),
        content_type="application/json",
    )
    assert response.status_code == 400
    assert any(message in error for error in response.json()["rules"]), response.json()
    assert not Segment.objects.exists()


@pytest.mark.parametrize("name", AT_THE_DOORS)
def test_the_api_refuses_a_change_to_such_a_tree(api_client, name):
    tree, message = AT_THE_DOORS[name]
    segment = Segment.objects.create(name="Kept", rules=cond("attributes.n", "eq", 1))
    response = api_client.patch(
        f"/api/segments/{segment.pk}/",
        json.dumps({"rules": tree}),
        content_type="application/json",
    )
    assert response.status_code == 400
    assert any(message in error for error in response.json()["rules"]), response.json()
    segment.refresh_from_db()
    assert segment.rules == cond("attributes.n", "eq", 1)


def _post_raw(api_client: Any, rules_text: str) -> Any:
    return api_client.post(
        "/api/segments/",
        f'{{"name": "Refused", "kind": "rules", "rules": {rules_text}}}',
        content_type="application/json",
    )


def test_the_api_refuses_a_30_digit_number_as_it_comes_in_json(api_client):
    response = _post_raw(
        api_client,
        '{"field": "attributes.age", "op": "in", "value": [1, 123456789012345678901234567890]}',
    )
    assert response.status_code == 400
    assert any("value: item 1 is beyond the 64-bit range" in e for e in response.json()["rules"])
    assert not Segment.objects.exists()


def test_the_api_refuses_a_number_json_cannot_hold(api_client):
    # 1e400 reads as infinity, which JSON cannot carry: refused before the rules are read.
    response = _post_raw(api_client, '{"field": "attributes.age", "op": "gt", "value": 1e400}')
    assert response.status_code == 400
    assert not Segment.objects.exists()


def _admin_form_errors(response: Any) -> list[str]:
    return list(response.context["adminform"].form.errors.get("rules", []))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        *[(json.dumps(tree), message) for tree, message in AT_THE_DOORS.values()],
        (
            '{"field": "attributes.age", "op": "gt", "value": NaN}',
            "value: the value is not a finite number",
        ),
        (
            '{"field": "attributes.age", "op": "lt", "value": -Infinity}',
            "value: the value is not a finite number",
        ),
    ],
    ids=[*AT_THE_DOORS, "nan", "infinity"],
)
def test_the_admin_form_puts_the_refusal_on_the_rules_field(admin_client, text, message):
    response = admin_client.post(
        reverse("admin:segments_segment_add"),
        {"name": "Refused", "description": "", "kind": "rules", "rules": text},
    )
    assert response.status_code == 200
    errors = _admin_form_errors(response)
    assert any(message in error for error in errors), errors[:3]
    assert not Segment.objects.exists()


def test_the_admin_change_form_refuses_too(admin_client):
    tree, message = REFUSED["impossible-date"]
    segment = Segment.objects.create(name="Kept", rules=cond("attributes.n", "eq", 1))
    response = admin_client.post(
        reverse("admin:segments_segment_change", args=[segment.pk]),
        {"name": "Kept", "description": "", "rules": json.dumps(tree)},
    )
    assert response.status_code == 200
    assert any(message in error for error in _admin_form_errors(response))
    segment.refresh_from_db()
    assert segment.rules == cond("attributes.n", "eq", 1)


# --- stored before the limits: reported, not run ------------------------------------------


@pytest.fixture(params=list(REFUSED))
def stored_before_the_limits(request, db):
    """A segment whose tree was saved before today's checks (straight into the table)."""
    tree, message = REFUSED[request.param]
    segment = Segment.objects.create(name="Old", kind=SegmentKind.RULES, rules=tree)
    return segment, message


def test_the_api_reports_a_stored_tree_it_cannot_evaluate(api_client, stored_before_the_limits):
    segment, message = stored_before_the_limits
    for call in ("estimate", "preview"):
        response = api_client.get(f"/api/segments/{segment.pk}/{call}/")
        assert response.status_code == 400, call
        assert message in response.json()["detail"], (call, response.json())
    response = api_client.post(
        f"/api/segments/{segment.pk}/freeze/", {"name": "Copy"}, format="json"
    )
    assert response.status_code == 400
    assert message in response.json()["detail"]
    assert list(Segment.objects.values_list("name", flat=True)) == ["Old"]


def test_the_admin_reports_a_stored_tree_it_cannot_evaluate(admin_client, stored_before_the_limits):
    segment, message = stored_before_the_limits
    page = admin_client.get(reverse("admin:segments_segment_change", args=[segment.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    assert "Invalid rules:" in html
    assert message.replace('"', "&quot;") in html
    estimate = admin_client.get(reverse("admin:segments_segment_estimate", args=[segment.pk]))
    assert estimate.status_code == 400
    assert message in estimate.json()["detail"]


def test_a_campaign_on_a_stored_tree_it_cannot_evaluate_is_not_activated(
    stored_before_the_limits,
):
    segment, message = stored_before_the_limits
    campaign = make_campaign(segment=segment)
    with pytest.raises(ValidationError) as refused:
        activate_acknowledged(campaign=campaign)
    assert any(message in problem for problem in refused.value.messages)
    campaign.refresh_from_db()
    assert campaign.status == "draft"
