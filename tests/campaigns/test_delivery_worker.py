"""Delivery through real Celery worker processes to the local sink servers.

Runs on whichever profile the environment selects: SQLite + the filesystem broker by
default, PostgreSQL + Redis with the variables printed by `make services`. Small audiences
and small batches, so that each scenario still spans several batches and chunks.
"""

import time
from collections import Counter

import pytest
from django.db import connection

from campaigns import selectors, services
from campaigns.choices import CampaignStatus, CampaignType, DeliveryStatus, ExecutionStatus
from campaigns.models import Campaign, Delivery, Execution
from devtools.sinks import RunningSinks, running_sinks
from segments.models import Profile
from tests.campaigns.delivery_support import (
    SMALL_BATCHES,
    campaign_status,
    expected_report,
    make_profile,
    received_delivery_ids,
    sent_delivery_ids,
    sinks_and_worker,
    wait_for_status,
)
from tests.campaigns.factories import (
    activate_acknowledged,
    email_action,
    make_campaign,
    sms_action,
    webhook_action,
)
from tests.channels.factories import MessagePresetFactory
from tests.conftest import wait_for_workers_idle, wait_until
from tests.segments.factories import ProfileFactory

pytestmark = [pytest.mark.worker, pytest.mark.timeout(120)]

Status = CampaignStatus


def make_profiles(count: int) -> list[Profile]:
    Profile.objects.bulk_create(ProfileFactory.build_batch(count))
    return list(Profile.objects.order_by("pk"))


def test_every_channel_reaches_every_eligible_profile_once_and_completes(
    celery_process_factory,
):
    everyone = ProfileFactory.create_batch(30)
    sms_opted_out = ProfileFactory.create_batch(3, consent_sms=False)
    email_opted_out = make_profile(consent_email=False)
    no_email_address = make_profile(email="")
    no_email = [email_opted_out, no_email_address]
    audience = everyone + sms_opted_out + no_email
    with sinks_and_worker(celery_process_factory) as (sink, _, _):
        hook = MessagePresetFactory(channel="webhook", webhook_url=sink.webhook_url)
        campaign = make_campaign(
            type=CampaignType.MARKETING,
            actions=[
                email_action(),
                sms_action(),
                webhook_action(preset=hook),
            ],
        )
        activate_acknowledged(campaign=campaign)

        wait_for_status(campaign, Status.COMPLETED)

        emails = {p.email for p in everyone + sms_opted_out}
        phones = {p.phone for p in everyone + no_email}
        assert sorted(r["to"] for r in sink.received("email")) == sorted(emails)
        assert sorted(r["to"] for r in sink.received("sms")) == sorted(phones)
        assert sorted(r["json"]["body"] for r in sink.received("webhook")) == sorted(
            p.external_id for p in audience
        )
        assert sink.duplicates() == 0
        for channel in ("email", "sms", "webhook"):
            assert received_delivery_ids(sink, channel) == sent_delivery_ids(campaign, channel)
    skipped = Delivery.objects.filter(status=DeliveryStatus.SKIPPED)
    assert sorted(skipped.values_list("profile_id", "action__channel", "error")) == sorted(
        [(p.pk, "sms", "Opted out of SMS marketing.") for p in sms_opted_out]
        + [
            (email_opted_out.pk, "email", "Opted out of Email marketing."),
            (no_email_address.pk, "email", "No Email address."),
        ]
    )
    completed = campaign.transitions.get(name="complete")
    assert (completed.source, completed.target, completed.by) == (
        Status.LIVE,
        Status.COMPLETED,
        None,
    )
    assert Execution.objects.get(campaign=campaign).status == ExecutionStatus.COMPLETED
    # A marketing campaign skips, on each channel, the profiles it has no address for and
    # those who opted out of it; the webhook needs neither, and reaches everyone.
    assert selectors.campaign_delivery_counts(campaign=campaign) == expected_report(
        email={"sent": everyone + sms_opted_out, "skipped": no_email},
        sms={"sent": everyone + no_email, "skipped": sms_opted_out},
        webhook={"sent": audience},
    )


def test_transactional_campaign_ignores_opt_outs_but_needs_an_address(celery_process_factory):
    opted_out = ProfileFactory.create_batch(4, consent_sms=False, consent_email=False)
    no_phone = make_profile(phone="")
    with sinks_and_worker(celery_process_factory) as (sink, _, _):
        campaign = make_campaign(type=CampaignType.TRANSACTIONAL, actions=[sms_action()])
        activate_acknowledged(campaign=campaign)

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
    with sinks_and_worker(
        celery_process_factory, flaky="retry", flaky_times=2, reject="invalid"
    ) as (sink, _, _):
        campaign = make_campaign(actions=[email_action()])
        activate_acknowledged(campaign=campaign)

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
    assert selectors.campaign_delivery_counts(campaign=campaign) == expected_report(
        email={"sent": fine + flaky, "failed": [refused]}
    )


