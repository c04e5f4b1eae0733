"""The admin home a marketer recognises: Campaigns, Audience and Channels first, the rest
under "Settings", and a dashboard of campaigns per status, Live progress and the last
transitions, in a constant number of queries."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from campaigns import services
from campaigns.choices import CampaignStatus
from campaigns.models import Campaign, CampaignTransition
from tests.campaigns.delivery_support import plan, send_all
from tests.campaigns.factories import make_campaign_in_status, make_live_campaign
from tests.segments.factories import ProfileFactory, SegmentFactory

Status = CampaignStatus
INDEX = reverse("admin:index")

pytestmark = pytest.mark.django_db


def section_names(html: str) -> list[str]:
    """The captions of the app list's sections, in order."""
    return re.findall(r'<a href="[^"]*" class="section"[^>]*>([^<]+)</a>', html)


def test_work_sections_come_first_and_the_rest_is_under_settings(admin_client):
    response = admin_client.get(INDEX)
    html = response.content.decode()
    assert section_names(html)[:4] == ["Campaigns", "Audience", "Channels", "Settings"]
    settings_section = next(a for a in response.context["app_list"] if a["name"] == "Settings")
    assert [m["name"] for m in settings_section["models"]] == sorted(
        ["Groups", "Users", "Tokens", "Tags"]
    )
    audience = next(a for a in response.context["app_list"] if a["name"] == "Audience")
    assert [m["name"] for m in audience["models"]] == ["Profiles", "Segments"]


def test_the_settings_page_lists_its_models_and_hides_from_who_sees_none(
    admin_client, client, user_with_perms
):
    page = admin_client.get(reverse("admin:settings_index"))
    assert page.status_code == 200
    html = page.content.decode()
    for name in ("Users", "Groups", "Tokens", "Tags"):
        assert f">{name}</a>" in html, name
    marketer = user_with_perms("campaigns.view_campaign")
    client.force_login(marketer)
    assert client.get(reverse("admin:settings_index")).status_code == 404
    assert "Settings" not in section_names(client.get(INDEX).content.decode())


def test_the_dashboard_counts_campaigns_per_status_with_links(admin_client):
    made = {
        Status.DRAFT: 3,
        Status.SCHEDULED: 1,
        Status.LIVE: 2,
        Status.STOPPED: 1,
        Status.COMPLETED: 1,
    }
    for status, count in made.items():
        for _ in range(count):
            make_campaign_in_status(status)
    html = admin_client.get(INDEX).content.decode()
    changelist = reverse("admin:campaigns_campaign_changelist")
    for value, label in Status.choices:
        expected = Campaign.objects.filter(status=value).count()
        assert expected == made.get(Status(value), 0)
        link = (
            f'<a href="{changelist}?status={value}" data-status="{value}">'
            f"<strong>{expected}</strong> {label}</a>"
        )
        assert link in html, link


def test_live_campaigns_show_their_progress_from_the_counters(local_sinks, admin_client):
    segment = SegmentFactory(rules={"field": "attributes.group", "op": "eq", "value": "d"})
    ProfileFactory.create_batch(3, attributes={"group": "d"})
    ProfileFactory(attributes={"group": "d"}, phone="")  # skipped: no phone
    sent = make_live_campaign(name="Half way", segment=segment)
    # Email sent to all 4, SMS to 3 and skipped for 1: 8 of 8 decided; the campaign is
    # still Live because nobody ran the completion check.
    send_all(plan(sent))
    waiting = make_live_campaign(name="Not begun", segment=segment)
    plan(waiting)  # 8 planned, none sent

    html = admin_client.get(INDEX).content.decode()
    assert re.search(
        rf'<progress id="salvo-progress-{sent.pk}" max="8" value="8" '
        r'aria-label="Progress of Half way: 100%"',
        html,
    )
    assert re.search(
        rf'<progress id="salvo-progress-{waiting.pk}" max="8" value="0" '
        r'aria-label="Progress of Not begun: 0%"',
        html,
    )


def test_the_dashboard_lists_the_last_ten_transitions(admin_client):
    for i in range(4):
        campaign = make_live_campaign(name=f"C{i}")
        services.campaign_stop(campaign=campaign, user=None)
    last = list(CampaignTransition.objects.order_by("-at", "-id")[:10])
    assert CampaignTransition.objects.count() > 10
    html = admin_client.get(INDEX).content.decode()
    section = html[html.index("Last changes") :]
    shown = re.findall(r"<li><a href=\"/admin/campaigns/campaign/(\d+)/change/\">", section)
    assert [int(pk) for pk in shown] == [t.campaign_id for t in last]


def test_without_the_campaign_permission_there_is_no_dashboard(client, user_with_perms):
    make_live_campaign()
    user = user_with_perms("segments.view_profile")
    client.force_login(user)
    html = client.get(INDEX).content.decode()
    assert 'id="salvo-dashboard"' not in html


def _home_queries(client: Any) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(INDEX)
    assert response.status_code == 200
    return len(queries)


def test_the_home_costs_the_same_queries_for_1_and_20_campaigns(local_sinks, admin_client):
    def add(count: int) -> None:
        for _ in range(count):
            campaign = make_live_campaign()
            plan(campaign)

    add(1)
    one = _home_queries(admin_client)
    add(19)
    assert _home_queries(admin_client) == one
