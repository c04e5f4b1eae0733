"""Every lifecycle operation checks the same permissions at every door: the REST API, the
admin (buttons, list actions, delete) and the `campaign` command's `--user`.

What each operation needs is written here as the product promises it (`REQUIRED`), not
read from the table the code checks (`campaigns.operations.OPERATIONS`): a permission
dropped from that table fails these tests instead of weakening them with it.
"""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from campaigns import services
from campaigns.choices import CampaignStatus as Status
from campaigns.models import Campaign
from campaigns.operations import OPERATIONS
from tests.campaigns.doors import review_url, url
from tests.campaigns.factories import make_campaign, make_campaign_in_status, review_warnings
from tests.campaigns.lifecycle import ALLOWED, APPROVAL_OPERATIONS, USER_OPERATIONS, snapshot

pytestmark = pytest.mark.django_db

VIEW_CAMPAIGN = "campaigns.view_campaign"
# Every operation shows or changes a campaign the person must be able to see, and needs
# its own permission besides.
REQUIRED: dict[str, frozenset[str]] = {
    name: frozenset({VIEW_CAMPAIGN, f"campaigns.{own}"})
    for name, own in (
        ("activate", "activate_campaign"),
        ("modify", "change_campaign"),
        ("discard_draft", "change_campaign"),
        # Stopping and archiving decide what reaches the audience, as activating does: an
        # Approver's, not a Marketer's.
        ("stop", "activate_campaign"),
        ("archive", "activate_campaign"),
        ("request_approval", "change_campaign"),
        ("approve", "approve_campaign"),
        ("reject", "approve_campaign"),
        ("duplicate", "add_campaign"),
        ("delete", "delete_campaign"),
    )
}
EVERY_PERMISSION: frozenset[str] = frozenset().union(*REQUIRED.values())
# A state each operation is allowed from (the first in the lifecycle table's order), so
# that only the permissions can refuse it.
ALLOWED_FROM: dict[str, tuple[str, bool]] = {
    name: min(ALLOWED[name]) for name in OPERATIONS if name not in APPROVAL_OPERATIONS
}
# What the approval steps take besides the campaign (a rejection says why).
API_BODY = {name: {"comment": "Checked the copy."} for name in APPROVAL_OPERATIONS}
COMMAND_ARGS = {
    **{name: ["--comment", "Checked the copy."] for name in APPROVAL_OPERATIONS},
    "activate": ["--yes"],  # acknowledging what its review warns about
}
API_SUCCESS = {"activate": 202, "modify": 201, "duplicate": 201, "delete": 204}
# The admin's list actions: the operations it applies to selected campaigns.
LIST_ACTIONS = ("activate", "stop", "archive")
# The command has no delete: only the admin and the API delete Drafts.
COMMAND_OPERATIONS = [name for name in OPERATIONS if name != "delete"]

WITHOUT_ONE = [
    pytest.param(name, missing, id=f"{name}-without-{missing.split('.')[1]}")
    for name, permissions in REQUIRED.items()
    for missing in sorted(permissions)
]


def test_the_table_covers_every_operation_the_doors_offer_with_the_promised_permissions():
    assert set(OPERATIONS) == set(USER_OPERATIONS) | set(APPROVAL_OPERATIONS) == set(REQUIRED)
    for name, operation in OPERATIONS.items():
        assert set(operation.permissions) == REQUIRED[name], name


def campaign_for(name: str) -> Campaign:
    if name in APPROVAL_OPERATIONS:
        # A Draft under the approval policy, written by the system (anyone may approve it),
        # awaiting approval for the decisions.
        campaign = make_campaign(approval_required=True)
        if name != "request_approval":
            services.campaign_request_approval(campaign=campaign, user=None)
        return Campaign.objects.get(pk=campaign.pk)
    status, with_draft = ALLOWED_FROM[name]
    return make_campaign_in_status(status, with_draft=with_draft)


def everything(campaign: Campaign) -> tuple[Any, ...]:
    """The campaign as a refused request must leave it, and no copy made."""
    return (snapshot(campaign), Campaign.objects.count())


# --- REST API ------------------------------------------------------------------------------


def api_call(client: Any, name: str, campaign: Campaign) -> Any:
    if name == "delete":
        return client.delete(url(campaign))
    exists = Campaign.objects.filter(pk=campaign.pk).exists()
    if name == "activate" and exists:  # acknowledging what its review warns about
        return client.post(
            url(campaign, name), {"acknowledge": review_warnings(campaign)}, format="json"
        )
    return client.post(url(campaign, name), API_BODY.get(name, {}), format="json")


