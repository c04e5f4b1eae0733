"""Proofs: every action of the draft sent for real to the test profiles, through the
presets' providers (here the local sinks), recorded apart from deliveries, at the service,
the API, the command and the admin."""

from __future__ import annotations

import json
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from campaigns import proofs
from campaigns.choices import ProofStatus
from campaigns.models import Delivery, Execution, ProofSend
from campaigns.proofs import campaign_proof_request, proof_sends_send
from campaigns.selectors import campaign_report
from tests.campaigns.doors import change_url
from tests.campaigns.factories import email_action, make_campaign, push_action, sms_action
from tests.segments.factories import ProfileFactory

pytestmark = pytest.mark.django_db

PROOF_PERMS = ("campaigns.view_campaign", "campaigns.send_proof")


def proof_campaign(**fields: Any) -> Any:
    return make_campaign(
        actions=[
            email_action(subject="Hi {{ profile.external_id }}", body="Dear {{ profile.email }}"),
            sms_action(body="Hi {{ profile.external_id }}"),
            push_action(subject="Deal", body="Open it"),
        ],
        **fields,
    )


def request_and_send(campaign: Any, capture: Any, **kwargs: Any) -> list[ProofSend]:
    """Ask for a proof, then send it as the task would (in this process)."""
    with capture(execute=False) as queued:
        sends = campaign_proof_request(campaign=campaign, user=None, **kwargs)
    assert len(queued) == 1  # one task, queued once the request commits
    proof_sends_send(proof_ids=[send.pk for send in sends])
    return list(ProofSend.objects.filter(pk__in=[s.pk for s in sends]).order_by("pk"))


def test_a_proof_sends_each_action_to_each_test_profile_with_proof_subjects(
    local_sinks: Any, django_capture_on_commit_callbacks: Any
) -> None:
    ann: Any = ProfileFactory(external_id="ann", is_test=True)
    bob = ProfileFactory(external_id="bob", is_test=True)
    ProfileFactory(external_id="customer")  # not a test profile: never gets a proof
    campaign = proof_campaign()

    sends = request_and_send(campaign, django_capture_on_commit_callbacks)

    assert [(s.action.channel, s.profile.external_id, s.status) for s in sends] == [
        (channel, who, ProofStatus.SENT)
        for channel in ("email", "sms", "push")
        for who in ("ann", "bob")
    ]
    assert all(send.provider_message_id and not send.error for send in sends)
    emails = local_sinks.wait_for(2, channel="email")
    assert sorted((e["to"], e["headers"]["Subject"]) for e in emails) == [
        (ann.email, "[Proof] Hi ann"),
        (bob.email, "[Proof] Hi bob"),
    ]
    sms = local_sinks.wait_for(2, channel="sms")
    # An SMS has no subject: it goes as the recipients will get it.
    assert sorted((m["to"], m["json"]["text"]) for m in sms) == [
        (ann.phone, "Hi ann"),
        (bob.phone, "Hi bob"),
    ]
    push = local_sinks.wait_for(2, channel="push")
    assert {m["json"]["title"] for m in push} == {"[Proof] Deal"}
    # Recorded apart: no execution, no delivery, nothing in the report.
    assert not Execution.objects.exists()
    assert not Delivery.objects.exists()
    assert campaign_report(campaign=campaign)["total"] == 0


def test_a_proof_carries_no_delivery_id_of_a_real_send(
    local_sinks: Any, django_capture_on_commit_callbacks: Any
) -> None:
    ProfileFactory(is_test=True)
    sends = request_and_send(
        make_campaign(actions=[sms_action()]), django_capture_on_commit_callbacks
    )
    # Negative: an idempotent provider never takes a later real delivery for a repeat.
    assert [m["delivery_id"] for m in local_sinks.wait_for(1, channel="sms")] == [str(-sends[0].pk)]


