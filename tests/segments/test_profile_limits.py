"""Limits on a profile's data, the same at every door: the REST API (and its JSON parser),
the admin form, imports, and the profile services themselves.

Every expectation here is built from the limits in settings and from the input, not from
the code under test.
"""

import json

import pytest
from django.conf import settings
from django.core.exceptions import ValidationError
from django.test import override_settings
from django.urls import reverse

from segments import services
from segments.models import Profile
from tests.segments.factories import ProfileFactory

pytestmark = pytest.mark.django_db

MAX_DEPTH = settings.SALVO_PROFILE_ATTRIBUTES_MAX_DEPTH
MAX_BYTES = settings.SALVO_PROFILE_ATTRIBUTES_MAX_BYTES
MAX_KEY = settings.SALVO_PROFILE_ATTRIBUTE_KEY_MAX_LENGTH
JSON_MAX_DEPTH = settings.SALVO_JSON_MAX_DEPTH


def nested(depth: int) -> dict:
    """Attributes `depth` objects deep, counting the attributes object: {"a": {"a": … 1}}."""
    value: object = 1
    for _ in range(depth - 1):
        value = {"a": value}
    return {"a": value}


def nested_text(depth: int) -> str:
    """The JSON text of a value `depth` lists deep, built without Python's recursion."""
    return "[" * depth + "]" * depth


def deep_path(depth: int) -> str:
    """Where `nested(depth)` first goes past the limit: the object one level below the
    limit's, at attributes.a.a… (as many keys as the limit's levels)."""
    assert depth > MAX_DEPTH
    return "attributes" + ".a" * MAX_DEPTH


# --- attributes: API ----------------------------------------------------------------------


def test_api_accepts_attributes_at_the_limits(api):
    at_limit = {**nested(MAX_DEPTH), "k" * MAX_KEY: "v"}
    response = api.post(
        "/api/profiles/", {"external_id": "u1", "attributes": at_limit}, format="json"
    )
    assert response.status_code == 201, response.json()
    assert Profile.objects.get().attributes == at_limit


@pytest.mark.parametrize("method", ["post", "patch"])
def test_api_refuses_attributes_nested_deeper_than_the_limit_with_the_path(api, method):
    profile = ProfileFactory.create(external_id="u1", attributes={"kept": True})
    body = {"external_id": "u2", "attributes": nested(MAX_DEPTH + 1)}
    if method == "post":
        response = api.post("/api/profiles/", body, format="json")
    else:
        response = api.patch(f"/api/profiles/{profile.pk}/", body, format="json")
    assert response.status_code == 400
    assert response.json() == {
        "attributes": [f"{deep_path(MAX_DEPTH + 1)}: nested deeper than {MAX_DEPTH} levels."]
    }
    assert list(Profile.objects.values_list("external_id", "attributes")) == [
        ("u1", {"kept": True})
    ]


def test_api_refuses_a_long_key_and_large_attributes(api):
    long_key = "k" * (MAX_KEY + 1)
    response = api.post(
        "/api/profiles/",
        {"external_id": "u1", "attributes": {"ok": {long_key: 1}}},
        format="json",
    )
    assert response.status_code == 400
    [message] = response.json()["attributes"]
    assert message.startswith("attributes.ok: the key “kkkk")
    assert message.endswith(f"is longer than {MAX_KEY} characters.")

    # One character over the limit, counted as UTF-8 bytes of compact JSON ("é" is two).
    filler = "é" * ((MAX_BYTES - len('{"a":""}')) // 2) + "x" * ((MAX_BYTES - 8) % 2 + 1)
    big = {"a": filler}
    size = len(json.dumps(big, ensure_ascii=False, separators=(",", ":")).encode())
    assert size == MAX_BYTES + 1
    response = api.post("/api/profiles/", {"external_id": "u1", "attributes": big}, format="json")
    assert response.status_code == 400
    assert response.json() == {
        "attributes": [f"attributes: {size:,} bytes as JSON; the limit is {MAX_BYTES:,}."]
    }
    assert not Profile.objects.exists()


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ({"a": "x\u0000y"}, "attributes.a: text cannot hold the NUL character (\\u0000)."),
        ({"a\u0000": 1}, "attributes: the key “a\\u0000” cannot hold the NUL character (\\u0000)."),
        ({"a": ["\ud800"]}, "attributes.a[0]: text holds a lone surrogate (\\ud800), not Unicode."),
    ],
)
def test_api_refuses_attribute_text_no_database_stores(api, attributes, message):
    body = '{"external_id": "u1", "attributes": ' + json.dumps(attributes) + "}"
    response = api.post("/api/profiles/", body, content_type="application/json")
    assert response.status_code == 400
    assert response.json() == {"attributes": [message]}
    assert not Profile.objects.exists()


def test_api_form_input_nested_too_deep_is_a_400(api):
    # A multipart body carries attributes as JSON text, which the field itself parses.
    response = api.post("/api/profiles/", {"external_id": "u1", "attributes": nested_text(50_000)})
    assert response.status_code == 400
    assert response.json() == {
        "attributes": [f"Enter valid JSON nested at most {JSON_MAX_DEPTH} levels deep."]
    }
    assert not Profile.objects.exists()


# --- request bodies under /api/ -----------------------------------------------------------


