"""A readable diff of any two versions of a campaign: its segment, schedule and each
channel's action (preset, subject, body line by line), in the admin for whoever may view
the campaign."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.urls import reverse
from django.utils import timezone

from campaigns import selectors, services
from campaigns.models import Campaign, CampaignVersion
from tests.campaigns.factories import email_action, make_live_campaign, push_action, sms_action
from tests.segments.factories import SegmentFactory

pytestmark = pytest.mark.django_db

OLD_BODY = "Hello {{ profile.external_id }},\nour sale starts Monday.\nSee you!"
NEW_BODY = "Hello {{ profile.external_id }},\nour sale starts Tuesday.\nSee you!"


def diff_url(campaign: Campaign, **numbers: int) -> str:
    url = reverse("admin:campaigns_campaign_version_diff", args=[campaign.pk])
    query = "&".join(f"{name}={number}" for name, number in numbers.items())
    return f"{url}?{query}" if query else url


def two_versions() -> tuple[Campaign, CampaignVersion, CampaignVersion]:
    """Version 1 running (email + SMS to "Everyone"), version 2 a draft that changes the
    segment, the start, the email's body, drops the SMS and adds a push."""
    email = email_action(subject="Sale", body=OLD_BODY)
    campaign = make_live_campaign(
        name="Sale", segment=SegmentFactory(name="Everyone"), actions=[email, sms_action()]
    )
    draft = services.campaign_modify(campaign=campaign, user=None)
    start = timezone.now() + dt.timedelta(days=3)
    services.campaign_update(
        campaign=Campaign.objects.get(pk=campaign.pk),
        user=None,
        data={
            "segment": SegmentFactory(name="VIPs"),
            "start_at": start,
            "actions": [
                {**email, "body": NEW_BODY},
                push_action(subject="Sale", body="Tuesday!"),
            ],
        },
    )
    assert campaign.live_version is not None
    return campaign, campaign.live_version, CampaignVersion.objects.get(pk=draft.pk)


def by_title(sections: list[selectors.SectionDiff]) -> dict[str, selectors.SectionDiff]:
    return {section.title: section for section in sections}


def test_the_diff_shows_what_changed_in_each_part():
    _, v1, v2 = two_versions()
    sections = by_title(selectors.version_diff(old=v1, new=v2))

    assert list(sections) == ["Audience and schedule", "Email action", "Push action", "SMS action"]
    audience = {f.label: f for f in sections["Audience and schedule"].fields}
    assert (audience["Segment"].old, audience["Segment"].new) == ("Everyone", "VIPs")
    assert audience["Start"].old == "As soon as activated"
    assert v2.start_at is not None
    assert audience["Start"].new == timezone.localtime(v2.start_at).isoformat(
        sep=" ", timespec="minutes"
    )
    email = sections["Email action"]
    assert email.state == "changed"
    body = next(f for f in email.fields if f.label == "Body")
    assert body.lines == [
        (" ", "Hello {{ profile.external_id }},"),
        ("-", "our sale starts Monday."),
        ("+", "our sale starts Tuesday."),
        (" ", "See you!"),
    ]
    subject = next(f for f in email.fields if f.label == "Subject")
    assert not subject.changed
    assert sections["SMS action"].state == "removed"
    assert sections["Push action"].state == "added"


def test_a_version_compared_with_itself_is_unchanged():
    _, v1, _ = two_versions()
    assert {s.state for s in selectors.version_diff(old=v1, new=v1)} == {"same"}


def test_the_admin_page_compares_the_two_newest_by_default_and_any_two_asked(admin_client):
    campaign, _, _ = two_versions()
    page = admin_client.get(diff_url(campaign)).content.decode()
    assert "Email action — changed" in page
    assert '<del><span class="visually-hidden">removed: </span>- our sale starts Monday.</del>' in (
        page
    )
    assert '<ins><span class="visually-hidden">added: </span>+ our sale starts Tuesday.</ins>' in (
        page
    )
    assert "SMS action — removed in version 2" in page
    assert "Push action — added in version 2" in page

    reversed_page = admin_client.get(diff_url(campaign, old=2, new=1)).content.decode()
    assert "SMS action — added in version 1" in reversed_page


def test_an_unknown_version_number_is_an_error_on_the_page(admin_client):
    campaign, _, _ = two_versions()
    response = admin_client.get(diff_url(campaign, old=7, new=2))
    assert response.status_code == 200
    html = response.content.decode()
    assert "“7” is not a version of this campaign: choose one of 1, 2." in html
    assert "Email action —" not in html


def test_the_change_page_links_each_version_to_its_changes(admin_client):
    campaign, _, _ = two_versions()
    page = admin_client.get(
        reverse("admin:campaigns_campaign_change", args=[campaign.pk])
    ).content.decode()
    assert f'href="{diff_url(campaign)}" id="versions-compare"' in page
    assert f'href="{diff_url(campaign, old=1, new=2).replace("&", "&amp;")}"' in page


@pytest.mark.parametrize(("perms", "status"), [((), 403), (("campaigns.view_campaign",), 200)])
def test_the_diff_is_for_whoever_may_view_the_campaign(
    client: Any, user_with_perms: Any, perms: tuple[str, ...], status: int
):
    campaign, _, _ = two_versions()
    user = user_with_perms(*perms)
    client.force_login(user)
    assert client.get(diff_url(campaign)).status_code == status
