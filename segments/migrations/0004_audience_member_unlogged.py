"""Audience members live in an UNLOGGED table on PostgreSQL (SQLite: nothing to do).

A snapshot writes a million rows in one statement; without write-ahead logging it does so
about twice as fast. The price, accepted on purpose: after a PostgreSQL crash (not a clean
restart) the table comes back empty, and it is never copied to streaming replicas. The
delivery engine copies a slice's members into its own (logged) delivery rows in the
transaction that writes the slice, so a crash loses no planned delivery; what is lost is
only the members list of past snapshots (their `size` stays as it was), which a new
snapshot of the segment rebuilds.
"""

from django.db import migrations

TABLE = "segments_audiencemember"


def set_unlogged(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"ALTER TABLE {TABLE} SET UNLOGGED")


def set_logged(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"ALTER TABLE {TABLE} SET LOGGED")


class Migration(migrations.Migration):
    dependencies = [
        ("segments", "0003_profile_indexes_for_import"),
    ]

    operations = [
        migrations.RunPython(set_unlogged, set_logged, elidable=False),
    ]