@pytest.mark.parametrize(("name", "missing"), WITHOUT_ONE)
def test_api_refuses_an_operation_without_each_of_its_permissions(
    api_client_for, user_with_perms, name, missing
):
    campaign = campaign_for(name)
    before = everything(campaign)
    client = api_client_for(user_with_perms(*(EVERY_PERMISSION - {missing})))

    response = api_call(client, name, campaign)

    assert response.status_code == 403, response.content
    assert missing in response.json()["detail"] or "permission" in response.json()["detail"]
    assert everything(campaign) == before


@pytest.mark.parametrize("name", list(OPERATIONS))
def test_api_allows_an_operation_with_exactly_its_permissions(
    api_client_for, user_with_perms, name
):
    campaign = campaign_for(name)
    client = api_client_for(user_with_perms(*REQUIRED[name]))

    response = api_call(client, name, campaign)

    assert response.status_code == API_SUCCESS.get(name, 200), response.content


@pytest.mark.parametrize(("name", "missing"), WITHOUT_ONE)
def test_api_refuses_before_looking_the_campaign_up(api_client_for, user_with_perms, name, missing):
    """Who may not act learns nothing of which campaigns exist: a made-up id is refused
    with the same 403 as a real one, never a 404."""
    real = campaign_for(name)
    made_up = Campaign(pk=real.pk + 1000)
    client = api_client_for(user_with_perms(*(EVERY_PERMISSION - {missing})))

    refusals = [api_call(client, name, campaign) for campaign in (real, made_up)]

    assert [r.status_code for r in refusals] == [403, 403]
    assert refusals[0].json() == refusals[1].json()


def test_activating_without_the_view_permission_reveals_nothing(api_client_for, user_with_perms):
    campaign = make_campaign(name="Secret launch", description="Embargoed until Monday")
    client = api_client_for(user_with_perms("campaigns.activate_campaign"))

    response = client.post(url(campaign, "activate"))

    assert response.status_code == 403
    assert "Embargoed" not in response.content.decode()
    assert Campaign.objects.get(pk=campaign.pk).status == Status.DRAFT


# --- admin: the lifecycle buttons ----------------------------------------------------------


def lifecycle_url(campaign: Campaign, name: str) -> str:
    return reverse("admin:campaigns_campaign_lifecycle", args=[campaign.pk, name])


def confirm_review(client: Any, campaign: Campaign) -> Any:
    """Tick every warning of the admin's review page and confirm."""
    acknowledged = {"acknowledge": review_warnings(campaign)}
    return client.post(review_url(campaign), acknowledged, follow=True)


def messages_of(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]]


@pytest.mark.parametrize(("name", "missing"), [p for p in WITHOUT_ONE if p.values[0] != "delete"])
def test_admin_button_refuses_without_each_permission_and_says_which(
    client, user_with_perms, name, missing
):
    campaign = campaign_for(name)
    before = everything(campaign)
    client.force_login(user_with_perms(*(EVERY_PERMISSION - {missing})))

    response = client.post(lifecycle_url(campaign, name), API_BODY.get(name, {}), follow=True)

    assert any(missing in text for text in messages_of(response)), messages_of(response)
    assert everything(campaign) == before


@pytest.mark.parametrize("name", [n for n in OPERATIONS if n != "delete"])
def test_admin_button_works_with_exactly_the_permissions(client, user_with_perms, name):
    campaign = campaign_for(name)
    before = everything(campaign)
    client.force_login(user_with_perms(*REQUIRED[name]))

    response = client.post(lifecycle_url(campaign, name), API_BODY.get(name, {}), follow=True)
    if name == "activate":  # the button leads to the review, which confirms
        response = confirm_review(client, campaign)

    assert not [t for t in messages_of(response) if "permission" in t]
    assert everything(campaign) != before


@pytest.mark.parametrize("name", list(OPERATIONS))
def test_admin_offers_a_button_only_with_the_permissions(client, user_with_perms, name):
    campaign = campaign_for(name)
    (own,) = REQUIRED[name] - {VIEW_CAMPAIGN}

    def offered(*held: str) -> bool:
        client.force_login(user_with_perms(*held))
        page = client.get(reverse("admin:campaigns_campaign_change", args=[campaign.pk]))
        return name in [button["operation"] for button in page.context["salvo_buttons"]]

    assert offered(*REQUIRED[name])
    assert not offered(*(EVERY_PERMISSION - {own}))


def test_admin_lifecycle_is_denied_to_who_cannot_see_campaigns(client, user_with_perms):
    campaign = make_campaign()
    client.force_login(user_with_perms("campaigns.activate_campaign"))

    response = client.post(lifecycle_url(campaign, "activate"))

    assert response.status_code == 403
    assert Campaign.objects.get(pk=campaign.pk).status == Status.DRAFT


