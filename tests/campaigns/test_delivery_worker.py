"""Delivery through real Celery worker processes to the local sink servers.

Runs on whichever profile the environment selects: SQLite + the filesystem broker by
default, PostgreSQL + Redis with the variables printed by `make services`. Small audiences
and small batches, so that each scenario still spans several batches and chunks.
"""

import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.db import connection, transaction

from campaigns import delivery, selectors, services
from campaigns.choices import CampaignStatus, CampaignType, DeliveryStatus, ExecutionStatus
from campaigns.models import Campaign, Delivery, Execution
from channels.sinks import RunningSinks, running_sinks
from segments.models import Profile
from tests.campaigns.factories import email_action, make_campaign, sms_action
from tests.channels.factories import MessagePresetFactory
from tests.conftest import CeleryProcess, wait_until
from tests.segments.factories import ProfileFactory

pytestmark = [pytest.mark.worker, pytest.mark.timeout(120)]

Status = CampaignStatus

DELIVERY_ENV = {
    "SALVO_DELIVERY_BATCH_SIZE": "10",
    "SALVO_DELIVERY_WINDOW": "2",
    "SALVO_DELIVERY_PLAN_CHUNK": "25",
    "SALVO_DELIVERY_SEND_CHUNK": "5",
    "SALVO_DELIVERY_RETRY_BASE_S": "0.3",
    "SALVO_DELIVERY_SENDING_TIMEOUT_S": "2",
    "SALVO_DELIVERY_STALL_AFTER_S": "2",
}


@contextmanager
def sinks_and_workers(
    factory: Callable[..., CeleryProcess],
    *,
    workers: int = 1,
    beat: bool = False,
    env: dict[str, str] | None = None,
    **rules: Any,
) -> Iterator[tuple[RunningSinks, list[CeleryProcess], dict[str, str]]]:
    with running_sinks(**rules) as sink:
        env = {**sink.provider_env(), **DELIVERY_ENV, **(env or {})}
        started = [factory("worker", extra_env=env) for _ in range(workers)]
        if beat:
            factory("beat", extra_env={**env, "SALVO_SCHEDULER_INTERVAL_S": "0.5"})
        yield sink, started, env


def make_profile(**fields: Any) -> Profile:
    return ProfileFactory(**fields)  # type: ignore[return-value]


def _status(campaign: Campaign) -> str:
    return Campaign.objects.values_list("status", flat=True).get(pk=campaign.pk)


def wait_for_status(campaign: Campaign, status: str, timeout: float = 60) -> None:
    wait_until(
        lambda: _status(campaign) == status,
        timeout=timeout,
        interval=0.2,
        message=f"campaign never reached {status}",
    )


def accepted_ids(sink: RunningSinks, channel: str) -> Counter[str]:
    return Counter(r["delivery_id"] for r in sink.received(channel))


def sent_ids(campaign: Campaign, channel: str) -> set[str]:
    rows = Delivery.objects.filter(
        execution__campaign=campaign, action__channel=channel, status=DeliveryStatus.SENT
    )
    return {str(pk) for pk in rows.values_list("pk", flat=True)}


