"""A campaign's kind (one-shot, recurring, API-triggered) at every door: chosen at
creation, listed and filtered, fixed once the campaign has run."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command

from campaigns import services
from campaigns.choices import CampaignKind, CampaignStatus
from campaigns.models import Campaign, Execution
from tests.campaigns.doors import ADD, add_data, change_data, change_url, create_payload
from tests.campaigns.factories import make_campaign, make_live_campaign
from tests.segments.factories import SegmentFactory

pytestmark = pytest.mark.django_db


def test_a_campaign_is_one_shot_unless_told_otherwise(api_client):
    response = api_client.post("/api/campaigns/", create_payload(), format="json")

    assert response.status_code == 201, response.content
    assert response.json()["kind"] == "one_shot"


def test_the_api_creates_and_filters_by_kind(api_client):
    made = api_client.post("/api/campaigns/", create_payload(kind="api_triggered"), format="json")
    make_campaign(name="Weekly digest", kind=CampaignKind.RECURRING)
    make_campaign(name="Summer sale")

    assert made.status_code == 201, made.content
    assert made.json()["kind"] == "api_triggered"
    listed = api_client.get("/api/campaigns/", {"kind": "recurring"}).json()["results"]
    assert [c["name"] for c in listed] == ["Weekly digest"]
    refused = api_client.get("/api/campaigns/", {"kind": "weekly"})
    assert refused.status_code == 400
    assert "kind" in refused.json()


def test_an_unknown_kind_is_refused_on_its_field(api_client):
    response = api_client.post("/api/campaigns/", create_payload(kind="daily"), format="json")

    assert response.status_code == 400
    assert "kind" in response.json()


def test_the_kind_cannot_change_once_the_campaign_has_run(api_client):
    campaign = make_live_campaign()
    services.campaign_modify(campaign=campaign, user=None)

    with pytest.raises(ValidationError, match="kind cannot change"):
        services.campaign_update(
            campaign=campaign, user=None, data={"kind": CampaignKind.RECURRING}
        )
    response = api_client.patch(
        f"/api/campaigns/{campaign.pk}/", {"kind": "recurring"}, format="json"
    )
    assert response.status_code == 400
    assert "kind" in response.json()


def test_the_admin_creates_filters_and_shows_the_kind(admin_client):
    segment = SegmentFactory()
    response = admin_client.post(ADD, add_data(segment, [], name="Digest", kind="recurring"))
    assert response.status_code == 302, response.content

    listed = admin_client.get("/admin/campaigns/campaign/", {"kind__exact": "recurring"})
    assert "Digest" in listed.content.decode()
    assert "Recurring" in listed.content.decode()
    other = admin_client.get("/admin/campaigns/campaign/", {"kind__exact": "api_triggered"})
    assert "Digest" not in other.content.decode()


def test_the_admin_refuses_a_kind_change_after_a_run(admin_client):
    campaign = make_live_campaign()
    services.campaign_modify(campaign=campaign, user=None)
    campaign.refresh_from_db()

    page = admin_client.get(change_url(campaign)).content.decode()
    assert 'name="kind"' not in page  # shown read-only

    admin_client.post(change_url(campaign), change_data(campaign, kind="recurring"))
    campaign.refresh_from_db()
    assert campaign.kind == CampaignKind.ONE_SHOT


def test_the_command_lists_and_shows_the_kind(capsys):
    campaign = make_campaign(name="Order notices", kind=CampaignKind.API_TRIGGERED)

    make_campaign(name="Spring sale")
    call_command("campaign", "list")
    listing = capsys.readouterr().out
    assert "KIND" in listing.splitlines()[0]
    assert "api_triggered" in listing
    call_command("campaign", "list", "--kind", "api_triggered")
    assert "Spring sale" not in capsys.readouterr().out
    call_command("campaign", "show", str(campaign.pk))
    assert "kind:        API-triggered" in capsys.readouterr().out


@pytest.mark.parametrize("kind", [CampaignKind.RECURRING, CampaignKind.API_TRIGGERED])
def test_only_a_one_shot_campaign_starts_its_execution_at_activation(kind):
    campaign = make_live_campaign(kind=kind)

    assert campaign.status == CampaignStatus.LIVE
    assert not Execution.objects.filter(campaign=campaign).exists()


# --- the schedule's time zone ----------------------------------------------------------


def test_the_schedule_keeps_its_time_zone_at_the_api(api_client, settings):
    payload = create_payload(schedule={"start_at": None, "time_zone": "America/New_York"})
    made = api_client.post("/api/campaigns/", payload, format="json")
    assert made.status_code == 201, made.content

    detail = api_client.get(f"/api/campaigns/{made.json()['id']}/").json()
    assert detail["draft_version"]["schedule"]["time_zone"] == "America/New_York"
    plain = make_campaign(name="No zone given")
    assert plain.draft_version.time_zone == settings.TIME_ZONE


def test_an_unknown_time_zone_is_refused_on_its_field(api_client):
    payload = create_payload(schedule={"start_at": None, "time_zone": "Mars/Olympus"})
    response = api_client.post("/api/campaigns/", payload, format="json")

    assert response.status_code == 400
    assert "time_zone" in response.json()["schedule"]
    with pytest.raises(ValidationError, match="not a time zone"):
        make_campaign(name="Nowhere", time_zone="Mars/Olympus")


def test_the_admin_offers_the_users_zone_and_keeps_the_one_chosen(admin_client):
    segment = SegmentFactory()
    form = admin_client.get(ADD).content.decode()
    assert 'name="time_zone"' in form

    admin_client.post(ADD, add_data(segment, [], name="Tokyo", time_zone="Asia/Tokyo"))
    campaign = Campaign.objects.get(name="Tokyo")
    assert campaign.draft_version.time_zone == "Asia/Tokyo"
    admin_client.post(change_url(campaign), change_data(campaign))
    campaign.refresh_from_db()
    assert campaign.draft_version.time_zone == "Asia/Tokyo"
