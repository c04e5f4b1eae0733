"""Providers' tracking webhooks, posted as Postmark and SendGrid post them (their documented
JSON) to anymail's URLs with the basic auth they are configured with: the events are
recorded once, attached to their delivery (also when they arrive before the send's outcome),
put bounced, complaining and unsubscribed addresses on the suppression list, and count in
the campaign's report. A post without the right credentials records nothing."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client, override_settings

from campaigns import delivery, selectors
from campaigns.choices import DeliveryStatus, EventKind
from campaigns.models import Campaign, Delivery, DeliveryEvent
from channels.choices import SuppressionReason, SuppressionSource
from channels.models import Suppression
from devtools.sinks import RunningSinks, running_sinks
from segments.models import Profile
from tests.campaigns.delivery_support import drive, make_profile, plan, send_all
from tests.campaigns.factories import email_action, make_live_campaign

SECRET = "postmark-hook:Zk3pQ8vR2mW7xT4n"
POSTMARK = "/anymail/postmark/tracking/"
SENDGRID = "/anymail/sendgrid/tracking/"


@pytest.fixture
def sinks() -> Iterator[RunningSinks]:
    with running_sinks() as sink, override_settings(**sink.provider_settings()):
        yield sink


@pytest.fixture(autouse=True)
def webhook_secret() -> Iterator[None]:
    with override_settings(ANYMAIL_WEBHOOK_SECRET=[SECRET]):
        yield


def post(url: str, payload: Any, *, auth: str | None = SECRET) -> int:
    headers: dict[str, str] = {}
    if auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    body = json.dumps(payload)
    return Client().post(url, body, content_type="application/json", headers=headers).status_code


def postmark_bounce(row: Delivery, email: str, *, bounce_id: int, kind: str = "HardBounce"):
    # https://postmarkapp.com/developer/webhooks/bounce-webhook
    return {
        "RecordType": "Bounce",
        "MessageStream": "outbound",
        "ID": bounce_id,
        "Type": kind,
        "TypeCode": 1 if kind == "HardBounce" else 4096,
        "Name": "Hard bounce" if kind == "HardBounce" else "Soft bounce",
        "Tag": "campaign",
        "MessageID": f"pm-{row.pk}",
        "Metadata": {"salvo_delivery_id": str(row.pk)},
        "ServerID": 23,
        "Description": "The server was unable to deliver your message (ex: unknown user).",
        "Details": "smtp;550 5.1.1 The email account that you tried to reach does not exist.",
        "Email": email,
        "From": "news@example.com",
        "BouncedAt": "2026-11-30T12:33:54.9070259Z",
        "DumpAvailable": True,
        "Inactive": kind == "HardBounce",
        "CanActivate": True,
        "Subject": "Hello",
    }


def postmark_delivery(row: Delivery, email: str) -> dict[str, Any]:
    # https://postmarkapp.com/developer/webhooks/delivery-webhook
    return {
        "RecordType": "Delivery",
        "ServerID": 23,
        "MessageStream": "outbound",
        "MessageID": f"pm-{row.pk}",
        "Recipient": email,
        "Tag": "campaign",
        "DeliveredAt": "2026-11-30T12:30:52Z",
        "Details": "smtp;250 2.0.0 OK",
        "Metadata": {"salvo_delivery_id": str(row.pk)},
    }


def postmark_open(row: Delivery, email: str, at: str) -> dict[str, Any]:
    # https://postmarkapp.com/developer/webhooks/open-tracking-webhook
    return {
        "RecordType": "Open",
        "MessageStream": "outbound",
        "FirstOpen": True,
        "Client": {"Name": "Chrome 35.0.1916.153", "Company": "Google", "Family": "Chrome"},
        "OS": {"Name": "OS X 10.7 Lion", "Company": "Apple Computer, Inc.", "Family": "OS X"},
        "Platform": "WebMail",
        "UserAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_7_5) Chrome/35.0.1916.153",
        "Geo": {"CountryISOCode": "RS", "Country": "Serbia", "City": "Belgrade"},
        "MessageID": f"pm-{row.pk}",
        "Metadata": {"salvo_delivery_id": str(row.pk)},
        "ReceivedAt": at,
        "Tag": "campaign",
        "Recipient": email,
    }


def sendgrid_events(row: Delivery, email: str) -> list[dict[str, Any]]:
    # https://www.twilio.com/docs/sendgrid/for-developers/tracking-events/event (custom
    # arguments arrive as keys of each event)
    common = {
        "email": email,
        "smtp-id": f"<sg-{row.pk}@ismtpd-555>",
        "sg_message_id": f"sg-{row.pk}.filter0001",
        "category": ["campaign"],
        "salvo_delivery_id": str(row.pk),
    }
    return [
        {**common, "event": "processed", "timestamp": 1764505000, "sg_event_id": "sg-p"},
        {**common, "event": "delivered", "timestamp": 1764505001, "sg_event_id": "sg-d",
         "response": "250 OK"},
        {**common, "event": "open", "timestamp": 1764505060, "sg_event_id": "sg-o",
         "useragent": "Mozilla/5.0", "ip": "203.0.113.9"},
        {**common, "event": "click", "timestamp": 1764505070, "sg_event_id": "sg-c",
         "url": "https://example.com/offer", "url_offset": {"index": 0, "type": "html"}},
        {**common, "event": "spamreport", "timestamp": 1764505090, "sg_event_id": "sg-s"},
    ]  # fmt: skip


def email_rows(campaign: Campaign) -> dict[str, Delivery]:
    rows = Delivery.objects.filter(execution__campaign=campaign).select_related("profile")
    return {row.profile.email: row for row in rows}


def one_sent() -> tuple[Profile, Delivery]:
    """A profile and its delivery of an email campaign that sent it."""
    profile = make_profile()
    campaign = make_live_campaign(actions=[email_action()])
    drive(campaign)
    return profile, email_rows(campaign)[profile.email]


def kinds(row: Delivery) -> list[str]:
    return sorted(DeliveryEvent.objects.filter(delivery=row).values_list("kind", flat=True))


@pytest.mark.django_db
def test_postmark_events_attach_to_their_delivery_suppress_and_count_once(sinks):
    bounced, opened = make_profile(), make_profile()
    campaign = make_live_campaign(actions=[email_action()])
    drive(campaign)
    rows = email_rows(campaign)

    hard = postmark_bounce(rows[bounced.email], bounced.email.upper(), bounce_id=4323)
    assert post(POSTMARK, hard) == 200
    assert post(POSTMARK, hard) == 200  # Postmark retries a post it thinks failed
    assert post(POSTMARK, postmark_delivery(rows[opened.email], opened.email)) == 200
    for at in ("2026-11-30T12:40:00Z", "2026-11-30T12:41:00Z"):  # opened twice
        assert post(POSTMARK, postmark_open(rows[opened.email], opened.email, at)) == 200

    assert kinds(rows[bounced.email]) == [EventKind.BOUNCED]
    assert kinds(rows[opened.email]) == [EventKind.DELIVERED, EventKind.OPENED, EventKind.OPENED]
    event = DeliveryEvent.objects.get(kind=EventKind.BOUNCED)
    assert (event.provider, event.event_id, event.provider_message_id) == (
        "postmark",
        "4323",
        f"pm-{rows[bounced.email].pk}",
    )
    assert "550 5.1.1" in event.detail
    entry = Suppression.objects.get()
    assert (entry.address, entry.reason, entry.source) == (
        bounced.email.lower(),
        SuppressionReason.HARD_BOUNCE,
        SuppressionSource.PROVIDER,
    )
    engagement = selectors.campaign_report(campaign=campaign)["engagement"]
    email = engagement["by_channel"]["email"]
    assert {kind: email[kind]["count"] for kind in email} == {
        "delivered": 1, "bounced": 1, "complained": 0, "unsubscribed": 0, "opened": 1, "clicked": 0,
        "converted": 0,
    }  # fmt: skip
    assert email["opened"]["rate"] == 0.5  # one of the two sent
    assert engagement["by_version"]["1"]["bounced"] == {"count": 1, "rate": 0.5}


@pytest.mark.django_db
def test_a_soft_bounce_is_kept_as_one_and_suppresses_nothing(sinks):
    profile, row = one_sent()
    assert (
        post(POSTMARK, postmark_bounce(row, profile.email, bounce_id=9, kind="SoftBounce")) == 200
    )
    assert kinds(row) == [EventKind.SOFT_BOUNCED]
    assert not Suppression.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("auth", [None, "postmark-hook:wrong", "someone:" + SECRET.split(":")[1]])
def test_a_post_without_the_webhook_credentials_is_refused_and_records_nothing(sinks, auth):
    profile, row = one_sent()
    assert post(POSTMARK, postmark_bounce(row, profile.email, bounce_id=1), auth=auth) == 400
    assert post(SENDGRID, sendgrid_events(row, profile.email), auth=auth) == 400
    assert not DeliveryEvent.objects.exists()
    assert not Suppression.objects.exists()


@pytest.mark.django_db
def test_without_a_secret_set_every_post_is_refused(sinks):
    profile, row = one_sent()
    with override_settings(ANYMAIL_WEBHOOK_SECRET=[]):
        assert post(POSTMARK, postmark_bounce(row, profile.email, bounce_id=1), auth=None) == 400
    assert not DeliveryEvent.objects.exists()


@pytest.mark.django_db
def test_a_bounce_that_arrives_before_the_send_is_recorded_is_attached_and_counted(sinks):
    profile, other = make_profile(), make_profile()
    campaign = make_live_campaign(actions=[email_action()])
    execution = plan(campaign)  # deliveries planned, nothing sent yet
    row = email_rows(campaign)[profile.email]
    assert row.status == DeliveryStatus.PENDING

    assert post(POSTMARK, postmark_bounce(row, profile.email, bounce_id=77)) == 200
    send_all(execution)
    delivery.execution_complete_if_done(execution_id=execution.pk)

    row.refresh_from_db()
    # Suppressed before its chunk was sent: the engine skips it rather than send it.
    assert (row.status, row.reason) == (DeliveryStatus.SKIPPED, "suppressed")
    assert kinds(row) == [EventKind.BOUNCED]
    assert [m["to"] for m in sinks.received("email")] == [other.email]
    report = selectors.campaign_report(campaign=campaign)
    assert report["by_reason"] == {"email": {"suppressed": 1}}
    assert report["engagement"]["by_channel"]["email"]["bounced"]["count"] == 1


@pytest.mark.django_db
def test_sendgrid_batches_record_each_event_once_and_a_complaint_suppresses(sinks):
    profile, row = one_sent()
    batch = sendgrid_events(row, profile.email)
    assert post(SENDGRID, batch) == 200
    assert post(SENDGRID, batch[::-1]) == 200  # the same batch again, out of order

    # "processed" repeats the send's own outcome: not kept.
    assert kinds(row) == ["clicked", "complained", "delivered", "opened"]
    click = DeliveryEvent.objects.get(kind=EventKind.CLICKED)
    assert (click.provider, click.event_id, click.detail) == (
        "sendgrid",
        "sg-c",
        "https://example.com/offer",
    )
    assert Suppression.objects.get().reason == SuppressionReason.COMPLAINT
    email = selectors.campaign_report(campaign=row.execution.campaign)["engagement"]["by_channel"][
        "email"
    ]
    assert (email["clicked"], email["complained"]) == (
        {"count": 1, "rate": 1.0},
        {"count": 1, "rate": 1.0},
    )


@pytest.mark.django_db
def test_the_admin_the_api_and_the_command_show_the_same_engagement(
    sinks, admin_client, api_client
):
    opened, bounced = make_profile(), make_profile()
    campaign = make_live_campaign(actions=[email_action()])
    drive(campaign)
    rows = email_rows(campaign)
    post(POSTMARK, postmark_delivery(rows[opened.email], opened.email))
    post(POSTMARK, postmark_open(rows[opened.email], opened.email, "2026-11-30T12:40:00Z"))
    post(POSTMARK, postmark_bounce(rows[bounced.email], bounced.email, bounce_id=5))

    api = api_client.get(f"/api/campaigns/{campaign.pk}/report/").json()["engagement"]
    assert api["by_channel"]["email"]["opened"] == {"count": 1, "rate": 0.5}
    assert api["by_channel"]["email"]["bounced"] == {"count": 1, "rate": 0.5}

    page = admin_client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
    section = page[page.index('class="salvo-engagement"') :]
    cells = dict(re.findall(r'data-event="(\w+)"><span data-figure="count">(\d+)</span>', section))
    assert cells == {
        "delivered": "1", "bounced": "1", "complained": "0", "unsubscribed": "0",
        "opened": "1", "clicked": "0", "converted": "0",
    }  # fmt: skip

    out = StringIO()
    call_command("campaign", "report", str(campaign.pk), stdout=out)
    assert (
        "email after the send: delivered 1 (50.0%), bounced 1 (50.0%), complained 0 (0.0%), "
        "unsubscribed 0 (0.0%), opened 1 (50.0%), clicked 0 (0.0%)"
    ) in out.getvalue()


@pytest.mark.django_db
def test_the_deliveries_page_and_the_api_show_each_deliverys_events(sinks, admin_client):
    profile, row = one_sent()
    post(POSTMARK, postmark_delivery(row, profile.email))
    for at in ("2026-11-30T12:40:00Z", "2026-11-30T12:41:00Z", "2026-11-30T12:42:00Z"):
        post(POSTMARK, postmark_open(row, profile.email, at))
    url = f"/admin/campaigns/delivery/?campaign={row.execution.campaign_id}"
    page = admin_client.get(url).content.decode()
    assert '<td class="field-events_text">Delivered · Opened ×3</td>' in page

    api = admin_client.get(f"/api/campaigns/{row.execution.campaign_id}/deliveries/").json()
    assert [result["events"] for result in api["results"]] == [{"delivered": 1, "opened": 3}]
