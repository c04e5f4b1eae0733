"""The delivery engine's services, run in the test process against the local sinks.

The real-worker scenarios (SIGKILL, stop, two workers…) are in test_delivery_worker.py.
"""

from collections.abc import Iterator

import pytest
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.test import override_settings

from campaigns import delivery, selectors, services
from campaigns.choices import CampaignStatus, DeliveryStatus, ExecutionStatus
from campaigns.models import ChannelAction, Delivery
from devtools.sinks import RunningSinks, running_sinks
from tests.campaigns.delivery_support import (
    drive,
    expected_report,
    make_profile,
    plan,
    send_all,
    time_passes,
)
from tests.campaigns.factories import (
    activate_acknowledged,
    email_action,
    make_campaign,
    make_live_campaign,
    sms_action,
)
from tests.channels.factories import MessagePresetFactory
from tests.segments.factories import ProfileFactory

Status = CampaignStatus


@pytest.fixture
def sinks() -> Iterator[RunningSinks]:
    with running_sinks(reject="invalid") as sink, override_settings(**sink.provider_settings()):
        yield sink


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("{% if profile.vip %}Hi", "syntax"),
        ("{% load static %}Hi", "not allowed"),
        ("{{ settings.SECRET_KEY }}", "unknown variable 'settings'"),
    ],
)
def test_activation_refuses_unsafe_or_broken_content(body, expected):
    campaign = make_campaign(actions=[sms_action()])
    # Stored before the doors checked content (they refuse it now): activation checks again.
    ChannelAction.objects.filter(version__campaign=campaign).update(body=body)

    with pytest.raises(ValidationError) as error:
        activate_acknowledged(campaign=campaign)

    assert any("SMS action, body" in m and expected in m for m in error.value.messages)
    campaign.refresh_from_db()
    assert campaign.status == Status.DRAFT


@pytest.mark.django_db
def test_going_live_starts_one_execution_with_one_row_per_action_and_profile():
    profiles = ProfileFactory.create_batch(5)

    campaign = make_live_campaign(actions=[email_action(), sms_action()])
    execution = plan(campaign)

    assert execution.planning_done
    assert execution.audience_size == len(profiles)
    rows = Delivery.objects.filter(execution=execution)
    assert sorted(rows.values_list("profile_id", "action__channel")) == sorted(
        (p.pk, channel) for p in profiles for channel in ("email", "sms")
    )
    assert set(Delivery.objects.values_list("status", flat=True)) == {DeliveryStatus.PENDING}
    # Planning again adds nothing, and the database refuses a second row for a recipient.
    assert execution.snapshot is not None
    assert not delivery.sql.insert_deliveries(execution, 1, execution.snapshot.size)
    row = Delivery.objects.first()
    assert row is not None
    with pytest.raises(IntegrityError), transaction.atomic():
        Delivery.objects.create(execution=execution, action=row.action, profile_id=row.profile_id)


@pytest.mark.django_db
def test_a_batch_sends_each_eligible_recipient_once_and_records_the_rest(sinks):
    reachable = ProfileFactory.create_batch(3)
    no_email = make_profile(email="", external_id="no-email")
    opted_out = make_profile(consent_email=False, external_id="opted-out")
    refused = make_profile(email="invalid@example.com", external_id="refused")
    preset = MessagePresetFactory(channel="email")
    campaign = make_live_campaign(
        actions=[email_action(preset=preset, body="Hi {{ profile.external_id }}")]
    )

    execution = drive(campaign)
    # A second run of every batch (a redelivered task) sends nothing more.
    assert send_all(execution) == [None]

    received = sinks.received("email")
    assert sorted(r["to"] for r in received) == sorted(p.email for p in reachable)
    assert sinks.duplicates() == 0
    rows = {d.profile.external_id: d for d in Delivery.objects.select_related("profile")}
    assert rows["no-email"].status == DeliveryStatus.SKIPPED
    assert rows["no-email"].error == "No Email address."
    assert rows["opted-out"].status == DeliveryStatus.SKIPPED
    assert rows["opted-out"].error == "Opted out of Email marketing."
    assert rows["refused"].status == DeliveryStatus.FAILED
    assert "550" in rows["refused"].error
    sent = [d for d in rows.values() if d.status == DeliveryStatus.SENT]
    assert {str(d.pk) for d in sent} == {r["delivery_id"] for r in received}
    assert all(d.provider_message_id and d.sent_at and d.attempts == 1 for d in sent)
    assert execution.status == ExecutionStatus.COMPLETED
    campaign.refresh_from_db()
    assert campaign.status == Status.COMPLETED
    # Skipped: no address, or opted out of this marketing channel; failed: the provider
    # refused the address.
    assert selectors.campaign_delivery_counts(campaign=campaign) == expected_report(
        email={"sent": reachable, "skipped": [no_email, opted_out], "failed": [refused]}
    )


