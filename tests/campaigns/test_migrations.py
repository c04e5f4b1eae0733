"""Migrations that rewrite delivery data, run on rows written before them."""

from __future__ import annotations

import datetime as dt
import importlib
from collections.abc import Iterator

import pytest
from django.apps import apps as global_apps
from django.contrib.auth.models import Group, Permission
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from campaigns import selectors
from campaigns.models import Campaign, Delivery, DeliveryEvent, DeliveryTimeline
from channels.models import MessagePreset
from tests.channels.factories import MessagePresetFactory

BEFORE_REASONS = [("campaigns", "0004_delivery_claims_and_step_errors")]
REASONS = [("campaigns", "0005_delivery_reasons_versions_and_timeline")]

# What the engine wrote on rows before reasons existed: (status, attempts, error), and the
# reason the migration must find in it.
RECORDED = [
    ("sent", 1, "", ""),
    ("skipped", 0, "Opted out of SMS marketing.", "opted_out"),
    ("skipped", 0, "No SMS address.", "no_address"),
    ("skipped", 0, "The profile no longer exists.", "profile_deleted"),
    ("failed", 1, "Cannot read the profile's attributes: ValueError: x", "bad_profile_data"),
    ("failed", 1, "Cannot render: unknown variable 'x'", "render_error"),
    ("failed", 1, "Cannot prepare the message: KeyError: 'x'", "prepare_error"),
    ("failed", 1, "550 no such mailbox", "provider_refused"),
    ("failed", 4, "Gave up after 4 attempts: 503 busy", "gave_up"),
    ("pending", 1, "503 busy", "provider_error"),
    ("pending", 0, "", ""),
]


@pytest.fixture
def before_reasons() -> Iterator[MigrationExecutor]:
    """The database as it was before migration 0005, put back to the latest state after."""
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE_REASONS)
    try:
        yield MigrationExecutor(connection)
    finally:
        latest = MigrationExecutor(connection)
        latest.migrate(latest.loader.graph.leaf_nodes())


@pytest.mark.django_db(transaction=True)
def test_rows_recorded_before_reasons_get_their_reason_version_counts_and_timeline(
    before_reasons,
):
    apps = before_reasons.loader.project_state(BEFORE_REASONS).apps
    # The channels app stays migrated: its table is today's, so is the model that fills it.
    preset: MessagePreset = MessagePresetFactory(channel="sms")  # type: ignore[assignment]
    campaign = apps.get_model("campaigns", "Campaign").objects.create(name="Old")
    version = apps.get_model("campaigns", "CampaignVersion").objects.create(
        campaign=campaign, number=1, activated_at=timezone.now()
    )
    apps.get_model("campaigns", "Campaign").objects.filter(pk=campaign.pk).update(
        status="live", live_version=version
    )
    action = apps.get_model("campaigns", "ChannelAction").objects.create(
        version=version, channel="sms", preset_id=preset.pk, body="Hi"
    )
    execution = apps.get_model("campaigns", "Execution").objects.create(
        campaign=campaign, version=version, planning_done=True
    )
    recorded_at = timezone.now().replace(microsecond=0) - dt.timedelta(minutes=1)
    apps.get_model("campaigns", "Delivery").objects.bulk_create(
        apps.get_model("campaigns", "Delivery")(
            execution=execution,
            action=action,
            profile_id=profile_id,
            status=status,
            attempts=attempts,
            error=error,
            updated_at=recorded_at if status != "pending" else None,
        )
        for profile_id, (status, attempts, error, _) in enumerate(RECORDED, start=1)
    )

    MigrationExecutor(connection).migrate(REASONS)
    # Today's models read the rows below: the later migrations (which leave deliveries
    # alone) run too.
    latest = MigrationExecutor(connection)
    latest.migrate(latest.loader.graph.leaf_nodes())

    rows = Delivery.objects.filter(execution_id=execution.pk).order_by("profile_id")
    assert [(d.status, d.reason) for d in rows] == [(s, r) for s, _, _, r in RECORDED]
    # The version is that of the only execution, on every row an attempt decided.
    assert [d.version_id for d in rows] == [
        None if (status, attempts) == ("pending", 0) else version.pk
        for status, attempts, _, _ in RECORDED
    ]
    report = selectors.campaign_report(campaign=Campaign.objects.get(pk=campaign.pk))
    finished = [(s, r) for s, _, _, r in RECORDED if s != "pending"]
    assert report["by_status"] == {
        status: sum(1 for s, *_ in RECORDED if s == status)
        for status in ("pending", "sent", "failed", "skipped")
    }
    assert report["by_reason"] == {
        "sms": {r: 1 for s, r in sorted(finished, key=lambda f: f[1]) if r}
    }
    assert report["by_version"] == {
        "1": {
            "total": len(finished),
            **{s: sum(1 for f, _ in finished if f == s) for s in ("sent", "failed", "skipped")},
        }
    }
    bucket = int(recorded_at.timestamp()) // 5 * 5
    timeline = DeliveryTimeline.objects.filter(execution_id=execution.pk)
    assert sorted(timeline.values_list("bucket", "status", "count")) == sorted(
        (bucket, status, sum(1 for s, _ in finished if s == status))
        for status in ("sent", "failed", "skipped")
    )


