"""The campaign report: why deliveries were not sent, which version each used, the
timeline, the rate and the time left, per execution; in a constant number of queries.

The engine's steps run in the test process against the local sinks (see
delivery_support); every expected figure is derived from the profiles each test makes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from campaigns import delivery, selectors, services
from campaigns.choices import DeliveryReason, DeliveryStatus
from campaigns.models import Delivery, Execution
from devtools.sinks import RunningSinks, running_sinks
from segments.models import Profile
from tests.campaigns.delivery_support import (
    drive,
    expected_report,
    live_and_partly_sent,
    make_profile,
    plan,
    send_all,
)
from tests.campaigns.factories import (
    activate_acknowledged,
    email_action,
    make_live_campaign,
    push_action,
    sms_action,
)
from tests.segments.factories import ProfileFactory, SegmentFactory

pytestmark = pytest.mark.django_db

R = DeliveryReason
DECIDED = ("sent", "failed", "skipped")


@pytest.fixture
def sinks() -> Iterator[RunningSinks]:
    with running_sinks(reject="invalid") as sink, override_settings(**sink.provider_settings()):
        yield sink


def reasons_of(campaign) -> dict[tuple[int, str], str]:
    """Each delivery's reason, by (profile id, channel)."""
    rows = Delivery.objects.filter(execution__campaign=campaign).values_list(
        "profile_id", "action__channel", "reason"
    )
    return {(profile_id, channel): reason for profile_id, channel, reason in rows}


def test_the_report_counts_each_reason_per_channel_and_the_version_used(sinks):
    reachable: list[Profile] = ProfileFactory.create_batch(3)
    no_sms: list[Profile] = ProfileFactory.create_batch(2, consent_sms=False)
    no_phone = make_profile(phone="")
    refused = make_profile(email="invalid@example.com")
    gone = make_profile()
    campaign = make_live_campaign(actions=[email_action(), sms_action()])
    execution = plan(campaign)
    Profile.objects.filter(pk=gone.pk).delete()

    send_all(execution)
    delivery.execution_complete_if_done(execution_id=execution.pk)

    everyone = [*reachable, *no_sms, no_phone, refused]
    email: dict[str, list[Profile]] = {
        "sent": [*reachable, *no_sms, no_phone],
        "failed": [refused],
        "skipped": [gone],
    }
    sms: dict[str, list[Profile]] = {
        "sent": [*reachable, refused],
        "skipped": [*no_sms, no_phone, gone],
    }
    report = selectors.campaign_report(campaign=campaign)
    counts = {key: report[key] for key in ("total", "by_status", "by_channel")}
    assert counts == expected_report(email=email, sms=sms)
    assert reasons_of(campaign) == {
        **{(p.pk, "email"): "" for p in everyone if p != refused},
        (refused.pk, "email"): R.PROVIDER_REFUSED,
        (gone.pk, "email"): R.PROFILE_DELETED,
        **{(p.pk, "sms"): "" for p in [*reachable, refused]},
        **{(p.pk, "sms"): R.OPTED_OUT for p in no_sms},
        (no_phone.pk, "sms"): R.NO_ADDRESS,
        (gone.pk, "sms"): R.PROFILE_DELETED,
    }
    assert report["by_reason"] == {
        "email": {R.PROFILE_DELETED: 1, R.PROVIDER_REFUSED: 1},
        "sms": {R.NO_ADDRESS: 1, R.OPTED_OUT: len(no_sms), R.PROFILE_DELETED: 1},
    }
    # Everything was decided with version 1; nothing is pending.
    assert report["by_version"] == {
        "1": {"total": counts["total"], **{s: counts["by_status"][s] for s in DECIDED}}
    }
    versions = set(Delivery.objects.filter(execution=execution).values_list("version", flat=True))
    assert versions == {campaign.live_version_id}

    (only,) = report["executions"]
    assert (only["id"], only["version"], only["status"]) == (execution.pk, 1, "completed")
    assert {key: only[key] for key in counts} == counts
    timeline = report["timeline"]
    assert timeline["interval_s"] == 5
    for status in ("sent", "failed"):
        for channel in ("email", "sms"):
            drawn = sum(point[status][channel] for point in timeline["points"])
            assert drawn == report["by_channel"][channel][status]
    assert report["rate"]["time_left_s"] == 0


