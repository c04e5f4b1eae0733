"""The suppression list at every door: the admin (list, search, filters, add, delete,
import), the API (/api/suppressions/) and the `suppression` command, through the same
services with the same permissions; an import is written whole or not at all; an address
added by hand is skipped by the next campaign."""

from __future__ import annotations

import io
from collections.abc import Iterator
from io import StringIO
from pathlib import Path

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from campaigns.choices import DeliveryReason
from campaigns.models import Delivery
from channels import suppression
from channels.choices import SuppressionSource
from channels.models import Suppression
from devtools.sinks import RunningSinks, running_sinks
from tests.campaigns.delivery_support import drive, make_profile
from tests.campaigns.factories import email_action, make_live_campaign

pytestmark = pytest.mark.django_db

GOOD_CSV = (
    "channel,address,reason,detail\n"
    "email,Ana@Example.com,hard_bounce,from the old ESP\n"
    "sms,+33612345678,,\n"
    "email,ana@example.com,complaint,same address again\n"
)
BAD_CSV = (
    "channel,address,reason\n"
    "email,ok@example.com,manual\n"
    "email,not-an-address,manual\n"
    "fax,+3312,manual\n"
    "sms,+33612345678,angry\n"
)


@pytest.fixture
def sinks() -> Iterator[RunningSinks]:
    with running_sinks() as sink, override_settings(**sink.provider_settings()):
        yield sink


def listed() -> list[tuple[str, str, str, str]]:
    return sorted(Suppression.objects.values_list("channel", "address", "reason", "source"))


# --- the services ------------------------------------------------------------------------


def test_an_import_adds_every_row_once_and_keeps_entries_already_there(admin_user):
    suppression.suppression_add(
        user=admin_user, channel="sms", address="+33612345678", source=SuppressionSource.API
    )
    result = suppression.suppressions_import(
        user=admin_user, stream=io.BytesIO(GOOD_CSV.encode()), source=SuppressionSource.IMPORT
    )
    assert result.as_dict() == {"rows": 2, "added": 1, "already": 1}
    assert listed() == [
        ("email", "ana@example.com", "hard_bounce", "import"),
        ("sms", "+33612345678", "manual", "api"),
    ]


def test_an_import_with_a_wrong_line_writes_nothing_and_names_each_line(admin_user):
    with pytest.raises(ValidationError) as refused:
        suppression.suppressions_import(
            user=admin_user, stream=io.BytesIO(BAD_CSV.encode()), source=SuppressionSource.IMPORT
        )
    said = refused.value.messages
    assert said[0] == "Nothing was imported: 3 line(s) are wrong."
    assert said[1].startswith("line 3: address:")
    assert said[2].startswith("line 4: channel:")
    assert said[3].startswith("line 5: reason:")
    assert not Suppression.objects.exists()


def test_adding_and_removing_need_their_permissions(user_with_perms):
    viewer = user_with_perms("channels.view_suppression")
    with pytest.raises(PermissionDenied, match=r"channels\.add_suppression"):
        suppression.suppression_add(
            user=viewer, channel="email", address="a@example.com", source=SuppressionSource.API
        )
    with pytest.raises(PermissionDenied, match=r"channels\.add_suppression"):
        suppression.suppressions_import(
            user=viewer, stream=io.BytesIO(GOOD_CSV.encode()), source=SuppressionSource.IMPORT
        )
    entry = suppression.suppression_add(
        user=None, channel="email", address="a@example.com", source=SuppressionSource.COMMAND
    )
    with pytest.raises(PermissionDenied, match=r"channels\.delete_suppression"):
        suppression.suppressions_remove(user=viewer, suppressions=[entry])
    assert Suppression.objects.count() == 1


