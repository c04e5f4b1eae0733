import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from segments.models import Profile, Segment
from tests.segments.factories import ProfileFactory, SegmentFactory

pytestmark = pytest.mark.django_db

FRENCH = {"field": "attributes.country", "op": "eq", "value": "FR"}


def test_segment_page_shows_estimate_and_preview(admin_client):
    ProfileFactory.create(external_id="fr-1", attributes={"country": "FR"})
    ProfileFactory.create(external_id="fr-2", attributes={"country": "FR"})
    ProfileFactory.create(external_id="de-1", attributes={"country": "DE"})
    segment = SegmentFactory.create(rules=FRENCH)
    page = admin_client.get(reverse("admin:segments_segment_change", args=[segment.pk]))
    html = page.content.decode()
    assert page.status_code == 200
    assert "<strong>2</strong> profiles match now" in html
    assert "fr-1" in html
    assert "fr-2" in html
    assert "de-1" not in html


def test_segment_estimate_json_for_campaign_forms(admin_client):
    ProfileFactory.create(attributes={"country": "FR"})
    segment = SegmentFactory.create(rules=FRENCH)
    url = reverse("admin:segments_segment_estimate", args=[segment.pk])
    assert admin_client.get(url).json() == {"count": 1, "exact": True, "margin": 0}


def test_invalid_rules_give_a_form_error_with_the_node_path(admin_client):
    response = admin_client.post(
        reverse("admin:segments_segment_add"),
        {
            "name": "Bad",
            "description": "",
            "kind": "rules",
            "rules": '{"all": [{"field": "attributes.age", "op": "gtx", "value": 1}]}',
        },
    )
    assert response.status_code == 200
    assert "all[0].op: unknown operator &quot;gtx&quot;" in response.content.decode()
    assert not Segment.objects.exists()


def test_malformed_rule_json_is_a_form_error(admin_client):
    response = admin_client.post(
        reverse("admin:segments_segment_add"),
        {"name": "Bad", "description": "", "kind": "rules", "rules": "{oops"},
    )
    assert response.status_code == 200
    assert "Enter a valid JSON" in response.content.decode()
    assert not Segment.objects.exists()


def test_segment_add_through_the_admin(admin_client):
    response = admin_client.post(
        reverse("admin:segments_segment_add"),
        {"name": "French", "description": "", "kind": "rules", "rules": '{"all": []}'},
    )
    assert response.status_code == 302
    assert Segment.objects.get().rules == {"all": []}


def test_segment_search_for_autocomplete(admin_client):
    SegmentFactory.create(name="French adults")
    SegmentFactory.create(name="Germans")
    page = admin_client.get(reverse("admin:segments_segment_changelist"), {"q": "french"})
    assert "French adults" in page.content.decode()
    assert "Germans" not in page.content.decode()


def test_freeze_action(admin_client):
    ProfileFactory.create(attributes={"country": "FR"})
    segment = SegmentFactory.create(name="French", rules=FRENCH)
    response = admin_client.post(
        reverse("admin:segments_segment_changelist"),
        {"action": "freeze_selected", "_selected_action": [segment.pk]},
        follow=True,
    )
    assert "Froze “French” into" in response.content.decode()
    frozen = Segment.objects.exclude(pk=segment.pk).get()
    assert frozen.members.count() == 1


def test_profile_import_page_shows_the_summary(admin_client):
    changelist = admin_client.get(reverse("admin:segments_profile_changelist"))
    import_url = reverse("admin:segments_profile_import")
    assert import_url in changelist.content.decode()
    upload = SimpleUploadedFile(
        "people.csv", b"external_id,email\nu1,u1@example.com\nu2,nope\n", "text/csv"
    )
    page = admin_client.post(import_url, {"file": upload, "format": "", "segment": ""})
    html = page.content.decode()
    assert page.status_code == 200
    assert 'id="import-summary"' in html
    assert "<td>3</td><td>email: Enter a valid email address." in html
    assert list(Profile.objects.values_list("external_id", flat=True)) == ["u1"]


def test_profile_import_page_refuses_a_binary_file(admin_client):
    upload = SimpleUploadedFile("x.csv", b"\x00\x01\x02binary", "text/csv")
    page = admin_client.post(
        reverse("admin:segments_profile_import"), {"file": upload, "format": "csv"}
    )
    assert page.status_code == 200
    assert "binary file" in page.content.decode()
    assert not Profile.objects.exists()


def test_profile_admin_records_consent_changes(admin_client):
    profile = ProfileFactory.create(external_id="u1")
    url = reverse("admin:segments_profile_change", args=[profile.pk])
    response = admin_client.post(
        url,
        {
            "external_id": "u1",
            "email": profile.email,
            "phone": profile.phone,
            "push_token": "",
            "locale": "en",
            "time_zone": "Europe/Paris",
            "attributes": "{}",
            "consent_email": "on",
            "consent_push": "on",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    profile.refresh_from_db()
    assert profile.consent_sms is False
    assert profile.consent_sms_source == "admin"
    assert profile.consent_email_changed_at is None


def test_profile_admin_refuses_a_bad_phone(admin_client):
    response = admin_client.post(
        reverse("admin:segments_profile_add"),
        {"external_id": "u1", "phone": "12", "attributes": "{}", "email": ""},
    )
    assert response.status_code == 200
    assert "E.164" in response.content.decode()
    assert not Profile.objects.exists()


def test_profile_search(admin_client):
    ProfileFactory.create(external_id="alpha", email="alpha@example.com")
    ProfileFactory.create(external_id="beta", email="beta@example.com")
    page = admin_client.get(reverse("admin:segments_profile_changelist"), {"q": "alp"})
    assert "alpha@example.com" in page.content.decode()
    assert "beta@example.com" not in page.content.decode()
