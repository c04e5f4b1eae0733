"""A recurring campaign's occurrences, run by the scheduler's steps in the test process at
moments the test names (the real scheduler and worker: test_occurrences_worker.py)."""

from __future__ import annotations

import datetime as dt

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from campaigns import delivery, services
from campaigns.choices import CampaignKind, CampaignStatus, ExecutionStatus
from campaigns.clock import clock_set
from campaigns.models import Campaign, Delivery, Execution
from campaigns.occurrences import occurrences_start_due
from tests.campaigns.delivery_support import make_profile, make_segment, send_all
from tests.campaigns.factories import make_campaign, make_live_campaign, sms_action

pytestmark = pytest.mark.django_db

UTC = dt.UTC
START = dt.datetime(2031, 1, 6, 7, 0, tzinfo=UTC)  # a Monday, 08:00 in Paris
DAILY_9 = {"every": "day", "at": "09:00"}  # 08:00 UTC in winter


def recurring(**fields) -> Campaign:
    fields.setdefault("segment", make_segment(rules={"all": []}))
    fields.setdefault("actions", [sms_action(body="Hi {{ profile.external_id }}")])
    return make_live_campaign(
        kind=CampaignKind.RECURRING,
        start_at=fields.pop("start_at", START),
        time_zone="Europe/Paris",
        recurrence=fields.pop("recurrence", DAILY_9),
        **fields,
    )


