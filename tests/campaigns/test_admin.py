"""The campaign admin as a marketer uses it: the list, its filters and actions, the
add/change form with the draft's actions, and the lifecycle buttons."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from campaigns import services
from campaigns.choices import CampaignStatus
from campaigns.models import Campaign, CampaignVersion
from channels.models import MessagePreset
from segments.models import Segment
from tests.campaigns.doors import ADD, add_data, change_data, change_url, review_url
from tests.campaigns.factories import (
    activate_acknowledged,
    make_campaign,
    make_live_campaign,
    make_scheduled_campaign,
    review_warnings,
)
from tests.channels.factories import MessagePresetFactory
from tests.segments.factories import SegmentFactory

Status = CampaignStatus
CHANGELIST = reverse("admin:campaigns_campaign_changelist")

pytestmark = pytest.mark.django_db


def new_preset(**fields: Any) -> MessagePreset:
    return MessagePresetFactory(**fields)  # type: ignore[return-value]


def new_segment(**fields: Any) -> Segment:
    return SegmentFactory(**fields)  # type: ignore[return-value]


def lifecycle_url(campaign: Campaign, operation: str) -> str:
    return reverse("admin:campaigns_campaign_lifecycle", args=[campaign.pk, operation])


def messages_of(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def shown_names(response: Any) -> set[str]:
    return {c.name for c in response.context["cl"].result_list}


def selected_filter_choices(html: str, title: str = "status") -> list[str]:
    """The labels of the selected choices of one filter of the sidebar."""
    section = re.search(rf'<details data-filter-title="{title}".*?</details>', html, re.S)
    assert section is not None, f"no {title} filter"
    return [
        re.sub(r"\s+", " ", label).strip()
        for label in re.findall(r'<li class="selected">\s*<a [^>]*>(.*?)</a>', section[0], re.S)
    ]


def reload(campaign: Campaign) -> Any:
    return Campaign.objects.get(pk=campaign.pk)


@pytest.fixture
def one_of_each() -> dict[str, Campaign]:
    """A campaign in every status a marketer meets."""
    stopped = make_live_campaign(name="Stopped one")
    services.campaign_stop(campaign=stopped, user=None)
    archived = make_live_campaign(name="Archived one")
    services.campaign_stop(campaign=archived, user=None)
    services.campaign_archive(campaign=archived, user=None)
    completed = make_live_campaign(name="Completed one")
    services.campaign_complete(campaign=completed)
    activating = make_campaign(name="Activating one")
    activate_acknowledged(campaign=activating)
    made = {
        Status.DRAFT: make_campaign(name="Draft one"),
        Status.ACTIVATING: activating,
        Status.SCHEDULED: make_scheduled_campaign(name="Scheduled one"),
        Status.LIVE: make_live_campaign(name="Live one"),
        Status.STOPPED: stopped,
        Status.COMPLETED: completed,
        Status.ARCHIVED: archived,
    }
    return {status: reload(campaign) for status, campaign in made.items()}


# --- changelist --------------------------------------------------------------------------


def test_changelist_defaults_to_draft_scheduled_and_live(admin_client, one_of_each):
    response = admin_client.get(CHANGELIST)

    assert response.status_code == 200
    assert shown_names(response) == {"Draft one", "Scheduled one", "Live one"}
    assert selected_filter_choices(response.content.decode()) == ["Draft, Scheduled and Live"]


def test_changelist_all_choice_shows_every_status(admin_client, one_of_each):
    response = admin_client.get(CHANGELIST, {"status": "all"})

    assert shown_names(response) == {c.name for c in one_of_each.values()}
    html = response.content.decode()
    assert 'href="?status=all"' in html
    assert selected_filter_choices(html) == ["All"]


def test_changelist_single_status_choice(admin_client, one_of_each):
    response = admin_client.get(CHANGELIST, {"status": "stopped"})

    assert shown_names(response) == {"Stopped one"}
    assert selected_filter_choices(response.content.decode())[0] == "Stopped"


def test_changelist_unknown_status_falls_back_without_error(admin_client, one_of_each):
    response = admin_client.get(CHANGELIST, {"status": "nonsense"}, follow=True)

    assert response.status_code == 200
    assert "nonsense" not in response.request["QUERY_STRING"]


def test_changelist_row_shows_badge_type_tags_segment_and_start(admin_client):
    segment = new_segment(name="Newsletter readers")
    start = timezone.now() + dt.timedelta(days=3)
    make_campaign(name="Autumn", tags=["autumn", "promo"], segment=segment, start_at=start)

    html = admin_client.get(CHANGELIST).content.decode()

    assert (
        'class="salvo-badge salvo-status-draft" style="background:#6c757d;color:#fff">Draft' in html
    )
    assert "autumn, promo" in html
    assert "Newsletter readers" in html
    assert "Marketing" in html


def test_open_draft_mark_beside_a_running_campaign_with_a_draft(admin_client):
    plain = make_live_campaign(name="Plain live")
    edited = make_live_campaign(name="Edited live")
    services.campaign_modify(campaign=edited, user=None)

    response = admin_client.get(CHANGELIST)
    rows = {c.name: c for c in response.context["cl"].result_list}
    html = response.content.decode()

    assert rows["Edited live"].has_open_draft
    assert not rows["Plain live"].has_open_draft
    assert html.count("open draft</span>") == 1
    row = re.search(r"<tr>.*?Edited live.*?</tr>", html, re.S)
    assert row is not None
    assert "open draft" in row.group(0)
    assert plain.name in html


def test_search_on_name_and_description(admin_client):
    make_campaign(name="Black Friday", description="Deals")
    make_campaign(name="Welcome", description="Onboarding for friday sign-ups")
    make_campaign(name="Spring")

    response = admin_client.get(CHANGELIST, {"q": "friday"})

    assert shown_names(response) == {"Black Friday", "Welcome"}


def test_tag_and_type_filters(admin_client):
    make_campaign(name="Tagged", tags=["vip"])
    make_campaign(name="Legal", type="transactional")
    make_campaign(name="Other")

    assert shown_names(admin_client.get(CHANGELIST, {"tag": "vip"})) == {"Tagged"}
    assert shown_names(admin_client.get(CHANGELIST, {"type__exact": "transactional"})) == {"Legal"}


def test_changelist_sorts_by_name(admin_client):
    for name in ("B", "C", "A"):
        make_campaign(name=name)

    response = admin_client.get(CHANGELIST, {"o": "1"})

    assert [c.name for c in response.context["cl"].result_list] == ["A", "B", "C"]


def _changelist_queries(client: Any) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(CHANGELIST, {"status": "all"})
    assert response.status_code == 200
    return len(queries)


def test_changelist_query_count_does_not_grow_with_campaigns(admin_client):
    segment = new_segment()
    preset = new_preset()

    def add(n: int) -> None:
        for i in range(n):
            make_campaign(
                segment=segment,
                tags=[f"t{i}", "shared"],
                actions=[{"channel": "email", "preset": preset, "subject": "s", "body": "b"}],
            )
        # Some running, some with an open draft: every kind of row the list renders.
        live = make_live_campaign(segment=segment, tags=["x"])
        services.campaign_modify(campaign=live, user=None)

    add(3)
    few = _changelist_queries(admin_client)
    add(27)
    many = _changelist_queries(admin_client)

    assert Campaign.objects.count() == 32
    assert many == few


# --- list actions ------------------------------------------------------------------------


def run_action(client: Any, action: str, campaigns: list[Campaign]) -> Any:
    return client.post(
        CHANGELIST + "?status=all",
        {"action": action, "_selected_action": [c.pk for c in campaigns]},
        follow=True,
    )


def test_stop_action_stops_the_running_and_names_each_refused(admin_client):
    live = make_live_campaign(name="Live A")
    scheduled = make_scheduled_campaign(name="Scheduled B")
    draft = make_campaign(name="Draft C")

    response = run_action(admin_client, "stop_selected", [live, scheduled, draft])

    assert response.status_code == 200
    assert reload(live).status == Status.STOPPED
    assert reload(scheduled).status == Status.STOPPED
    assert reload(draft).status == Status.DRAFT
    texts = messages_of(response)
    assert "Stopped 2 campaigns." in texts
    assert any("Draft C" in t and "it is Draft" in t for t in texts)


def test_archive_action_mixed(admin_client):
    stopped = make_live_campaign(name="Old")
    services.campaign_stop(campaign=stopped, user=None)
    live = make_live_campaign(name="Running")

    response = run_action(admin_client, "archive_selected", [stopped, live])

    assert reload(stopped).status == Status.ARCHIVED
    assert reload(live).status == Status.LIVE
    texts = messages_of(response)
    assert "Archived 1 campaign." in texts
    assert any("Running" in t and "Cannot archive" in t for t in texts)


def test_activate_action_lists_failed_checks(admin_client):
    ready = make_campaign(name="Ready")
    empty = make_campaign(name="Empty", segment=None, actions=[])

    response = run_action(admin_client, "activate_selected", [ready, empty])

    # One review page: the ready one can be confirmed, the empty one lists its errors.
    html = response.content.decode()
    assert html.count('data-role="confirm"') == 1
    assert "Choose a segment" in html
    assert "Add at least one channel action" in html
    admin_client.post(review_url(ready), {"acknowledge": review_warnings(ready)})
    admin_client.post(review_url(empty), {"acknowledge": review_warnings(empty)})
    assert reload(ready).status == Status.ACTIVATING
    assert reload(empty).status == Status.DRAFT


def test_activate_action_hidden_without_permission(client, user_with_perms):
    user = user_with_perms("campaigns.view_campaign", "campaigns.change_campaign")
    client.force_login(user)
    draft = make_campaign()

    response = client.get(CHANGELIST)
    # Stop and archive need the activate permission too: this user is offered no action.
    form = response.context["action_form"]
    actions = [value for value, _ in form.fields["action"].choices] if form else []
    assert "stop_selected" not in actions
    assert "activate_selected" not in actions
    assert "delete_selected" not in actions

    run_action(client, "activate_selected", [draft])
    assert reload(draft).status == Status.DRAFT


# --- add and change forms ----------------------------------------------------------------


def test_add_form_creates_a_draft_with_version_1_and_its_actions(admin_client, admin_user):
    segment = new_segment()
    email = new_preset(channel="email")
    sms = new_preset(channel="sms")
    rows = [
        {"channel": "email", "preset": email.pk, "subject": "Spring!", "body": "Hello"},
        {"channel": "sms", "preset": sms.pk, "subject": "", "body": "Hi"},
    ]

    response = admin_client.post(ADD, add_data(segment, rows), follow=True)

    assert response.status_code == 200
    campaign = Campaign.objects.get(name="Spring sale")
    assert campaign.status == Status.DRAFT
    assert campaign.created_by == admin_user
    assert sorted(campaign.tags.names()) == ["sale", "spring"]
    version = campaign.draft_version
    assert version is not None
    assert version.number == 1
    assert version.segment == segment
    actions = {a.channel: a for a in version.actions.all()}
    assert set(actions) == {"email", "sms"}
    assert actions["email"].preset == email
    assert actions["email"].subject == "Spring!"
    assert campaign.transitions.filter(name="create").exists()
    assert any("was added successfully" in t for t in messages_of(response))


def test_add_form_refuses_a_preset_of_another_channel(admin_client):
    segment = new_segment()
    sms = new_preset(channel="sms", name="Shop SMS")
    rows = [{"channel": "email", "preset": sms.pk, "subject": "Hi", "body": "Hello"}]

    response = admin_client.post(ADD, add_data(segment, rows))

    assert response.status_code == 200
    assert not Campaign.objects.exists()
    html = response.content.decode()
    assert "Please correct the error" in html
    assert "Preset “Shop SMS” is a SMS preset; this action is Email." in html


def test_add_form_refuses_two_actions_of_one_channel(admin_client):
    segment = new_segment()
    email = new_preset(channel="email")
    rows = [
        {"channel": "email", "preset": email.pk, "subject": "A", "body": "A"},
        {"channel": "email", "preset": email.pk, "subject": "B", "body": "B"},
    ]

    response = admin_client.post(ADD, add_data(segment, rows))

    assert response.status_code == 200
    assert not Campaign.objects.exists()
    assert "Only one Email action per version" in response.content.decode()


def test_add_form_service_refusal_shows_on_the_field(admin_client):
    """A start time in the past is the service's rule: its error lands on the field."""
    segment = new_segment()
    past = timezone.localtime(timezone.now() - dt.timedelta(days=1))

    response = admin_client.post(
        ADD,
        add_data(
            segment,
            [],
            start_at_0=past.strftime("%Y-%m-%d"),
            start_at_1=past.strftime("%H:%M:%S"),
        ),
    )

    assert response.status_code == 200
    assert not Campaign.objects.exists()
    form = response.context["adminform"].form
    assert "start_at" in form.errors
    assert "in the past" in form.errors["start_at"][0]