# --- admin: list actions and delete --------------------------------------------------------


def run_list_action(client: Any, name: str, campaign: Campaign) -> Any:
    return client.post(
        reverse("admin:campaigns_campaign_changelist") + "?status=all",
        {"action": f"{name}_selected", "_selected_action": [campaign.pk]},
        follow=True,
    )


def offered_actions(client: Any) -> list[str]:
    response = client.get(reverse("admin:campaigns_campaign_changelist"))
    form = response.context["action_form"]  # None when no action is offered
    return [value for value, _ in form.fields["action"].choices] if form else []


@pytest.mark.parametrize(
    ("name", "missing"), [p for p in WITHOUT_ONE if p.values[0] in LIST_ACTIONS]
)
def test_admin_list_action_needs_each_permission(client, user_with_perms, name, missing):
    campaign = campaign_for(name)
    before = everything(campaign)
    # The list itself needs to be seen: without the view permission, change shows it.
    client.force_login(user_with_perms(*(EVERY_PERMISSION - {missing})))

    assert f"{name}_selected" not in offered_actions(client)
    run_list_action(client, name, campaign)

    assert everything(campaign) == before


@pytest.mark.parametrize("name", LIST_ACTIONS)
def test_admin_list_action_works_with_exactly_the_permissions(client, user_with_perms, name):
    campaign = campaign_for(name)
    before = everything(campaign)
    client.force_login(user_with_perms(*REQUIRED[name]))

    assert f"{name}_selected" in offered_actions(client)
    run_list_action(client, name, campaign)
    if name == "activate":  # the action leads to the review, which confirms
        confirm_review(client, campaign)

    assert everything(campaign) != before


@pytest.mark.parametrize("missing", sorted(REQUIRED["delete"]))
def test_admin_delete_needs_each_permission(client, user_with_perms, missing):
    campaign = campaign_for("delete")
    client.force_login(user_with_perms(*(EVERY_PERMISSION - {missing})))
    delete_page = reverse("admin:campaigns_campaign_delete", args=[campaign.pk])

    assert client.get(delete_page).status_code == 403
    assert client.post(delete_page, {"post": "yes"}).status_code == 403
    assert Campaign.objects.filter(pk=campaign.pk).exists()


def test_admin_delete_with_exactly_the_permissions(client, user_with_perms):
    campaign = campaign_for("delete")
    client.force_login(user_with_perms(*REQUIRED["delete"]))

    client.post(reverse("admin:campaigns_campaign_delete", args=[campaign.pk]), {"post": "yes"})

    assert not Campaign.objects.filter(pk=campaign.pk).exists()


def test_admin_offers_no_bulk_delete(client, user_with_perms):
    client.force_login(user_with_perms(*EVERY_PERMISSION))

    assert "delete_selected" not in offered_actions(client)


# --- the `campaign` command --------------------------------------------------------------


def command(*args: str) -> str:
    out = StringIO()
    call_command("campaign", *args, stdout=out)
    return out.getvalue()


@pytest.mark.parametrize(
    ("name", "missing"), [p for p in WITHOUT_ONE if p.values[0] in COMMAND_OPERATIONS]
)
def test_command_user_needs_each_permission(user_with_perms, name, missing):
    campaign = campaign_for(name)
    before = everything(campaign)
    user = user_with_perms(*(EVERY_PERMISSION - {missing}))

    with pytest.raises(CommandError) as refused:
        command(
            name.replace("_", "-"),
            str(campaign.pk),
            "--user",
            user.username,
            *COMMAND_ARGS.get(name, []),
        )

    assert missing in str(refused.value)
    assert everything(campaign) == before


@pytest.mark.parametrize("name", COMMAND_OPERATIONS)
def test_command_user_with_exactly_the_permissions(user_with_perms, name):
    campaign = campaign_for(name)
    before = everything(campaign)
    user = user_with_perms(*REQUIRED[name])

    command(
        name.replace("_", "-"),
        str(campaign.pk),
        "--user",
        user.username,
        *COMMAND_ARGS.get(name, []),
    )

    assert everything(campaign) != before


@pytest.mark.parametrize("args", [["list"], ["show", "{pk}"]], ids=["list", "show"])
def test_command_reading_needs_the_view_permission(user_with_perms, args):
    campaign = make_campaign(name="Quiet one")
    user = user_with_perms(*(EVERY_PERMISSION - {VIEW_CAMPAIGN}))
    args = [a.format(pk=campaign.pk) for a in args]

    with pytest.raises(CommandError, match=VIEW_CAMPAIGN):
        command(*args, "--user", user.username)

    assert "Quiet one" in command(*args, "--user", user_with_perms(VIEW_CAMPAIGN).username)
