"""A marketer's own time zone: chosen on the admin's Preferences page, every time the admin
shows is in it with its zone, every schedule typed in the admin is read in it and stored in
UTC; the API keeps speaking ISO 8601 with an offset, whoever asks."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils import timezone

from campaigns.models import Campaign, UserPreference
from campaigns.preferences import user_preference_set, user_time_zone
from tests.campaigns.doors import ADD, add_data, change_url
from tests.campaigns.factories import make_campaign
from tests.segments.factories import SegmentFactory

pytestmark = pytest.mark.django_db

PREFERENCES = reverse("admin:preferences")
CHANGELIST = reverse("admin:campaigns_campaign_changelist")
# A day well ahead, at midnight UTC: 09:00 in Tokyo (UTC+9, no daylight saving time).
START_UTC = dt.datetime.combine(
    timezone.now().date() + dt.timedelta(days=10), dt.time(0, 0), tzinfo=dt.UTC
)


def in_tokyo(client: Any) -> None:
    response = client.post(PREFERENCES, {"time_zone": "Asia/Tokyo"})
    assert response.status_code == 302, response.content.decode()


def test_a_user_works_in_the_sites_time_zone_until_they_choose_one(client, user_with_perms):
    user = user_with_perms()  # staff, no permission: everyone may set their own zone
    client.force_login(user)

    page = client.get(PREFERENCES).content.decode()

    assert re.search(r'<option value="UTC" selected>', page)
    assert '<label for="id_time_zone">Time zone:</label>' in page
    assert f'href="{PREFERENCES}">Preferences</a>' in page  # among the user tools
    in_tokyo(client)
    assert UserPreference.objects.get(user=user).time_zone == "Asia/Tokyo"
    assert re.search(
        r'<option value="Asia/Tokyo" selected>', client.get(PREFERENCES).content.decode()
    )


def test_a_marketer_in_tokyo_types_9_00_and_the_campaign_starts_at_midnight_utc(admin_client):
    in_tokyo(admin_client)
    tokyo_day = START_UTC.astimezone(dt.timezone(dt.timedelta(hours=9))).date()

    response = admin_client.post(
        ADD,
        add_data(SegmentFactory(), [], start_at_0=tokyo_day.isoformat(), start_at_1="09:00"),
    )

    assert response.status_code == 302, response.context["adminform"].form.errors
    version = Campaign.objects.get(name="Spring sale").draft_version
    assert version is not None
    assert version.start_at == START_UTC


def test_the_list_and_the_change_page_show_tokyo_time_with_its_zone(admin_client):
    campaign = make_campaign(name="Autumn", start_at=START_UTC)
    in_tokyo(admin_client)
    tokyo_day = START_UTC.date().isoformat()  # midnight UTC is 09:00 the same day in Tokyo

    listing = admin_client.get(CHANGELIST, {"status": "all"}).content.decode()
    page = admin_client.get(change_url(campaign)).content.decode()

    assert f"{tokyo_day} 09:00 JST" in listing
    assert re.search(r'name="start_at_1"[^>]*value="09:00:00"', page)
    assert "In your time zone, Asia/Tokyo." in page
    # Every other time on the page (the log) carries the zone too.
    assert "JST" in page
    assert " UTC" not in page


def test_the_admin_of_another_user_and_the_other_doors_keep_their_zone(
    admin_client, admin_user, api_client
):
    campaign = make_campaign(name="Autumn", start_at=START_UTC)
    in_tokyo(admin_client)

    answer = api_client.get(f"/api/campaigns/{campaign.pk}/").json()

    assert dt.datetime.fromisoformat(answer["draft_version"]["schedule"]["start_at"]) == START_UTC
    # A time sent with an offset is that moment, whoever sends it.
    response = api_client.patch(
        f"/api/campaigns/{campaign.pk}/",
        {"schedule": {"start_at": "2030-01-02T09:00:00+09:00"}},
        format="json",
    )
    assert response.status_code == 200, response.json()
    campaign.refresh_from_db()
    assert campaign.draft_version is not None
    assert campaign.draft_version.start_at == dt.datetime(2030, 1, 2, 0, 0, tzinfo=dt.UTC)
    # The request over, the process is back in the site's zone.
    assert timezone.get_current_timezone_name() == "UTC"
    assert user_time_zone(user=admin_user).key == "Asia/Tokyo"


def test_a_zone_that_does_not_exist_is_refused_on_the_field(client, user_with_perms):
    user = user_with_perms()
    client.force_login(user)

    response = client.post(PREFERENCES, {"time_zone": "Mars/Olympus_Mons"})

    assert response.status_code == 200
    assert response.context["form"].errors["time_zone"] == [
        "Select a valid choice. Mars/Olympus_Mons is not one of the available choices."
    ]
    assert 'class="form-row errors field-time_zone"' in response.content.decode()
    assert not UserPreference.objects.exists()


def test_the_service_refuses_a_zone_that_does_not_exist(user_with_perms):
    user = user_with_perms()

    with pytest.raises(ValidationError) as refused:
        user_preference_set(user=user, time_zone="Mars/Olympus_Mons")

    assert "time_zone" in refused.value.message_dict
    assert not UserPreference.objects.exists()
    assert user_time_zone(user=user).key == "UTC"


@pytest.mark.browser
def test_the_preferences_page_is_reached_from_the_user_tools_and_labelled(
    admin_page, live_server, admin_user
):
    page = admin_page  # axe checks every page it loads (tests/accessibility.py)

    page.click("#user-tools a:text('Preferences')")
    page.get_by_label("Time zone").select_option("Asia/Tokyo")
    page.click("input[type=submit][value=Save]")

    page.locator(".messagelist", has_text="Your preferences were saved.").wait_for()
    assert page.get_by_label("Time zone").input_value() == "Asia/Tokyo"
    assert user_time_zone(user=admin_user).key == "Asia/Tokyo"
