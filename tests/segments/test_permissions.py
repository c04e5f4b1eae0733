"""Each audience door checks the permissions of what it reveals or changes: a segment's
members are profiles (their email, phone, push token and attributes), and an import that
fills a segment changes that segment."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from segments.choices import SegmentKind
from segments.models import Profile, Segment
from tests.segments.factories import ProfileFactory, SegmentFactory

pytestmark = pytest.mark.django_db

FRENCH = {"field": "attributes.country", "op": "eq", "value": "FR"}
IMPORTER = ("segments.add_profile", "segments.change_profile")
# The segment an import names, and what filling it takes besides the importer's permissions.
SEGMENT_PERMISSION_CASES = [
    pytest.param("New", "segments.add_segment", id="creates-a-segment"),
    pytest.param("Existing", "segments.change_segment", id="adds-to-a-segment"),
]


@pytest.fixture
def member() -> Profile:
    return ProfileFactory.create(
        external_id="member-1",
        email="member@example.com",
        phone="+33612345678",
        push_token="push-token-of-member",
        attributes={"country": "FR", "secret": "attribute-value"},
    )


def revealed(text: str) -> list[str]:
    """Which of the member's personal values appear in `text`."""
    return [
        value
        for value in (
            "member@example.com",
            "+33612345678",
            "push-token-of-member",
            "attribute-value",
        )
        if value in text
    ]


def csv_upload() -> SimpleUploadedFile:
    return SimpleUploadedFile("people.csv", b"external_id,email\nu1,u1@example.com\n", "text/csv")


# --- preview: the members of a segment are profiles ---------------------------------------


def test_api_preview_needs_the_profile_view_permission(api_client_for, user_with_perms, member):
    segment = SegmentFactory.create(rules=FRENCH)
    url = f"/api/segments/{segment.pk}/preview/"
    segment_viewer = api_client_for(user_with_perms("segments.view_segment"))
    profile_viewer = api_client_for(
        user_with_perms("segments.view_segment", "segments.view_profile")
    )

    refused = segment_viewer.get(url)
    shown = profile_viewer.get(url)

    assert refused.status_code == 403
    assert "segments.view_profile" in refused.json()["detail"]
    assert revealed(refused.content.decode()) == []
    assert shown.status_code == 200
    assert [p["external_id"] for p in shown.json()] == ["member-1"]


def test_api_estimate_needs_only_the_segment_view_permission(
    api_client_for, user_with_perms, member
):
    segment = SegmentFactory.create(rules=FRENCH)
    client = api_client_for(user_with_perms("segments.view_segment"))

    assert client.get(f"/api/segments/{segment.pk}/estimate/").json() == {
        "count": 1,
        "exact": True,
        "margin": 0,
    }


def test_admin_segment_page_hides_members_without_the_profile_view_permission(
    client, user_with_perms, member
):
    segment = SegmentFactory.create(rules=FRENCH)
    page_url = reverse("admin:segments_segment_change", args=[segment.pk])
    client.force_login(user_with_perms("segments.view_segment"))

    page = client.get(page_url)

    html = page.content.decode()
    assert page.status_code == 200
    assert "<strong>1</strong> profiles match now" in html
    assert "member-1" not in html
    assert revealed(html) == []
    assert "segments.view_profile" in html


def test_admin_segment_page_shows_members_with_the_profile_view_permission(
    client, user_with_perms, member
):
    segment = SegmentFactory.create(rules=FRENCH)
    client.force_login(user_with_perms("segments.view_segment", "segments.view_profile"))

    page = client.get(reverse("admin:segments_segment_change", args=[segment.pk]))

    assert "member-1" in page.content.decode()


# --- imports: filling a segment changes it ------------------------------------------------


def api_import(client: Any, **fields: Any) -> Any:
    return client.post("/api/profiles/import/", {"file": csv_upload(), **fields})


def admin_import(client: Any, **fields: Any) -> Any:
    return client.post(
        reverse("admin:segments_profile_import"),
        {"file": csv_upload(), "format": "", "segment": "", **fields},
    )


def nothing_imported() -> bool:
    return not Profile.objects.exists() and not Segment.objects.exclude(name="Existing").exists()