def test_a_proof_names_why_a_test_profile_could_not_get_a_channel(
    local_sinks: Any, django_capture_on_commit_callbacks: Any
) -> None:
    ProfileFactory(external_id="no-phone", phone="", is_test=True)
    sends = request_and_send(
        make_campaign(actions=[sms_action()]), django_capture_on_commit_callbacks
    )
    assert [(s.status, s.error) for s in sends] == [(ProofStatus.SKIPPED, "No SMS address.")]
    assert local_sinks.received() == []


def test_a_provider_refusal_is_recorded_as_failed(
    refusing_sinks: Any, django_capture_on_commit_callbacks: Any
) -> None:
    ProfileFactory(email="invalid@example.com", is_test=True)
    sends = request_and_send(
        make_campaign(actions=[email_action()]), django_capture_on_commit_callbacks
    )
    assert sends[0].status == ProofStatus.FAILED
    assert "invalid@example.com" in sends[0].error


def test_a_proof_can_be_narrowed_to_named_test_profiles(
    local_sinks: Any, django_capture_on_commit_callbacks: Any
) -> None:
    ann: Any = ProfileFactory(external_id="ann", is_test=True)
    ProfileFactory(external_id="bob", is_test=True)
    campaign = make_campaign(actions=[email_action()])
    by_id = request_and_send(campaign, django_capture_on_commit_callbacks, profiles=[ann.pk])
    by_external = request_and_send(
        campaign, django_capture_on_commit_callbacks, external_ids=["bob"]
    )
    assert [s.profile.external_id for s in by_id + by_external] == ["ann", "bob"]


@pytest.mark.parametrize(
    ("setup", "kwargs", "field", "words"),
    [
        ("none", {}, "profiles", "No test profile to send a proof to"),
        ("one", {"external_ids": ["customer"]}, "external_ids", "Not a test profile: customer"),
        ("one", {"profiles": [10**9]}, "profiles", "Not a test profile: 1000000000"),
        ("three", {}, "profiles", "at most 2 test profiles (SALVO_PROOF_MAX_RECIPIENTS); 3"),
        (
            "three",
            {"external_ids": ["t0", "t1", "t2"]},
            "profiles",
            "at most 2 test profiles (SALVO_PROOF_MAX_RECIPIENTS); 3",
        ),
    ],
)
@override_settings(SALVO_PROOF_MAX_RECIPIENTS=2)
def test_a_proof_is_refused_with_the_reason(
    setup: str, kwargs: dict[str, Any], field: str, words: str
) -> None:
    ProfileFactory(external_id="customer")
    for n in range({"none": 0, "one": 1, "three": 3}[setup]):
        ProfileFactory(external_id=f"t{n}", is_test=True)
    campaign = make_campaign()
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError) as refused:
        campaign_proof_request(campaign=campaign, user=None, **kwargs)
    assert words in " ".join(refused.value.message_dict[field])
    assert not ProofSend.objects.exists()


def test_a_proof_needs_the_send_proof_permission(user_with_perms: Any) -> None:
    from django.core.exceptions import PermissionDenied

    ProfileFactory(is_test=True)
    viewer = user_with_perms("campaigns.view_campaign")
    with pytest.raises(PermissionDenied, match=r"campaigns\.send_proof"):
        campaign_proof_request(campaign=make_campaign(), user=viewer)
    assert not ProofSend.objects.exists()


# --- the API ---------------------------------------------------------------------------


def proof_url(campaign: Any) -> str:
    return f"/api/campaigns/{campaign.pk}/proof/"


def test_api_post_proof_answers_202_with_the_pending_sends(
    api_client: Any, django_capture_on_commit_callbacks: Any
) -> None:
    ann: Any = ProfileFactory(external_id="ann", is_test=True)
    ProfileFactory(external_id="bob", is_test=True)
    campaign = make_campaign(actions=[email_action(), sms_action()])
    with django_capture_on_commit_callbacks(execute=False) as queued:
        response = api_client.post(proof_url(campaign), {"profiles": [ann.pk]}, format="json")
    assert response.status_code == 202, response.content
    assert len(queued) == 1
    body = response.json()
    assert [(row["channel"], row["external_id"], row["status"]) for row in body] == [
        ("email", "ann", "pending"),
        ("sms", "ann", "pending"),
    ]
    assert body[0]["version"] == 1
    assert body[0]["requested_by"] == api_client.user.username

    listed = api_client.get(f"/api/campaigns/{campaign.pk}/proofs/")
    assert listed.status_code == 200
    assert sorted(row["id"] for row in listed.json()["results"]) == sorted(r["id"] for r in body)


