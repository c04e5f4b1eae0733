"""Retention (``campaigns.retention``) and the delivery table's month partitions
(``campaigns.delivery.partitions``): old runs' deliveries and events go, their reports stay
as they were; on PostgreSQL a month's partition goes whole, and only once every run in it is
old enough."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from campaigns import delivery, selectors, tasks
from campaigns.delivery.partitions import (
    EXECUTIONS_PER_PARTITION,
    PARTITIONED,
    next_execution_id,
    partitioned,
    partitions_list,
    partitions_roll,
)
from campaigns.events import ProviderEvent, events_record
from campaigns.models import (
    Delivery,
    DeliveryEngagement,
    DeliveryEvent,
    Execution,
    MarketingSend,
    Trigger,
    TriggerRecipient,
)
from campaigns.retention import caps_ledger_trim, deliveries_drop_expired
from campaigns.triggers import trigger_create
from devtools.sinks import RunningSinks, running_sinks
from segments.models import AudienceMember
from tests.campaigns.delivery_support import planned_audience, send_all
from tests.campaigns.doors import change_url
from tests.campaigns.test_experiments import opened
from tests.campaigns.test_triggers import live_triggered, recipients
from tests.settings_loader import load_settings, refusal

on_postgres = pytest.mark.skipif(connection.vendor != "postgresql", reason="no partitions")


@pytest.fixture
def sinks() -> Iterator[RunningSinks]:
    with running_sinks() as sink, override_settings(**sink.provider_settings()):
        yield sink


def sent_run(prefix: str, *, ended: dt.datetime) -> Execution:
    """A Live email + SMS campaign to 3 profiles, sent, completed, started an hour before
    `ended`, with an open on each email."""
    execution = planned_audience(prefix, 3)
    send_all(execution)
    delivery.execution_complete_if_done(execution_id=execution.pk)
    Execution.objects.filter(pk=execution.pk).update(
        started_at=ended - dt.timedelta(hours=1), finished_at=ended
    )
    audience = Delivery.objects.filter(execution=execution).values_list("profile_id", flat=True)
    opened(execution.campaign, list(set(audience)))
    execution.refresh_from_db()
    return execution


def report_counts(execution: Execution) -> dict:
    report = selectors.campaign_report(campaign=execution.campaign)
    (run,) = report["executions"]
    run.pop("deliveries_dropped_at")
    return {"run": run, "by_channel": report["by_channel"], "engagement": report["engagement"]}


@pytest.mark.django_db
def test_old_runs_lose_their_deliveries_and_events_and_keep_their_reports(sinks, admin_client):
    now = timezone.now()
    old = sent_run("old-", ended=now - dt.timedelta(days=40))
    partitions_roll(now=now)  # a month began since: the next run is in a partition of its own
    new = sent_run("new-", ended=now - dt.timedelta(days=1))
    old_report = report_counts(old)
    old_ids = list(Delivery.objects.filter(execution=old).values_list("pk", flat=True))
    holding = partition_of(old) if partitioned() else ""

    dropped = deliveries_drop_expired(days=30, now=now)

    # SQLite deletes the 3 opens and their 3 engagement rows; PostgreSQL drops their
    # month's partitions whole, uncounted.
    assert (dropped.runs, dropped.deliveries) == (1, 6)
    assert dropped.events == (0 if partitioned() else 6)
    assert not Delivery.objects.filter(execution=old).exists()
    assert not DeliveryEvent.objects.filter(delivery_id__in=old_ids).exists()
    assert not DeliveryEngagement.objects.filter(delivery_id__in=old_ids).exists()
    assert report_counts(old) == old_report
    old.refresh_from_db()
    assert old.deliveries_dropped_at == now
    listed = selectors.campaign_deliveries(campaign=old.campaign, user=None)
    assert (listed.count(), list(listed)) == (0, [])
    # The newer run keeps everything.
    assert Delivery.objects.filter(execution=new).count() == 6
    assert DeliveryEvent.objects.filter(delivery__execution=new).count() == 3
    assert selectors.campaign_deliveries(campaign=new.campaign, user=None).count() == 6
    # The admin's report says so, with the same counts.
    page = admin_client.get(change_url(old.campaign)).content.decode()
    assert "Its deliveries were dropped" in page
    if partitioned():
        assert holding in dropped.partitions
        with connection.cursor() as cursor:
            cursor.execute("SELECT to_regclass(%s), to_regclass(%s)", [holding, partition_of(new)])
            assert cursor.fetchone() == (None, partition_of(new))
            # The events' and engagement rows' partitions of the month went with it.
            for model in (DeliveryEvent, DeliveryEngagement):
                assert not [p for p in partitions_list(cursor, model) if p.holds(old.pk)]
                assert [p for p in partitions_list(cursor, model) if p.holds(new.pk)]
    assert "Dropped 6 deliveries of 1 runs" in dropped.words()
    # Its audience snapshot's members went with them; the newer run's stay.
    assert dropped.audience == 3
    assert "and 3 rows of their audiences" in dropped.words()
    assert not AudienceMember.objects.filter(snapshot_id=old.snapshot_id).exists()
    assert AudienceMember.objects.filter(snapshot_id=new.snapshot_id).count() == 3

    again = deliveries_drop_expired(days=30, now=now)
    assert (again.runs, again.deliveries, again.partitions) == (0, 0, [])


@pytest.mark.django_db
def test_an_old_trigger_loses_its_recipients_contexts_and_keeps_its_key_and_counts(sinks):
    now = timezone.now()
    triggered = trigger_create(
        campaign=live_triggered(), user=None, recipients=recipients(2), idempotency_key="k-1"
    ).trigger
    send_all(triggered.execution)
    delivery.execution_complete_if_done(execution_id=triggered.execution_id)
    ended = now - dt.timedelta(days=40)
    Execution.objects.filter(pk=triggered.execution_id).update(
        started_at=ended - dt.timedelta(hours=1), finished_at=ended
    )
    partitions_roll(now=now)  # a month began since: the next run is in a partition of its own
    kept = trigger_create(
        campaign=live_triggered(), user=None, recipients=recipients(1), idempotency_key="k-2"
    ).trigger
    report = report_counts(triggered.execution)

    dropped = deliveries_drop_expired(days=30, now=now)

    assert (dropped.runs, dropped.deliveries, dropped.audience) == (1, 4, 2)
    assert not TriggerRecipient.objects.filter(execution_id=triggered.execution_id).exists()
    assert TriggerRecipient.objects.filter(execution_id=kept.execution_id).count() == 1
    # The call is still known by its key, so a repeat sends nothing again; its run keeps
    # its report.
    again = trigger_create(
        campaign=triggered.campaign, user=None, recipients=recipients(2), idempotency_key="k-1"
    )
    assert (again.created, again.trigger.pk) == (False, triggered.pk)
    assert Trigger.objects.filter(pk=triggered.pk).exists()
    assert report_counts(triggered.execution) == report


@pytest.mark.django_db
@pytest.mark.parametrize("retention_days", [0, 30])
def test_the_hourly_step_trims_the_caps_ledger_to_the_longest_period(retention_days):
    now = timezone.now()

    def sent(days_ago: float, delivery_id: int) -> None:
        MarketingSend.objects.create(
            profile_id=1,
            channel="email",
            at=now - dt.timedelta(days=days_ago),
            delivery_id=delivery_id,
        )

    # In the order written: ids grow with time, but not strictly.
    for days_ago, delivery_id in [(35, 1), (31, 2), (30.01, 3), (29.99, 4), (0, 5), (1, 6)]:
        sent(days_ago, delivery_id)
    sent(30.5, 7)  # written after younger rows: the next hour's trim takes it

    with override_settings(SALVO_RETENTION_DAYS=retention_days):
        trimmed = caps_ledger_trim(now=now, batch=2)
    assert trimmed == 3
    assert set(MarketingSend.objects.values_list("delivery_id", flat=True)) == {4, 5, 6, 7}
    # The hourly step trims whatever the retention setting: nothing counts older rows.
    with override_settings(SALVO_RETENTION_DAYS=retention_days):
        tasks.history_maintain()
    assert set(MarketingSend.objects.values_list("delivery_id", flat=True)) == {4, 5, 6}


@pytest.mark.django_db
def test_events_about_no_delivery_go_once_received_as_long_ago(sinks):
    now = timezone.now()
    run = sent_run("unattached-", ended=now - dt.timedelta(days=1))
    kept = Delivery.objects.filter(execution=run).first()
    assert kept is not None
    recorded = events_record(
        events=[
            ProviderEvent(
                provider="sendgrid",
                event_id=f"unattached-{n}",
                kind="bounced",
                channel="email",
                occurred_at=now,
                delivery_id=delivery_id,
                recipient=f"gone-{n}@example.com",
            )
            for n, delivery_id in enumerate([None, 10**12, kept.pk])
        ]
    )
    assert recorded.recorded == 3
    events = DeliveryEvent.objects.filter(event_id__startswith="unattached-")
    # Each names its delivery's execution, 0 when it names none that exists.
    assert sorted(events.values_list("execution_id", flat=True)) == [0, 0, run.pk]
    events.filter(execution_id=0).update(received_at=now - dt.timedelta(days=31))

    dropped = deliveries_drop_expired(days=30, now=now)

    assert dropped.events == 2
    assert list(events.values_list("event_id", flat=True)) == ["unattached-2"]
    assert Delivery.objects.filter(execution=run).count() == 6


@on_postgres
@pytest.mark.django_db
def test_an_event_goes_to_its_deliverys_partition_and_is_kept_once(sinks):
    run = sent_run("beside-", ended=timezone.now())
    first = Delivery.objects.filter(execution=run).order_by("pk").first()
    assert first is not None
    event = ProviderEvent(
        provider="postmark",
        event_id="beside-1",
        kind="delivered",
        channel="email",
        occurred_at=timezone.now(),
        delivery_id=first.pk,
    )

    assert events_record(events=[event, event]).recorded == 1
    assert events_record(events=[event]).duplicates == 1
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tableoid::regclass::text FROM campaigns_deliveryevent WHERE execution_id = %s "
            "UNION SELECT tableoid::regclass::text FROM campaigns_deliveryengagement "
            "WHERE execution_id = %s",
            [run.pk, run.pk],
        )
        months = {name.rsplit("_", 1)[1] for (name,) in cursor.fetchall()}
    assert months == {partition_of(run).rsplit("_", 1)[1]}


@pytest.mark.django_db
def test_a_dry_run_says_what_would_go_and_drops_nothing(sinks):
    now = timezone.now()
    old = sent_run("dry-", ended=now - dt.timedelta(days=40))
    partitions_roll(now=now)

    out = call_command_output("retention", "--days", "30", "--dry-run", "--json")

    assert (out["runs"], out["deliveries"], out["audience"], out["dry_run"]) == (1, 6, 0, True)
    assert Delivery.objects.filter(execution=old).count() == 6
    assert AudienceMember.objects.filter(snapshot_id=old.snapshot_id).count() == 3
    old.refresh_from_db()
    assert old.deliveries_dropped_at is None


def call_command_output(*args: str) -> dict:
    out = StringIO()
    call_command(*args, stdout=out)
    return json.loads(out.getvalue())


@on_postgres
@pytest.mark.django_db
def test_a_run_old_enough_waits_for_the_newer_runs_of_its_month(sinks):
    now = timezone.now()
    old = sent_run("held-old-", ended=now - dt.timedelta(days=45))
    newer = sent_run("held-new-", ended=now - dt.timedelta(days=10))
    partitions_roll(now=now)
    sent_run("later-", ended=now)

    dropped = deliveries_drop_expired(days=30, now=now)

    assert (dropped.runs, dropped.deliveries, dropped.runs_held) == (0, 0, 1)
    assert "1 more runs that ended before then share a month's partition" in dropped.words()
    assert Delivery.objects.filter(execution__in=[old, newer]).count() == 12
    holding = partition_of(old)
    assert holding not in dropped.partitions

    later = deliveries_drop_expired(days=5, now=now)
    assert (later.runs, later.deliveries, later.runs_held) == (2, 12, 0)
    assert holding in later.partitions
    assert not Delivery.objects.filter(execution__in=[old, newer]).exists()


def partition_of(execution: Execution) -> str:
    with connection.cursor() as cursor:
        return next(p.name for p in partitions_list(cursor) if p.holds(execution.pk))


@on_postgres
@pytest.mark.django_db
def test_a_month_past_its_partitions_range_opens_the_next_one(sinks):
    with connection.cursor() as cursor:
        top = partitions_list(cursor)[-1]
        cursor.execute(
            "SELECT setval(pg_get_serial_sequence('campaigns_execution', 'id'), %s, false)",
            [top.high],
        )
    execution = planned_audience("beyond-", 2)

    assert execution.pk == top.high
    assert Delivery.objects.filter(execution=execution).count() == 4
    with connection.cursor() as cursor:
        assert partitions_list(cursor)[-1].low == top.high
        assert next_execution_id(cursor) == top.high + 1
    assert top.high % EXECUTIONS_PER_PARTITION == 0


@on_postgres
@pytest.mark.django_db
def test_a_new_month_moves_the_next_run_to_a_new_partition(sinks):
    now = timezone.now()
    first = sent_run("month-", ended=now - dt.timedelta(days=35))

    assert partitions_roll(now=now - dt.timedelta(days=35)) is None  # same month
    created = partitions_roll(now=now)
    assert created is not None
    assert partitions_roll(now=now) is None  # the new partition holds no run yet
    second = planned_audience("next-month-", 1)

    assert created.low is not None
    assert first.pk < created.low == second.pk < created.high
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tableoid::regclass::text FROM campaigns_delivery WHERE execution_id = %s",
            [second.pk],
        )
        assert {name for (name,) in cursor.fetchall()} == {created.name}


@pytest.mark.django_db
def test_the_hourly_step_applies_the_setting_and_nothing_without_it(sinks):
    old = sent_run("hourly-", ended=timezone.now() - dt.timedelta(days=40))
    partitions_roll(now=timezone.now())

    tasks.history_maintain()
    assert Delivery.objects.filter(execution=old).count() == 6
    with override_settings(SALVO_RETENTION_DAYS=30):
        tasks.history_maintain()
    assert not Delivery.objects.filter(execution=old).exists()


@pytest.mark.django_db
def test_the_command_refuses_in_one_line(user_with_perms):
    with pytest.raises(CommandError, match="Give --days, or set SALVO_RETENTION_DAYS"):
        call_command("retention")
    with pytest.raises(CommandError, match="days: Give from 1 to 36500 days, not 0"):
        call_command("retention", "--days", "0")
    viewer = user_with_perms("campaigns.view_campaign")
    with pytest.raises(CommandError, match=r"campaigns\.delete_delivery"):
        call_command("retention", "--days", "30", "--user", viewer.username)


@pytest.mark.parametrize("value", ["-1", "36501", "1.5", "soon"])
def test_a_retention_out_of_range_refuses_to_start(tmp_path, value):
    line = refusal({"SALVO_RETENTION_DAYS": value}, tmp_path)

    assert line.endswith("from 1 to 36500, or 0 to keep them for ever.")
    assert load_settings({"SALVO_RETENTION_DAYS": "90"}, tmp_path)["SALVO_EMBEDDED"] is True


@on_postgres
@pytest.mark.django_db
def test_the_hourly_step_gives_the_partitioned_tables_statistics_of_their_own(sinks):
    """Autovacuum never analyzes a partitioned table: without statistics the planner costs a
    join of a few events to the deliveries by id as millions of rows (and compiles it)."""
    sent_run("stats-", ended=timezone.now() - dt.timedelta(days=1))

    def with_statistics() -> set[str]:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT DISTINCT tablename FROM pg_stats WHERE schemaname = current_schema() "
                "AND inherited AND tablename = ANY(%s)",
                [[model._meta.db_table for model in PARTITIONED]],
            )
            return {name for (name,) in cursor.fetchall()}

    tasks.history_maintain()

    assert with_statistics() == {model._meta.db_table for model in PARTITIONED}
