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
from django.db import connection

from campaigns import selectors, services
from campaigns.choices import CampaignStatus, CampaignType, DeliveryStatus, ExecutionStatus
from campaigns.models import Campaign, Delivery, Execution
from channels.sinks import RunningSinks, running_sinks
from segments.models import Profile
from tests.campaigns.factories import email_action, make_campaign, sms_action
from tests.channels.factories import MessagePresetFactory
from tests.conftest import CeleryProcess, wait_for_workers_idle, wait_until
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


def make_profiles(count: int) -> list[Profile]:
    Profile.objects.bulk_create(ProfileFactory.build_batch(count))
    return list(Profile.objects.order_by("pk"))


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


# SIGKILL while a chunk is in flight at the provider: 20 webhooks at 10 ms each per chunk.
KILL_AUDIENCE = 600
KILL_CHUNK = 20
KILL_THREADS = 2  # sending threads per worker process on PostgreSQL (SQLite sends one chunk)
KILL_ENV = {
    "SALVO_DELIVERY_BATCH_SIZE": "100",
    "SALVO_DELIVERY_SEND_CHUNK": str(KILL_CHUNK),
    "SALVO_DELIVERY_SEND_THREADS": str(KILL_THREADS),
}


def _sent_rows(campaign: Campaign) -> int:
    return Delivery.objects.filter(execution__campaign=campaign, status=DeliveryStatus.SENT).count()


def _kill_with_a_chunk_in_flight(sink: RunningSinks, campaign: Campaign, worker) -> None:
    """SIGKILL the worker's processes at the risky moment: the provider has accepted messages
    of a chunk whose rows are not recorded yet."""

    def chunk_in_flight() -> bool:
        received = len(sink.received("webhook"))
        return received > _sent_rows(campaign) and received < KILL_AUDIENCE

    wait_until(chunk_in_flight, timeout=60, interval=0.01, message="no chunk seen in flight")
    worker.kill()


def test_workers_killed_with_a_chunk_in_flight_lose_nothing_and_the_provider_drops_repeats(
    celery_process_factory,
):
    make_profiles(KILL_AUDIENCE)
    with sinks_and_workers(
        celery_process_factory, beat=True, env=KILL_ENV, slow="webhook", slow_s=0.01
    ) as (sink, workers, env):
        hook = MessagePresetFactory(channel="webhook", webhook_url=sink.webhook_url)
        campaign = make_campaign(
            actions=[{"channel": "webhook", "preset": hook, "body": "{{ profile.email }}"}]
        )
        services.campaign_activate(campaign=campaign, user=None)
        sink.wait_for(KILL_CHUNK, channel="webhook", timeout=60)

        _kill_with_a_chunk_in_flight(sink, campaign, workers[0])
        second = celery_process_factory("worker", extra_env=env)
        _kill_with_a_chunk_in_flight(sink, campaign, second)
        celery_process_factory("worker", extra_env=env)
        wait_for_status(campaign, Status.COMPLETED)

        rows = Delivery.objects.filter(execution__campaign=campaign)
        ids = {str(pk) for pk in rows.values_list("pk", flat=True)}
        # What the receiver kept: every delivery once, after the provider dropped repeats.
        kept = Counter(r["delivery_id"] for r in sink.received("webhook"))
        assert set(kept) == ids
        assert set(kept.values()) == {1}
        # What was sent again: at most the chunks in flight of the processes killed (two
        # workers of two pool processes; on PostgreSQL each process sends with two threads).
        in_flight_per_process = KILL_THREADS if connection.vendor == "postgresql" else 1
        assert len(sink.repeats("webhook")) <= 2 * 2 * in_flight_per_process * KILL_CHUNK
    assert set(rows.values_list("status", flat=True).distinct()) == {DeliveryStatus.SENT}
    assert rows.count() == KILL_AUDIENCE


def test_stop_mid_campaign_sends_nothing_after_it_commits(celery_process_factory):
    # 40 chunks of 5 at 0.2 s each, two pool processes: seconds of sending, so the stop
    # lands mid-campaign however busy the machine is.
    ProfileFactory.create_batch(200)
    with sinks_and_workers(celery_process_factory, slow=r"\+33", slow_s=0.2) as (
        sink,
        workers,
        _,
    ):
        campaign = make_campaign(actions=[sms_action()])
        services.campaign_activate(campaign=campaign, user=None)
        sink.wait_for(10)
        # Planning has gone past the first batch, so rows wait beyond what was sent.
        wait_until(
            lambda: Delivery.objects.filter(execution__campaign=campaign).count() > 10,
            message="planning never went past the first batch",
        )

        services.campaign_stop(campaign=campaign, user=None, reason="Wrong audience.")
        stopped_at = time.time()

        execution = Execution.objects.get(campaign=campaign)
        wait_until(
            lambda: Execution.objects.get(pk=execution.pk).status == ExecutionStatus.HALTED,
            message="the execution never halted",
        )
        # Every batch still queued at the stop has now run, and sent nothing.
        wait_for_workers_idle(workers)
        received = sink.received("sms")
        assert received, "nothing was sent before the stop"
        # Only chunks already at the provider when the stop committed may arrive after it:
        # none on PostgreSQL (Stop waits for them), one per worker process on SQLite.
        late = [r for r in received if r["at"] > stopped_at]
        assert len(late) <= (0 if connection.vendor == "postgresql" else 2 * 5)
        assert len(received) < 200
        report = selectors.campaign_report(campaign=campaign)
        assert report["by_status"]["sent"] == len(received)
        # Rows exist for the part of the audience planned before the stop; none went out.
        assert report["by_status"]["pending"] == report["total"] - len(received) > 0
    assert _status(campaign) == Status.STOPPED


