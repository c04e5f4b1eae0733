"""Limits on a profile's data, the same at every door: the REST API (and its JSON parser),
the admin form, imports, and the profile services themselves.

Every expectation here is built from the limits in settings and from the input, not from
the code under test.
"""

import io
import json

import pytest
from django.conf import settings
from django.core.exceptions import ValidationError
from django.test import override_settings
from django.urls import reverse

from campaigns import delivery
from campaigns.models import Execution
from devtools.sinks import running_sinks
from segments import services
from segments.imports import ImportRefused
from segments.models import Profile
from tests.campaigns.factories import email_action, make_live_campaign
from tests.channels.factories import MessagePresetFactory
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


def run_import(text: str, **kwargs):
    return services.profiles_import(user=None, stream=io.BytesIO(text.encode()), **kwargs)


# --- attributes: API ----------------------------------------------------------------------


def test_api_accepts_attributes_at_the_limits(api_client):
    at_limit = {**nested(MAX_DEPTH), "k" * MAX_KEY: "v"}
    response = api_client.post(
        "/api/profiles/", {"external_id": "u1", "attributes": at_limit}, format="json"
    )
    assert response.status_code == 201, response.json()
    assert Profile.objects.get().attributes == at_limit


@pytest.mark.parametrize("method", ["post", "patch"])
def test_api_refuses_attributes_nested_deeper_than_the_limit_with_the_path(api_client, method):
    profile = ProfileFactory.create(external_id="u1", attributes={"kept": True})
    body = {"external_id": "u2", "attributes": nested(MAX_DEPTH + 1)}
    if method == "post":
        response = api_client.post("/api/profiles/", body, format="json")
    else:
        response = api_client.patch(f"/api/profiles/{profile.pk}/", body, format="json")
    assert response.status_code == 400
    assert response.json() == {
        "attributes": [f"{deep_path(MAX_DEPTH + 1)}: nested deeper than {MAX_DEPTH} levels."]
    }
    assert list(Profile.objects.values_list("external_id", "attributes")) == [
        ("u1", {"kept": True})
    ]


def test_api_refuses_a_long_key_and_large_attributes(api_client):
    long_key = "k" * (MAX_KEY + 1)
    response = api_client.post(
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
    response = api_client.post(
        "/api/profiles/", {"external_id": "u1", "attributes": big}, format="json"
    )
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
def test_api_refuses_attribute_text_no_database_stores(api_client, attributes, message):
    body = '{"external_id": "u1", "attributes": ' + json.dumps(attributes) + "}"
    response = api_client.post("/api/profiles/", body, content_type="application/json")
    assert response.status_code == 400
    assert response.json() == {"attributes": [message]}
    assert not Profile.objects.exists()


def test_api_form_input_nested_too_deep_is_a_400(api_client):
    # A multipart body carries attributes as JSON text, which the field itself parses.
    response = api_client.post(
        "/api/profiles/", {"external_id": "u1", "attributes": nested_text(50_000)}
    )
    assert response.status_code == 400
    assert response.json() == {
        "attributes": [f"Enter valid JSON nested at most {JSON_MAX_DEPTH} levels deep."]
    }
    assert not Profile.objects.exists()


def test_segment_rules_sent_as_form_text_nested_too_deep_are_a_400(api_client):
    response = api_client.post("/api/segments/", {"name": "Deep", "rules": nested_text(50_000)})
    assert response.status_code == 400
    assert response.json() == {
        "rules": [f"Enter valid JSON nested at most {JSON_MAX_DEPTH} levels deep."]
    }


# --- request bodies under /api/ -----------------------------------------------------------


@pytest.mark.parametrize("depth", [JSON_MAX_DEPTH + 1, 1_000, 100_000])
def test_a_json_body_nested_too_deep_is_a_json_400(api_client, depth):
    body = '{"external_id": "u1", "attributes": {"a": ' + nested_text(depth - 2) + "}}"
    response = api_client.post("/api/profiles/", body, content_type="application/json")
    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    assert response.json() == {
        "detail": f"JSON parse error - nested deeper than {JSON_MAX_DEPTH} levels"
    }
    assert not Profile.objects.exists()


def test_a_json_body_at_the_depth_limit_is_parsed(api_client):
    # Parsed, then refused by the attributes limit: the parser let it through.
    body = '{"external_id": "u1", "attributes": {"a": ' + nested_text(JSON_MAX_DEPTH - 2) + "}}"
    response = api_client.post("/api/profiles/", body, content_type="application/json")
    assert response.status_code == 400
    assert "nested deeper than" in response.json()["attributes"][0]


def test_a_body_over_the_upload_limit_is_a_json_413(api_client):
    body = json.dumps({"external_id": "u1", "attributes": {"note": "x" * 2000}})
    with override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=1000):
        response = api_client.post("/api/profiles/", body, content_type="application/json")
    assert response.status_code == 413
    assert response["Content-Type"] == "application/json"
    assert response.json() == {
        "detail": "The request body is larger than the limit of 1,000 bytes "
        "(DATA_UPLOAD_MAX_MEMORY_SIZE)."
    }
    assert not Profile.objects.exists()


