"""Conversions: `POST /api/conversions/` attributes a conversion to the campaign delivery
that reached the profile last within the window, refuses one with nothing to attribute it
to, and records one idempotency key once; the report's counts; the admin's list."""

from __future__ import annotations

import datetime as dt
import io
from decimal import Decimal
from typing import Any

import pytest
from django.core.management import call_command
from django.utils import timezone

from campaigns.conversions import ConversionCount, campaign_conversions
from campaigns.models import Campaign, Conversion, Delivery, Execution
from devtools.sinks import running_sinks
from tests.campaigns.delivery_support import drive
from tests.campaigns.factories import email_action, make_live_campaign, sms_action
from tests.segments.factories import ProfileFactory

pytestmark = pytest.mark.django_db

URL = "/api/conversions/"


def sent_days_ago(campaign: Campaign, days: float) -> Delivery:
    """Drive the campaign through the sinks, then move its run `days` back in time (the
    sends, and the execution around them); its email delivery."""
    with running_sinks() as sink:
        from django.test import override_settings

        with override_settings(**sink.provider_settings()):
            drive(campaign)
    then = timezone.now() - dt.timedelta(days=days)
    Delivery.objects.filter(execution__campaign=campaign).update(sent_at=then)
    Execution.objects.filter(campaign=campaign).update(
        started_at=then - dt.timedelta(minutes=1), finished_at=then
    )
    return Delivery.objects.get(execution__campaign=campaign, action__channel="email")


@pytest.fixture
def ann() -> Any:
    return ProfileFactory.create(external_id="ann", email="ann@example.com", phone="+33612345678")


