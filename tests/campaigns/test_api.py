"""The developers' door: /api/campaigns/ as a client sees it."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.pagination import PageNumberPagination
from rest_framework.test import APIClient

from campaigns import services
from campaigns.choices import CampaignStatus as Status
from campaigns.models import Campaign
from tests.campaigns.doors import create_payload, url
from tests.campaigns.factories import (
    activate_acknowledged,
    email_action,
    make_campaign,
    make_campaign_in_status,
    make_live_campaign,
    review_warnings,
)
from tests.campaigns.lifecycle import (
    ACTIONS,
    ALLOWED,
    STATES,
    TARGET,
    USER_OPERATIONS,
    snapshot,
    version,
)
from tests.channels.factories import MessagePresetFactory
from tests.segments.factories import SegmentFactory

pytestmark = pytest.mark.django_db


# --- every operation from every state -------------------------------------------------


@pytest.mark.parametrize("operation", ACTIONS)
@pytest.mark.parametrize(("status", "with_draft"), STATES)
def test_every_operation_from_every_state(api_client, operation, status, with_draft):
    campaign = make_campaign_in_status(status, with_draft=with_draft)
    before = snapshot(campaign)

    data = {"acknowledge": review_warnings(campaign)} if operation == "activate" else None
    response = api_client.post(url(campaign, operation), data, format="json")

    if (status, with_draft) not in ALLOWED[operation]:
        assert response.status_code == 409, response.content
        assert campaign.name in response.json()["detail"]
        assert snapshot(campaign) == before
        return
    expected_code = {"activate": 202, "duplicate": 201, "modify": 201}.get(operation, 200)
    assert response.status_code == expected_code, response.content
    body = response.json()
    campaign.refresh_from_db()
    if operation in TARGET:
        assert campaign.status == TARGET[operation]
        assert body["status"] == TARGET[operation]
    elif operation == "modify":
        assert body["id"] == campaign.draft_version_id
        assert body["number"] == version(campaign, "live").number + 1
    elif operation == "discard_draft":
        assert body["has_open_draft"] is False
        assert campaign.draft_version_id is None
        assert campaign.status == status
    elif operation == "duplicate":
        copy = Campaign.objects.get(pk=body["id"])
        assert copy.status == Status.DRAFT
        assert body["status"] == "draft"
        assert campaign.status == status


@pytest.mark.parametrize(("status", "with_draft"), STATES)
def test_delete_only_a_draft(api_client, status, with_draft):
    campaign = make_campaign_in_status(status, with_draft=with_draft)
    before = snapshot(campaign)

    response = api_client.delete(url(campaign))

    if status == Status.DRAFT:
        assert response.status_code == 204
        assert not Campaign.objects.filter(pk=campaign.pk).exists()
    else:
        assert response.status_code == 409
        assert "only Draft campaigns can be deleted" in response.json()["detail"]
        assert snapshot(campaign) == before


@pytest.mark.parametrize(("status", "with_draft"), STATES)
def test_patch_edits_the_draft_or_is_a_conflict(api_client, status, with_draft):
    campaign = make_campaign_in_status(status, with_draft=with_draft)
    before = snapshot(campaign)

    response = api_client.patch(url(campaign), {"description": "Edited"}, format="json")

    if status == Status.DRAFT or with_draft:
        assert response.status_code == 200, response.content
        assert response.json()["description"] == "Edited"
    else:
        assert response.status_code == 409
        assert campaign.name in response.json()["detail"]
        assert snapshot(campaign) == before


@pytest.mark.parametrize(("status", "with_draft"), STATES)
def test_allowed_operations_match_what_the_endpoints_accept(api_client, status, with_draft):
    campaign = make_campaign_in_status(status, with_draft=with_draft)

    body = api_client.get(url(campaign)).json()

    expected = {op for op in USER_OPERATIONS if (status, with_draft) in ALLOWED[op]}
    assert set(body["allowed_operations"]) == expected


# --- create ----------------------------------------------------------------------------


def test_create_makes_a_draft_with_version_one(api_client):
    payload = create_payload()

    response = api_client.post("/api/campaigns/", payload, format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "draft"
    assert body["name"] == "Spring sale"
    assert body["tags"] == ["promo", "spring"]
    assert body["live_version"] is None
    assert body["has_open_draft"] is False
    draft = body["draft_version"]
    assert draft["number"] == 1
    assert draft["segment"] == payload["segment"]
    assert draft["schedule"] == {"start_at": None, "time_zone": django_settings.TIME_ZONE}
    assert [(a["channel"], a["preset"]) for a in draft["actions"]] == [
        ("email", payload["actions"][0]["preset"]),
        ("sms", payload["actions"][1]["preset"]),
    ]
    campaign = Campaign.objects.get(pk=body["id"])
    assert campaign.created_by == api_client.user
    assert campaign.transitions.get().name == "create"


def test_create_with_a_future_start(api_client):
    start = (timezone.now() + dt.timedelta(days=2)).replace(microsecond=0)
    payload = create_payload(schedule={"start_at": start.isoformat()})

    response = api_client.post("/api/campaigns/", payload, format="json")

    assert response.status_code == 201, response.content
    version = Campaign.objects.get(pk=response.json()["id"]).draft_version
    assert version.start_at == start


def test_create_with_only_a_name_makes_an_empty_draft(api_client):
    response = api_client.post("/api/campaigns/", {"name": "Bare"}, format="json")

    assert response.status_code == 201, response.content
    assert response.json()["draft_version"]["segment"] is None
    assert response.json()["draft_version"]["actions"] == []


def _bad_create_inputs() -> list[Any]:
    past = (timezone.now() - dt.timedelta(hours=1)).isoformat()
    return [
        pytest.param({"name": ""}, "name", id="empty-name"),
        pytest.param({"segment": "abc"}, "segment", id="segment-not-an-id"),
        pytest.param({"segment": 999999}, "segment", id="unknown-segment"),
        pytest.param({"actions": "x"}, "actions", id="actions-not-a-list"),
        pytest.param({"actions": [{"channel": "fax", "body": "x"}]}, "actions", id="bad-channel"),
        pytest.param(
            {"actions": [{"channel": "email", "preset": 999999, "body": "x"}]},
            "actions",
            id="unknown-preset",
        ),
        pytest.param({"type": "spam"}, "type", id="unknown-type"),
        pytest.param({"tags": "promo"}, "tags", id="tags-not-a-list"),
        pytest.param({"schedule": {"start_at": "tomorrow"}}, "schedule", id="bad-time"),
        pytest.param({"schedule": {"start_at": past}}, "start_at", id="past-start"),
    ]


@pytest.mark.parametrize(("overrides", "field"), _bad_create_inputs())
def test_create_refuses_bad_input_and_saves_nothing(api_client, overrides, field):
    response = api_client.post("/api/campaigns/", create_payload(**overrides), format="json")

    assert response.status_code == 400, response.content
    assert field in response.json()
    assert not Campaign.objects.exists()


def test_create_refuses_a_preset_of_the_wrong_channel(api_client):
    sms_preset = MessagePresetFactory.create(channel="sms", name="Texts")
    actions = [{"channel": "email", "preset": sms_preset.pk, "subject": "S", "body": "B"}]

    response = api_client.post("/api/campaigns/", create_payload(actions=actions), format="json")

    assert response.status_code == 400
    assert "Texts" in response.json()["actions"][0]
    assert not Campaign.objects.exists()


def test_create_refuses_a_taken_name(api_client):
    make_campaign(name="Spring sale")

    response = api_client.post("/api/campaigns/", create_payload(), format="json")

    assert response.status_code == 400
    assert "name" in response.json()
    assert Campaign.objects.count() == 1


# --- read ------------------------------------------------------------------------------


def test_detail_shows_both_versions_the_open_draft_mark_and_the_error(api_client):
    campaign = make_campaign_in_status(Status.LIVE, with_draft=True, tags=["vip"])

    body = api_client.get(url(campaign)).json()

    assert body["status"] == "live"
    assert body["has_open_draft"] is True
    assert body["tags"] == ["vip"]
    assert body["type"] == "marketing"
    assert body["live_version"]["number"] == 1
    assert body["live_version"]["activated_at"] is not None
    assert body["draft_version"]["number"] == 2
    assert body["draft_version"]["activated_at"] is None
    assert len(body["draft_version"]["actions"]) == 2
    assert body["activation_error"] == ""
    assert {"created_at", "updated_at", "started_at"} <= set(body)


def test_detail_finds_a_campaign_the_default_list_hides(api_client):
    campaign = make_campaign_in_status(Status.ARCHIVED)

    response = api_client.get(url(campaign))

    assert response.status_code == 200
    assert response.json()["status"] == "archived"


def test_versions_lists_every_version_newest_first(api_client):
    campaign = make_campaign_in_status(Status.LIVE, with_draft=True)

    response = api_client.get(url(campaign, "versions"))

    assert response.status_code == 200
    versions = response.json()["results"]
    assert [v["number"] for v in versions] == [2, 1]
    assert versions[1]["activated_by"] is None


def test_transitions_show_the_log_with_who_and_why(api_client):
    campaign = make_live_campaign()
    before = timezone.now()
    api_client.post(url(campaign, "stop"), {"reason": "Wrong audience"}, format="json")
    after = timezone.now()

    response = api_client.get(url(campaign, "transitions"))

    assert response.status_code == 200
    log = response.json()["results"]
    assert [entry["name"] for entry in log] == [
        "stop",
        "activation_succeed",
        "activate",
        "create",
    ]
    stopped_at = dt.datetime.fromisoformat(log[0].pop("at"))
    assert before <= stopped_at <= after
    assert log[0] == {
        "name": "stop",
        "label": "Stopped",
        "source": "live",
        "target": "stopped",
        "by": api_client.user.username,
        "reason": "Wrong audience",
        "version": None,
    }
    assert log[1]["version"] == 1


# --- edit ------------------------------------------------------------------------------


def test_patch_changes_only_the_given_keys(api_client):
    campaign = make_campaign(description="Keep me", tags=["a"])
    segment = SegmentFactory.create()

    response = api_client.patch(url(campaign), {"segment": segment.pk}, format="json")

    assert response.status_code == 200, response.content
    campaign.refresh_from_db()
    assert campaign.description == "Keep me"
    assert version(campaign).segment == segment
    assert version(campaign).actions.count() == 2
    assert sorted(campaign.tags.names()) == ["a"]


def test_patch_actions_replaces_all_actions(api_client):
    campaign = make_campaign()
    push = MessagePresetFactory.create(channel="push")
    actions = [{"channel": "push", "preset": push.pk, "subject": "Hey", "body": "Open me"}]

    response = api_client.patch(url(campaign), {"actions": actions}, format="json")

    assert response.status_code == 200, response.content
    assert [a["channel"] for a in response.json()["draft_version"]["actions"]] == ["push"]


def test_patch_schedule_and_tags(api_client):
    campaign = make_campaign(tags=["a"])
    start = (timezone.now() + dt.timedelta(days=1)).replace(microsecond=0)

    response = api_client.patch(
        url(campaign), {"schedule": {"start_at": start.isoformat()}, "tags": ["b"]}, format="json"
    )

    assert response.status_code == 200, response.content
    campaign.refresh_from_db()
    assert version(campaign).start_at == start
    assert list(campaign.tags.names()) == ["b"]


def test_patch_of_a_running_campaigns_draft_leaves_the_live_version(api_client):
    campaign = make_campaign_in_status(Status.LIVE, with_draft=True)

    response = api_client.patch(url(campaign), {"segment": None}, format="json")

    assert response.status_code == 200
    body = response.json()
    assert body["draft_version"]["segment"] is None
    assert body["live_version"]["segment"] is not None


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({"segment": "abc"}, id="segment-not-an-id"),
        pytest.param({"actions": "x"}, id="actions-not-a-list"),
        pytest.param({"actions": [{"channel": "email"}]}, id="action-without-preset"),
        pytest.param({"name": ""}, id="empty-name"),
        pytest.param({"type": 3}, id="type-not-a-choice"),
        pytest.param({"schedule": "now"}, id="schedule-not-an-object"),
    ],
)
def test_patch_refuses_wrong_types_and_changes_nothing(api_client, payload):
    campaign = make_campaign()
    before = snapshot(campaign)

    response = api_client.patch(url(campaign), payload, format="json")

    assert response.status_code == 400, response.content
    assert set(payload) & set(response.json())
    assert snapshot(campaign) == before


def test_patch_with_a_wrong_channel_preset_changes_nothing(api_client):
    campaign = make_campaign()
    before = snapshot(campaign)
    sms = MessagePresetFactory.create(channel="sms")
    actions = [{"channel": "email", "preset": sms.pk, "subject": "S", "body": "B"}]

    response = api_client.patch(
        url(campaign), {"description": "changed", "actions": actions}, format="json"
    )

    assert response.status_code == 400
    assert "actions" in response.json()
    assert snapshot(campaign) == before


# --- activation ------------------------------------------------------------------------


def test_activate_answers_202_with_activating(api_client):
    campaign = make_campaign()
    data = {"acknowledge": review_warnings(campaign)}

    response = api_client.post(url(campaign, "activate"), data, format="json")

    assert response.status_code == 202
    assert response.json()["status"] == "activating"
    assert response.json()["allowed_operations"] == ["duplicate"]


def test_activation_400_lists_every_failed_check_and_changes_nothing(api_client):
    email = MessagePresetFactory.create(channel="email", name="News", from_email="")
    campaign = make_campaign(
        segment=None, actions=[email_action(preset=email, subject="", body=" ")]
    )
    before = snapshot(campaign)

    response = api_client.post(url(campaign, "activate"))

    assert response.status_code == 400
    body = response.json()
    assert body["detail"]
    errors = [check for check in body["checks"] if check["level"] == "error"]
    assert [check["code"] for check in errors] == [
        "no_segment",
        "preset_incomplete",
        "empty_body",
        "missing_subject",
    ]
    joined = " ".join(check["message"] for check in errors)
    for words in ("segment", "no from_email", "body is empty", "needs a subject"):
        assert words in joined
    assert snapshot(campaign) == before


# --- who may call ---------------------------------------------------------------------


def test_unauthenticated_calls_get_401():
    campaign = make_campaign()
    client = APIClient()

    assert client.get("/api/campaigns/").status_code == 401
    assert client.get(url(campaign)).status_code == 401
    assert client.post(url(campaign, "activate")).status_code == 401
    assert client.post("/api/campaigns/", {"name": "x"}, format="json").status_code == 401
    assert Campaign.objects.get(pk=campaign.pk).status == Status.DRAFT


def test_a_bad_token_gets_401():
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-token")

    assert client.get("/api/campaigns/").status_code == 401


def test_session_auth_works_too(client, admin_user):
    client.force_login(admin_user)

    assert client.get("/api/campaigns/").status_code == 200


def test_activate_without_the_permission_is_403(api_client_for, user_with_perms):
    campaign = make_campaign()
    user = user_with_perms("campaigns.view_campaign", "campaigns.change_campaign")

    response = api_client_for(user).post(url(campaign, "activate"))

    assert response.status_code == 403
    assert Campaign.objects.get(pk=campaign.pk).status == Status.DRAFT


def test_activate_with_the_permission_is_accepted(api_client_for, user_with_perms):
    campaign = make_campaign()
    user = user_with_perms("campaigns.view_campaign", "campaigns.activate_campaign")

    data = {"acknowledge": review_warnings(campaign)}

    response = api_client_for(user).post(url(campaign, "activate"), data, format="json")

    assert response.status_code == 202
    assert response.json()["allowed_operations"] == []


@pytest.mark.parametrize(
    ("method", "operation", "perm"),
    [
        ("get", "", "campaigns.view_campaign"),
        ("patch", "", "campaigns.change_campaign"),
        ("delete", "", "campaigns.delete_campaign"),
        ("post", "stop", "campaigns.activate_campaign"),
        ("post", "modify", "campaigns.change_campaign"),
        ("post", "duplicate", "campaigns.add_campaign"),
    ],
)
def test_each_call_needs_its_permission(api_client_for, user_with_perms, method, operation, perm):
    campaign = make_campaign_in_status(Status.LIVE) if operation else make_campaign()
    before = snapshot(campaign)
    others = {
        "campaigns.view_campaign",
        "campaigns.change_campaign",
        "campaigns.add_campaign",
        "campaigns.delete_campaign",
        "campaigns.activate_campaign",
    } - {perm}
    client = api_client_for(user_with_perms(*others))

    response = getattr(client, method)(url(campaign, operation), {}, format="json")

    assert response.status_code == 403
    assert snapshot(campaign) == before


def test_create_needs_the_add_permission(api_client_for, user_with_perms):
    client = api_client_for(user_with_perms("campaigns.view_campaign"))

    response = client.post("/api/campaigns/", create_payload(), format="json")

    assert response.status_code == 403
    assert not Campaign.objects.exists()


def test_a_viewer_sees_no_allowed_operations(api_client_for, user_with_perms):
    campaign = make_campaign()
    client = api_client_for(user_with_perms("campaigns.view_campaign"))

    assert client.get(url(campaign)).json()["allowed_operations"] == []


@pytest.mark.parametrize(
    ("method", "operation"),
    [
        ("get", ""),
        ("patch", ""),
        ("delete", ""),
        ("get", "versions"),
        ("get", "transitions"),
        *[("post", op) for op in ACTIONS],
    ],
)
def test_unknown_id_is_404(api_client, method, operation):
    response = getattr(api_client, method)(url(424242, operation), {}, format="json")

    assert response.status_code == 404
    assert "detail" in response.json()


def test_put_is_not_offered(api_client):
    campaign = make_campaign()

    assert api_client.put(url(campaign), {"name": "x"}, format="json").status_code == 405


# --- the list --------------------------------------------------------------------------


def _with_tags_and_versions(n: int) -> None:
    for i in range(n):
        campaign = make_live_campaign(name=f"Bulk {n}-{i}", tags=["bulk", f"t{i % 3}"])
        services.campaign_modify(campaign=campaign, user=None)


def _list_queries(client: APIClient) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = client.get("/api/campaigns/?status=all")
    assert response.status_code == 200
    return len(queries)


def test_list_costs_the_same_number_of_queries_for_3_and_30_campaigns(api_client):
    _with_tags_and_versions(3)
    few = _list_queries(api_client)
    _with_tags_and_versions(27)

    many = _list_queries(api_client)

    assert api_client.get("/api/campaigns/?status=all").json()["count"] == 30
    assert many == few


def test_list_is_paginated(api_client, monkeypatch):
    monkeypatch.setattr(PageNumberPagination, "page_size", 2)
    for _ in range(3):
        make_campaign()

    first = api_client.get("/api/campaigns/").json()
    second = api_client.get(first["next"]).json()

    assert first["count"] == 3
    assert len(first["results"]) == 2
    assert len(second["results"]) == 1
    assert second["next"] is None


@pytest.mark.parametrize(
    ("endpoint", "key", "expected"),
    [
        ("versions", "number", [4, 3, 2, 1]),
        (
            "transitions",
            "name",
            [
                *(["activation_succeed", "activate", "modify"] * 3),
                "activation_succeed",
                "activate",
                "create",
            ],
        ),
    ],
)
def test_versions_and_transitions_are_paginated_like_every_list(
    api_client, monkeypatch, endpoint, key, expected
):
    campaign = make_live_campaign()
    for _ in range(3):  # three new versions, each activated in turn
        services.campaign_modify(campaign=campaign, user=None)
        activate_acknowledged(campaign=campaign)
        services.campaign_activation_complete(campaign_id=campaign.pk)
    monkeypatch.setattr(PageNumberPagination, "page_size", 2)

    pages = [api_client.get(url(campaign, endpoint)).json()]
    while pages[-1]["next"]:
        pages.append(api_client.get(pages[-1]["next"]).json())

    assert [len(page["results"]) for page in pages] == [
        min(2, len(expected) - 2 * n) for n in range(len(pages))
    ]
    assert pages[0]["count"] == len(expected)
    assert [row[key] for page in pages for row in page["results"]] == expected


def test_list_rows_carry_status_and_open_draft_mark(api_client):
    make_campaign_in_status(Status.LIVE, with_draft=True, name="Running")

    rows = api_client.get("/api/campaigns/").json()["results"]

    assert [(r["name"], r["status"], r["has_open_draft"]) for r in rows] == [
        ("Running", "live", True)
    ]


def test_list_orders_by_the_asked_fields(api_client):
    for name in ("b", "c", "a"):
        make_campaign(name=name)

    by_name = api_client.get("/api/campaigns/?ordering=name").json()["results"]
    by_name_desc = api_client.get("/api/campaigns/?ordering=-name,created_at").json()["results"]
    newest_first = api_client.get("/api/campaigns/").json()["results"]

    assert [r["name"] for r in by_name] == ["a", "b", "c"]
    assert [r["name"] for r in by_name_desc] == ["c", "b", "a"]
    assert [r["name"] for r in newest_first] == ["a", "c", "b"]