def test_too_many_form_fields_is_a_json_400(api_client):
    fields = {f"f{i}": "x" for i in range(20)}
    with override_settings(DATA_UPLOAD_MAX_NUMBER_FIELDS=10):
        response = api_client.post("/api/profiles/", {"external_id": "u1", **fields})
    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    assert response.json() == {
        "detail": "The request has more than 10 form fields (DATA_UPLOAD_MAX_NUMBER_FIELDS)."
    }


def test_an_unknown_api_path_is_a_json_404(api_client):
    response = api_client.get("/api/no-such-thing/")
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


def admin_add(admin_client, **fields):
    data = {"external_id": "u1", "email": "", "phone": "", "attributes": "{}", **fields}
    return admin_client.post(reverse("admin:segments_profile_add"), data)


def test_admin_form_refuses_attributes_over_the_limits_on_the_field(admin_client):
    response = admin_add(admin_client, attributes=json.dumps(nested(MAX_DEPTH + 1)))
    assert response.status_code == 200
    assert response.context["adminform"].form.errors == {
        "attributes": [f"{deep_path(MAX_DEPTH + 1)}: nested deeper than {MAX_DEPTH} levels."]
    }
    # Too deep for any parser: still an error on the field, never a server error.
    response = admin_add(admin_client, attributes='{"a": ' + nested_text(50_000) + "}")
    assert response.status_code == 200
    assert response.context["adminform"].form.errors == {
        "attributes": [f"Enter valid JSON nested at most {JSON_MAX_DEPTH} levels deep."]
    }
    assert not Profile.objects.exists()


# --- attributes: imports ----------------------------------------------------------------------


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 500, 100_000])
def test_a_jsonl_row_nested_too_deep_is_rejected_alone(depth):
    deep = '{"external_id": "deep", "attributes": {"a": ' + nested_text(depth - 1) + "}}"
    text = '{"external_id": "ok1"}\n' + deep + '\n{"external_id": "ok2"}\n'
    summary = run_import(text, format="jsonl")
    assert (summary.created, summary.updated, summary.rejected) == (2, 0, 1)
    [rejection] = summary.rejections
    assert rejection.line == 2
    assert "nested deeper than" in rejection.reason
    assert sorted(Profile.objects.values_list("external_id", flat=True)) == ["ok1", "ok2"]


def test_jsonl_rows_over_the_other_limits_are_rejected_with_the_reason():
    big = {"a": "x" * MAX_BYTES}
    lines = [
        json.dumps({"external_id": "ok1", "attributes": nested(MAX_DEPTH)}),
        json.dumps({"external_id": "key", "attributes": {"k" * (MAX_KEY + 1): 1}}),
        json.dumps({"external_id": "big", "attributes": big}),
        json.dumps({"external_id": "nul", "attributes": {"a": "\u0000"}}),
        json.dumps({"external_id": "ok2", "attributes": {"k" * MAX_KEY: 1}}),
    ]
    summary = run_import("\n".join(lines) + "\n", format="jsonl")
    assert (summary.created, summary.rejected) == (2, 3)
    size = len(json.dumps(big, separators=(",", ":")))
    assert [(r.line, r.reason) for r in summary.rejections] == [
        (2, f"attributes: the key “{'k' * 40}…” is longer than {MAX_KEY} characters."),
        (3, f"attributes: {size:,} bytes as JSON; the limit is {MAX_BYTES:,}."),
        (4, "attributes.a: text cannot hold the NUL character (\\u0000)."),
    ]
    assert sorted(Profile.objects.values_list("external_id", flat=True)) == ["ok1", "ok2"]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"external_id": "a\\ud800"}', "external_id: “\\ud800” at position 2"),
        ('{"external_id": "x", "locale": "fr\\u0000"}', "locale: text cannot hold the NUL"),
        ('{"external_id": "y", "push_token": "\\udfff"}', "push_token: text holds a lone"),
    ],
)
def test_a_jsonl_row_with_text_no_database_stores_is_rejected(line, reason):
    summary = run_import('{"external_id": "ok"}\n' + line + "\n", format="jsonl")
    assert [r.line for r in summary.rejections] == [2]
    assert summary.rejections[0].reason.startswith(reason)
    assert list(Profile.objects.values_list("external_id", flat=True)) == ["ok"]