@pytest.mark.django_db
def test_a_render_error_fails_that_recipient_only(sinks):
    ProfileFactory(external_id="fine", attributes={"tags": [1, 2]})
    ProfileFactory(external_id="empty", attributes={})
    campaign = make_live_campaign(
        actions=[sms_action(body="{% for i in profile.tags %}{{ i }}{% endfor %}")]
    )

    drive(campaign)

    rows = {d.profile.external_id: d for d in Delivery.objects.select_related("profile")}
    assert rows["fine"].status == DeliveryStatus.SENT
    assert rows["empty"].status == DeliveryStatus.FAILED
    assert rows["empty"].error.startswith("Cannot render:")
    assert [r["json"]["text"] for r in sinks.received("sms")] == ["12"]


@pytest.mark.django_db
def test_a_stopped_campaign_sends_nothing_more(sinks):
    audience = ProfileFactory.create_batch(4)
    campaign = make_live_campaign(actions=[sms_action()])
    execution = plan(campaign)

    services.campaign_stop(campaign=campaign, user=None)
    waits = send_all(execution)

    assert waits == [None]
    assert sinks.received() == []
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.HALTED
    assert selectors.campaign_delivery_counts(campaign=campaign) == expected_report(
        sms={"pending": audience}
    )


@pytest.mark.django_db
def test_an_empty_audience_completes_at_once():
    campaign = make_live_campaign(actions=[email_action(), sms_action()])

    execution = drive(campaign)

    assert execution.status == ExecutionStatus.COMPLETED
    campaign.refresh_from_db()
    assert campaign.status == Status.COMPLETED
    # Each action's channel is in the report, with nobody to count.
    assert selectors.campaign_delivery_counts(campaign=campaign) == expected_report(
        email={}, sms={}
    )


@pytest.mark.django_db
def test_the_report_endpoint_shows_the_counts(sinks, api_client):
    with_phone = ProfileFactory.create_batch(2)
    no_phone = make_profile(phone="")
    campaign = make_live_campaign(actions=[sms_action()])
    drive(campaign)

    response = api_client.get(f"/api/campaigns/{campaign.pk}/report/")

    assert response.status_code == 200
    report = response.json()
    counts = {key: report[key] for key in ("total", "by_status", "by_channel")}
    assert counts == expected_report(sms={"sent": with_phone, "skipped": [no_phone]})
    assert report["delivery_error"] is None
    assert report["by_reason"] == {"sms": {"no_address": 1}}
    assert report["by_version"] == {
        "1": {"total": len(with_phone) + 1, "sent": len(with_phone), "failed": 0, "skipped": 1}
    }
    assert api_client.get("/api/campaigns/999999/report/").status_code == 404


