"""API-triggered campaigns: a call names its recipients (and their context), every action
of the running version goes to each of them once; a repeated key sends nothing again; a bad
call is refused whole. At the API, the admin and the command."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from campaigns import services
from campaigns.choices import CampaignKind, DeliveryStatus, ExecutionStatus
from campaigns.models import Campaign, Delivery, Trigger
from campaigns.triggers import TriggerRefused, trigger_counts, trigger_create
from segments.models import Profile
from tests.campaigns.delivery_support import send_all
from tests.campaigns.factories import email_action, make_campaign, make_live_campaign, sms_action
from tests.segments.factories import ProfileFactory

pytestmark = pytest.mark.django_db

ORDER_EMAIL = "Order {{ context.order_id }} for {{ profile.first_name|default:'you' }}"


def live_triggered(**fields: Any) -> Campaign:
    """A Live API-triggered campaign with no segment: email and SMS, reading the context."""
    fields.setdefault(
        "actions",
        [
            email_action(subject="Your order", body=ORDER_EMAIL),
            sms_action(body="Order {{ context.order_id }} ships {{ context.when }}"),
        ],
    )
    return make_live_campaign(kind=CampaignKind.API_TRIGGERED, segment=None, **fields)


def recipients(n: int, prefix: str = "buyer") -> list[dict[str, Any]]:
    return [
        {
            "external_id": f"{prefix}-{i}",
            "profile": {"email": f"{prefix}{i}@example.com", "phone": f"+3361234{i:04d}"},
            "context": {"order_id": f"A{i}", "when": "today"},
        }
        for i in range(n)
    ]


def test_a_trigger_writes_one_delivery_per_action_and_recipient_and_renders_its_context(
    local_sinks,
):
    campaign = live_triggered()
    known = ProfileFactory(external_id="known-1", email="k@example.com", phone="+33600000001")

    result = trigger_create(
        campaign=campaign,
        user=None,
        recipients=[*recipients(3), {"external_id": "known-1", "context": {"order_id": "K9"}}],
        idempotency_key="order-batch-1",
    )

    trigger = result.trigger
    assert result.created
    assert trigger.recipients == 4
    assert Delivery.objects.filter(execution=trigger.execution).count() == 8
    assert Profile.objects.filter(external_id__startswith="buyer-").count() == 3
    send_all(trigger.execution)
    emails = {m["to"]: m for m in local_sinks.received("email")}
    assert emails["buyer1@example.com"]["headers"]["Subject"] == "Your order"
    assert "Order A1 for you" in emails["buyer1@example.com"]["raw"]
    assert "Order K9 for you" in emails[known.email]["raw"]
    texts = {m["to"]: m["json"]["text"] for m in local_sinks.received("sms")}
    assert texts["+33612340002"] == "Order A2 ships today"
    counts = trigger_counts(triggers=[trigger])[trigger.pk]
    assert counts["by_status"]["sent"] == 8
    assert counts["by_channel"]["sms"]["sent"] == 4
    # The execution is done; the campaign waits for the next trigger.
    from campaigns.delivery import execution_complete_if_done

    execution_complete_if_done(execution_id=trigger.execution_id)
    trigger.execution.refresh_from_db()
    assert trigger.execution.status == ExecutionStatus.COMPLETED
    campaign.refresh_from_db()
    assert campaign.status == "live"


def test_the_same_idempotency_key_returns_the_same_trigger_and_writes_nothing():
    campaign = live_triggered()
    first = trigger_create(
        campaign=campaign, user=None, recipients=recipients(2), idempotency_key="k"
    )

    again = trigger_create(
        campaign=campaign, user=None, recipients=recipients(5, "other"), idempotency_key="k"
    )

    assert not again.created
    assert again.trigger.pk == first.trigger.pk
    assert Trigger.objects.count() == 1
    assert Delivery.objects.count() == 4
    assert not Profile.objects.filter(external_id__startswith="other-").exists()


def test_a_bad_batch_is_refused_whole_naming_each_bad_recipient():
    campaign = live_triggered()
    ProfileFactory(external_id="kept", email="kept@example.com")
    batch = [
        {"external_id": "kept", "profile": {"email": "changed@example.com"}},
        {"external_id": "ghost"},
        {"external_id": "bad-mail", "profile": {"email": "not an address"}},
        {"external_id": "ctx", "profile": {}, "context": ["not", "an", "object"]},
        {"external_id": "kept", "context": {}},
        "nonsense",
    ]

    with pytest.raises(TriggerRefused) as refused:
        trigger_create(campaign=campaign, user=None, recipients=batch, idempotency_key="bad")

    named = [(p.index, p.external_id, p.field) for p in refused.value.problems]
    assert named == [
        (1, "ghost", "external_id"),
        (2, "bad-mail", "profile.email"),
        (3, "ctx", "context"),
        (4, "kept", "external_id"),
        (5, "", ""),
    ]
    assert "5 of 6 recipients are refused" in refused.value.detail
    assert Profile.objects.get(external_id="kept").email == "kept@example.com"
    assert not Profile.objects.filter(external_id__in=["bad-mail", "ctx"]).exists()
    assert not Trigger.objects.exists()
    assert not Delivery.objects.exists()


def test_too_many_recipients_are_refused(settings):
    settings.SALVO_TRIGGER_MAX_RECIPIENTS = 2
    campaign = live_triggered()

    with pytest.raises(TriggerRefused, match="limit is 2"):
        trigger_create(campaign=campaign, user=None, recipients=recipients(3), idempotency_key="x")
    assert not Profile.objects.exists()


def test_a_context_beyond_the_limits_is_refused(settings):
    settings.SALVO_PROFILE_ATTRIBUTES_MAX_DEPTH = 2
    campaign = live_triggered()
    deep = {"external_id": "d", "profile": {}, "context": {"a": {"b": {"c": 1}}}}

    with pytest.raises(TriggerRefused) as refused:
        trigger_create(campaign=campaign, user=None, recipients=[deep], idempotency_key="x")
    assert "context.a" in refused.value.problems[0].message


def test_only_a_live_api_triggered_campaign_can_be_triggered():
    from campaigns.exceptions import CampaignConflict

    draft = make_campaign(kind=CampaignKind.API_TRIGGERED, segment=None)
    one_shot = make_live_campaign()
    with pytest.raises(CampaignConflict, match="Draft"):
        trigger_create(campaign=draft, user=None, recipients=recipients(1), idempotency_key="x")
    with pytest.raises(CampaignConflict, match="not API-triggered"):
        trigger_create(campaign=one_shot, user=None, recipients=recipients(1), idempotency_key="x")
    assert not Profile.objects.filter(external_id__startswith="buyer").exists()


def test_stop_halts_the_triggers_running_executions():
    campaign = live_triggered()
    trigger = trigger_create(
        campaign=campaign, user=None, recipients=recipients(2), idempotency_key="x"
    ).trigger

    services.campaign_stop(campaign=campaign, user=None)

    trigger.execution.refresh_from_db()
    assert trigger.execution.status == ExecutionStatus.HALTED
    send_all(trigger.execution)
    assert not Delivery.objects.exclude(status=DeliveryStatus.PENDING).exists()


def test_context_in_content_is_refused_unless_the_campaign_is_api_triggered():
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError, match="unknown variable 'context'"):
        make_campaign(actions=[sms_action(body="{{ context.order_id }}")])
    made = make_campaign(
        kind=CampaignKind.API_TRIGGERED,
        segment=None,
        actions=[sms_action(body="{{ context.order_id }}")],
    )
    assert made.kind == CampaignKind.API_TRIGGERED


def test_the_review_asks_no_segment_of_an_api_triggered_campaign():
    from campaigns.review import activation_review

    campaign = make_campaign(
        kind=CampaignKind.API_TRIGGERED,
        segment=None,
        actions=[sms_action(body="{{ context.order_id }} {{ profile.nickname }}")],
    )

    codes = [check.code for check in activation_review(campaign=campaign).checks]
    assert "no_segment" not in codes
    assert "empty_audience" not in codes
    assert "unknown_variable" in codes  # profile.nickname, not context.order_id
    one_shot = make_campaign(segment=None)
    assert "no_segment" in [c.code for c in activation_review(campaign=one_shot).checks]


# --- the API ------------------------------------------------------------------------------


def test_the_api_triggers_answers_202_then_200_for_the_same_key(api_client):
    campaign = live_triggered()
    body = {"recipients": recipients(2), "idempotency_key": "api-1"}

    first = api_client.post(f"/api/campaigns/{campaign.pk}/trigger/", body, format="json")
    again = api_client.post(f"/api/campaigns/{campaign.pk}/trigger/", body, format="json")

    assert first.status_code == 202, first.content
    assert again.status_code == 200, again.content
    assert again.json()["id"] == first.json()["id"]
    assert first.json()["recipients"] == 2
    assert first.json()["counts"]["by_status"]["pending"] == 4
    listed = api_client.get(f"/api/campaigns/{campaign.pk}/triggers/").json()
    assert [t["id"] for t in listed["results"]] == [first.json()["id"]]
    detail = api_client.get(f"/api/campaigns/{campaign.pk}/triggers/{first.json()['id']}/")
    assert detail.json()["counts"]["by_channel"]["email"]["pending"] == 2
    assert Delivery.objects.count() == 4


def test_the_api_refuses_a_bad_batch_with_400_naming_each(api_client):
    campaign = live_triggered()
    body = {
        "recipients": [*recipients(1), {"external_id": "ghost"}, {"external_id": "x", "p": 1}],
        "idempotency_key": "api-bad",
    }

    response = api_client.post(f"/api/campaigns/{campaign.pk}/trigger/", body, format="json")

    assert response.status_code == 400
    problems = response.json()["recipients"]
    assert [(p["index"], p["external_id"], p["field"]) for p in problems] == [
        (1, "ghost", "external_id"),
        (2, "x", "p"),
    ]
    assert response.json()["detail"]
    assert not Profile.objects.exists()


def test_the_api_answers_409_when_not_live(api_client):
    campaign = make_campaign(kind=CampaignKind.API_TRIGGERED, segment=None)
    body = {"recipients": recipients(1), "idempotency_key": "k"}

    response = api_client.post(f"/api/campaigns/{campaign.pk}/trigger/", body, format="json")

    assert response.status_code == 409
    assert "Draft" in response.json()["detail"]


def test_triggering_needs_the_trigger_permission(user_with_perms, api_client_for):
    campaign = live_triggered()
    body = {"recipients": recipients(1), "idempotency_key": "k"}
    viewer = api_client_for(user_with_perms("campaigns.view_campaign"))
    caller = api_client_for(
        user_with_perms(
            "campaigns.trigger_campaign", "segments.add_profile", "segments.change_profile"
        )
    )

    refused = viewer.post(f"/api/campaigns/{campaign.pk}/trigger/", body, format="json")
    accepted = caller.post(f"/api/campaigns/{campaign.pk}/trigger/", body, format="json")

    assert refused.status_code == 403
    assert accepted.status_code == 202, accepted.content
    assert viewer.get(f"/api/campaigns/{campaign.pk}/triggers/").status_code == 200
    assert caller.get(f"/api/campaigns/{campaign.pk}/triggers/").status_code == 403


def test_profile_data_needs_the_profile_permissions(user_with_perms, api_client_for):
    campaign = live_triggered()
    ProfileFactory(external_id="buyer-0")
    caller = api_client_for(user_with_perms("campaigns.trigger_campaign"))

    with_data = caller.post(
        f"/api/campaigns/{campaign.pk}/trigger/",
        {"recipients": recipients(1), "idempotency_key": "a"},
        format="json",
    )
    without = caller.post(
        f"/api/campaigns/{campaign.pk}/trigger/",
        {"recipients": [{"external_id": "buyer-0"}], "idempotency_key": "b"},
        format="json",
    )

    assert with_data.status_code == 403
    assert without.status_code == 202, without.content


# --- the command --------------------------------------------------------------------------


def test_the_command_triggers_from_a_jsonl_file(tmp_path, capsys):
    campaign = live_triggered()
    path = tmp_path / "recipients.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in recipients(3)) + "\n")

    call_command("campaign", "trigger", str(campaign.pk), "--file", str(path))

    out = capsys.readouterr().out
    trigger = Trigger.objects.get()
    assert f"Trigger {trigger.pk}" in out
    assert trigger.recipients == 3
    call_command(
        "campaign",
        "trigger",
        str(campaign.pk),
        "--file",
        str(path),
        "--idempotency-key",
        trigger.idempotency_key,
    )
    assert "already" in capsys.readouterr().out
    assert Trigger.objects.count() == 1


def test_the_command_names_bad_lines_and_exits_non_zero(tmp_path):
    campaign = live_triggered()
    path = tmp_path / "recipients.jsonl"
    lines = [
        json.dumps(recipients(1)[0]),
        "{not json",
        "",
        json.dumps({"external_id": "ghost"}),
    ]
    path.write_text("\n".join(lines) + "\n")

    with pytest.raises(CommandError) as refused:
        call_command("campaign", "trigger", str(campaign.pk), "--file", str(path))

    message = str(refused.value)
    assert "line 2" in message
    assert "line 4" in message
    assert "\n" not in message
    assert not Profile.objects.exists()
    assert not Trigger.objects.exists()


# --- the admin ----------------------------------------------------------------------------


def test_the_admin_shows_the_triggers_and_their_counts(admin_client):
    campaign = live_triggered()
    trigger = trigger_create(
        campaign=campaign, user=None, recipients=recipients(3), idempotency_key="shop-42"
    ).trigger
    one_shot = make_live_campaign()

    page = admin_client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
    other = admin_client.get(f"/admin/campaigns/campaign/{one_shot.pk}/change/").content.decode()

    assert 'id="triggers"' in page
    assert f'data-trigger="{trigger.pk}"' in page
    assert "shop-42" in page
    assert '<td data-status="pending">6</td>' in page
    assert "email: 3 pending" in page
    assert 'id="triggers"' not in other


# --- two calls with one key, at the same instant (PostgreSQL) ------------------------------


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_racing_calls_with_one_key_make_one_trigger():
    """Both calls find no trigger with the key, then wait for the campaign's send lock,
    which the test holds until both are waiting: they write at the same instant, and the
    unique key lets one through; the other gets its trigger and writes nothing."""
    import threading

    from django.db import connection, connections, transaction

    from campaigns.delivery import hold_campaign_sends
    from tests.conftest import wait_until

    campaign = live_triggered()
    results: list[Any] = []

    def call() -> None:
        try:
            results.append(
                trigger_create(
                    campaign=campaign, user=None, recipients=recipients(50), idempotency_key="r"
                )
            )
        except Exception as error:  # the test reports it
            results.append(error)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=call) for _ in range(2)]
    with transaction.atomic():
        hold_campaign_sends(campaign_id=campaign.pk)
        for thread in threads:
            thread.start()
        # Another connection watches the two calls queue behind the held lock.
        watcher = connections.create_connection("default")
        try:
            with watcher.cursor() as cursor:

                def waiting() -> int:
                    cursor.execute(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                    )
                    return int(cursor.fetchone()[0])

                wait_until(lambda: waiting() == 2, timeout=30, interval=0.05, message="no race")
        finally:
            watcher.close()
        assert connection.vendor == "postgresql"
    for thread in threads:
        thread.join(timeout=60)

    assert not [r for r in results if isinstance(r, Exception)], results
    assert sorted(r.created for r in results) == [False, True]
    assert results[0].trigger.pk == results[1].trigger.pk
    assert Trigger.objects.count() == 1
    assert Delivery.objects.count() == 100


def test_the_preview_renders_an_empty_context(api_client):
    campaign = make_campaign(
        kind=CampaignKind.API_TRIGGERED,
        segment=None,
        actions=[sms_action(body="Order {{ context.order_id|default:'(your order)' }}")],
    )
    profile: Profile = ProfileFactory(external_id="viewer", phone="+33600000009")  # type: ignore[assignment]

    response = api_client.post(
        f"/api/campaigns/{campaign.pk}/preview/", {"profile": profile.pk}, format="json"
    )

    assert response.status_code == 200, response.content
    assert "Order (your order)" in json.dumps(response.json())


@pytest.mark.parametrize(("kind", "accepted"), [("api_triggered", True), ("one_shot", False)])
def test_the_admin_and_the_api_accept_context_in_content_for_the_api_triggered_kind_only(
    admin_client, api_client, kind, accepted
):
    from tests.campaigns.doors import ADD, add_data, create_payload
    from tests.channels.factories import MessagePresetFactory

    sms = MessagePresetFactory.create(channel="sms")
    row = {"channel": "sms", "preset": sms.pk, "subject": "", "body": "{{ context.code }}"}

    page = admin_client.post(ADD, add_data(None, [row], name="Codes", kind=kind))
    payload = create_payload(
        kind=kind, actions=[{"channel": "sms", "preset": sms.pk, "body": "{{ context.code }}"}]
    )
    made = api_client.post("/api/campaigns/", payload, format="json")

    assert Campaign.objects.filter(name="Codes").exists() is accepted
    assert (page.status_code == 302) is accepted
    assert (made.status_code == 201) is accepted, made.content
    if not accepted:
        assert "unknown variable" in page.content.decode()
        assert "unknown variable" in json.dumps(made.json())