@pytest.mark.postgres
def test_two_workers_share_the_work_without_duplicates(celery_process_factory):
    profiles = ProfileFactory.create_batch(400)
    bigger_batches = {"SALVO_DELIVERY_BATCH_SIZE": "40", "SALVO_DELIVERY_SEND_CHUNK": "20"}
    with running_sinks() as sink:
        env = {**sink.provider_env(), **DELIVERY_ENV, **bigger_batches}
        # Each worker signs its SMS requests with its own API key: the sink shows who sent.
        for name in ("worker-a", "worker-b"):
            celery_process_factory("worker", extra_env={**env, "SALVO_SMS_API_KEY": name})
        campaign = make_campaign(actions=[email_action(), sms_action()])
        services.campaign_activate(campaign=campaign, user=None)

        wait_for_status(campaign, Status.COMPLETED)

        assert len(sink.received()) == 800
        assert sink.duplicates() == 0
        assert sorted(r["to"] for r in sink.received("sms")) == sorted(p.phone for p in profiles)
        sent_by = Counter(r["headers"]["authorization"] for r in sink.received("sms"))
        assert set(sent_by) == {"Bearer worker-a", "Bearer worker-b"}, "one worker sent nothing"
    assert Delivery.objects.filter(status=DeliveryStatus.SENT).count() == 800


# --- stopping workers mid-send ------------------------------------------------------------

# Chunks of 50 webhooks at 5 ms each: a quarter of a second in flight at the provider, so a
# signal lands mid-chunk. A batch is several chunks: a worker that ignored the stop goes on.
STOP_AUDIENCE = 2000
STOP_CHUNK = 50
STOP_ENV = {
    "SALVO_DELIVERY_SEND_THREADS": "2",
    "SALVO_DELIVERY_BATCH_SIZE": "400",
    "SALVO_DELIVERY_WINDOW": "2",
    "SALVO_DELIVERY_PLAN_CHUNK": "1000",
    "SALVO_DELIVERY_SEND_CHUNK": str(STOP_CHUNK),
}
# No scheduler runs in these tests (so no stall check, whose timeout is left at its default
# of 90 s anyway): what resumes the work must be what the stopped worker put back.
RESUMED_WITHIN_S = 30.0


def raw_receptions(sink: RunningSinks, channel: str) -> Counter[str]:
    """How many times each delivery id reached the receiver, repeats included."""
    return Counter(r["delivery_id"] for r in sink.attempts(channel) if r["accepted"])


@pytest.mark.parametrize("group", [True, False], ids=["process-group", "main-process-only"])
def test_a_graceful_stop_mid_send_sends_nothing_twice_and_the_rest_resumes_at_once(
    celery_process_factory, group
):
    make_profiles(STOP_AUDIENCE)
    with running_sinks(slow="webhook", slow_s=0.005) as sink:
        env = {**sink.provider_env(), **STOP_ENV}
        worker = celery_process_factory("worker", extra_env=env)
        hook = MessagePresetFactory(channel="webhook", webhook_url=sink.webhook_url)
        campaign = make_campaign(
            actions=[{"channel": "webhook", "preset": hook, "body": "{{ profile.email }}"}]
        )
        services.campaign_activate(campaign=campaign, user=None)
        sink.wait_for(3 * STOP_CHUNK, channel="webhook", timeout=60)

        received_at_signal = len(sink.attempts("webhook"))
        assert worker.stop(group=group) == 0, "the worker did not stop cleanly"
        received_at_exit = len(sink.attempts("webhook"))

        # Each of the two pool processes finished at most the chunks it had in flight: one
        # per sending thread (two on PostgreSQL, one on SQLite).
        in_flight_per_process = 2 if connection.vendor == "postgresql" else 1
        assert received_at_exit - received_at_signal <= 2 * in_flight_per_process * STOP_CHUNK
        assert received_at_exit < STOP_AUDIENCE, "the campaign finished before the stop"
        sent = Delivery.objects.filter(status=DeliveryStatus.SENT).count()
        assert sent == received_at_exit, "a message went out whose row was not recorded"

        celery_process_factory("worker", extra_env=env)
        sink.wait_for(received_at_exit + 1, channel="webhook", timeout=RESUMED_WITHIN_S)
        wait_for_status(campaign, Status.COMPLETED, timeout=120)

        receptions = raw_receptions(sink, "webhook")
        assert [key for key, times in receptions.items() if times > 1] == []
        assert len(receptions) == STOP_AUDIENCE
    rows = Delivery.objects.filter(execution__campaign=campaign)
    assert set(rows.values_list("status", "attempts").distinct()) == {(DeliveryStatus.SENT, 1)}
    assert {str(pk) for pk in rows.values_list("pk", flat=True)} == set(receptions)
