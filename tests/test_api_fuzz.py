"""The API never answers a server error, whatever a client sends.

Schemathesis generates requests from the project's own OpenAPI schema (valid ones and, by
default, deliberately invalid ones: wrong types, missing fields, odd strings, huge numbers)
and sends them, authenticated as a superuser, to the real Django application in this
process, against a database holding a few of every object. A 5xx is a failure: bad input
must be a 4xx with a JSON ``detail``.

The number of cases per operation is bounded (``SALVO_FUZZ_EXAMPLES``, 15 by default) so
that `make test` fits in its budget; CI's PostgreSQL pass runs 40 (.ci/run), and any run may
raise it for a deeper look.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from tests.campaigns.factories import make_campaign, make_live_campaign
from tests.channels.factories import MessagePresetFactory
from tests.segments.factories import ProfileFactory, SegmentFactory

EXAMPLES = int(os.environ.get("SALVO_FUZZ_EXAMPLES", "15"))


def _api_schema() -> Any:
    document = SchemaGenerator().get_schema(request=None, public=True)
    schema = schemathesis.openapi.from_dict(document)
    schema.app = WSGIHandler()
    return schema


schema = _api_schema()


@pytest.fixture
def token(db: None, admin_user: Any) -> Iterator[str]:
    from rest_framework.authtoken.models import Token

    # Objects for the generated ids to find: most requests name small ids.
    ProfileFactory.create_batch(3)
    SegmentFactory()
    MessagePresetFactory()
    make_campaign()
    make_live_campaign()
    # As Django's test client does: the handler must not close the test's connection (and
    # with it the transaction the test runs in) at the end of each request.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield str(Token.objects.get_or_create(user=admin_user)[0].key)
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_no_request_gets_a_server_error(case: Any, token: str) -> None:
    case.call_and_validate(headers={"Authorization": f"Token {token}"}, checks=[not_a_server_error])