def test_add_form_duplicate_name_is_a_form_error(admin_client):
    make_campaign(name="Taken")

    response = admin_client.post(ADD, add_data(new_segment(), [], name="Taken"))

    assert response.status_code == 200
    assert "name" in response.context["adminform"].form.errors
    assert Campaign.objects.count() == 1


def test_edit_draft_updates_fields_and_replaces_actions(admin_client):
    campaign = make_campaign(name="Before", tags=["old"])
    audience = new_segment(name="New audience")
    push = new_preset(channel="push")
    data = change_data(
        campaign,
        rows=[{"channel": "push", "preset": push.pk, "subject": "Title", "body": "Tap"}],
        name="After",
        tags="new, shiny",
        segment=audience.pk,
    )
    data["actions-1-DELETE"] = "on"  # drop the SMS action (rows are ordered by channel)

    response = admin_client.post(change_url(campaign), data, follow=True)

    assert response.status_code == 200, response.content
    campaign = reload(campaign)
    assert campaign.name == "After"
    assert sorted(campaign.tags.names()) == ["new", "shiny"]
    assert campaign.status == Status.DRAFT
    version = campaign.draft_version
    assert version.number == 1
    assert version.segment == audience
    assert sorted(a.channel for a in version.actions.all()) == ["email", "push"]
    assert CampaignVersion.objects.filter(campaign=campaign).count() == 1


