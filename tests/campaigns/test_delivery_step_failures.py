"""A step of the engine that keeps failing (planning, a batch, an activation) is retried
with back-off a bounded number of times, then stops and shows its error everywhere."""

import datetime as dt
import re
from collections.abc import Iterator
from contextlib import contextmanager
from io import StringIO

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from campaigns import services
from campaigns.choices import CampaignStatus, ExecutionStatus
from campaigns.models import Campaign, Execution
from campaigns.tasks import campaign_activation_task
from config.metrics import scheduler_last_tick
from segments.models import Segment
from tests.campaigns.delivery_support import make_segment, sinks_and_worker
from tests.campaigns.factories import activate_acknowledged, make_campaign, sms_action
from tests.conftest import wait_until
from tests.segments.factories import ProfileFactory

Status = CampaignStatus


def corrupt_rules(segment: Segment) -> None:
    """Store a rule tree that no longer compiles (as a bad migration or a manual edit in
    the database would): every query of the segment raises."""
    Segment.objects.filter(pk=segment.pk).update(
        rules={"all": [{"field": "no_such_field", "op": "eq", "value": 1}]}
    )


def task_lines(log: str, task: str, state: str) -> int:
    return len(re.findall(rf"campaigns\.tasks\.{task}\[[^\]]+\] {state}", log))


@pytest.mark.worker
@pytest.mark.timeout(180)
def test_a_planning_step_that_keeps_failing_stops_and_shows_its_error(
    celery_process_factory, api_client, admin_client
):
    ProfileFactory.create_batch(3)
    segment = make_segment()
    campaign = make_campaign(segment=segment, actions=[sms_action()])
    # Live before any worker runs: the planning task waits in the queue; then the
    # segment's stored rules break, and every planning attempt raises.
    activate_acknowledged(campaign=campaign)
    services.campaign_activation_complete(campaign_id=campaign.pk)
    corrupt_rules(segment)
    execution = Execution.objects.get(campaign=campaign)

    retries = {
        "SALVO_STEP_MAX_ATTEMPTS": "3",
        "SALVO_STEP_RETRY_BASE_S": "0.2",
        "SALVO_STEP_RETRY_CAP_S": "0.5",
        # The stall check would revive a running execution after 1 s without progress.
        "SALVO_DELIVERY_STALL_AFTER_S": "1",
    }
    with sinks_and_worker(celery_process_factory, env=retries, beat=True) as (sink, worker, _):
        wait_until(
            lambda: Execution.objects.get(pk=execution.pk).status == ExecutionStatus.FAILED,
            timeout=60,
            message="the execution never gave up",
        )
        # The scheduler goes on ticking (and looking for stalled executions) … (its routine
        # ticks log at DEBUG: each one's end is read where /metrics reads it)
        ticks_seen: set[float] = set()

        def ticked_four_more_times() -> bool:
            ticks_seen.add(scheduler_last_tick() or 0.0)
            return len(ticks_seen - {0.0}) > 4

        wait_until(ticked_four_more_times, timeout=60, message="the scheduler stopped ticking")
        # … and nothing tries the planning step again.
        assert task_lines(worker.log(), "execution_plan_task", "received") == 3
        assert sink.attempts() == []

    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.FAILED
    assert execution.error_attempts == 3
    assert execution.error_step == "Planning the audience"
    assert "no_such_field" in execution.error
    assert execution.error_at is not None
    # The campaign stays Live (the user decides to stop it) and shows why it sends nothing.
    campaign.refresh_from_db()
    assert campaign.status == Status.LIVE
    shown = {
        "step": "Planning the audience",
        "error": execution.error,
        "at": execution.error_at.isoformat().replace("+00:00", "Z"),
        "attempts": 3,
        "retrying": False,
    }
    detail = api_client.get(f"/api/campaigns/{campaign.pk}/").json()
    assert detail["delivery_error"] == shown
    report = api_client.get(f"/api/campaigns/{campaign.pk}/report/").json()
    assert report["delivery_error"] == shown
    listing = admin_client.get("/admin/campaigns/campaign/").content.decode()
    assert 'class="salvo-alert"' in listing
    assert "Planning the audience failed 3 times" in listing
    page = admin_client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
    assert 'id="delivery-error"' in page
    assert "no_such_field" in page
    shown_by_command = StringIO()
    call_command("campaign", "show", str(campaign.pk), stdout=shown_by_command)
    assert "delivery error: Planning the audience failed 3 times" in shown_by_command.getvalue()


@contextmanager
def executions_refused_by_the_database() -> Iterator[str]:
    """A trigger that makes the database refuse every new execution, as a full disk or a
    broken constraint would: whatever tries to start one raises. Yields the message."""
    message = "the test refuses new executions"
    table = connection.ops.quote_name(Execution._meta.db_table)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "CREATE FUNCTION salvo_test_refuse() RETURNS trigger AS $$ BEGIN "
                f"RAISE EXCEPTION '{message}'; END $$ LANGUAGE plpgsql"
            )
            cursor.execute(
                f"CREATE TRIGGER salvo_test_refuse BEFORE INSERT ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION salvo_test_refuse()"
            )
        else:
            cursor.execute(
                f"CREATE TRIGGER salvo_test_refuse BEFORE INSERT ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{message}'); END"
            )
    yield message  # the test's transaction drops the trigger again