@pytest.mark.django_db
def test_through_the_batch_apis_a_failed_chunk_is_retried_and_each_refusal_recorded():
    profiles = ProfileFactory.create_batch(4)
    refused = make_profile(email="invalid@example.com", phone="+33699999999")
    email_preset = MessagePresetFactory(channel="email", reply_to="help@example.com")
    campaign = make_live_campaign(
        actions=[
            email_action(preset=email_preset, body="Hi {{ profile.external_id }}"),
            sms_action(body="Hi {{ profile.external_id }}"),
        ]
    )
    with (
        running_sinks(reject="invalid|99999999", flaky=".", flaky_times=1) as sink,
        override_settings(**sink.provider_settings(email_api=True)),
    ):
        # Every message fails once (503 for each message of the bulk request) and waits
        # for its retry, one back-off later.
        execution = drive(campaign)
        assert selectors.campaign_delivery_counts(campaign=campaign) == expected_report(
            email={"pending": profiles, "failed": [refused]},
            sms={"pending": profiles, "failed": [refused]},
        )
        waiting = Delivery.objects.filter(status=DeliveryStatus.PENDING)
        assert {d.attempts for d in waiting} == {1}
        assert execution.status == ExecutionStatus.RUNNING
        # Then the retries go through: each exactly once.
        time_passes(execution, settings.SALVO_DELIVERY_RETRY_BASE_S)
        execution = drive(campaign)
        received = sink.received()
        attempts = sink.attempts()
        duplicates = sink.duplicates()

    assert execution.status == ExecutionStatus.COMPLETED
    assert sorted(r["to"] for r in received if r["channel"] == "email") == sorted(
        p.email for p in profiles
    )
    assert sorted(r["to"] for r in received if r["channel"] == "sms") == sorted(
        p.phone for p in profiles
    )
    assert {r["path"] for r in attempts} == {"/email/batch", "/sms/batch"}
    assert duplicates == 0
    assert selectors.campaign_delivery_counts(campaign=campaign) == expected_report(
        email={"sent": profiles, "failed": [refused]},
        sms={"sent": profiles, "failed": [refused]},
    )
    rows = Delivery.objects.all()
    sent = [d for d in rows if d.status == DeliveryStatus.SENT]
    assert {d.attempts for d in sent} == {2}
    assert {str(d.pk) for d in sent} == {r["delivery_id"] for r in received}
    refusals = [d for d in rows if d.profile_id == refused.pk]
    assert {d.status for d in refusals} == {DeliveryStatus.FAILED}
    assert all("HTTP 400" in d.error for d in refusals)
    email = next(r for r in attempts if r["channel"] == "email" and r["accepted"])
    assert email["json"]["headers"]["List-Unsubscribe"].startswith("<mailto:help@example.com")


@pytest.mark.django_db
def test_a_rate_limited_batch_comes_back_later_instead_of_sleeping(sinks):
    audience = ProfileFactory.create_batch(3)
    # One message per 100 s: the bucket holds one token, and a second one is far away
    # however long this machine takes to send the first.
    preset = MessagePresetFactory(channel="sms", rate_limit_per_second=0.01)
    campaign = make_live_campaign(actions=[sms_action(preset=preset)])
    execution = plan(campaign)

    with override_settings(SALVO_DELIVERY_RATE_WAIT_MAX_S=2):
        [first_wait] = send_all(execution)

        # The first message went at once; the batch came back instead of sleeping ~100 s.
        [first] = sinks.received("sms")
        first_recipient = next(p for p in audience if p.phone == first["to"])
        others = [p for p in audience if p != first_recipient]
        assert selectors.campaign_delivery_counts(campaign=campaign) == expected_report(
            sms={"sent": [first_recipient], "pending": others}
        )
        assert first_wait is not None
        assert 2 < first_wait <= 100

        [second_wait] = send_all(execution)

    # Nothing more went, and the reservation the first call could not use was given back:
    # had it been kept, the second call would queue behind it, another 100 s further.
    assert len(sinks.received("sms")) == 1
    assert second_wait is not None
    assert second_wait <= first_wait


@pytest.mark.django_db
def test_marketing_email_carries_a_working_one_click_unsubscribe_link(client):
    profile = ProfileFactory.create()
    preset = MessagePresetFactory(channel="email", reply_to="help@example.com")
    campaign = make_live_campaign(actions=[email_action(preset=preset)])  # marketing
    with (
        running_sinks() as sink,
        override_settings(
            **sink.provider_settings(email_api=True), SALVO_PUBLIC_URL="https://salvo.example.com"
        ),
    ):
        drive(campaign)
        [email] = sink.received("email")

    headers = email["json"]["headers"]
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    link, mailto = headers["List-Unsubscribe"].split(", ")
    assert link.startswith("<https://salvo.example.com/unsubscribe/")
    assert mailto.startswith("<mailto:help@example.com?subject=unsubscribe")
    # What the mailbox provider does when the recipient clicks "Unsubscribe":
    response = client.post(link.strip("<>").removeprefix("https://salvo.example.com"))
    assert response.status_code == 200
    profile.refresh_from_db()
    assert profile.consent_email is False
