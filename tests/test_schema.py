"""The OpenAPI schema generates cleanly and documents the campaign endpoints."""

from io import StringIO

import pytest
import yaml
from django.core.management import call_command
from drf_spectacular.drainage import GENERATOR_STATS

CAMPAIGN_PATHS = {
    "/api/campaigns/": {"get", "post"},
    "/api/campaigns/{id}/": {"get", "patch", "delete"},
    "/api/campaigns/{id}/activate/": {"post"},
    "/api/campaigns/{id}/review/": {"get"},
    "/api/campaigns/{id}/stop/": {"post"},
    "/api/campaigns/{id}/archive/": {"post"},
    "/api/campaigns/{id}/duplicate/": {"post"},
    "/api/campaigns/{id}/modify/": {"post"},
    "/api/campaigns/{id}/discard-draft/": {"post"},
    "/api/campaigns/{id}/versions/": {"get"},
    "/api/campaigns/{id}/transitions/": {"get"},
    "/api/presets/": {"get", "post"},
    "/api/presets/{id}/": {"get", "patch", "delete"},
}


@pytest.fixture(scope="module")
def schema() -> dict:
    GENERATOR_STATS.reset()
    out = StringIO()
    call_command("spectacular", "--validate", stdout=out)
    return {
        "document": yaml.safe_load(out.getvalue()),
        "problems": [*GENERATOR_STATS._warn_cache, *GENERATOR_STATS._error_cache],
    }


def test_schema_generates_without_warnings_or_errors(schema):
    # As `manage.py spectacular --validate --fail-on-warn` would: a warning means a guessed,
    # and often wrong, piece of the published contract.
    assert schema["problems"] == []


def test_schema_lists_every_campaign_and_preset_operation(schema):
    paths = schema["document"]["paths"]

    for path, methods in CAMPAIGN_PATHS.items():
        assert path in paths, path
        assert methods <= set(paths[path]), path


def test_campaign_list_documents_its_filters(schema):
    parameters = {
        p["name"]: p for p in schema["document"]["paths"]["/api/campaigns/"]["get"]["parameters"]
    }

    assert {"status", "search", "tag", "type", "ordering", "page"} <= set(parameters)
    assert parameters["status"]["schema"]["type"] == "array"
    assert "all" in parameters["status"]["schema"]["items"]["enum"]


def test_activate_documents_202_400_and_409(schema):
    responses = schema["document"]["paths"]["/api/campaigns/{id}/activate/"]["post"]["responses"]

    assert {"202", "400", "409"} <= set(responses)
    body = schema["document"]["paths"]["/api/campaigns/{id}/activate/"]["post"]["requestBody"]
    assert "acknowledge" in str(body) or body["content"]


def test_review_documents_reach_checks_schedule_and_estimate(schema):
    components = schema["document"]["components"]["schemas"]
    review = components["CampaignReview"]["properties"]
    assert {"reach", "recipients", "schedule", "estimate", "checks", "sample"} <= set(review)
    assert set(components["ActivationRefused"]["properties"]) >= {"detail", "checks", "reach"}


def test_schema_and_docs_are_served(api_client):
    assert api_client.get("/api/schema/").status_code == 200
    assert api_client.get("/api/docs/").status_code == 200