def at(day: int, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(2031, 1, day, hour, minute, tzinfo=UTC)


def run(execution_id: int) -> Execution:
    """What the workers do with an occurrence: plan it, send it, complete it."""
    while delivery.execution_plan_step(execution_id=execution_id):
        pass
    execution = Execution.objects.get(pk=execution_id)
    send_all(execution)
    delivery.execution_complete_if_done(execution_id=execution_id)
    execution.refresh_from_db()
    return execution


def tick(now: dt.datetime) -> list[int]:
    services.campaigns_start_due(now=now)
    return occurrences_start_due(now=now)


def status(campaign: Campaign) -> str:
    campaign.refresh_from_db()
    return campaign.status


def test_each_occurrence_is_an_execution_with_its_own_audience_and_counts():
    make_profile(external_id="ann")
    campaign = recurring()
    assert campaign.status == CampaignStatus.SCHEDULED
    assert campaign.next_run_at == at(6, 8)

    assert tick(at(6, 7, 59)) == []
    [first] = tick(
        at(
            6,
            8,
            0,
        )
    )
    assert status(campaign) == CampaignStatus.LIVE
    assert run(first).audience_size == 1
    assert status(campaign) == CampaignStatus.LIVE  # an occurrence done is not the end
    assert campaign.next_run_at == at(7, 8)

    make_profile(external_id="bob")  # the segment is evaluated again at each occurrence
    [second] = tick(at(7, 8, 1))
    assert run(second).audience_size == 2
    assert tick(at(7, 8, 2)) == []  # never twice
    executions = Execution.objects.filter(campaign=campaign).order_by("scheduled_for")
    assert [e.scheduled_for for e in executions] == [at(6, 8), at(7, 8)]
    assert Delivery.objects.filter(execution__campaign=campaign, status="sent").count() == 3


def test_a_missed_occurrence_runs_once_within_the_grace_and_is_skipped_beyond(settings):
    settings.SALVO_RECURRENCE_GRACE_S = 3600
    campaign = recurring()
    tick(at(6, 7))  # Scheduled → Live at the start

    # Down from before the 6th's occurrence until 3 days later, 30 minutes after the 9th's.
    started = tick(at(9, 8, 30))
    executions = Execution.objects.filter(campaign=campaign).order_by("scheduled_for")
    assert [(e.scheduled_for, e.status) for e in executions] == [
        (at(6, 8), ExecutionStatus.SKIPPED),
        (at(7, 8), ExecutionStatus.SKIPPED),
        (at(8, 8), ExecutionStatus.SKIPPED),
        (at(9, 8), ExecutionStatus.RUNNING),
    ]
    assert started == [executions.last().pk]
    assert "more than SALVO_RECURRENCE_GRACE_S" in executions.first().error
    log = campaign.transitions.filter(name="skip_occurrence").order_by("at", "id")
    assert [entry.reason.split(" is skipped")[0] for entry in log] == [
        f"The occurrence of {moment.isoformat()}" for moment in (at(6, 8), at(7, 8), at(8, 8))
    ]
    assert tick(at(9, 8, 31)) == []
    campaign.refresh_from_db()
    assert campaign.next_run_at == at(10, 8)


def test_the_campaign_completes_after_the_last_occurrence_before_the_end():
    make_profile(external_id="ann")
    campaign = recurring(end_at=at(7, 12))
    [first] = tick(at(6, 8))
    run(first)
    [last] = tick(at(7, 8))
    campaign.refresh_from_db()
    assert campaign.next_run_at is None
    assert campaign.status == CampaignStatus.LIVE  # its last occurrence still runs
    run(last)
    assert status(campaign) == CampaignStatus.COMPLETED


def test_a_modification_applies_from_the_next_occurrence(settings, tmp_path):
    make_profile(external_id="ann")
    campaign = recurring()
    [first] = tick(at(6, 8))
    run(first)
    # The activation reads the scheduling clock: move it to 6 January, 09:00.
    settings.SALVO_TEST_CLOCK_FILE = str(tmp_path / "clock")
    clock_set(tmp_path / "clock", ahead=at(6, 9) - timezone.now())
    services.campaign_modify(campaign=campaign, user=None)
    services.campaign_update(
        campaign=campaign,
        user=None,
        data={
            "actions": [
                sms_action(body="Second edition"),
            ],
            "recurrence": {"every": "day", "at": "10:00"},
        },
    )
    services.campaign_activate(campaign=campaign, user=None, acknowledge=["tiny_audience"])
    services.campaign_activation_complete(campaign_id=campaign.pk)
    campaign.refresh_from_db()
    assert campaign.status == CampaignStatus.LIVE
    # The new rule's first occurrence after now and after the last one that began.
    assert campaign.next_run_at == at(7, 9)
    [second] = tick(at(7, 9))
    assert run(second).version.number == 2


def test_a_stop_cancels_the_occurrences_to_come():
    campaign = recurring()
    tick(at(6, 8))
    services.campaign_stop(campaign=campaign, user=None)
    campaign.refresh_from_db()
    assert campaign.next_run_at is None
    assert tick(at(7, 8)) == []
    assert Execution.objects.filter(campaign=campaign).count() == 1


def test_once_per_profile_leaves_out_who_an_earlier_occurrence_reached():
    make_profile(external_id="ann")
    recurring(once_per_profile=True)
    [first] = tick(at(6, 8))
    run(first)
    make_profile(external_id="bob")
    [second] = tick(at(7, 8))
    second_run = run(second)
    reached = Delivery.objects.filter(execution=second_run).values_list(
        "profile__external_id", flat=True
    )
    assert list(reached) == ["bob"]

    recurring(name="Every time")
    [again] = tick(at(6, 8))
    assert run(again).audience_size == 2


def test_a_recurrence_belongs_to_a_recurring_campaign_and_must_come_before_its_end():
    with pytest.raises(ValidationError, match="Only a recurring campaign"):
        make_campaign(recurrence=DAILY_9)
    with pytest.raises(ValidationError) as refused:
        make_campaign(kind=CampaignKind.RECURRING, recurrence={"every": "day", "at": "9"})
    assert refused.value.message_dict["recurrence"] == [
        "at: A clock time as HH:MM, from 00:00 to 23:59."
    ]
    with pytest.raises(ValidationError, match="no occurrence between the start and this end"):
        make_campaign(
            kind=CampaignKind.RECURRING,
            recurrence=DAILY_9,
            time_zone="UTC",
            start_at=at(6, 9, 1),
            end_at=at(7, 8, 59),
        )


def test_the_report_lists_each_occurrence_with_its_time_and_counts(
    settings, api_client, admin_client
):
    settings.SALVO_RECURRENCE_GRACE_S = 3600
    make_profile(external_id="ann")
    campaign = recurring()
    [first] = tick(at(6, 8))
    run(first)
    [third] = tick(at(8, 8, 30))  # the 7th's occurrence is skipped
    run(third)

    report = api_client.get(f"/api/campaigns/{campaign.pk}/report/").json()
    occurrences = [
        (e["scheduled_for"], e["status"], e["total"], e["by_status"]["sent"])
        for e in report["executions"]
    ]
    assert occurrences == [
        ("2031-01-08T08:00:00Z", "completed", 1, 1),
        ("2031-01-07T08:00:00Z", "skipped", 0, 0),
        ("2031-01-06T08:00:00Z", "completed", 1, 1),
    ]
    page = admin_client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
    assert page.count("Occurrence of") == 3


def test_a_version_activated_while_an_occurrence_is_due_keeps_it(settings, tmp_path):
    make_profile(external_id="ann")
    campaign = recurring()
    [first] = tick(at(6, 8))
    run(first)
    services.campaign_modify(campaign=campaign, user=None)
    services.campaign_update(
        campaign=campaign, user=None, data={"actions": [sms_action(body="Second edition")]}
    )
    services.campaign_activate(campaign=campaign, user=None, acknowledge=["tiny_audience"])
    # Activated one second after the 7th's occurrence, before any tick started it.
    settings.SALVO_TEST_CLOCK_FILE = str(tmp_path / "clock")
    clock_set(tmp_path / "clock", ahead=at(7, 8) + dt.timedelta(seconds=1) - timezone.now())
    services.campaign_activation_complete(campaign_id=campaign.pk)

    campaign.refresh_from_db()
    assert campaign.next_run_at == at(7, 8)
    [second] = tick(at(7, 8, 0) + dt.timedelta(seconds=2))
    assert run(second).version.number == 2


def test_an_occurrence_in_recipient_time_begins_when_the_earliest_zone_reaches_it():
    """Daily at 09:00 in each recipient's zone: the 7th's run begins when Kiritimati
    (UTC+14) shows 09:00 on the 7th (19:00 UTC on the 6th), each recipient is due at 09:00
    on the 7th in their own zone, and the first occurrence is the first whose run begins
    after the campaign's start."""
    kiritimati = make_profile(external_id="kir", time_zone="Pacific/Kiritimati")
    paris = make_profile(external_id="par", time_zone="Europe/Paris")
    angeles = make_profile(external_id="lax", time_zone="America/Los_Angeles")
    campaign = recurring(in_recipient_time_zone=True)
    # The 6th's run would have begun on the 5th, before the start: the 7th's is the first.
    assert campaign.next_run_at == at(7, 8)

    tick(at(6, 7))
    assert status(campaign) == CampaignStatus.LIVE  # at its start, not a day before
    assert tick(at(6, 18, 59)) == []
    [run_id] = tick(at(6, 19))
    while delivery.execution_plan_step(execution_id=run_id):
        pass
    due = dict(
        Delivery.objects.filter(execution_id=run_id).values_list("profile_id", "next_attempt_at")
    )
    assert due == {
        kiritimati.pk: at(6, 19),  # 09:00 there: the run's first moment
        paris.pk: at(7, 8),
        angeles.pk: at(7, 17),
    }
