"""Roles and the approval policy at every door: a version is approved by someone other than
its last editor before it can be activated; an edit voids the approval; approving and
rejecting keep their comment in the log; the Marketer, Approver and Viewer groups are
refused what their role does not do, at the API, in the admin and in the command."""

from __future__ import annotations

import importlib
import json
from io import StringIO
from typing import Any

import pytest
from django.apps import apps as global_apps
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from campaigns import services
from campaigns.choices import ApprovalStatus
from campaigns.choices import CampaignStatus as Status
from campaigns.models import Campaign
from tests.campaigns.doors import change_data, change_url, create_payload, review_url, url
from tests.campaigns.factories import activate_acknowledged, make_campaign, review_warnings
from tests.campaigns.lifecycle import last_step, snapshot, version

pytestmark = pytest.mark.django_db

ROLES_MIGRATION = importlib.import_module("campaigns.migrations.0007_roles_and_approval")


@pytest.fixture
def people(db: None) -> dict[str, Any]:
    """One user per role, members of the groups the migration made. A transactional test
    earlier in the session flushes every table, groups included: making them again is the
    migration's own idempotent step (its test is in test_migrations.py)."""
    ROLES_MIGRATION.create_groups(global_apps, None)
    made = {}
    for username, group in (
        ("mia", "Marketer"),
        ("max", "Marketer"),
        ("ada", "Approver"),
        ("abe", "Approver"),
        ("vic", "Viewer"),
    ):
        user = get_user_model().objects.create_user(username, password="password", is_staff=True)
        user.groups.add(Group.objects.get(name=group))
        made[username] = get_user_model().objects.get(pk=user.pk)
    return made


def approval_of(campaign: Campaign) -> str:
    return version(Campaign.objects.get(pk=campaign.pk)).approval_status


def review_errors(client: Any, campaign: Campaign) -> dict[str, str]:
    """The review's errors, code → field, as `GET …/review/` lists them."""
    review = client.get(url(campaign, "review"))
    assert review.status_code == 200, review.content
    return {c["code"]: c["field"] for c in review.json()["checks"] if c["level"] == "error"}


def command(*args: str) -> str:
    out = StringIO()
    call_command("campaign", *args, stdout=out)
    return out.getvalue()


# --- REST API -------------------------------------------------------------------------------


@override_settings(SALVO_APPROVAL_REQUIRED=True)
def test_api_request_then_approval_by_another_user_lets_the_version_activate(
    api_client_for, people
):
    marketer, approver = api_client_for(people["mia"]), api_client_for(people["ada"])
    created = marketer.post("/api/campaigns/", create_payload(), format="json")
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["approval_required"] is True
    assert body["approval"]["status"] == "not_requested"
    campaign = Campaign.objects.get(pk=body["id"])

    refused = approver.post(url(campaign, "activate"))
    assert refused.status_code == 409
    assert "requires an approval" in refused.json()["detail"]
    assert review_errors(approver, campaign) == {"not_approved": "approval"}

    asked = marketer.post(url(campaign, "request_approval"), {}, format="json")
    assert asked.status_code == 200, asked.content
    assert asked.json()["approval"]["status"] == "awaiting"
    assert "Awaiting approval: asked by mia" in asked.json()["approval"]["text"]

    approved = approver.post(url(campaign, "approve"), {"comment": "Copy checked."}, format="json")
    assert approved.status_code == 200, approved.content
    approval = approved.json()["approval"]
    assert (approval["status"], approval["decided_by"], approval["comment"]) == (
        "approved",
        "ada",
        "Copy checked.",
    )
    step = last_step(campaign)
    assert (step.name, step.label, step.by, step.reason) == (
        "approve",
        "Approved",
        people["ada"],
        "Copy checked.",
    )

    assert review_errors(approver, campaign) == {}
    acknowledged = {"acknowledge": review_warnings(campaign)}
    activated = approver.post(url(campaign, "activate"), acknowledged, format="json")
    assert activated.status_code == 202, activated.content
    assert Campaign.objects.get(pk=campaign.pk).status == Status.ACTIVATING