def test_a_version_activated_midway_sends_what_is_left_and_skips_a_removed_channel(sinks):
    first, *rest = ProfileFactory.create_batch(4)
    campaign = make_live_campaign(
        actions=[
            email_action(subject="Old", body="old mail"),
            sms_action(body="old text {{ profile.external_id }}"),
        ]
    )
    execution = plan(campaign)
    for action in execution.version.actions.all():
        delivery.batch_send(
            execution_id=execution.pk,
            action_id=action.pk,
            first_profile_id=first.pk,
            last_profile_id=first.pk,
        )

    services.campaign_modify(campaign=campaign, user=None)
    services.campaign_update(
        campaign=campaign,
        user=None,
        data={"actions": [sms_action(body="new text {{ profile.external_id }}")]},
    )
    activate_acknowledged(campaign=campaign)
    services.campaign_activation_complete(campaign_id=campaign.pk)
    send_all(execution)
    delivery.execution_complete_if_done(execution_id=execution.pk)

    texts = {r["to"]: r["json"]["text"] for r in sinks.received("sms")}
    assert texts == {
        first.phone: f"old text {first.external_id}",
        **{p.phone: f"new text {p.external_id}" for p in rest},
    }
    assert [r["to"] for r in sinks.received("email")] == [first.email]
    removed = Delivery.objects.filter(
        execution=execution, action__channel="email", profile__in=rest
    )
    assert {(d.status, d.reason, d.error, d.version.number) for d in removed} == {
        (DeliveryStatus.SKIPPED, R.CHANNEL_REMOVED, "Version 2 has no Email action.", 2)
    }
    report = selectors.campaign_report(campaign=campaign)
    assert report["by_version"] == {
        "1": {"total": 2, "sent": 2, "failed": 0, "skipped": 0},
        "2": {"total": 2 * len(rest), "sent": len(rest), "failed": 0, "skipped": len(rest)},
    }
    assert report["by_reason"] == {"email": {R.CHANNEL_REMOVED: len(rest)}}
    campaign.refresh_from_db()
    assert campaign.status == "completed"


def test_the_rate_and_time_left_come_from_what_finished_lately(sinks):
    ProfileFactory.create_batch(6)
    campaign = make_live_campaign(actions=[sms_action()])
    execution = plan(campaign)
    (action,) = execution.version.actions.all()
    ids = sorted(Profile.objects.values_list("pk", flat=True))
    delivery.batch_send(
        execution_id=execution.pk,
        action_id=action.pk,
        first_profile_id=ids[0],
        last_profile_id=ids[1],
    )
    execution.refresh_from_db()
    now = execution.started_at + dt.timedelta(seconds=10)

    rate = selectors.campaign_report(campaign=campaign, now=now)["rate"]

    finished, pending = 2, len(ids) - 2
    assert rate["window_s"] == selectors.REPORT_RATE_WINDOW_S
    assert rate["by_channel"] == {"sms": finished / 10}
    assert rate["per_s"] == finished / 10
    assert rate["time_left_s"] == pending / (finished / 10)
    assert rate["time_left_s_by_channel"] == {"sms": pending / (finished / 10)}

    campaign = services.campaign_stop(campaign=campaign, user=None)
    stopped = selectors.campaign_report(campaign=campaign, now=now)["rate"]
    assert stopped["time_left_s"] is None  # what is pending will never go
    assert stopped["time_left_s_by_channel"] == {"sms": None}


@pytest.mark.parametrize("span_s", [60, 3 * 3600, 30 * 86400])
def test_the_timeline_interval_keeps_a_chart_readable(span_s):
    interval = selectors.timeline_interval(span_s)

    assert span_s / interval <= selectors.REPORT_TIMELINE_MAX_POINTS
    finer = [i for i in selectors.REPORT_TIMELINE_INTERVALS_S if i < interval]
    assert all(span_s / i > selectors.REPORT_TIMELINE_MAX_POINTS for i in finer)


def report_queries(api_client, campaign) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = api_client.get(f"/api/campaigns/{campaign.pk}/report/")
    assert response.status_code == 200
    return len(queries)


def test_the_report_costs_the_same_queries_for_10_and_10000_deliveries(sinks, api_client):
    small = live_and_partly_sent("small-", 5, sent=2)
    large = live_and_partly_sent("large-", 5000, sent=50)

    small_report = api_client.get(f"/api/campaigns/{small.pk}/report/").json()
    large_report = api_client.get(f"/api/campaigns/{large.pk}/report/").json()
    assert (small_report["total"], small_report["by_status"]["sent"]) == (5 * 2, 2 * 2)
    assert (large_report["total"], large_report["by_status"]["sent"]) == (5000 * 2, 50 * 2)
    assert report_queries(api_client, small) == report_queries(api_client, large)
    # Completed, it costs no more.
    drive(small)
    assert report_queries(api_client, small) <= report_queries(api_client, large)


def test_version_change_notes_say_what_applies_now_and_what_next_time():
    campaign = make_live_campaign(actions=[email_action(body="old"), sms_action()])
    services.campaign_modify(campaign=campaign, user=None)
    services.campaign_update(
        campaign=campaign,
        user=None,
        data={
            "segment": SegmentFactory(),
            "actions": [email_action(body="new"), push_action()],
        },
    )
    campaign.refresh_from_db()

    notes = selectors.version_change_notes(campaign=campaign)

    assert notes == [
        "The segment change applies to the next execution: the one under way keeps its audience.",
        "Push is added: it goes out from the next execution, not in the one under way.",
        "SMS is removed: the SMS deliveries not yet sent are skipped (reason: channel removed).",
        "The new content of Email applies to every delivery not yet sent, from the moment "
        "the activation commits.",
    ]
    assert Execution.objects.filter(campaign=campaign).count() == 1
