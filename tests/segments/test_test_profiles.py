"""Test profiles (the proofs' recipients): flagged in the admin and the API, shown and
filtered in the profile list; a file to import cannot set the flag and is told so."""

from __future__ import annotations

import io
from typing import Any

import pytest
from django.urls import reverse

from segments import services
from segments.imports import ImportRefused
from segments.models import Profile
from tests.segments.factories import ProfileFactory

pytestmark = pytest.mark.django_db


def test_the_api_flags_a_profile_as_a_test_profile(api_client: Any) -> None:
    created = api_client.post(
        "/api/profiles/", {"external_id": "me", "email": "me@example.com"}, format="json"
    )
    assert created.status_code == 201
    assert created.json()["is_test"] is False
    url = f"/api/profiles/{created.json()['id']}/"
    changed = api_client.patch(url, {"is_test": True}, format="json")
    assert changed.status_code == 200
    assert changed.json()["is_test"] is True
    assert Profile.objects.get(external_id="me").is_test is True
    refused = api_client.patch(url, {"is_test": "perhaps"}, format="json")
    assert refused.status_code == 400
    assert "is_test" in refused.json()


def test_the_profile_admin_flags_a_test_profile_and_filters_them(admin_client: Any) -> None:
    ProfileFactory(external_id="customer")
    response = admin_client.post(
        reverse("admin:segments_profile_add"),
        {
            "external_id": "me",
            "email": "me@example.com",
            "phone": "",
            "attributes": "{}",
            "is_test": "on",
            "consent_email": "on",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    assert Profile.objects.get(external_id="me").is_test is True
    listed = admin_client.get(reverse("admin:segments_profile_changelist") + "?is_test__exact=1")
    page = listed.content.decode()
    assert ">me</a>" in page
    assert ">customer</a>" not in page


def test_a_csv_import_naming_the_test_flag_is_refused_whole() -> None:
    text = "external_id,email,is_test\nme,me@example.com,true\n"
    with pytest.raises(ImportRefused, match="does not flag test profiles"):
        services.profiles_import(user=None, stream=io.BytesIO(text.encode()), format="csv")
    assert not Profile.objects.exists()


def test_a_jsonl_import_rejects_a_row_setting_the_test_flag() -> None:
    text = '{"external_id": "me", "is_test": true}\n{"external_id": "you"}\n'
    summary = services.profiles_import(user=None, stream=io.BytesIO(text.encode()), format="jsonl")
    assert (summary.created, summary.rejected) == (1, 1)
    assert "does not flag test profiles" in summary.rejections[0].reason
    assert list(Profile.objects.values_list("external_id", "is_test")) == [("you", False)]