def test_api_reject_needs_a_comment_and_keeps_it_in_the_log(api_client_for, people):
    campaign = make_campaign(approval_required=True)
    services.campaign_request_approval(campaign=campaign, user=people["mia"])
    approver = api_client_for(people["ada"])
    before = snapshot(campaign)

    silent = approver.post(url(campaign, "reject"), {"comment": "  "}, format="json")

    assert silent.status_code == 400
    assert "comment" in silent.json()
    assert snapshot(campaign) == before

    rejected = approver.post(
        url(campaign, "reject"), {"comment": "The price is wrong."}, format="json"
    )

    assert rejected.status_code == 200, rejected.content
    assert rejected.json()["approval"]["status"] == "rejected"
    assert "Rejected by ada" in rejected.json()["approval"]["text"]
    step = last_step(campaign)
    assert (step.name, step.label, step.reason) == ("reject", "Rejected", "The price is wrong.")
    # Rejected is not approved: still no activation, and the author may ask again.
    assert approver.post(url(campaign, "activate")).status_code == 409
    again = api_client_for(people["mia"]).post(url(campaign, "request_approval"))
    assert again.status_code == 200
    assert again.json()["approval"]["status"] == "awaiting"


def test_api_approver_cannot_approve_their_own_edit(api_client_for, people):
    campaign = make_campaign(approval_required=True)
    approver = api_client_for(people["ada"])
    edited = approver.patch(url(campaign), {"description": "Better words"}, format="json")
    assert edited.status_code == 200
    assert edited.json()["approval"]["last_edited_by"] == "ada"
    assert approver.post(url(campaign, "request_approval")).status_code == 200
    before = snapshot(campaign)

    own = approver.post(url(campaign, "approve"), {"comment": "Fine by me"}, format="json")

    assert own.status_code == 403
    assert "edited version 1 last" in own.json()["detail"]
    assert snapshot(campaign) == before
    other = api_client_for(people["abe"]).post(url(campaign, "approve"), {}, format="json")
    assert other.status_code == 200
    assert approval_of(campaign) == ApprovalStatus.APPROVED


def test_api_editing_an_approved_version_voids_its_approval(api_client_for, people):
    campaign = make_campaign(approval_required=True)
    services.campaign_request_approval(campaign=campaign, user=people["mia"])
    services.campaign_approve(campaign=campaign, user=people["ada"], comment="OK")
    marketer = api_client_for(people["mia"])

    # Saving what is there already changes nothing the approver saw: no edit.
    same = marketer.patch(url(campaign), {"description": campaign.description}, format="json")
    assert same.json()["approval"]["status"] == "approved"

    edited = marketer.patch(url(campaign), {"description": "A new offer"}, format="json")

    assert edited.status_code == 200
    assert edited.json()["approval"]["status"] == "not_requested"
    step = last_step(campaign)
    assert (step.name, step.label, step.by) == (
        "void_approval",
        "Approval voided by an edit",
        people["mia"],
    )
    refused = api_client_for(people["ada"]).post(url(campaign, "activate"))
    assert refused.status_code == 409
    assert "not requested" in refused.json()["detail"]


@pytest.mark.parametrize(
    ("who", "operation", "body"),
    [
        ("vic", "request_approval", {}),
        ("vic", "approve", {"comment": "x"}),
        ("vic", "reject", {"comment": "x"}),
        ("mia", "approve", {"comment": "x"}),
        ("mia", "reject", {"comment": "x"}),
        ("mia", "activate", {}),
    ],
)
def test_api_refuses_each_role_what_it_may_not_do(api_client_for, people, who, operation, body):
    campaign = make_campaign(approval_required=True)
    services.campaign_request_approval(campaign=campaign, user=people["max"])
    before = snapshot(campaign)

    response = api_client_for(people[who]).post(url(campaign, operation), body, format="json")

    assert response.status_code == 403, response.content
    assert "permission" in response.json()["detail"]
    assert snapshot(campaign) == before