def test_a_csv_attribute_column_with_a_key_over_the_limit_refuses_the_file():
    with pytest.raises(ImportRefused) as error:
        run_import(f"external_id,{'k' * (MAX_KEY + 1)}\nu1,1\n", format="csv")
    assert error.value.messages == [
        f"Column “{'k' * 40}…”: attribute keys are at most {MAX_KEY} characters."
    ]
    assert not Profile.objects.exists()


@pytest.mark.parametrize("path", ["batch", "row by row"])
def test_a_csv_row_over_the_size_limit_is_rejected_with_its_line(path):
    # The row-by-row path: every external id named twice, so no row goes in a batch.
    ids = ["u1", "u2", "u3"] if path == "batch" else ["u1", "u1", "u2"]
    over = "x" * (MAX_BYTES - len('{"note":""}') + 1)
    text = f"external_id,note\n{ids[0]},a\n{ids[1]},{over}\n{ids[2]},{over[1:]}\n"
    summary = run_import(text, format="csv")
    assert [(r.line, r.reason) for r in summary.rejections] == [
        (3, f"attributes: {MAX_BYTES + 1:,} bytes as JSON; the limit is {MAX_BYTES:,}.")
    ]
    assert summary.rows == 3
    stored = dict(Profile.objects.values_list("external_id", "attributes"))
    assert stored[ids[2]] == {"note": over[1:]}


@pytest.mark.parametrize("file", ["csv, batch", "csv, row by row", "jsonl"])
def test_an_import_row_that_would_grow_stored_attributes_over_the_limit_is_rejected(file):
    # 20 bytes under the limit; a "note" member of 11 characters adds 21.
    stored = {"old": "x" * (MAX_BYTES - len('{"old":""}') - 20)}
    for external_id in ("u1", "u2"):
        services.profile_create(data={"external_id": external_id, "attributes": stored})
    note = "y" * 11
    if file == "jsonl":
        text = "\n".join(
            json.dumps({"external_id": external_id, "attributes": attributes})
            for external_id, attributes in [
                ("u3", {"old": "z", "note": note}),
                ("u1", {"note": note}),  # over once merged
                ("u2", {"old": "short", "note": note}),  # replaces "old": well under
            ]
        )
    else:
        text = f"external_id,old,note\nu3,z,{note}\nu1,,{note}\nu2,short,{note}\n"
        if file == "csv, row by row":
            text += "u1,,\n"  # u1 again: its rows are merged, then written or refused as one

    summary = run_import(text, format="jsonl" if file == "jsonl" else "csv")

    rejected_line = {"csv, batch": 3, "csv, row by row": 5, "jsonl": 2}[file]
    assert [(r.line, r.reason) for r in summary.rejections] == [
        (
            rejected_line,
            f"attributes: {MAX_BYTES + 1:,} bytes as JSON once merged into the stored ones; "
            f"the limit is {MAX_BYTES:,}.",
        )
    ]
    u1_rows = 2 if file == "csv, row by row" else 1
    assert (summary.created, summary.updated, summary.rejected) == (1, 1, u1_rows)
    lines = text.count("\n") + (not text.endswith("\n"))
    assert summary.rows == lines - (file != "jsonl")  # every line but the CSV header
    stored_now = dict(Profile.objects.values_list("external_id", "attributes"))
    assert stored_now == {
        "u1": stored,
        "u2": {"old": "short", "note": note},
        "u3": {"old": "z", "note": note},
    }


@pytest.mark.parametrize("file", ["csv", "jsonl"])
def test_a_profile_stored_over_the_size_limit_still_takes_rows_without_attributes(file):
    # Stored before the limit (the factory writes the row as it is).
    legacy = {"old": "x" * MAX_BYTES}
    ProfileFactory.create(external_id="legacy", email="old@example.com", attributes=legacy)
    if file == "csv":
        text = "external_id,email\nlegacy,new@example.com\n"
    else:
        text = json.dumps({"external_id": "legacy", "email": "new@example.com"}) + "\n"
    summary = run_import(text, format=file)
    assert (summary.updated, summary.rejected) == (1, 0)
    assert Profile.objects.values_list("email", "attributes").get() == ("new@example.com", legacy)