@pytest.mark.django_db
@override_settings(SALVO_STEP_MAX_ATTEMPTS=3)
def test_an_activation_that_keeps_failing_fails_with_its_error_instead_of_looping(admin_client):
    campaign = make_campaign()
    activate_acknowledged(campaign=campaign)

    with executions_refused_by_the_database() as message:
        # Run in this process: each retry runs at once instead of after its back-off.
        campaign_activation_task.apply(args=(campaign.pk,))

    campaign.refresh_from_db()
    assert campaign.status == Status.DRAFT
    assert campaign.activation_attempts == 3
    assert campaign.activation_error.startswith("The activation failed 3 times; the last error:")
    assert message in campaign.activation_error
    step = campaign.transitions.first()
    assert step is not None
    assert (step.name, step.source, step.target) == ("activation_fail", "activating", "draft")
    assert step.reason == campaign.activation_error
    assert not Execution.objects.filter(campaign=campaign).exists()
    # Nothing sends it again: it is no longer Activating.
    assert services.campaigns_retry_stale_activations(older_than=dt.timedelta(0)) == []
    # The admin list shows an alert beside its status.
    listing = admin_client.get("/admin/campaigns/campaign/").content.decode()
    assert 'class="salvo-alert"' in listing
    assert "Activation: The activation failed 3 times" in listing


@pytest.mark.django_db
@override_settings(SALVO_STEP_MAX_ATTEMPTS=3)
def test_campaign_detail_shows_no_delivery_error_while_all_is_well(api_client):
    campaign = make_campaign()

    body = api_client.get(f"/api/campaigns/{campaign.pk}/").json()

    assert body["delivery_error"] is None
    assert Campaign.objects.get(pk=campaign.pk).activation_attempts == 0


def age(campaign: Campaign, *, minutes: int) -> None:
    """Make the campaign look untouched for `minutes` (its activation message was lost)."""
    then = timezone.now() - dt.timedelta(minutes=minutes)
    Campaign.objects.filter(pk=campaign.pk).update(updated_at=then)


@pytest.mark.django_db
@override_settings(SALVO_STEP_MAX_ATTEMPTS=3)
def test_a_lost_activation_is_sent_again_a_bounded_number_of_times(
    django_capture_on_commit_callbacks,
):
    lost = make_campaign()
    activate_acknowledged(campaign=lost)
    recent = make_campaign()
    activate_acknowledged(campaign=recent)
    age(lost, minutes=5)
    stale = dt.timedelta(minutes=1)

    with django_capture_on_commit_callbacks() as sent:
        assert services.campaigns_retry_stale_activations(older_than=stale) == [lost.pk]
    assert len(sent) == 1
    lost.refresh_from_db()
    assert lost.activation_attempts == 2
    # Dated when sent again: the next tick leaves it to run.
    assert services.campaigns_retry_stale_activations(older_than=stale) == []

    age(lost, minutes=5)
    assert services.campaigns_retry_stale_activations(older_than=stale) == [lost.pk]
    lost.refresh_from_db()
    assert lost.activation_attempts == 3

    age(lost, minutes=5)
    with django_capture_on_commit_callbacks() as sent:
        assert services.campaigns_retry_stale_activations(older_than=stale) == []
    assert sent == []
    lost.refresh_from_db()
    assert lost.status == Status.DRAFT
    assert lost.activation_error == "The activation did not finish after 3 attempts."
    assert Campaign.objects.get(pk=recent.pk).status == Status.ACTIVATING


@pytest.mark.django_db
@override_settings(SALVO_STEP_MAX_ATTEMPTS=3)
def test_an_activation_that_fails_once_and_then_succeeds_shows_no_error():
    campaign = make_campaign()
    activate_acknowledged(campaign=campaign)
    services.campaign_activation_failed(
        campaign_id=campaign.pk, error=ConnectionError("the database went away")
    )
    assert Campaign.objects.get(pk=campaign.pk).activation_error

    services.campaign_activation_complete(campaign_id=campaign.pk)

    campaign.refresh_from_db()
    assert (campaign.status, campaign.activation_error) == (Status.LIVE, "")
    assert campaign.activation_attempts == 2


@pytest.mark.django_db
@override_settings(SALVO_STEP_MAX_ATTEMPTS=2)
def test_an_activation_given_up_on_shows_the_last_error_it_met():
    campaign = make_campaign()
    activate_acknowledged(campaign=campaign)
    retry_in = services.campaign_activation_failed(
        campaign_id=campaign.pk, error=ConnectionError("the database went away")
    )
    campaign.refresh_from_db()
    assert campaign.status == Status.ACTIVATING
    assert campaign.activation_error == (
        "Attempt 1 of 2 failed, trying again: ConnectionError: the database went away"
    )
    assert retry_in == settings.SALVO_STEP_RETRY_BASE_S
    # Its retry was lost too.
    age(campaign, minutes=5)

    services.campaigns_retry_stale_activations(older_than=dt.timedelta(minutes=1))

    campaign.refresh_from_db()
    assert campaign.status == Status.DRAFT
    assert campaign.activation_error == (
        "The activation did not finish after 2 attempts. The last error: "
        "Attempt 1 of 2 failed, trying again: ConnectionError: the database went away"
    )