@override_settings(SALVO_PROOF_MAX_RECIPIENTS=1)
def test_api_refuses_a_proof_past_the_limit_with_a_400(api_client: Any) -> None:
    ProfileFactory.create_batch(2, is_test=True)
    response = api_client.post(proof_url(make_campaign()), {}, format="json")
    assert response.status_code == 400
    body = response.json()
    # Keyed by the field, as every refused field is (config/api.py).
    assert "SALVO_PROOF_MAX_RECIPIENTS" in " ".join(body["profiles"])
    assert not ProofSend.objects.exists()


def test_api_refuses_a_proof_to_a_user_without_the_permission(
    api_client_for: Any, user_with_perms: Any
) -> None:
    ProfileFactory(is_test=True)
    campaign = make_campaign()
    client = api_client_for(user_with_perms("campaigns.view_campaign"))
    assert client.post(proof_url(campaign), {}, format="json").status_code == 403
    # Seeing the campaign is enough to see its proofs.
    assert client.get(f"/api/campaigns/{campaign.pk}/proofs/").status_code == 200
    marketer = api_client_for(user_with_perms(*PROOF_PERMS))
    assert marketer.post(proof_url(campaign), {}, format="json").status_code == 202


# --- the command -----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_command_proof_wait_prints_each_outcome(local_sinks: Any, monkeypatch: Any) -> None:
    from config.celery import app as celery_app

    # The task runs here as the request commits, as a worker would run it then.
    monkeypatch.setitem(celery_app.conf, "task_always_eager", True)
    ProfileFactory(external_id="ann", is_test=True)
    campaign = make_campaign(actions=[email_action(subject="Hello")])
    out = StringIO()
    call_command("campaign", "proof", str(campaign.pk), "--wait", "30", stdout=out)
    text = out.getvalue()
    assert f"Campaign {campaign.pk} “{campaign.name}”: proof of version 1 sent to 1 test" in text
    assert "Email → ann: Sent (" in text
    assert local_sinks.wait_for(1, channel="email")[0]["headers"]["Subject"] == "[Proof] Hello"


def test_command_proof_json_lists_the_queued_sends(
    django_capture_on_commit_callbacks: Any,
) -> None:
    ProfileFactory(external_id="ann", is_test=True)
    ProfileFactory(external_id="bob", is_test=True)
    campaign = make_campaign(actions=[sms_action()])
    out = StringIO()
    with django_capture_on_commit_callbacks(execute=False):
        call_command(
            "campaign", "proof", str(campaign.pk), "--profile", "bob", "--json", stdout=out
        )
    rows = json.loads(out.getvalue())
    assert [(r["external_id"], r["status"]) for r in rows] == [("bob", "pending")]


@override_settings(SALVO_PROOF_MAX_RECIPIENTS=1)
def test_command_refuses_a_proof_past_the_limit_in_one_line() -> None:
    ProfileFactory.create_batch(2, is_test=True)
    with pytest.raises(CommandError, match="at most 1 test profiles") as refused:
        call_command("campaign", "proof", str(make_campaign().pk), stdout=StringIO())
    assert "\n" not in str(refused.value)


def test_command_proof_wait_fails_when_no_worker_sends_it(
    django_capture_on_commit_callbacks: Any,
) -> None:
    ProfileFactory(is_test=True)
    with (
        django_capture_on_commit_callbacks(execute=False),
        pytest.raises(CommandError, match=r"still being sent after 0\.3s"),
    ):
        call_command("campaign", "proof", str(make_campaign().pk), "--wait", "0.3")


# --- the admin -------------------------------------------------------------------------


def proof_admin_url(campaign: Any) -> str:
    return f"/admin/campaigns/campaign/{campaign.pk}/proof/"


