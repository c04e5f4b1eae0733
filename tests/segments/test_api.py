import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from segments.choices import SegmentKind
from segments.models import Profile, Segment
from tests.segments.factories import ProfileFactory, SegmentFactory

pytestmark = pytest.mark.django_db

FRENCH = {"field": "attributes.country", "op": "eq", "value": "FR"}


def test_profile_create_with_consent_and_attributes(api_client):
    response = api_client.post(
        "/api/profiles/",
        {
            "external_id": "u1",
            "email": "u1@example.com",
            "phone": "+33612345678",
            "attributes": {"country": "FR", "age": 31},
            "consent": {"email": True, "sms": False},
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["consent"] == {"email": True, "sms": False, "push": True}
    assert body["consent_changes"]["sms"]["source"] == "api"
    assert body["consent_changes"]["email"]["at"] is None
    assert Profile.objects.get(external_id="u1").attributes == {"country": "FR", "age": 31}


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"external_id": "u1", "email": "not-an-email"}, "email"),
        ({"external_id": "u1", "phone": "0612345678"}, "phone"),
        ({"external_id": "u1", "consent": {"sms": "maybe"}}, "consent"),
        ({"external_id": "u1", "attributes": [1, 2]}, "attributes"),
        ({"email": "a@example.com"}, "external_id"),
    ],
)
def test_profile_create_refuses_bad_input(api_client, payload, field):
    response = api_client.post("/api/profiles/", payload, format="json")
    assert response.status_code == 400
    assert field in response.json()
    assert not Profile.objects.exists()


def test_profile_duplicate_external_id_is_a_400(api_client):
    ProfileFactory.create(external_id="u1")
    response = api_client.post("/api/profiles/", {"external_id": "u1"}, format="json")
    assert response.status_code == 400
    assert "external_id" in response.json()


def test_malformed_json_body_is_a_400(api_client):
    response = api_client.post("/api/profiles/", "{oops", content_type="application/json")
    assert response.status_code == 400
    assert "detail" in response.json()


def test_profile_patch_consent_and_filter(api_client):
    profile = ProfileFactory.create(external_id="u1")
    ProfileFactory.create(external_id="u2")
    response = api_client.patch(
        f"/api/profiles/{profile.pk}/", {"consent": {"push": False}}, format="json"
    )
    assert response.status_code == 200
    assert response.json()["consent"]["push"] is False
    listed = api_client.get("/api/profiles/", {"consent_push": "false"}).json()
    assert [p["external_id"] for p in listed["results"]] == ["u1"]
    assert api_client.get("/api/profiles/", {"search": "u2"}).json()["count"] == 1


def test_import_endpoint_returns_the_summary(api_client):
    upload = SimpleUploadedFile(
        "people.csv", b"external_id,email\nu1,u1@example.com\nu2,broken\n", "text/csv"
    )
    response = api_client.post("/api/profiles/import/", {"file": upload, "segment": "Imported"})
    assert response.status_code == 200, response.json()
    body = response.json()
    assert (body["created"], body["updated"], body["rejected"]) == (1, 0, 1)
    lines = ("lines", "header_lines", "blank_lines", "continuation_lines", "rows")
    assert [body[name] for name in lines] == [3, 1, 0, 0, 2]
    assert body["rejections"][0]["line"] == 3
    assert body["segment"] == "Imported"
    assert Segment.objects.get(name="Imported").members.count() == 1


def test_import_endpoint_refuses_a_binary_file_whole(api_client):
    upload = SimpleUploadedFile("photo.csv", b"external_id\nu1\n\x00\x00\x01", "text/csv")
    response = api_client.post("/api/profiles/import/", {"file": upload})
    assert response.status_code == 400
    assert "binary" in response.json()["detail"]
    assert not Profile.objects.exists()


def test_import_endpoint_needs_a_file(api_client):
    response = api_client.post("/api/profiles/import/", {})
    assert response.status_code == 400
    assert "file" in response.json()