def test_api_stop_and_archive_are_an_approvers_not_a_marketers(api_client_for, people):
    live = make_campaign()
    activate_acknowledged(campaign=live)
    services.campaign_activation_complete(campaign_id=live.pk)
    marketer, approver = api_client_for(people["mia"]), api_client_for(people["ada"])

    assert marketer.post(url(live, "stop")).status_code == 403
    assert approver.post(url(live, "stop")).status_code == 200
    assert marketer.post(url(live, "archive")).status_code == 403
    assert approver.post(url(live, "archive")).status_code == 200


@pytest.mark.parametrize(
    ("operation", "why"),
    [("approve", "request an approval first"), ("reject", "request an approval first")],
)
def test_api_decision_on_a_version_not_awaiting_approval_is_409(
    api_client_for, people, operation, why
):
    campaign = make_campaign(approval_required=True)

    response = api_client_for(people["ada"]).post(
        url(campaign, operation), {"comment": "x"}, format="json"
    )

    assert response.status_code == 409
    assert why in response.json()["detail"]


def test_api_request_without_the_policy_is_409(api_client_for, people):
    campaign = make_campaign()

    response = api_client_for(people["mia"]).post(url(campaign, "request_approval"))

    assert response.status_code == 409
    assert "does not require an approval" in response.json()["detail"]
    acknowledged = {"acknowledge": review_warnings(campaign)}
    ada = api_client_for(people["ada"])
    assert ada.post(url(campaign, "activate"), acknowledged, format="json").status_code == 202


@override_settings(SALVO_APPROVAL_REQUIRED=True)
def test_api_only_an_approver_turns_the_policy_off(api_client_for, people):
    marketer = api_client_for(people["mia"])
    refused = marketer.post(
        "/api/campaigns/", create_payload(approval_required=False), format="json"
    )
    assert refused.status_code == 403
    assert not Campaign.objects.exists()
    campaign = make_campaign()

    assert marketer.patch(url(campaign), {"approval_required": False}).status_code == 403
    turned_off = api_client_for(people["ada"]).patch(url(campaign), {"approval_required": False})
    assert turned_off.status_code == 200
    assert turned_off.json()["approval_required"] is False


def test_api_a_copy_requires_the_approval_its_original_does(api_client_for, people):
    original = make_campaign(approval_required=True)

    copy = api_client_for(people["mia"]).post(url(original, "duplicate"), {}, format="json")

    assert copy.status_code == 201
    assert copy.json()["approval_required"] is True
    assert copy.json()["approval"]["last_edited_by"] == "mia"
    refused = api_client_for(people["ada"]).post(url(copy.json()["id"], "activate"))
    assert refused.status_code == 409


def test_api_awaiting_approval_filter(api_client_for, people):
    waiting = make_campaign(approval_required=True)
    services.campaign_request_approval(campaign=waiting, user=people["mia"])
    other = make_campaign(approval_required=True)
    viewer = api_client_for(people["vic"])

    def ids(query: str) -> set[int]:
        return {row["id"] for row in viewer.get(f"/api/campaigns/?{query}").json()["results"]}

    assert ids("awaiting_approval=true") == {waiting.pk}
    assert ids("awaiting_approval=false") == {other.pk}


# --- admin --------------------------------------------------------------------------------------


def lifecycle_url(campaign: Campaign, name: str) -> str:
    return reverse("admin:campaigns_campaign_lifecycle", args=[campaign.pk, name])


def buttons(client: Any, campaign: Campaign) -> list[str]:
    page = client.get(change_url(campaign))
    return [button["operation"] for button in page.context["salvo_buttons"]]