def test_admin_send_proof_button_queues_the_proof_and_says_so(
    admin_client: Any, django_capture_on_commit_callbacks: Any
) -> None:
    ProfileFactory(external_id="ann", is_test=True)
    campaign = make_campaign(actions=[email_action()])
    page = admin_client.get(change_url(campaign)).content.decode()
    assert 'id="send-proof"' in page
    assert "No proof sent yet." in page
    with django_capture_on_commit_callbacks(execute=False) as queued:
        response = admin_client.post(proof_admin_url(campaign), follow=True)
    assert len(queued) == 1
    assert response.redirect_chain[-1][0].endswith(change_url(campaign) + "#proofs")
    text = response.content.decode()
    assert "A proof of version 1 of" in text
    assert "(1 message) to ann" in text
    assert 'data-status="pending"' in text


def test_admin_refuses_a_proof_without_test_profiles_with_the_reason(admin_client: Any) -> None:
    campaign = make_campaign()
    response = admin_client.post(proof_admin_url(campaign), follow=True)
    assert "Cannot send a proof: No test profile to send a proof to" in response.content.decode()
    assert not ProofSend.objects.exists()


@override_settings(SALVO_PROOF_MAX_RECIPIENTS=1)
def test_admin_refuses_a_proof_past_the_limit_with_the_reason(admin_client: Any) -> None:
    ProfileFactory.create_batch(2, is_test=True)
    response = admin_client.post(proof_admin_url(make_campaign()), follow=True)
    assert (
        "Cannot send a proof: A proof goes to at most 1 test profiles "
        "(SALVO_PROOF_MAX_RECIPIENTS); 2 were asked for."
    ) in response.content.decode()
    assert not ProofSend.objects.exists()


def test_admin_hides_send_proof_from_a_user_without_the_permission(
    client: Any, user_with_perms: Any
) -> None:
    ProfileFactory(is_test=True)
    campaign = make_campaign()
    user = user_with_perms("campaigns.view_campaign", "campaigns.change_campaign")
    client.force_login(user)
    assert 'id="send-proof"' not in client.get(change_url(campaign)).content.decode()
    response = client.post(proof_admin_url(campaign), follow=True)
    assert "campaigns.send_proof" in response.content.decode()
    assert not ProofSend.objects.exists()


def _change_page_queries(client: Any, campaign: Any) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(change_url(campaign)).status_code == 200
    return len(queries)


def test_admin_proofs_section_costs_the_same_queries_for_1_or_many_proofs(
    admin_client: Any, local_sinks: Any, django_capture_on_commit_callbacks: Any
) -> None:
    ProfileFactory(is_test=True)
    campaign = proof_campaign()
    request_and_send(campaign, django_capture_on_commit_callbacks)
    few = _change_page_queries(admin_client, campaign)
    ProfileFactory.create_batch(4, is_test=True)
    for _ in range(3):
        request_and_send(campaign, django_capture_on_commit_callbacks)
    many = _change_page_queries(admin_client, campaign)
    assert few == many
    page = admin_client.get(change_url(campaign)).content.decode()
    assert page.count("data-proof=") == proofs.RECENT_PROOF_SENDS


def test_admin_proofs_refresh_answers_the_table_and_whether_one_is_pending(
    admin_client: Any, local_sinks: Any, django_capture_on_commit_callbacks: Any
) -> None:
    ProfileFactory(external_id="ann", is_test=True)
    campaign = make_campaign(actions=[email_action()])
    url = f"/admin/campaigns/campaign/{campaign.pk}/proofs/"
    with django_capture_on_commit_callbacks(execute=False):
        sends = campaign_proof_request(campaign=campaign, user=None)
    pending = admin_client.get(url).json()
    assert pending["pending"] is True
    assert 'data-status="pending"' in pending["html"]
    proof_sends_send(proof_ids=[send.pk for send in sends])
    done = admin_client.get(url).json()
    assert done["pending"] is False
    assert 'data-status="sent"' in done["html"]
    assert admin_client.post(url).status_code == 405
