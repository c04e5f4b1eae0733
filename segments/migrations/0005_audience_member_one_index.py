"""Audience members keep one index: the primary key, packed full on PostgreSQL.

The unique (snapshot, profile) index goes: a snapshot adds each slice's profiles above the
last member's profile id, so a profile cannot come in twice, and the delivery engine reads
a slice's members by key range. Members are only ever appended in key order and never
updated, so the primary key grows at its right edge: the default 10% free space per leaf
page would stay empty forever, and costs a snapshot one page split in ten.
"""

from django.db import migrations


def set_fillfactor(value):
    def run(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(
                f"ALTER INDEX segments_audiencemember_pkey SET (fillfactor = {value})"
            )

    return run


class Migration(migrations.Migration):
    dependencies = [
        ("segments", "0004_audience_member_unlogged"),
    ]

    operations = [
        migrations.AlterModelOptions(
            name="audiencemember",
            options={"ordering": ["snapshot_id", "key"]},
        ),
        migrations.RemoveConstraint(
            model_name="audiencemember",
            name="audience_member_once_per_snapshot",
        ),
        migrations.RunPython(set_fillfactor(100), set_fillfactor(90), elidable=False),
    ]