@pytest.mark.parametrize("depth", [JSON_MAX_DEPTH + 1, 1_000, 100_000])
def test_a_json_body_nested_too_deep_is_a_json_400(api, depth):
    body = '{"external_id": "u1", "attributes": {"a": ' + nested_text(depth - 2) + "}}"
    response = api.post("/api/profiles/", body, content_type="application/json")
    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    assert response.json() == {
        "detail": f"JSON parse error - nested deeper than {JSON_MAX_DEPTH} levels"
    }
    assert not Profile.objects.exists()


def test_a_json_body_at_the_depth_limit_is_parsed(api):
    # Parsed, then refused by the attributes limit: the parser let it through.
    body = '{"external_id": "u1", "attributes": {"a": ' + nested_text(JSON_MAX_DEPTH - 2) + "}}"
    response = api.post("/api/profiles/", body, content_type="application/json")
    assert response.status_code == 400
    assert "nested deeper than" in response.json()["attributes"][0]


def test_a_body_over_the_upload_limit_is_a_json_413(api):
    body = json.dumps({"external_id": "u1", "attributes": {"note": "x" * 2000}})
    with override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=1000):
        response = api.post("/api/profiles/", body, content_type="application/json")
    assert response.status_code == 413
    assert response["Content-Type"] == "application/json"
    assert response.json() == {
        "detail": "The request body is larger than the limit of 1,000 bytes "
        "(DATA_UPLOAD_MAX_MEMORY_SIZE)."
    }
    assert not Profile.objects.exists()


def test_too_many_form_fields_is_a_json_400(api):
    fields = {f"f{i}": "x" for i in range(20)}
    with override_settings(DATA_UPLOAD_MAX_NUMBER_FIELDS=10):
        response = api.post("/api/profiles/", {"external_id": "u1", **fields})
    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    assert response.json() == {
        "detail": "The request has more than 10 form fields (DATA_UPLOAD_MAX_NUMBER_FIELDS)."
    }


def test_an_unknown_api_path_is_a_json_404(api):
    response = api.get("/api/no-such-thing/")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"detail": "Not found."}


# --- attributes: services, admin ------------------------------------------------------------


def test_services_refuse_attributes_over_the_limits():
    with pytest.raises(ValidationError) as error:
        services.profile_create(data={"external_id": "u1", "attributes": nested(MAX_DEPTH + 1)})
    assert error.value.message_dict == {
        "attributes": [f"{deep_path(MAX_DEPTH + 1)}: nested deeper than {MAX_DEPTH} levels."]
    }
    profile = services.profile_create(data={"external_id": "u1"})
    with pytest.raises(ValidationError) as error:
        services.profile_update(profile=profile, data={"attributes": {"k" * (MAX_KEY + 1): 1}})
    assert list(error.value.message_dict) == ["attributes"]
    profile.refresh_from_db()
    assert profile.attributes == {}


def admin_add(admin_client_, **fields):
    data = {"external_id": "u1", "email": "", "phone": "", "attributes": "{}", **fields}
    return admin_client_.post(reverse("admin:segments_profile_add"), data)


def test_admin_form_refuses_attributes_over_the_limits_on_the_field(admin_client_):
    response = admin_add(admin_client_, attributes=json.dumps(nested(MAX_DEPTH + 1)))
    assert response.status_code == 200
    assert response.context["adminform"].form.errors == {
        "attributes": [f"{deep_path(MAX_DEPTH + 1)}: nested deeper than {MAX_DEPTH} levels."]
    }
    # Too deep for any parser: still an error on the field, never a server error.
    response = admin_add(admin_client_, attributes='{"a": ' + nested_text(50_000) + "}")
    assert response.status_code == 200
    assert response.context["adminform"].form.errors == {
        "attributes": [f"Enter valid JSON nested at most {JSON_MAX_DEPTH} levels deep."]
    }
    assert not Profile.objects.exists()


# --- external_id ----------------------------------------------------------------------------

UNSAFE_IDS = ["a\r\nb", "a\nb", "a\tb", "a\x00b", "a\x1bb", "a\x7fb", "a\x85b", "a>b", "<ab"]


@pytest.mark.parametrize("external_id", UNSAFE_IDS)
def test_api_refuses_an_external_id_that_breaks_headers(api, external_id):
    body = json.dumps({"external_id": external_id})
    response = api.post("/api/profiles/", body, content_type="application/json")
    assert response.status_code == 400
    # (DRF's own check words a NUL its own way.)
    assert list(response.json()) == ["external_id"]
    assert not Profile.objects.exists()


def test_api_patch_refuses_an_unsafe_external_id(api):
    profile = ProfileFactory.create(external_id="u1")
    response = api.patch(f"/api/profiles/{profile.pk}/", {"external_id": "u1>"}, format="json")
    assert response.status_code == 400
    assert "external_id" in response.json()
    profile.refresh_from_db()
    assert profile.external_id == "u1"


def test_services_and_admin_refuse_an_unsafe_external_id(admin_client_):
    with pytest.raises(ValidationError) as error:
        services.profile_create(data={"external_id": "x>y"})
    assert list(error.value.message_dict) == ["external_id"]
    response = admin_add(admin_client_, external_id="a<b")
    assert response.status_code == 200
    assert list(response.context["adminform"].form.errors) == ["external_id"]
    assert not Profile.objects.exists()