def test_edit_draft_wrong_channel_preset_leaves_it_unchanged(admin_client):
    campaign = make_campaign(name="Keep")
    email_preset = new_preset(channel="email", name="Mail preset")
    data = change_data(campaign, name="Changed")
    data["actions-1-preset"] = email_preset.pk  # row 1 is the SMS action

    response = admin_client.post(change_url(campaign), data)

    assert response.status_code == 200
    assert (
        "Preset “Mail preset” is a Email preset; this action is SMS." in response.content.decode()
    )
    assert reload(campaign).name == "Keep"


def test_editing_an_open_draft_leaves_the_running_version_alone(admin_client):
    campaign = make_live_campaign(name="Running")
    live_version = campaign.live_version
    services.campaign_modify(campaign=campaign, user=None)
    campaign = reload(campaign)

    response = admin_client.get(change_url(campaign))
    html = response.content.decode()
    assert "Draft version 2" in html
    assert 'name="name"' in html
    assert 'name="type"' not in html  # the type is fixed once a campaign has run

    data = change_data(campaign, description="Changed in v2")
    data.pop("type")
    admin_client.post(change_url(campaign), data)

    campaign = reload(campaign)
    assert campaign.description == "Changed in v2"
    assert campaign.live_version == live_version
    assert campaign.status == Status.LIVE
    assert campaign.has_open_draft