def test_an_address_added_by_hand_is_skipped_by_the_next_campaign(sinks, admin_user):
    kept, stopped = make_profile(), make_profile()
    suppression.suppression_add(
        user=admin_user,
        channel="email",
        address=stopped.email.upper(),
        source=SuppressionSource.ADMIN,
        detail="asked by phone",
    )
    campaign = make_live_campaign(actions=[email_action()])
    drive(campaign)
    reasons = dict(
        Delivery.objects.filter(execution__campaign=campaign).values_list("profile_id", "reason")
    )
    assert reasons == {kept.pk: "", stopped.pk: DeliveryReason.SUPPRESSED}
    assert [m["to"] for m in sinks.received("email")] == [kept.email]


# --- the API -----------------------------------------------------------------------------


def test_the_api_adds_lists_filters_and_deletes(api_client):
    created = api_client.post(
        "/api/suppressions/",
        {"channel": "email", "address": " Bob@Example.com ", "detail": "asked us"},
        format="json",
    )
    assert created.status_code == 201, created.content
    body = created.json()
    assert {k: body[k] for k in ("channel", "address", "reason", "source", "detail")} == {
        "channel": "email",
        "address": "bob@example.com",
        "reason": "manual",
        "source": "api",
        "detail": "asked us",
    }
    assert "created_at" in body
    api_client.post(
        "/api/suppressions/",
        {"channel": "sms", "address": "+33612345678", "reason": "invalid_address"},
        format="json",
    )
    by_reason = api_client.get("/api/suppressions/?reason=invalid_address").json()
    assert [row["address"] for row in by_reason["results"]] == ["+33612345678"]
    by_address = api_client.get("/api/suppressions/?address=BOB@example.com").json()
    assert [row["id"] for row in by_address["results"]] == [body["id"]]
    assert api_client.get("/api/suppressions/?reason=angry").status_code == 400

    assert api_client.get(f"/api/suppressions/{body['id']}/").json()["address"] == "bob@example.com"
    assert api_client.delete(f"/api/suppressions/{body['id']}/").status_code == 204
    assert listed() == [("sms", "+33612345678", "invalid_address", "api")]


def test_the_api_answers_400_for_bad_input_and_409_for_an_address_listed_already(api_client):
    bad = api_client.post(
        "/api/suppressions/", {"channel": "email", "address": "nope"}, format="json"
    )
    assert bad.status_code == 400
    assert "address" in bad.json()
    webhook = api_client.post(
        "/api/suppressions/", {"channel": "webhook", "address": "https://x.test"}, format="json"
    )
    assert webhook.status_code == 400
    assert "channel" in webhook.json()
    first = {"channel": "email", "address": "ann@example.com"}
    assert api_client.post("/api/suppressions/", first, format="json").status_code == 201
    again = api_client.post(
        "/api/suppressions/", {**first, "address": "ANN@example.com"}, format="json"
    )
    assert again.status_code == 409
    assert "already" in again.json()["detail"]
    assert Suppression.objects.count() == 1


def test_the_api_needs_the_models_permissions(user_with_perms, api_client_for):
    viewer = api_client_for(user_with_perms("channels.view_suppression"))
    assert viewer.get("/api/suppressions/").status_code == 200
    refused = viewer.post(
        "/api/suppressions/", {"channel": "email", "address": "a@example.com"}, format="json"
    )
    assert refused.status_code == 403
    nobody = api_client_for(user_with_perms())
    assert nobody.get("/api/suppressions/").status_code == 403


# --- the admin ---------------------------------------------------------------------------


