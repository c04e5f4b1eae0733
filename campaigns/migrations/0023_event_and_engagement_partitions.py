"""Every delivery event names its delivery's execution (``execution_id``, 0 for none), and
on PostgreSQL the events and the engagement rows become partitioned by RANGE of
execution_id, as the deliveries are (migration 0022, campaigns.delivery.partitions), so
that retention drops a month of them whole instead of deleting them row by row.

Nothing is copied, as in 0022: each table as it was becomes a partition.
- The events recorded so far get execution 0 (finding each one's would rewrite the table),
  so the table becomes the partition below every execution, FROM (MINVALUE) TO (1): the
  one where events that name no delivery go, and where retention deletes events by their
  age (an index of its own on received_at). Each partition of the deliveries gets its
  (empty) partition of events.
- The engagement rows so far hold their execution: the table becomes the partition of
  every execution id the deliveries' partitions cover so far. Retention deletes its rows
  of a dropped month of deliveries; later months have partitions of their own.

Each primary key becomes (id, execution_id) and each unique key gains execution_id, as a
partitioned table's must hold the partition key; both are built on the old table as it
is attached (the minutes a large table's indexes take, at deploy). ``id`` draws from a
sequence owned by the column, as the deliveries' does. Nothing changes on SQLite but the
new column.
"""

from django.db import migrations, models

DELIVERIES = "campaigns_delivery"
EVENTS = "campaigns_deliveryevent"
ENGAGEMENT = "campaigns_deliveryengagement"
# campaigns.delivery.partitions.EXECUTIONS_PER_PARTITION when this was written.
EXECUTIONS_PER_PARTITION = 1_000_000
# Each table's unique key: its name, and its columns before this migration.
UNIQUE = {
    EVENTS: ("delivery_event_once", "provider, event_id"),
    ENGAGEMENT: ("delivery_engagement_once", "delivery_id, kind"),
}


def _indexes(cursor, table):
    """The table's indexes that no constraint owns (Django's), as (name, definition)."""
    cursor.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() "
        "AND tablename = %s AND indexname NOT IN "
        "(SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass) ORDER BY indexname",
        [table, table],
    )
    return cursor.fetchall()


def _delivery_partitions(cursor):
    """(low or None for MINVALUE, high) of the deliveries' partitions, lowest first."""
    cursor.execute(
        "SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass",
        [DELIVERIES],
    )
    found = []
    for (bound,) in cursor.fetchall():
        low, high = (
            part.split(")")[0].strip().strip("'") for part in bound.split("(")[1:3]
        )
        found.append((None if low.upper() == "MINVALUE" else int(low), int(high)))
    return sorted(found, key=lambda pair: pair[1])


def _partition_table(cursor, table, first, bound):
    """`table` becomes partitioned by RANGE (execution_id), the table as it was its
    partition `first` FOR VALUES `bound`."""
    unique, columns = UNIQUE[table]
    indexes = _indexes(cursor, table)
    cursor.execute(f"SELECT coalesce(max(id), 0) FROM {table}")
    (last_id,) = cursor.fetchone()
    sequence = f"{table}_id_seq"
    statements = [
        f"ALTER TABLE {table} RENAME TO {first}",
        f"ALTER TABLE {first} DROP CONSTRAINT {table}_pkey",
        # Drops the identity's sequence, named as the new one is.
        f"ALTER TABLE {first} ALTER COLUMN id DROP IDENTITY",
        # Without the partition key: the parent's, with it, is built on it when attached.
        f"ALTER TABLE {first} DROP CONSTRAINT {unique}",
        # Their names go to the parent's, which the partition's are attached to as they are.
        *(
            f"ALTER INDEX {name} RENAME TO {first}_index_{number}"
            for number, (name, _) in enumerate(indexes)
        ),
        f"CREATE TABLE {table} (LIKE {first} INCLUDING CONSTRAINTS) "
        "PARTITION BY RANGE (execution_id)",
        f"CREATE SEQUENCE {sequence} OWNED BY {table}.id",
        f"ALTER TABLE {table} ALTER COLUMN id SET DEFAULT nextval('{sequence}')",
        f"ALTER TABLE {table} ADD CONSTRAINT {table}_pkey PRIMARY KEY (id, execution_id)",
        f"ALTER TABLE {table} ADD CONSTRAINT {unique} UNIQUE ({columns}, execution_id)",
        *(definition for _, definition in indexes),
        f"ALTER TABLE {table} ATTACH PARTITION {first} FOR VALUES {bound}",
    ]
    for statement in statements:
        cursor.execute(statement)
    if last_id:
        cursor.execute(f"SELECT setval('{sequence}', %s)", [last_id])


def partition(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        months = _delivery_partitions(cursor)
        top = months[-1][1]
        _partition_table(
            cursor,
            ENGAGEMENT,
            f"{ENGAGEMENT}_{top // EXECUTIONS_PER_PARTITION - 1}",
            f"FROM (MINVALUE) TO ({top})",
        )
        unattached = f"{EVENTS}_unattached"
        _partition_table(cursor, EVENTS, unattached, "FROM (MINVALUE) TO (1)")
        # Retention deletes this partition's events by their age, every hour: an index of
        # its own (the month partitions go whole, and need none).
        cursor.execute(f"CREATE INDEX {unattached}_received ON {unattached} (received_at)")
        for low, high in months:
            name = f"{EVENTS}_{high // EXECUTIONS_PER_PARTITION - 1}"
            cursor.execute(f"CREATE TABLE {name} (LIKE {EVENTS} INCLUDING CONSTRAINTS)")
            cursor.execute(
                f"ALTER TABLE {EVENTS} ATTACH PARTITION {name} "
                f"FOR VALUES FROM ({max(low or 1, 1)}) TO ({high})"
            )


def _unpartition_table(cursor, table):
    """One plain table again, with every row of every partition, its identity column and
    unique key as Django made them."""
    unique, columns = UNIQUE[table]
    indexes = _indexes(cursor, table)
    plain = f"{table}_plain"
    for statement in (
        f"CREATE TABLE {plain} (LIKE {table} INCLUDING CONSTRAINTS)",
        f"INSERT INTO {plain} SELECT * FROM {table}",
        f"DROP TABLE {table}",
        f"ALTER TABLE {plain} RENAME TO {table}",
        f"ALTER TABLE {table} ADD CONSTRAINT {table}_pkey PRIMARY KEY (id)",
        f"ALTER TABLE {table} ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY",
        f"ALTER TABLE {table} ADD CONSTRAINT {unique} UNIQUE ({columns})",
        *(definition for _, definition in indexes),
        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
        f"coalesce((SELECT max(id) FROM {table}), 1), (SELECT count(*) > 0 FROM {table}))",
    ):
        cursor.execute(statement)


def unpartition(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        for table in (EVENTS, ENGAGEMENT):
            _unpartition_table(cursor, table)


class Migration(migrations.Migration):
    dependencies = [
        ("campaigns", "0022_delivery_partitions_and_retention"),
    ]

    operations = [
        migrations.AddField(
            model_name="deliveryevent",
            name="execution_id",
            field=models.BigIntegerField(default=0, editable=False),
        ),
        migrations.RunPython(partition, unpartition, elidable=False),
    ]