def messages_of(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def test_admin_request_then_approve_with_a_comment_then_activate(client, people):
    campaign = make_campaign(approval_required=True)
    client.force_login(people["mia"])
    assert "request_approval" in buttons(client, campaign)
    assert "approve" not in buttons(client, campaign)

    asked = client.post(lifecycle_url(campaign, "request_approval"), follow=True)

    assert any("Approval of" in text for text in messages_of(asked))
    assert approval_of(campaign) == ApprovalStatus.AWAITING
    client.force_login(people["ada"])
    assert {"approve", "reject"} <= set(buttons(client, campaign))
    # The change page's button posts the change form, without a comment: the form page.
    form_page = client.post(lifecycle_url(campaign, "approve"), change_data(campaign))
    assert form_page.status_code == 200
    assert "Awaiting approval: asked by mia" in form_page.content.decode()
    assert approval_of(campaign) == ApprovalStatus.AWAITING

    done = client.post(lifecycle_url(campaign, "approve"), {"comment": "Looks right."}, follow=True)

    assert any("was approved" in text for text in messages_of(done))
    assert "Approved by ada" in done.content.decode()
    assert last_step(campaign).reason == "Looks right."
    reviewed = client.post(lifecycle_url(campaign, "activate"), follow=True)
    assert reviewed.redirect_chain[-1][0] == review_url(campaign), messages_of(reviewed)
    # The review says who approved it, and lists no approval error.
    page = reviewed.content.decode()
    assert 'data-role="approval">Approved by ada' in page
    assert 'data-code="not_approved"' not in page
    acknowledged = {"acknowledge": review_warnings(campaign)}
    activated = client.post(review_url(campaign), acknowledged, follow=True)
    assert Campaign.objects.get(pk=campaign.pk).status == Status.ACTIVATING, messages_of(activated)


def test_admin_reject_without_a_comment_is_an_error_on_the_field(client, people):
    campaign = make_campaign(approval_required=True)
    services.campaign_request_approval(campaign=campaign, user=people["mia"])
    client.force_login(people["ada"])
    # Its review, opened directly, shows the approval that is missing as an error.
    review = client.get(review_url(campaign)).content.decode()
    assert 'data-code="not_approved"' in review
    assert 'data-role="approval">Awaiting approval: asked by mia' in review
    before = snapshot(campaign)

    page = client.post(lifecycle_url(campaign, "reject"), {"comment": ""})

    assert page.status_code == 200
    assert page.context["form"].errors["comment"] == ["Say why the version is rejected."]
    assert snapshot(campaign) == before
    client.post(lifecycle_url(campaign, "reject"), {"comment": "Wrong date."})
    assert approval_of(campaign) == ApprovalStatus.REJECTED


def test_admin_approver_cannot_approve_their_own_edit(client, people):
    campaign = make_campaign(approval_required=True)
    client.force_login(people["ada"])
    client.post(change_url(campaign), change_data(campaign, description="Reworded"))
    assert version(Campaign.objects.get(pk=campaign.pk)).last_edited_by == people["ada"]
    services.campaign_request_approval(campaign=campaign, user=people["ada"])

    response = client.post(lifecycle_url(campaign, "approve"), {"comment": "ok"}, follow=True)

    assert any("edited version 1 last" in text for text in messages_of(response))
    assert approval_of(campaign) == ApprovalStatus.AWAITING


def test_admin_edit_voids_the_approval_and_the_page_says_so(client, people):
    campaign = make_campaign(approval_required=True)
    services.campaign_request_approval(campaign=campaign, user=people["mia"])
    services.campaign_approve(campaign=campaign, user=people["ada"], comment="")
    client.force_login(people["mia"])

    client.post(change_url(campaign), change_data(campaign, description="Changed"))

    assert approval_of(campaign) == ApprovalStatus.NOT_REQUESTED
    page = client.get(change_url(campaign)).content.decode()
    assert "Approval required; not requested yet for version 1." in page
    assert "Approval voided by an edit" in page


@pytest.mark.parametrize(("who", "operation"), [("vic", "approve"), ("mia", "reject")])
def test_admin_refuses_a_decision_to_who_may_not_decide(client, people, who, operation):
    campaign = make_campaign(approval_required=True)
    services.campaign_request_approval(campaign=campaign, user=people["max"])
    client.force_login(people[who])
    assert operation not in buttons(client, campaign)

    response = client.post(lifecycle_url(campaign, operation), {"comment": "x"}, follow=True)

    assert any("campaigns.approve_campaign" in text for text in messages_of(response))
    assert approval_of(campaign) == ApprovalStatus.AWAITING


def test_admin_viewer_is_offered_nothing_and_refused_a_request(client, people):
    campaign = make_campaign(approval_required=True)
    client.force_login(people["vic"])

    assert buttons(client, campaign) == []
    response = client.post(lifecycle_url(campaign, "request_approval"), follow=True)
    assert any("campaigns.change_campaign" in text for text in messages_of(response))
    assert approval_of(campaign) == ApprovalStatus.NOT_REQUESTED


def test_admin_awaiting_approval_list_filter(client, people):
    waiting = make_campaign(approval_required=True, name="Waiting one")
    services.campaign_request_approval(campaign=waiting, user=people["mia"])
    make_campaign(approval_required=True, name="Quiet one")
    client.force_login(people["vic"])

    listed = client.get(reverse("admin:campaigns_campaign_changelist") + "?awaiting_approval=yes")

    names = [campaign.name for campaign in listed.context["cl"].result_list]
    assert names == ["Waiting one"]


# --- the `campaign` command ---------------------------------------------------------------------


def test_command_request_approve_activate(people):
    campaign = make_campaign(approval_required=True)
    pk = str(campaign.pk)

    with pytest.raises(CommandError, match="requires an approval"):
        command("activate", pk, "--user", "ada")
    assert "sent for approval" in command("request-approval", pk, "--user", "mia")
    assert "approved" in command("approve", pk, "--user", "ada", "--comment", "Go")
    assert "Approved by ada" in command("show", pk, "--user", "vic")
    command("activate", pk, "--user", "ada", "--yes")

    assert Campaign.objects.get(pk=campaign.pk).status == Status.ACTIVATING
    assert campaign.transitions.get(name="approve").reason == "Go"


def test_command_lists_the_campaigns_awaiting_approval(people):
    waiting = make_campaign(name="Waiting", approval_required=True)
    make_campaign(name="Not asked", approval_required=True)
    services.campaign_request_approval(campaign=waiting, user=people["mia"])

    listed = json.loads(command("list", "--awaiting-approval", "--json", "--user", "vic"))

    assert [row["name"] for row in listed] == ["Waiting"]
    assert len(json.loads(command("list", "--json", "--user", "vic"))) == 2


def test_command_reject_needs_a_comment(people):
    campaign = make_campaign(approval_required=True)
    services.campaign_request_approval(campaign=campaign, user=people["mia"])

    with pytest.raises(CommandError, match="comment: Say why"):
        command("reject", str(campaign.pk), "--user", "ada")
    command("reject", str(campaign.pk), "--user", "ada", "--comment", "Too long")

    assert approval_of(campaign) == ApprovalStatus.REJECTED
    assert last_step(campaign).reason == "Too long"


def test_command_refuses_own_edit_and_roles_without_the_permission(people):
    campaign = make_campaign(approval_required=True)
    services.campaign_update(campaign=campaign, user=people["ada"], data={"description": "New"})
    services.campaign_request_approval(campaign=campaign, user=people["ada"])
    pk = str(campaign.pk)

    with pytest.raises(CommandError, match="edited version 1 last"):
        command("approve", pk, "--user", "ada")
    with pytest.raises(CommandError, match=r"campaigns\.approve_campaign"):
        command("approve", pk, "--user", "mia")
    with pytest.raises(CommandError, match=r"campaigns\.change_campaign"):
        command("request-approval", pk, "--user", "vic")
    with pytest.raises(CommandError, match=r"campaigns\.activate_campaign"):
        command("activate", pk, "--user", "mia")
    assert approval_of(campaign) == ApprovalStatus.AWAITING


def test_admin_approval_page_costs_the_same_queries_however_long_the_history(client, people):
    client.force_login(people["ada"])

    def page_queries(campaign: Campaign) -> int:
        with CaptureQueriesContext(connection) as captured:
            page = client.post(lifecycle_url(campaign, "approve"))
        assert page.status_code == 200
        assert "Awaiting approval" in page.content.decode()
        return len(captured)

    short = make_campaign(approval_required=True)
    services.campaign_request_approval(campaign=short, user=people["mia"])
    long = make_campaign(approval_required=True)
    for n in range(5):
        services.campaign_request_approval(campaign=long, user=people["mia"])
        services.campaign_reject(campaign=long, user=people["ada"], comment=f"Again {n}")
    services.campaign_request_approval(campaign=long, user=people["max"])

    assert page_queries(long) == page_queries(short)
