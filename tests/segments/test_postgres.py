"""What only PostgreSQL has: the GIN index on attributes and the rules that use it."""

import pytest
from django.db import connection

from segments.models import Profile
from segments.rules import compile_rules

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