@pytest.mark.parametrize("status", [Status.LIVE, Status.STOPPED, Status.ACTIVATING])
def test_form_is_read_only_without_an_editable_draft(admin_client, one_of_each, status):
    campaign = one_of_each[status]

    response = admin_client.get(change_url(campaign))

    assert response.status_code == 200
    html = response.content.decode()
    assert 'name="name"' not in html
    assert 'name="_save"' not in html
    assert "actions-TOTAL_FORMS" not in html
    before = (campaign.name, campaign.status)
    posted = admin_client.post(
        change_url(campaign), {"name": "Hacked", "_save": "Save"}, follow=True
    )
    assert posted.status_code == 200
    assert any("Your changes were not saved" in t for t in messages_of(posted))
    assert (reload(campaign).name, reload(campaign).status) == before


def test_saving_a_page_whose_draft_was_activated_meanwhile(admin_client):
    campaign = make_campaign(name="Raced")
    data = change_data(campaign, name="Too late")
    activate_acknowledged(campaign=campaign)  # another marketer, meanwhile

    response = admin_client.post(change_url(campaign), data, follow=True)

    assert response.status_code == 200
    assert any("“Raced” is Activating" in t for t in messages_of(response))
    assert reload(campaign).name == "Raced"


def test_view_only_user_cannot_post_the_form(client, user_with_perms):
    client.force_login(user_with_perms("campaigns.view_campaign"))
    campaign = make_campaign(name="Mine")

    response = client.post(change_url(campaign), change_data(campaign, name="Theirs"))

    assert response.status_code == 403
    assert reload(campaign).name == "Mine"


def test_change_page_shows_running_version_versions_and_log(admin_client):
    segment = new_segment(name="Loyal customers")
    campaign = make_live_campaign(name="Shown", segment=segment)
    services.campaign_modify(campaign=campaign, user=None)

    html = admin_client.get(change_url(campaign)).content.decode()

    live_block = html[html.index('id="live-version"') :]
    assert "Running — version 1" in live_block
    assert "Loyal customers" in live_block
    assert "Hello {{ profile.external_id }}" in live_block
    versions = html[html.index('id="versions"') : html.index('id="transitions"')]
    assert ">running</span>" in versions
    assert ">draft</span>" in versions
    log = html[html.index('id="transitions"') :]
    for step in ("Created", "Activation requested", "Activated", "Draft opened"):
        assert f"<td>{step}</td>" in log
    assert "activation_succeed" not in log
    assert 'Draft<span class="salvo-arrow">→</span>Activating' in log