@pytest.mark.parametrize(("segment", "missing"), SEGMENT_PERMISSION_CASES)
def test_api_import_into_a_segment_needs_the_segment_permission(
    api_client_for, user_with_perms, segment, missing
):
    existing = SegmentFactory.create(name="Existing", kind=SegmentKind.STATIC, rules={})
    client = api_client_for(user_with_perms(*IMPORTER))

    response = api_import(client, segment=segment)

    assert response.status_code == 403, response.content
    assert missing in response.json()["detail"]
    assert nothing_imported()
    assert existing.members.count() == 0


@pytest.mark.parametrize(("segment", "needs"), SEGMENT_PERMISSION_CASES)
def test_api_import_into_a_segment_with_the_permission(
    api_client_for, user_with_perms, segment, needs
):
    SegmentFactory.create(name="Existing", kind=SegmentKind.STATIC, rules={})
    client = api_client_for(user_with_perms(*IMPORTER, needs))

    response = api_import(client, segment=segment)

    assert response.status_code == 200, response.content
    assert list(
        Segment.objects.get(name=segment).members.values_list("external_id", flat=True)
    ) == ["u1"]


@pytest.mark.parametrize("missing", IMPORTER)
def test_api_import_needs_the_profile_permissions(api_client_for, user_with_perms, missing):
    client = api_client_for(user_with_perms(*(set(IMPORTER) - {missing})))

    response = api_import(client)

    assert response.status_code == 403
    assert nothing_imported()


@pytest.mark.parametrize(("segment", "missing"), SEGMENT_PERMISSION_CASES)
def test_admin_import_into_a_segment_needs_the_segment_permission(
    client, user_with_perms, segment, missing
):
    existing = SegmentFactory.create(name="Existing", kind=SegmentKind.STATIC, rules={})
    client.force_login(user_with_perms(*IMPORTER))

    page = admin_import(client, segment=segment)

    assert page.status_code == 200
    assert missing in page.content.decode()
    assert nothing_imported()
    assert existing.members.count() == 0


@pytest.mark.parametrize("missing", IMPORTER)
def test_admin_import_page_needs_the_profile_permissions(client, user_with_perms, missing):
    client.force_login(user_with_perms(*(set(IMPORTER) - {missing}), "segments.view_profile"))

    assert client.get(reverse("admin:segments_profile_import")).status_code == 403
    assert admin_import(client).status_code == 403
    assert nothing_imported()


# --- segment and profile pages ----------------------------------------------------------


def test_admin_segment_pages_follow_the_segment_permissions(client, user_with_perms):
    segment = SegmentFactory.create(name="French", rules=FRENCH)
    change = reverse("admin:segments_segment_change", args=[segment.pk])
    edit = {"name": "Renamed", "description": "", "kind": "rules", "rules": '{"all": []}'}
    client.force_login(user_with_perms("segments.view_segment"))

    assert client.get(reverse("admin:segments_segment_add")).status_code == 403
    assert client.post(change, edit).status_code == 403
    assert Segment.objects.get(pk=segment.pk).name == "French"

    client.force_login(user_with_perms("segments.view_profile"))
    assert client.get(change).status_code == 403
    assert client.get(reverse("admin:segments_segment_changelist")).status_code == 403


def test_api_freeze_needs_to_see_the_segment_and_add_one(api_client_for, user_with_perms, member):
    segment = SegmentFactory.create(name="French", rules=FRENCH)
    url = f"/api/segments/{segment.pk}/freeze/"

    for held in (["segments.add_segment"], ["segments.view_segment"]):
        response = api_client_for(user_with_perms(*held)).post(url, {"name": "Frozen"})
        assert response.status_code == 403

    assert list(Segment.objects.values_list("name", flat=True)) == ["French"]
    allowed = api_client_for(user_with_perms("segments.view_segment", "segments.add_segment"))
    assert allowed.post(url, {"name": "Frozen"}).status_code == 201


@pytest.mark.parametrize("base", ["/api/profiles/", "/api/segments/"])
def test_token_auth_reads_with_the_view_permission_only(api_client_for, user_with_perms, base):
    model = "profile" if "profiles" in base else "segment"
    viewer = api_client_for(user_with_perms(f"segments.view_{model}"))
    other = api_client_for(
        user_with_perms(
            *{"segments.view_profile", "segments.view_segment"} - {f"segments.view_{model}"}
        )
    )

    assert viewer.get(base).status_code == 200
    assert other.get(base).status_code == 403
    assert viewer.post(base, {"name": "x", "external_id": "x"}, format="json").status_code == 403