def test_every_channel_reaches_every_eligible_profile_once_and_completes(
    celery_process_factory,
):
    everyone = ProfileFactory.create_batch(30)
    no_sms = ProfileFactory.create_batch(3, consent_sms=False)
    no_email = [make_profile(consent_email=False), make_profile(email="")]
    with sinks_and_workers(celery_process_factory) as (sink, _, _):
        hook = MessagePresetFactory(channel="webhook", webhook_url=sink.webhook_url)
        campaign = make_campaign(
            type=CampaignType.MARKETING,
            actions=[
                email_action(),
                sms_action(),
                {"channel": "webhook", "preset": hook, "body": "{{ profile.external_id }}"},
            ],
        )
        services.campaign_activate(campaign=campaign, user=None)

        wait_for_status(campaign, Status.COMPLETED)

        emails = {p.email for p in everyone + no_sms}
        phones = {p.phone for p in everyone + no_email}
        assert sorted(r["to"] for r in sink.received("email")) == sorted(emails)
        assert sorted(r["to"] for r in sink.received("sms")) == sorted(phones)
        assert len(sink.received("webhook")) == 35
        assert sink.duplicates() == 0
        for channel in ("email", "sms", "webhook"):
            assert set(accepted_ids(sink, channel)) == sent_ids(campaign, channel)
    skipped = Delivery.objects.filter(status=DeliveryStatus.SKIPPED)
    assert sorted(skipped.values_list("error", flat=True)) == sorted(
        ["Opted out of SMS marketing."] * 3 + ["Opted out of Email marketing.", "No Email address."]
    )
    completed = campaign.transitions.get(name="complete")
    assert (completed.source, completed.target, completed.by) == (
        Status.LIVE,
        Status.COMPLETED,
        None,
    )
    assert Execution.objects.get(campaign=campaign).status == ExecutionStatus.COMPLETED
    assert selectors.campaign_report(campaign=campaign) == {
        "total": 105,
        "by_status": {"pending": 0, "sent": 100, "failed": 0, "skipped": 5},
        "by_channel": {
            "email": {"total": 35, "pending": 0, "sent": 33, "failed": 0, "skipped": 2},
            "sms": {"total": 35, "pending": 0, "sent": 32, "failed": 0, "skipped": 3},
            "webhook": {"total": 35, "pending": 0, "sent": 35, "failed": 0, "skipped": 0},
        },
    }


def test_transactional_campaign_ignores_opt_outs_but_needs_an_address(celery_process_factory):
    opted_out = ProfileFactory.create_batch(4, consent_sms=False, consent_email=False)
    no_phone = make_profile(phone="")
    with sinks_and_workers(celery_process_factory) as (sink, _, _):
        campaign = make_campaign(type=CampaignType.TRANSACTIONAL, actions=[sms_action()])
        services.campaign_activate(campaign=campaign, user=None)

        wait_for_status(campaign, Status.COMPLETED)

        assert sorted(r["to"] for r in sink.received("sms")) == sorted(p.phone for p in opted_out)
    skipped = Delivery.objects.get(status=DeliveryStatus.SKIPPED)
    assert (skipped.profile_id, skipped.error) == (no_phone.pk, "No SMS address.")


def test_transient_failures_are_retried_then_sent_and_permanent_ones_recorded(
    celery_process_factory,
):
    fine = ProfileFactory.create_batch(5)
    flaky = [make_profile(email=f"retry{n}@example.com") for n in range(3)]
    refused = make_profile(email="invalid@example.com")
    with sinks_and_workers(
        celery_process_factory, flaky="retry", flaky_times=2, reject="invalid"
    ) as (sink, _, _):
        campaign = make_campaign(actions=[email_action()])
        services.campaign_activate(campaign=campaign, user=None)

        wait_for_status(campaign, Status.COMPLETED)

        assert sorted(r["to"] for r in sink.received("email")) == sorted(
            p.email for p in fine + flaky
        )
        assert sink.duplicates() == 0
        failed_attempts = [r for r in sink.attempts("email") if r["status"] == 451]
        assert sorted(r["to"] for r in failed_attempts) == sorted([p.email for p in flaky] * 2)
    rows = {d.profile_id: d for d in Delivery.objects.all()}
    assert all(rows[p.pk].attempts == 3 for p in flaky)
    assert all(rows[p.pk].status == DeliveryStatus.SENT for p in flaky)
    assert all(rows[p.pk].attempts == 1 for p in fine)
    assert rows[refused.pk].status == DeliveryStatus.FAILED
    assert "550" in rows[refused.pk].error
    assert selectors.campaign_report(campaign=campaign)["by_status"] == {
        "pending": 0,
        "sent": 8,
        "failed": 1,
        "skipped": 0,
    }


