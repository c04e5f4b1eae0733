"""Cheaper profile writes: one partial index for opted-out profiles, bytewise external ids.

- The three "opted out of <channel>" partial indexes become one "opted out of any channel"
  index: each written row evaluated three index conditions, and PostgreSQL uses the one
  index for a condition on any channel.
- On PostgreSQL, `external_id` (and so its unique index) takes collation "C": identifiers
  need no linguistic order, and under a libc collation every comparison of an index
  look-up goes through `strcoll`. Bytewise order is also what the admin and the API now
  sort external ids by. Rebuilding the unique index locks the profile table while it runs.
"""

from django.db import migrations, models


def external_id_collation(collation):
    def run(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(
                "ALTER TABLE segments_profile ALTER COLUMN external_id "
                f"TYPE varchar(255) COLLATE {collation}"
            )

    return run


class Migration(migrations.Migration):
    dependencies = [
        ("segments", "0005_audience_member_one_index"),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name="profile",
            name="profile_no_email",
        ),
        migrations.RemoveIndex(
            model_name="profile",
            name="profile_no_sms",
        ),
        migrations.RemoveIndex(
            model_name="profile",
            name="profile_no_push",
        ),
        migrations.AddIndex(
            model_name="profile",
            index=models.Index(
                condition=models.Q(
                    ("consent_email", False),
                    ("consent_sms", False),
                    ("consent_push", False),
                    _connector="OR",
                ),
                fields=["id"],
                name="profile_opted_out",
            ),
        ),
        migrations.RunPython(
            external_id_collation('"C"'), external_id_collation("pg_catalog.default"), elidable=False
        ),
    ]
