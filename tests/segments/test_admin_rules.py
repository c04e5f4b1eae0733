"""The rule builder's server side: the catalogue rendered into the segment form, and the live
estimate of unsaved rules (count, reach per channel, first members) it asks for."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from segments.models import Segment
from segments.rules import MAX_DEPTH, OPERATORS, TEXT_OPERATORS, rule_catalogue
from tests.segments.factories import ProfileFactory

pytestmark = pytest.mark.django_db

ESTIMATE = "admin:segments_segment_rules_estimate"
FRENCH = {"field": "attributes.country", "op": "eq", "value": "FR"}


def estimate(client: Any, rules: Any) -> Any:
    return client.post(
        reverse(ESTIMATE), data=json.dumps({"rules": rules}), content_type="application/json"
    )


def page_catalogue(html: str) -> dict[str, Any]:
    start = html.index('<script id="rule-catalogue" type="application/json">')
    text = html[start:].split(">", 1)[1].split("</script>", 1)[0]
    return json.loads(text)


def test_estimate_counts_unsaved_rules_with_reach_and_members(admin_client):
    ProfileFactory.create(
        external_id="fr-mail", attributes={"country": "FR"}, email="a@example.com", phone=""
    )
    ProfileFactory.create(
        external_id="fr-optout",
        attributes={"country": "FR"},
        email="b@example.com",
        phone="+33612345678",
        consent_email=False,
    )
    ProfileFactory.create(external_id="de-1", attributes={"country": "DE"})

    response = estimate(admin_client, {"all": [FRENCH]})

    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 2
    # Email: fr-optout withdrew consent; SMS: only fr-optout has a phone (and consent).
    assert body["reach"]["email"] == 1
    assert body["reach"]["sms"] == 1
    assert [p["external_id"] for p in body["preview"]["profiles"]] == ["fr-mail", "fr-optout"]
    assert not Segment.objects.exists()  # nothing saved


def test_estimate_of_invalid_rules_is_400_with_the_node_path(admin_client):
    response = estimate(
        admin_client, {"all": [FRENCH, {"field": "attributes.age", "op": "gtx", "value": 1}]}
    )

    assert response.status_code == 400
    assert response.json()["errors"] == ['all[1].op: unknown operator "gtx"']
    assert 'all[1].op: unknown operator "gtx"' in response.json()["detail"]


@pytest.mark.parametrize("body", ["{oops", "[1]", '{"tree": {}}'])
def test_estimate_refuses_a_body_that_is_not_rules(admin_client, body):
    response = admin_client.post(reverse(ESTIMATE), data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["detail"]


def test_estimate_is_refused_without_the_view_permission(client, user_with_perms):
    client.force_login(user_with_perms("segments.add_profile"))
    response = estimate(client, {"all": [FRENCH]})
    assert response.status_code == 403


def test_estimate_hides_members_from_a_user_who_may_not_see_profiles(client, user_with_perms):
    ProfileFactory.create(external_id="fr-1", attributes={"country": "FR"})
    client.force_login(user_with_perms("segments.view_segment"))

    body = estimate(client, FRENCH).json()

    assert body["count"] == 1
    assert "profiles" not in body["preview"]
    assert "see a segment's members" in body["preview"]["refusal"]


def test_estimate_stops_at_the_time_limit_on_sqlite(admin_client, settings):
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's progress handler; PostgreSQL's statement timeout is tested below")
    ProfileFactory.create_batch(50, attributes={"country": "FR"})
    # A limit already over when the count starts: SQLite interrupts the statement.
    settings.SALVO_SEGMENT_ESTIMATE_TIMEOUT_MS = 0

    response = estimate(
        admin_client, {"any": [FRENCH, {"field": "email", "op": "empty", "value": True}]}
    )

    assert response.status_code == 503
    assert "SALVO_SEGMENT_ESTIMATE_TIMEOUT_MS" in response.json()["detail"]


def test_estimate_stops_at_the_time_limit_on_postgresql(admin_client, settings):
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's statement timeout")
    import psycopg

    # Another session holds the profiles table: the count waits for it, and the statement
    # timeout (which counts the wait) ends it instead of letting it wait as long as that.
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    settings.SALVO_SEGMENT_ESTIMATE_TIMEOUT_MS = 300
    with psycopg.connect(**params) as holder:
        holder.execute("LOCK TABLE segments_profile IN ACCESS EXCLUSIVE MODE")
        response = estimate(admin_client, FRENCH)
        holder.rollback()

    assert response.status_code == 503
    assert "300 ms" in response.json()["detail"]


def test_estimate_costs_the_same_queries_whatever_the_number_of_profiles(admin_client):
    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert estimate(admin_client, {"all": [FRENCH]}).status_code == 200
        return len(captured)

    ProfileFactory.create(attributes={"country": "FR"})
    few = queries()
    ProfileFactory.create_batch(30, attributes={"country": "FR"})
    assert queries() == few


@pytest.mark.parametrize("url_name", ["add", "change"])
def test_segment_form_carries_the_catalogue_from_the_rules_grammar(admin_client, url_name):
    ProfileFactory.create(attributes={"country": "FR", "age": 30})
    args = [] if url_name == "add" else [Segment.objects.create(name="S", rules=FRENCH).pk]

    html = admin_client.get(reverse(f"admin:segments_segment_{url_name}", args=args)).content
    catalogue = page_catalogue(html.decode())

    names = [field["name"] for field in catalogue["fields"]]
    assert {"email", "created_at", "consent.sms", "attributes.country", "attributes.age"} <= set(
        names
    )
    assert [op["op"] for op in catalogue["operators"]["attribute"]] == list(OPERATORS)
    assert [op["op"] for op in catalogue["operators"]["text"]] == list(TEXT_OPERATORS)
    assert catalogue["limits"]["max_depth"] == MAX_DEPTH
    assert catalogue["estimate_url"] == reverse(ESTIMATE)
    assert 'src="/static/segments/rule_builder.js"' in html.decode()


def test_catalogue_value_inputs_follow_the_operator_and_field_kind():
    operators = rule_catalogue()["operators"]
    inputs = {kind: {op["op"]: op["value"] for op in ops} for kind, ops in operators.items()}
    assert inputs["consent"] == {"eq": "boolean", "ne": "boolean"}
    assert inputs["text"]["eq"] == "text"
    assert inputs["attribute"]["eq"] == "scalar"
    assert inputs["attribute"]["in"] == "list"
    assert inputs["date"] == {"before": "moment", "after": "moment", "within_days": "days"}


def test_catalogue_leaves_out_keys_no_rule_can_name():
    names = [f["name"] for f in rule_catalogue(attribute_keys=["ok", "bad key"])["fields"]]
    assert "attributes.ok" in names
    assert "attributes.bad key" not in names


def test_a_static_segment_page_has_no_rule_builder(admin_client):
    segment = Segment.objects.create(name="List", kind="static", rules={})
    html = admin_client.get(reverse("admin:segments_segment_change", args=[segment.pk]))
    assert 'id="rule-catalogue"' not in html.content.decode()


@pytest.mark.parametrize("url_name", ["add", "change"])
def test_segment_form_with_the_builder_costs_the_same_queries_whatever_the_data(
    admin_client, url_name
):
    segment = Segment.objects.create(name="S", rules=FRENCH)
    url = reverse(
        f"admin:segments_segment_{url_name}", args=[] if url_name == "add" else [segment.pk]
    )

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert admin_client.get(url).status_code == 200
        return len(captured)

    ProfileFactory.create(attributes={"country": "FR", "k0": 0})
    few = queries()
    for n in range(30):
        ProfileFactory.create(attributes={"country": "FR", f"k{n}": n})
    assert queries() == few
