"""What only PostgreSQL has: the GIN index on attributes and the rules that use it."""

import pytest
from django.db import connection

from segments.models import Profile
from segments.rules import MAX_LIST_VALUES, compile_rules

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.django_db,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="needs PostgreSQL"),
]


def test_attributes_have_a_gin_index():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'segments_profile_attributes_gin'"
        )
        (definition,) = cursor.fetchone()
    assert "gin (attributes jsonb_path_ops)" in definition


def test_equality_on_an_attribute_compiles_to_containment():
    rule = {"field": "attributes.country", "op": "in", "value": ["FR", "BE"]}
    sql = str(Profile.objects.filter(compile_rules(rule)).query)
    assert '"segments_profile"."attributes" @>' in sql


def _plan(queryset):
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        sql, params = queryset.values("id").query.sql_with_params()
        cursor.execute(f"EXPLAIN {sql}", params)
        return "\n".join(row[0] for row in cursor.fetchall())


def test_a_full_in_list_is_one_containment_test_the_gin_index_answers():
    values = [f"c{index}" for index in range(MAX_LIST_VALUES)]
    rule = {"field": "attributes.code", "op": "in", "value": values}
    queryset = Profile.objects.filter(compile_rules(rule)).order_by()
    sql, _params = queryset.values("id").query.sql_with_params()
    assert sql.count("@> ANY(") == 1
    assert " OR " not in sql
    assert "segments_profile_attributes_gin" in _plan(queryset)


def test_external_id_has_a_single_index_and_members_are_unlogged():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'segments_profile' "
            "AND indexdef LIKE '%%(external_id%%'"
        )
        definitions = [row[0] for row in cursor.fetchall()]
        cursor.execute(
            "SELECT relpersistence FROM pg_class WHERE relname = 'segments_audiencemember'"
        )
        (persistence,) = cursor.fetchone()
    assert len(definitions) == 1
    assert "UNIQUE" in definitions[0]
    assert persistence == "u"


def test_external_ids_sort_bytewise():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT collation_name FROM information_schema.columns "
            "WHERE table_name = 'segments_profile' AND column_name = 'external_id'"
        )
        assert cursor.fetchone() == ("C",)


@pytest.mark.parametrize("channel", ["email", "sms", "push"])
def test_one_opted_out_index_serves_a_consent_condition_on_any_channel(channel):
    # Unordered, as an estimate or a snapshot reads it: ordered by external_id, the planner
    # may walk that index instead, depending on the table's statistics.
    queryset = Profile.objects.filter(
        compile_rules({"field": f"consent.{channel}", "op": "eq", "value": False})
    ).order_by()
    assert "profile_opted_out" in _plan(queryset)
