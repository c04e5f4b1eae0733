"""Why each delivery was not sent (a code), the version each one used, counters by both,
and the per-bucket timeline the report's chart and rate read.

Rows recorded before this migration get their reason from their error text (the engine
wrote one fixed sentence per reason) and their execution's version (the only one that
could send then); the counters are rebuilt from the rows, and the timeline from the times
their outcomes were recorded.
"""

import django.db.models.deletion
from django.db import migrations, models

REASON_FROM_ERROR = """
    CASE
        WHEN error LIKE 'Opted out of %%' THEN 'opted_out'
        WHEN error LIKE 'No %% address.' THEN 'no_address'
        WHEN error = 'The profile no longer exists.' THEN 'profile_deleted'
        WHEN error LIKE 'Cannot read the profile''s attributes:%%' THEN 'bad_profile_data'
        WHEN error LIKE 'Cannot render:%%' THEN 'render_error'
        WHEN error LIKE 'Cannot prepare the message:%%' THEN 'prepare_error'
        WHEN error LIKE 'Gave up after %%' THEN 'gave_up'
        WHEN status = 'pending' THEN 'provider_error'
        ELSE 'provider_refused'
    END
"""


def backfill(apps, schema_editor):
    execute = schema_editor.execute
    execute(
        f"UPDATE campaigns_delivery SET reason = {REASON_FROM_ERROR} "
        "WHERE status IN ('failed', 'skipped') OR (status = 'pending' AND error <> '')"
    )
    execute(
        "UPDATE campaigns_delivery SET version_id = (SELECT e.version_id "
        "FROM campaigns_execution e WHERE e.id = campaigns_delivery.execution_id) "
        "WHERE status <> 'pending' OR attempts > 0"
    )
    execute("DELETE FROM campaigns_deliverycount")
    execute(
        "INSERT INTO campaigns_deliverycount "
        '(execution_id, action_id, version_id, status, reason, "count") '
        "SELECT d.execution_id, d.action_id, e.version_id, d.status, "
        "CASE WHEN d.status = 'pending' THEN '' ELSE d.reason END, COUNT(*) "
        "FROM campaigns_delivery d JOIN campaigns_execution e ON e.id = d.execution_id "
        "GROUP BY d.execution_id, d.action_id, e.version_id, d.status, "
        "CASE WHEN d.status = 'pending' THEN '' ELSE d.reason END"
    )
    if schema_editor.connection.vendor == "postgresql":
        epoch = "CAST(EXTRACT(EPOCH FROM d.updated_at) AS bigint)"
    else:
        epoch = "CAST(strftime('%%s', d.updated_at) AS integer)"
    bucket = f"({epoch} / 5) * 5"
    execute(
        "INSERT INTO campaigns_deliverytimeline "
        '(execution_id, action_id, bucket, status, "count") '
        f"SELECT d.execution_id, d.action_id, {bucket}, d.status, COUNT(*) "
        "FROM campaigns_delivery d "
        "WHERE d.status <> 'pending' AND d.updated_at IS NOT NULL "
        f"GROUP BY d.execution_id, d.action_id, {bucket}, d.status"
    )


REASONS = [
    ("opted_out", "Opted out"),
    ("no_address", "No address"),
    ("profile_deleted", "Profile deleted"),
    ("channel_removed", "Channel removed by a newer version"),
    ("bad_profile_data", "Unreadable profile data"),
    ("render_error", "Content could not be rendered"),
    ("prepare_error", "Message could not be prepared"),
    ("provider_refused", "Refused by the provider"),
    ("provider_error", "Provider error, retrying"),
    ("gave_up", "Gave up after the maximum attempts"),
]
STATUSES = [
    ("pending", "Pending"),
    ("sent", "Sent"),
    ("failed", "Failed"),
    ("skipped", "Skipped"),
]


class Migration(migrations.Migration):

    dependencies = [
        ("campaigns", "0004_delivery_claims_and_step_errors"),
    ]

    operations = [
        migrations.AddField(
            model_name="delivery",
            name="reason",
            field=models.CharField(blank=True, choices=REASONS, default="", max_length=32),
        ),
        migrations.AddField(
            model_name="delivery",
            name="version",
            field=models.ForeignKey(
                blank=True,
                db_constraint=False,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.DO_NOTHING,
                related_name="+",
                to="campaigns.campaignversion",
            ),
        ),
        migrations.RemoveConstraint(
            model_name="deliverycount",
            name="delivery_count_per_status",
        ),
        migrations.AddField(
            model_name="deliverycount",
            name="reason",
            field=models.CharField(blank=True, choices=REASONS, default="", max_length=32),
        ),
        migrations.AddField(
            model_name="deliverycount",
            name="version",
            field=models.ForeignKey(
                null=True,
                db_constraint=False,
                db_index=False,
                on_delete=django.db.models.deletion.DO_NOTHING,
                related_name="+",
                to="campaigns.campaignversion",
            ),
        ),
        migrations.CreateModel(
            name="DeliveryTimeline",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("bucket", models.BigIntegerField()),
                ("status", models.CharField(choices=STATUSES, max_length=16)),
                ("count", models.BigIntegerField(default=0)),
                (
                    "action",
                    models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="campaigns.channelaction",
                    ),
                ),
                (
                    "execution",
                    models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="campaigns.execution",
                    ),
                ),
            ],
            options={
                "constraints": [
                    models.UniqueConstraint(
                        fields=("execution", "action", "bucket", "status"),
                        name="delivery_timeline_per_bucket",
                    )
                ],
            },
        ),
        migrations.RunPython(backfill, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="deliverycount",
            name="version",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                on_delete=django.db.models.deletion.DO_NOTHING,
                related_name="+",
                to="campaigns.campaignversion",
            ),
        ),
        migrations.AlterField(
            model_name="deliverycount",
            name="execution",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="+",
                to="campaigns.execution",
            ),
        ),
        migrations.AddConstraint(
            model_name="deliverycount",
            constraint=models.UniqueConstraint(
                fields=("execution", "action", "version", "status", "reason"),
                name="delivery_count_per_outcome",
            ),
        ),
        migrations.AddConstraint(
            model_name="delivery",
            constraint=models.CheckConstraint(
                condition=models.Q(("reason__in", ["", *(code for code, _ in REASONS)])),
                name="delivery_reason_valid",
            ),
        ),
    ]