def test_activation_error_is_shown_prominently(admin_client):
    campaign = make_campaign(name="Will fail")
    activate_acknowledged(campaign=campaign)
    # The segment vanishes between the request and the activation task.
    CampaignVersion.objects.filter(campaign=campaign, number=1).update(segment=None)
    services.campaign_activation_complete(campaign_id=campaign.pk)

    html = admin_client.get(change_url(campaign)).content.decode()

    assert 'id="activation-error"' in html
    assert "The last activation failed:" in html
    assert "Choose a segment" in html


# --- lifecycle buttons -------------------------------------------------------------------


def buttons(client: Any, campaign: Campaign) -> list[str]:
    response = client.get(change_url(campaign))
    return [b["operation"] for b in response.context["salvo_buttons"]]


def test_buttons_offer_only_what_the_status_allows(admin_client, one_of_each):
    assert buttons(admin_client, one_of_each[Status.DRAFT]) == ["activate", "duplicate", "delete"]
    assert buttons(admin_client, one_of_each[Status.LIVE]) == ["modify", "stop", "duplicate"]
    assert buttons(admin_client, one_of_each[Status.STOPPED]) == ["archive", "duplicate"]
    assert buttons(admin_client, one_of_each[Status.ARCHIVED]) == ["duplicate"]
    html = admin_client.get(change_url(one_of_each[Status.DRAFT])).content.decode()
    assert 'value="activate"' in html
    assert "Save and activate" in html
    assert 'data-operation="stop"' not in html


def test_save_and_activate_saves_then_activates(admin_client):
    campaign = make_campaign(name="Go", segment=None)
    segment = new_segment()
    data = change_data(campaign, segment=segment.pk, _lifecycle="activate")

    reviewed = admin_client.post(change_url(campaign), data, follow=True)
    assert reviewed.redirect_chain[-1][0] == review_url(campaign)
    confirmed = {"acknowledge": review_warnings(campaign)}
    response = admin_client.post(review_url(campaign), confirmed, follow=True)

    campaign = reload(campaign)
    assert campaign.status == Status.ACTIVATING
    assert campaign.draft_version.segment == segment
    assert any("Activation of “Go” started" in t for t in messages_of(response))


def test_activate_with_failed_checks_keeps_the_saved_edits(admin_client):
    campaign = make_campaign(name="Incomplete", segment=None, actions=[])
    data = change_data(campaign, description="saved anyway", _lifecycle="activate")

    response = admin_client.post(change_url(campaign), data, follow=True)

    campaign = reload(campaign)
    assert campaign.status == Status.DRAFT
    assert campaign.description == "saved anyway"
    html = response.content.decode()  # the review page, with its errors and no confirmation
    assert 'data-code="no_segment"' in html
    assert "Choose a segment" in html
    assert "Add at least one channel action" in html
    assert 'data-role="confirm"' not in html


def test_activate_button_as_a_separate_post(admin_client):
    campaign = make_campaign()

    response = admin_client.post(lifecycle_url(campaign, "activate"), follow=True)
    assert response.redirect_chain[-1][0] == review_url(campaign)
    confirmed = {"acknowledge": review_warnings(campaign)}
    response = admin_client.post(review_url(campaign), confirmed, follow=True)

    assert response.redirect_chain[-1][0] == change_url(campaign)
    assert reload(campaign).status == Status.ACTIVATING


def test_modify_then_discard_draft(admin_client):
    campaign = make_live_campaign(name="Evergreen")

    response = admin_client.post(lifecycle_url(campaign, "modify"), follow=True)
    campaign = reload(campaign)
    assert campaign.has_open_draft
    assert campaign.draft_version.number == 2
    assert any("Version 2 of “Evergreen” is open" in t for t in messages_of(response))
    assert buttons(admin_client, campaign) == [
        "activate",
        "discard_draft",
        "stop",
        "duplicate",
    ]

    admin_client.post(lifecycle_url(campaign, "discard_draft"), follow=True)
    campaign = reload(campaign)
    assert not campaign.has_open_draft
    assert campaign.status == Status.LIVE