BEFORE_ROLES = [("campaigns", "0006_proof_sends")]
ROLES = [("campaigns", "0007_roles_and_approval")]
VIEWER_PERMISSIONS = {
    "campaigns.view_campaign",
    "campaigns.view_campaignversion",
    "campaigns.view_channelaction",
    "campaigns.view_campaigntransition",
    "segments.view_segment",
    "segments.view_profile",
    "channels.view_messagepreset",
}
MARKETER_PERMISSIONS = VIEWER_PERMISSIONS | {
    "campaigns.add_campaign",
    "campaigns.change_campaign",
    "campaigns.delete_campaign",
    "campaigns.send_proof",
    "segments.add_segment",
    "segments.change_segment",
    "segments.delete_segment",
    "segments.add_profile",
    "segments.change_profile",
}
APPROVER_PERMISSIONS = MARKETER_PERMISSIONS | {
    "campaigns.approve_campaign",
    "campaigns.activate_campaign",
}


def group_permissions() -> dict[str, set[str]]:
    return {
        group.name: {
            f"{p.content_type.app_label}.{p.codename}"
            for p in group.permissions.select_related("content_type")
        }
        for group in Group.objects.prefetch_related("permissions")
    }


def version_columns() -> set[str]:
    with connection.cursor() as cursor:
        described = connection.introspection.get_table_description(
            cursor, "campaigns_campaignversion"
        )
    return {column.name for column in described}


@pytest.mark.django_db(transaction=True)
def test_roles_migration_makes_the_groups_and_reverses_cleanly():
    executor = MigrationExecutor(connection)
    try:
        executor.migrate(BEFORE_ROLES)
        assert not {"Marketer", "Approver", "Viewer"} & set(group_permissions())
        assert "approval_status" not in version_columns()

        MigrationExecutor(connection).migrate(ROLES)

        assert group_permissions() == {
            "Marketer": MARKETER_PERMISSIONS,
            "Approver": APPROVER_PERMISSIONS,
            "Viewer": VIEWER_PERMISSIONS,
        }
        assert "approval_status" in version_columns()
        # A second run (groups an administrator made or completed) adds what is missing and
        # keeps what was added.
        viewer = Group.objects.get(name="Viewer")
        viewer.permissions.remove(Permission.objects.get(codename="view_segment"))
        viewer.permissions.add(Permission.objects.get(codename="view_delivery"))
        importlib.import_module("campaigns.migrations.0007_roles_and_approval").create_groups(
            global_apps, None
        )
        assert group_permissions()["Viewer"] == VIEWER_PERMISSIONS | {"campaigns.view_delivery"}
        assert len(group_permissions()) == 3

        MigrationExecutor(connection).migrate(BEFORE_ROLES)

        assert group_permissions() == {}
        assert "approval_status" not in version_columns()
    finally:
        latest = MigrationExecutor(connection)
        latest.migrate(latest.loader.graph.leaf_nodes())


BEFORE_EVENT_PARTITIONS = [("campaigns", "0022_delivery_partitions_and_retention")]


def event_rows() -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT e.event_id, e.delivery_id, g.kind, g.execution_id "
            "FROM campaigns_deliveryevent e "
            "JOIN campaigns_deliveryengagement g ON g.delivery_id = e.delivery_id ORDER BY 1"
        )
        return cursor.fetchall()


@pytest.mark.django_db(transaction=True)
def test_events_and_engagement_rows_keep_through_their_partitioning_both_ways():
    executor = MigrationExecutor(connection)
    try:
        executor.migrate(BEFORE_EVENT_PARTITIONS)
        apps = MigrationExecutor(connection).loader.project_state(BEFORE_EVENT_PARTITIONS).apps
        for n in (1, 2):
            apps.get_model("campaigns", "DeliveryEvent").objects.create(
                provider="postmark",
                event_id=f"before-{n}",
                kind="opened",
                delivery_id=100 + n,
                channel="email",
                occurred_at=timezone.now(),
            )
            apps.get_model("campaigns", "DeliveryEngagement").objects.create(
                delivery_id=100 + n, kind="opened", execution_id=7, action_id=1
            )
        before = event_rows()

        latest = MigrationExecutor(connection)
        latest.migrate(latest.loader.graph.leaf_nodes())

        assert event_rows() == before
        # Recorded before, their execution unknown: 0, with the events that name no delivery.
        assert set(DeliveryEvent.objects.values_list("execution_id", flat=True)) == {0}
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT DISTINCT tableoid::regclass::text FROM campaigns_deliveryevent"
                )
                assert cursor.fetchall() == [("campaigns_deliveryevent_unattached",)]
        DeliveryEvent.objects.create(
            provider="postmark",
            event_id="after",
            kind="opened",
            delivery_id=103,
            channel="email",
            occurred_at=timezone.now(),
        )
        assert DeliveryEvent.objects.count() == 3

        MigrationExecutor(connection).migrate(BEFORE_EVENT_PARTITIONS)

        assert event_rows() == before
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM campaigns_deliveryevent")
            assert cursor.fetchone() == (3,)
    finally:
        latest = MigrationExecutor(connection)
        latest.migrate(latest.loader.graph.leaf_nodes())