def test_a_worker_killed_mid_campaign_loses_nothing_and_sends_nothing_twice(
    celery_process_factory,
):
    profiles = ProfileFactory.create_batch(60)
    with sinks_and_workers(celery_process_factory, beat=True) as (sink, workers, env):
        campaign = make_campaign(actions=[email_action(), sms_action()])
        services.campaign_activate(campaign=campaign, user=None)
        sink.wait_for(20)
        assert len(sink.received()) < 120, "the campaign finished before the kill"

        # Hold the campaign's sends as Stop does: the workers finish the chunk they are
        # sending and then wait before the next one, with its rows held. Kill them there,
        # crash-style.
        with transaction.atomic():
            delivery.hold_campaign_sends(campaign_id=campaign.pk)
            Campaign.objects.select_for_update().get(pk=campaign.pk)
            time.sleep(1.0)
            workers[0].kill()
        received_at_kill = len(sink.received())
        assert received_at_kill < 120

        celery_process_factory("worker", extra_env=env)
        wait_for_status(campaign, Status.COMPLETED)

        emails = {r["to"] for r in sink.received("email")}
        assert sorted(emails) == sorted(p.email for p in profiles)
        assert sorted({r["to"] for r in sink.received("sms")}) == sorted(p.phone for p in profiles)
        # On SQLite no lock is held while a chunk is at the provider: a chunk that a killed
        # process had sent but not yet recorded goes again (one chunk per process at most).
        # On PostgreSQL its transaction rolled back before anything was sent.
        in_flight = 0 if connection.vendor == "postgresql" else 2 * 5
        assert sink.duplicates() <= in_flight
    assert Delivery.objects.filter(status=DeliveryStatus.SENT).count() == 120


def test_stop_mid_campaign_sends_nothing_after_it_commits(celery_process_factory):
    ProfileFactory.create_batch(80)
    with sinks_and_workers(celery_process_factory, slow=r"\+33", slow_s=0.02) as (sink, _, _):
        campaign = make_campaign(actions=[sms_action()])
        services.campaign_activate(campaign=campaign, user=None)
        sink.wait_for(10)

        services.campaign_stop(campaign=campaign, user=None, reason="Wrong audience.")
        stopped_at = time.time()

        execution = Execution.objects.get(campaign=campaign)
        wait_until(
            lambda: Execution.objects.get(pk=execution.pk).status == ExecutionStatus.HALTED,
            message="the execution never halted",
        )
        time.sleep(1.0)
        received = sink.received("sms")
        assert received, "nothing was sent before the stop"
        # Only chunks already at the provider when the stop committed may arrive after it:
        # none on PostgreSQL (Stop waits for them), one per worker process on SQLite.
        late = [r for r in received if r["at"] > stopped_at]
        assert len(late) <= (0 if connection.vendor == "postgresql" else 2 * 5)
        assert len(received) < 80
        report = selectors.campaign_report(campaign=campaign)
        assert report["by_status"]["sent"] == len(received)
        # Rows exist for the part of the audience planned before the stop; none went out.
        assert report["by_status"]["pending"] == report["total"] - len(received) > 0
    assert _status(campaign) == Status.STOPPED


@pytest.mark.postgres
def test_two_workers_share_the_work_without_duplicates(celery_process_factory):
    profiles = ProfileFactory.create_batch(400)
    bigger_batches = {"SALVO_DELIVERY_BATCH_SIZE": "40", "SALVO_DELIVERY_SEND_CHUNK": "20"}
    with sinks_and_workers(celery_process_factory, workers=2, env=bigger_batches) as (
        sink,
        workers,
        _,
    ):
        campaign = make_campaign(actions=[email_action(), sms_action()])
        services.campaign_activate(campaign=campaign, user=None)

        wait_for_status(campaign, Status.COMPLETED)

        assert len(sink.received()) == 800
        assert sink.duplicates() == 0
        assert sorted(r["to"] for r in sink.received("sms")) == sorted(p.phone for p in profiles)
        # Both workers took batches.
        assert all("delivery_batch_task" in worker.log() for worker in workers)
    assert Delivery.objects.filter(status=DeliveryStatus.SENT).count() == 800