def test_stop_then_archive(admin_client):
    campaign = make_live_campaign()

    admin_client.post(lifecycle_url(campaign, "stop"))
    assert reload(campaign).status == Status.STOPPED

    response = admin_client.post(lifecycle_url(campaign, "archive"), follow=True)
    assert reload(campaign).status == Status.ARCHIVED
    assert any("is archived" in t for t in messages_of(response))


def test_duplicate_opens_the_copy(admin_client):
    campaign = make_live_campaign(name="Original")
    services.campaign_stop(campaign=campaign, user=None)

    response = admin_client.post(lifecycle_url(campaign, "duplicate"), follow=True)

    copy = Campaign.objects.get(name="Original (copy)")
    assert copy.status == Status.DRAFT
    assert response.redirect_chain[-1][0] == change_url(copy)


def test_delete_only_drafts(admin_client):
    draft = make_campaign()
    live = make_live_campaign()
    delete = "admin:campaigns_campaign_delete"

    assert admin_client.get(reverse(delete, args=[live.pk])).status_code == 403
    assert admin_client.get(reverse(delete, args=[draft.pk])).status_code == 200
    admin_client.post(reverse(delete, args=[draft.pk]), {"post": "yes"})

    assert not Campaign.objects.filter(pk=draft.pk).exists()
    assert Campaign.objects.filter(pk=live.pk).exists()


@pytest.mark.parametrize(
    ("status", "operation", "says"),
    [
        (Status.DRAFT, "stop", "Cannot stop campaign"),
        (Status.DRAFT, "archive", "Cannot archive campaign"),
        (Status.DRAFT, "modify", "Cannot modify campaign"),
        (Status.DRAFT, "discard_draft", "delete the Draft campaign instead"),
        (Status.LIVE, "archive", "Cannot archive campaign"),
        (Status.LIVE, "activate", "it has no open draft version"),
        (Status.STOPPED, "activate", "Cannot activate campaign"),
        (Status.STOPPED, "stop", "Cannot stop campaign"),
        (Status.STOPPED, "modify", "Cannot modify campaign"),
        (Status.ARCHIVED, "archive", "Cannot archive campaign"),
        (Status.ACTIVATING, "stop", "Cannot stop campaign"),
    ],
)
def test_refused_operations_say_why_and_change_nothing(
    admin_client, one_of_each, status, operation, says
):
    campaign = one_of_each[status]

    response = admin_client.post(lifecycle_url(campaign, operation), follow=True)

    assert response.status_code == 200
    assert any(says in t for t in messages_of(response)), messages_of(response)
    after = reload(campaign)
    assert after.status == status
    assert after.draft_version_id == campaign.draft_version_id


def test_lifecycle_needs_post_and_a_known_operation(admin_client):
    campaign = make_campaign()

    assert admin_client.get(lifecycle_url(campaign, "activate")).status_code == 405
    assert admin_client.post(lifecycle_url(campaign, "explode")).status_code == 404
    assert reload(campaign).status == Status.DRAFT


def test_without_activate_permission_no_button_and_a_message(client, user_with_perms):
    user = user_with_perms(
        "campaigns.view_campaign", "campaigns.change_campaign", "campaigns.add_campaign"
    )
    client.force_login(user)
    campaign = make_campaign()

    assert "activate" not in buttons(client, campaign)
    response = client.post(lifecycle_url(campaign, "activate"), follow=True)

    assert response.status_code == 200
    assert any("campaigns.activate_campaign" in t for t in messages_of(response))
    assert reload(campaign).status == Status.DRAFT


def test_with_activate_permission_the_button_is_offered(client, user_with_perms):
    user = user_with_perms(
        "campaigns.view_campaign", "campaigns.change_campaign", "campaigns.activate_campaign"
    )
    client.force_login(user)
    campaign = make_campaign()

    assert "activate" in buttons(client, campaign)
    response = client.post(lifecycle_url(campaign, "activate"))
    assert response["Location"] == review_url(campaign)
    client.post(review_url(campaign), {"acknowledge": review_warnings(campaign)})
    assert reload(campaign).status == Status.ACTIVATING


def test_view_only_user_gets_a_message_not_a_crash(client, user_with_perms):
    client.force_login(user_with_perms("campaigns.view_campaign"))
    campaign = make_live_campaign()

    assert buttons(client, campaign) == []
    response = client.post(lifecycle_url(campaign, "stop"), follow=True)

    assert response.status_code == 200
    assert any("campaigns.activate_campaign" in t for t in messages_of(response))
    assert reload(campaign).status == Status.LIVE