# SIGKILL while a chunk is in flight at the provider: 20 webhooks at 10 ms each per chunk.
KILL_AUDIENCE = 600
KILL_CHUNK = 20
KILL_THREADS = 2  # sending threads per worker process on PostgreSQL (SQLite sends one chunk)
KILL_ENV = {
    "SALVO_DELIVERY_BATCH_SIZE": "100",
    "SALVO_DELIVERY_SEND_CHUNK": str(KILL_CHUNK),
    "SALVO_DELIVERY_SEND_THREADS": str(KILL_THREADS),
    # What the killed workers held comes back within seconds: their claimed rows (SQLite),
    # and the batches of an execution that stopped moving, sent again by the scheduler.
    "SALVO_DELIVERY_SENDING_TIMEOUT_S": "2",
    "SALVO_DELIVERY_STALL_AFTER_S": "2",
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
    with sinks_and_worker(
        celery_process_factory, beat=True, env=KILL_ENV, slow="webhook", slow_s=0.01
    ) as (sink, first, env):
        hook = MessagePresetFactory(channel="webhook", webhook_url=sink.webhook_url)
        campaign = make_campaign(actions=[webhook_action(preset=hook, body="{{ profile.email }}")])
        activate_acknowledged(campaign=campaign)
        sink.wait_for(KILL_CHUNK, channel="webhook", timeout=60)

        _kill_with_a_chunk_in_flight(sink, campaign, first)
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
    with sinks_and_worker(celery_process_factory, slow=r"\+33", slow_s=0.2) as (sink, worker, _):
        campaign = make_campaign(actions=[sms_action()])
        activate_acknowledged(campaign=campaign)
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
        wait_for_workers_idle([worker])
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
    assert campaign_status(campaign) == Status.STOPPED


@pytest.mark.postgres
def test_two_workers_share_the_work_without_duplicates(celery_process_factory):
    profiles = ProfileFactory.create_batch(400)
    bigger_batches = {"SALVO_DELIVERY_BATCH_SIZE": "40", "SALVO_DELIVERY_SEND_CHUNK": "20"}
    with running_sinks() as sink:
        env = {**sink.provider_env(), **SMALL_BATCHES, **bigger_batches}
        # Each worker signs its SMS requests with its own API key: the sink shows who sent.
        for name in ("worker-a", "worker-b"):
            celery_process_factory("worker", extra_env={**env, "SALVO_SMS_API_KEY": name})
        campaign = make_campaign(actions=[email_action(), sms_action()])
        activate_acknowledged(campaign=campaign)

        wait_for_status(campaign, Status.COMPLETED)

        assert sink.duplicates() == 0
        assert sorted(r["to"] for r in sink.received("email")) == sorted(p.email for p in profiles)
        assert sorted(r["to"] for r in sink.received("sms")) == sorted(p.phone for p in profiles)
        sent_by = Counter(r["headers"]["authorization"] for r in sink.received("sms"))
        assert set(sent_by) == {"Bearer worker-a", "Bearer worker-b"}, "one worker sent nothing"
    assert selectors.campaign_delivery_counts(campaign=campaign) == expected_report(
        email={"sent": profiles}, sms={"sent": profiles}
    )


# --- stopping workers mid-send ------------------------------------------------------------

# Chunks of 50 webhooks at 5 ms each: a quarter of a second in flight at the provider, so a
# signal lands mid-chunk. A batch is several chunks: a worker that ignored the stop goes on.
STOP_AUDIENCE = 2000
STOP_CHUNK = 50
STOP_ENV = {
    "SALVO_DELIVERY_SEND_THREADS": "2",
    "SALVO_DELIVERY_BATCH_SIZE": "400",
    # The first batch as big as the others: both pool processes are then in the middle of
    # a batch at the stop (an idle one just exits, and billiard logs that as an error).
    "SALVO_DELIVERY_FIRST_BATCH_SIZE": "400",
    "SALVO_DELIVERY_WINDOW": "2",
    "SALVO_DELIVERY_PLAN_CHUNK": "1000",
    "SALVO_DELIVERY_SEND_CHUNK": str(STOP_CHUNK),
}
# No scheduler runs in these tests (so no stall check, whose timeout is left at its default
# of 90 s anyway): what resumes the work must be what the stopped worker put back.
RESUMED_WITHIN_S = 30.0
# What `make run` (scripts/supervisord.conf's stopwaitsecs) and the issue promise.
STOPPED_WITHIN_S = 10.0


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
        campaign = make_campaign(actions=[webhook_action(preset=hook, body="{{ profile.email }}")])
        activate_acknowledged(campaign=campaign)
        sink.wait_for(3 * STOP_CHUNK, channel="webhook", timeout=60)

        received_at_signal = len(sink.attempts("webhook"))
        # Within the 10 s that supervisord (stopwaitsecs) and a deploy give it.
        assert worker.stop(group=group, timeout=STOPPED_WITHIN_S) == 0, "not a clean stop"
        assert "ERROR" not in worker.log()
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