def test_the_admin_lists_searches_filters_adds_and_deletes(admin_client):
    suppression.suppression_add(
        user=None, channel="email", address="zed@example.com", source=SuppressionSource.API
    )
    added = admin_client.post(
        "/admin/channels/suppression/add/",
        {"channel": "email", "address": "Eve@Example.com", "reason": "complaint", "detail": "x"},
    )
    assert added.status_code == 302
    entry = Suppression.objects.get(address="eve@example.com")
    assert (entry.reason, entry.source, entry.created_by.username) == (
        "complaint",
        "admin",
        "admin",
    )

    again = admin_client.post(
        "/admin/channels/suppression/add/",
        {"channel": "email", "address": "EVE@example.com", "reason": "manual"},
    )
    assert again.status_code == 200
    assert "on this channel&#x27;s list already" in again.content.decode()
    bad = admin_client.post(
        "/admin/channels/suppression/add/",
        {"channel": "email", "address": "eve", "reason": "manual"},
    )
    assert "is not an email address" in bad.content.decode()

    found = admin_client.get("/admin/channels/suppression/?q=eve").content.decode()
    assert "eve@example.com" in found
    assert "zed@example.com" not in found
    by_source = admin_client.get("/admin/channels/suppression/?source__exact=api").content.decode()
    assert "zed@example.com" in by_source
    assert "eve@example.com" not in by_source

    deleted = admin_client.post(f"/admin/channels/suppression/{entry.pk}/delete/", {"post": "yes"})
    assert deleted.status_code == 302
    assert listed() == [("email", "zed@example.com", "manual", "api")]


def test_the_admin_imports_a_file_or_lists_the_lines_at_fault(admin_client):
    page = admin_client.get("/admin/channels/suppression/import/")
    assert page.status_code == 200
    bad = admin_client.post(
        "/admin/channels/suppression/import/",
        {"file": SimpleUploadedFile("list.csv", BAD_CSV.encode())},
    )
    text = bad.content.decode()
    assert "Nothing was imported: 3 line(s) are wrong." in text
    assert "line 4: channel:" in text
    assert not Suppression.objects.exists()
    good = admin_client.post(
        "/admin/channels/suppression/import/",
        {"file": SimpleUploadedFile("list.csv", GOOD_CSV.encode())},
    )
    assert 'data-figure="added">2<' in good.content.decode()
    assert listed() == [
        ("email", "ana@example.com", "hard_bounce", "import"),
        ("sms", "+33612345678", "manual", "import"),
    ]


# --- the command -------------------------------------------------------------------------


def run(*args: str) -> str:
    out = StringIO()
    call_command("suppression", *args, stdout=out)
    return out.getvalue()


def test_the_command_adds_lists_removes_and_imports(tmp_path: Path):
    assert run("add", "email", "Cy@Example.com", "--detail", "by ticket 12") == (
        "Suppressed cy@example.com on Email.\n"
    )
    csv_file = tmp_path / "list.csv"
    csv_file.write_text(GOOD_CSV)
    assert run("import", str(csv_file)) == (
        "Imported list.csv: 2 rows, 2 added, 0 on the list already.\n"
    )
    lines = run("list", "--channel", "email").splitlines()
    assert sorted(line.split()[1] for line in lines) == ["ana@example.com", "cy@example.com"]
    assert '"source": "command"' in run("list", "--address", "CY@example.com", "--json")
    assert run("remove", "email", "CY@example.com") == (
        "Removed cy@example.com from the email suppression list.\n"
    )
    assert [row[1] for row in listed()] == ["ana@example.com", "+33612345678"]


def test_the_command_says_why_in_one_line_and_fails(tmp_path: Path, user_with_perms):
    run("add", "email", "dee@example.com")
    with pytest.raises(CommandError, match="already on the Email suppression list"):
        run("add", "email", "DEE@example.com")
    with pytest.raises(CommandError, match="is not an email address"):
        run("add", "email", "dee")
    with pytest.raises(CommandError, match="not on the sms suppression list"):
        run("remove", "sms", "+100")
    bad = tmp_path / "bad.csv"
    bad.write_text(BAD_CSV)
    with pytest.raises(CommandError, match=r"Nothing was imported: 3 line.* line 3: address"):
        run("import", str(bad))
    with pytest.raises(CommandError, match="Cannot read"):
        run("import", str(tmp_path / "missing.csv"))
    viewer = user_with_perms("channels.view_suppression", username="viewer")
    with pytest.raises(CommandError, match=r"channels\.delete_suppression"):
        run("remove", "email", "dee@example.com", "--user", viewer.username)
    assert listed() == [("email", "dee@example.com", "manual", "command")]