# --- external_id ----------------------------------------------------------------------------

UNSAFE_IDS = ["a\r\nb", "a\nb", "a\tb", "a\x00b", "a\x1bb", "a\x7fb", "a\x85b", "a>b", "<ab"]


@pytest.mark.parametrize("external_id", UNSAFE_IDS)
def test_api_refuses_an_external_id_that_breaks_headers(api_client, external_id):
    body = json.dumps({"external_id": external_id})
    response = api_client.post("/api/profiles/", body, content_type="application/json")
    assert response.status_code == 400
    # (DRF's own check words a NUL its own way.)
    assert list(response.json()) == ["external_id"]
    assert not Profile.objects.exists()


def test_api_patch_refuses_an_unsafe_external_id(api_client):
    profile = ProfileFactory.create(external_id="u1")
    response = api_client.patch(
        f"/api/profiles/{profile.pk}/", {"external_id": "u1>"}, format="json"
    )
    assert response.status_code == 400
    assert "external_id" in response.json()
    profile.refresh_from_db()
    assert profile.external_id == "u1"


def test_services_and_admin_refuse_an_unsafe_external_id(admin_client):
    with pytest.raises(ValidationError) as error:
        services.profile_create(data={"external_id": "x>y"})
    assert list(error.value.message_dict) == ["external_id"]
    response = admin_add(admin_client, external_id="a<b")
    assert response.status_code == 200
    assert list(response.context["adminform"].form.errors) == ["external_id"]
    assert not Profile.objects.exists()


@pytest.mark.parametrize("reader", ["split lines", "csv module"])
@pytest.mark.parametrize("path", ["batch", "row by row"])
def test_csv_rows_with_an_unsafe_external_id_are_rejected_with_their_line(path, reader):
    lines = ["external_id,plan", "ok1,free", "a>b,free", "a\tb,free", "a\x1bb,free"]
    lines += ["a\x85b,free", "<x,free", "ok2,pro"]
    rejected = [3, 4, 5, 6, 7]
    if reader == "csv module":
        # A quoted cell sends the whole (one-block) file through the csv module.
        lines.append('"a\r\nb",free')
        rejected.append(len(lines))
    if path == "row by row":
        lines.append("ok1,")
    summary = run_import("\n".join(lines) + "\n", format="csv")
    assert [r.line for r in summary.rejections] == rejected
    assert all(r.reason.startswith("external_id:") for r in summary.rejections)
    assert sorted(Profile.objects.values_list("external_id", flat=True)) == ["ok1", "ok2"]


def test_jsonl_rows_with_an_unsafe_external_id_are_rejected_with_their_line():
    lines = [json.dumps({"external_id": value}) for value in ["ok1", *UNSAFE_IDS, "ok2"]]
    summary = run_import("\n".join(lines) + "\n", format="jsonl")
    assert [r.line for r in summary.rejections] == list(range(2, 2 + len(UNSAFE_IDS)))
    assert sorted(Profile.objects.values_list("external_id", flat=True)) == ["ok1", "ok2"]


def test_the_unsubscribe_header_carries_a_stored_unsafe_external_id_encoded():
    # Stored before ids were checked (the factory writes the row as it is).
    external_id = "a>, <https://evil.example/x?\r\nBcc: v@example.com"
    ProfileFactory.create(external_id=external_id, email="reader@example.com")
    preset = MessagePresetFactory(channel="email", reply_to="help@example.com")
    campaign = make_live_campaign(actions=[email_action(preset=preset)])  # marketing
    execution = Execution.objects.get(campaign=campaign)
    with running_sinks() as sink, override_settings(**sink.provider_settings()):  # SMTP
        while delivery.execution_plan_step(execution_id=execution.pk):
            pass
        execution.refresh_from_db()
        delivery.batch_send(
            execution_id=execution.pk,
            action_id=execution.version.actions.get().pk,
            first_profile_id=0,
            last_profile_id=execution.audience_max_profile_id,
        )
        [email] = sink.received("email")

    # One mailto URI, the id percent-encoded inside it (RFC 6068), no header of its own.
    # (The long value is folded onto its own line: unfolded, it starts with a space.)
    assert email["headers"]["List-Unsubscribe"].strip() == (
        "<mailto:help@example.com?subject=unsubscribe%20"
        "a%3E%2C%20%3Chttps%3A%2F%2Fevil.example%2Fx%3F%0D%0ABcc%3A%20v%40example.com>"
    )
    assert "Bcc" not in email["headers"]