def test_a_conversion_goes_to_the_last_campaign_sent_within_the_window(api_client, ann):
    older = make_live_campaign(actions=[email_action()])
    newer = make_live_campaign(actions=[email_action(), sms_action()])
    sent_days_ago(older, 3)
    newest_email = sent_days_ago(newer, 1)
    Delivery.objects.filter(execution__campaign=newer, action__channel="sms").update(
        sent_at=newest_email.sent_at - dt.timedelta(seconds=1)  # type: ignore[operator]
    )

    response = api_client.post(
        URL,
        {"profile": "ann", "value": "49.90", "currency": "eur", "idempotency_key": "order-1"},
        format="json",
    )

    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["profile"], body["campaign"], body["delivery"]) == (
        "ann",
        newer.pk,
        newest_email.pk,
    )
    assert (body["value"], body["currency"]) == ("49.90", "EUR")
    # Before the newer campaign was sent, the older one had reached Ann last.
    two_days_ago = (timezone.now() - dt.timedelta(days=2)).isoformat()
    response = api_client.post(
        URL, {"profile": "ann", "value": "5", "occurred_at": two_days_ago}, format="json"
    )
    assert response.status_code == 201, response.content
    assert response.json()["campaign"] == older.pk
    # A named campaign takes its own last delivery, within the window.
    response = api_client.post(URL, {"profile": "ann", "campaign": older.pk}, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["campaign"] == older.pk
    assert api_client.get(URL).json()["count"] == 3


def test_a_conversion_outside_the_window_is_refused_and_nothing_is_recorded(
    api_client, ann, settings
):
    campaign = make_live_campaign(actions=[email_action()])
    delivery = sent_days_ago(campaign, 8)

    for payload in (
        {"profile": "ann"},
        {"profile": "ann", "campaign": campaign.pk},
        {"delivery": delivery.pk},
    ):
        response = api_client.post(URL, {**payload, "value": "10"}, format="json")
        assert response.status_code == 400, response.content
        assert "SALVO_CONVERSION_WINDOW_DAYS" in str(response.json()), response.json()
    assert not Conversion.objects.exists()

    settings.SALVO_CONVERSION_WINDOW_DAYS = 10
    response = api_client.post(URL, {"delivery": delivery.pk, "value": "10"}, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["profile"] == "ann"


def test_bad_input_gets_a_clear_400(api_client, ann):
    campaign = make_live_campaign(actions=[email_action()])
    other = ProfileFactory.create(external_id="bob")
    delivery = sent_days_ago(campaign, 1)
    cases = [
        ({"value": "1"}, "profile"),
        ({"profile": "nobody"}, "profile"),
        ({"profile": "ann", "value": "-1"}, "value"),
        ({"profile": "ann", "currency": "euro"}, "currency"),
        ({"profile": "bob"}, "occurred_at"),  # nothing was sent to Bob
        ({"profile": "bob", "delivery": delivery.pk}, "delivery"),
        ({"delivery": 10**12}, "delivery"),
        ({"profile": "ann", "occurred_at": "2999-01-01T00:00:00Z"}, "occurred_at"),
    ]
    for payload, field in cases:
        response = api_client.post(URL, payload, format="json")
        assert response.status_code == 400, (payload, response.content)
        assert field in response.json(), (payload, response.json())
    assert other.pk
    assert not Conversion.objects.exists()


def test_an_idempotency_key_records_one_conversion(api_client, ann):
    campaign = make_live_campaign(actions=[email_action()])
    sent_days_ago(campaign, 1)
    when = timezone.now().isoformat()
    payload = {"profile": "ann", "value": "12.00", "occurred_at": when, "idempotency_key": "k1"}

    first = api_client.post(URL, payload, format="json")
    again = api_client.post(URL, payload, format="json")
    other = api_client.post(URL, {**payload, "value": "13.00"}, format="json")

    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    assert other.status_code == 409
    assert "k1" in other.json()["detail"]
    assert Conversion.objects.count() == 1


def test_recording_a_conversion_needs_its_permission(api_client_for, user_with_perms, ann):
    campaign = make_live_campaign(actions=[email_action()])
    sent_days_ago(campaign, 1)
    viewer = api_client_for(user_with_perms("campaigns.view_conversion"))
    assert viewer.get(URL).status_code == 200
    assert viewer.post(URL, {"profile": "ann"}, format="json").status_code == 403
    adder = api_client_for(user_with_perms("campaigns.add_conversion"))
    assert adder.post(URL, {"profile": "ann"}, format="json").status_code == 201


def test_the_report_counts_conversions_and_value_per_channel_and_version(
    ann, admin_client, api_client
):
    campaign = make_live_campaign(actions=[email_action(), sms_action()])
    email = sent_days_ago(campaign, 1)
    sms = Delivery.objects.get(execution__campaign=campaign, action__channel="sms")
    from campaigns.conversions import conversion_record

    conversion_record(user=None, delivery_id=email.pk, value=Decimal("10.50"))
    conversion_record(user=None, delivery_id=email.pk, value=Decimal("2"))
    conversion_record(user=None, delivery_id=sms.pk, value=Decimal("1"))

    report = campaign_conversions(campaign=campaign)
    assert report["by_channel"] == {
        "email": ConversionCount(1, Decimal("12.50")),  # one delivery converted twice
        "sms": ConversionCount(1, Decimal("1")),
    }
    assert report["by_version"] == {1: ConversionCount(2, Decimal("13.50"))}

    # The same at every door: the API's report, the command's and the admin's.
    api = api_client.get(f"/api/campaigns/{campaign.pk}/report/").json()["engagement"]
    assert api["by_channel"]["email"]["converted"] == {"count": 1, "rate": 1.0, "value": "12.50"}
    assert api["by_version"]["1"]["converted"]["value"] == "13.50"
    out = io.StringIO()
    call_command("campaign", "report", str(campaign.pk), stdout=out)
    assert "converted 1 (100.0%), worth 12.50" in out.getvalue()
    page = admin_client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
    assert 'data-event="converted"><span data-figure="count">1</span>' in page


def test_the_admin_lists_conversions_read_only(admin_client, ann):
    campaign = make_live_campaign(actions=[email_action()])
    delivery = sent_days_ago(campaign, 1)
    from campaigns.conversions import conversion_record

    conversion_record(user=None, delivery_id=delivery.pk, value=Decimal("7"))

    page = admin_client.get("/admin/campaigns/conversion/")
    assert page.status_code == 200
    assert campaign.name in page.content.decode()
    assert admin_client.get("/admin/campaigns/conversion/add/").status_code == 403