def test_segment_create_and_invalid_rules_point_at_the_node(api_client):
    response = api_client.post(
        "/api/segments/",
        {
            "name": "Adults",
            "kind": "rules",
            "rules": {
                "all": [FRENCH, {"any": [{"field": "attributes.age", "op": "gtx", "value": 18}]}]
            },
        },
        format="json",
    )
    assert response.status_code == 400
    assert response.json()["rules"] == ['all[1].any[0].op: unknown operator "gtx"']
    response = api_client.post(
        "/api/segments/",
        {"name": "Wrong type", "rules": {"field": "attributes.age", "op": "gte", "value": "x"}},
        format="json",
    )
    assert response.status_code == 400
    assert response.json()["rules"][0].startswith('value: "gte" needs a number')
    assert not Segment.objects.exists()
    response = api_client.post("/api/segments/", {"name": "French", "rules": FRENCH}, format="json")
    assert response.status_code == 201
    assert response.json()["kind"] == "rules"


def test_segment_patch_rules_is_validated(api_client):
    segment = SegmentFactory.create(rules=FRENCH)
    response = api_client.patch(
        f"/api/segments/{segment.pk}/", {"rules": {"not": []}}, format="json"
    )
    assert response.status_code == 400
    assert "not: a node must be an object" in response.json()["rules"][0]
    segment.refresh_from_db()
    assert segment.rules == FRENCH


def test_estimate_preview_and_freeze(api_client):
    for i in range(3):
        ProfileFactory.create(external_id=f"fr{i}", attributes={"country": "FR"})
    ProfileFactory.create(attributes={"country": "DE"})
    segment = SegmentFactory.create(rules=FRENCH)
    assert api_client.get(f"/api/segments/{segment.pk}/estimate/").json() == {
        "count": 3,
        "exact": True,
        "margin": 0,
    }
    preview = api_client.get(f"/api/segments/{segment.pk}/preview/", {"limit": 2}).json()
    assert [p["external_id"] for p in preview] == ["fr0", "fr1"]
    assert (
        api_client.get(f"/api/segments/{segment.pk}/preview/", {"limit": "lots"}).status_code == 400
    )
    response = api_client.post(
        f"/api/segments/{segment.pk}/freeze/", {"name": "Frozen"}, format="json"
    )
    assert response.status_code == 201
    frozen = response.json()
    assert frozen["kind"] == SegmentKind.STATIC
    assert api_client.get(f"/api/segments/{frozen['id']}/estimate/").json() == {
        "count": 3,
        "exact": True,
        "margin": 0,
    }
    duplicate = api_client.post(
        f"/api/segments/{segment.pk}/freeze/", {"name": "Frozen"}, format="json"
    )
    assert duplicate.status_code == 400


def test_estimate_of_a_stored_invalid_tree_is_a_400_not_a_500(api_client):
    segment = SegmentFactory.create(rules={"field": "attributes.age", "op": "gtx", "value": 1})
    response = api_client.get(f"/api/segments/{segment.pk}/estimate/")
    assert response.status_code == 400
    assert "unknown operator" in response.json()["detail"]


def test_unknown_segment_is_a_404(api_client):
    assert api_client.get("/api/segments/999999/estimate/").status_code == 404


def test_reading_needs_permission(api_client_for):
    user = get_user_model().objects.create_user("nobody", password="pw-nobody-123")
    client = api_client_for(user)
    assert client.get("/api/profiles/").status_code == 403
    assert client.get("/api/segments/").status_code == 403
    upload = SimpleUploadedFile("p.csv", b"external_id\nu1\n")
    assert client.post("/api/profiles/import/", {"file": upload}).status_code == 403
    assert not Profile.objects.exists()
    # Token authentication comes first: an anonymous client is asked to authenticate.
    for path in ("/api/segments/", "/api/profiles/"):
        anonymous = APIClient().get(path)
        assert anonymous.status_code == 401
        assert anonymous["WWW-Authenticate"] == "Token"


def test_schema_documents_the_segment_actions(api_client):
    response = api_client.get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert "/api/segments/{id}/estimate/" in paths
    assert "/api/profiles/import/" in paths
