"""Frequency caps: the check at send time (the engine run in the test process against the
local sinks, on whichever database the environment selects), and the rules and the
campaign exemption at every door. The race between two workers: test_caps_worker.py."""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterator

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from campaigns import caps, selectors
from campaigns.choices import CampaignType, DeliveryReason, DeliveryStatus
from campaigns.models import Campaign, Delivery, FrequencyCap, MarketingSend
from devtools.sinks import RunningSinks, running_sinks
from tests.campaigns.delivery_support import drive, make_profile, plan, send_all
from tests.campaigns.factories import email_action, make_campaign, make_live_campaign, sms_action
from tests.segments.factories import ProfileFactory

CAP_PERMS = (
    "campaigns.view_frequencycap",
    "campaigns.add_frequencycap",
    "campaigns.change_frequencycap",
    "campaigns.delete_frequencycap",
)


@pytest.fixture
def sinks() -> Iterator[RunningSinks]:
    with running_sinks(reject="invalid") as sink, override_settings(**sink.provider_settings()):
        yield sink


def rule(**fields: object) -> FrequencyCap:
    data = {"name": "Cap", "limit": 1, "period": "day", "channel": "", **fields}
    return caps.frequency_cap_create(user=None, data=data)


def outcomes(campaign: Campaign, channel: str) -> dict[int, tuple[str, str]]:
    """Per profile id, the (status, reason) of the campaign's delivery on `channel`."""
    rows = Delivery.objects.filter(execution__campaign=campaign, action__channel=channel)
    return {r.profile_id: (r.status, r.reason) for r in rows}


SENT = (DeliveryStatus.SENT, "")
CAPPED = (DeliveryStatus.SKIPPED, DeliveryReason.FREQUENCY_CAP)


# --- the check -------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_cap_of_one_a_day_skips_the_second_campaigns_message_with_the_reason(sinks):
    profiles = ProfileFactory.create_batch(3)
    rule(name="One a day", limit=1, period="day")
    first = make_live_campaign(actions=[sms_action()])
    drive(first)
    second = make_live_campaign(actions=[email_action()])
    drive(second)

    assert outcomes(first, "sms") == {p.pk: SENT for p in profiles}
    assert outcomes(second, "email") == {p.pk: CAPPED for p in profiles}
    assert len(sinks.received("email")) == 0
    report = selectors.campaign_report(campaign=second)
    assert report["by_reason"] == {"email": {DeliveryReason.FREQUENCY_CAP: 3}}
    text = Delivery.objects.filter(execution__campaign=second).first()
    assert text is not None
    assert "“One a day”" in text.error


@pytest.mark.django_db
def test_a_channel_rule_caps_its_channel_only_and_an_all_channel_rule_every_channel(sinks):
    profile = make_profile()
    sms_rule = rule(name="One SMS a week", limit=1, period="week", channel="sms")
    drive(make_live_campaign(actions=[sms_action()]))
    both = make_live_campaign(actions=[email_action(), sms_action()])
    drive(both)
    assert outcomes(both, "sms") == {profile.pk: CAPPED}
    assert outcomes(both, "email") == {profile.pk: SENT}

    # Two messages on two channels so far: an all-channel rule of 2 caps email as well.
    caps.frequency_cap_update(rule=sms_rule, user=None, data={"active": False})
    rule(name="Two of anything a day", limit=2, period="day")
    third = make_live_campaign(actions=[email_action(), sms_action()])
    drive(third)
    assert outcomes(third, "email") == {profile.pk: CAPPED}
    assert outcomes(third, "sms") == {profile.pk: CAPPED}


# Committed, as a worker's batch is: on PostgreSQL the reservations take their own
# short transaction on a second connection.
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("period", "age", "expected"),
    [
        ("day", dt.timedelta(hours=25), SENT),
        ("day", dt.timedelta(hours=23), CAPPED),
        ("week", dt.timedelta(days=6, hours=23), CAPPED),
        ("week", dt.timedelta(days=7, hours=1), SENT),
        ("month", dt.timedelta(days=29), CAPPED),
        ("month", dt.timedelta(days=31), SENT),
    ],
)
def test_the_period_rolls_a_send_older_than_it_does_not_count(sinks, period, age, expected):
    profile = make_profile()
    rule(limit=1, period=period)
    MarketingSend.objects.create(
        profile_id=profile.pk, channel="email", at=timezone.now() - age, delivery_id=-1
    )
    campaign = make_live_campaign(actions=[sms_action()])
    drive(campaign)
    assert outcomes(campaign, "sms") == {profile.pk: expected}


@pytest.mark.django_db
def test_transactional_campaigns_are_neither_capped_nor_counted(sinks):
    profile = make_profile()
    rule(limit=1)
    notice = make_live_campaign(type=CampaignType.TRANSACTIONAL, actions=[sms_action()])
    drive(notice)
    newsletter = make_live_campaign(actions=[sms_action()])
    drive(newsletter)
    receipt = make_live_campaign(type=CampaignType.TRANSACTIONAL, actions=[sms_action()])
    drive(receipt)

    assert outcomes(notice, "sms") == {profile.pk: SENT}
    assert outcomes(newsletter, "sms") == {profile.pk: SENT}, "a transactional send counted"
    assert outcomes(receipt, "sms") == {profile.pk: SENT}, "a transactional send was capped"


@pytest.mark.django_db
def test_an_exempt_campaign_is_never_capped_and_its_sends_count_for_the_others(sinks):
    profile = make_profile()
    rule(limit=1)
    exempt = [make_live_campaign(frequency_cap_exempt=True, actions=[sms_action()]) for _ in "ab"]
    for campaign in exempt:
        drive(campaign)
    other = make_live_campaign(actions=[email_action()])
    drive(other)

    assert [outcomes(c, "sms") for c in exempt] == [{profile.pk: SENT}] * 2
    assert outcomes(other, "email") == {profile.pk: CAPPED}


# Committed, as a worker's batch is: on PostgreSQL the reservations take their own
# short transaction on a second connection.
@pytest.mark.django_db(transaction=True)
def test_a_message_not_sent_gives_its_reservation_back(sinks):
    refused = make_profile(email="invalid@example.com")
    rule(limit=1)
    first = make_live_campaign(actions=[email_action()])
    drive(first)
    assert outcomes(first, "email")[refused.pk][0] == DeliveryStatus.FAILED
    assert not MarketingSend.objects.filter(profile_id=refused.pk).exists()
    second = make_live_campaign(actions=[sms_action()])
    drive(second)
    assert outcomes(second, "sms") == {refused.pk: SENT}


# Committed, as a worker's batch is: on PostgreSQL the reservations take their own
# short transaction on a second connection.
@pytest.mark.django_db(transaction=True)
def test_a_delivery_sent_again_after_a_crash_finds_its_own_reservation(sinks):
    profile = make_profile()
    rule(limit=1)
    campaign = make_live_campaign(actions=[sms_action()])
    execution = campaign.executions.get()
    plan(campaign)
    row = Delivery.objects.get(execution=execution)
    # What a worker killed between its reservation and its outcome leaves (SQLite, whose
    # reservation commits before the provider call): the row pending, its reservation kept.
    MarketingSend.objects.create(
        profile_id=profile.pk, channel="sms", at=timezone.now(), delivery_id=row.pk
    )
    send_all(execution)

    assert outcomes(campaign, "sms") == {profile.pk: SENT}
    assert list(MarketingSend.objects.values_list("delivery_id", flat=True)) == [row.pk]


@pytest.mark.django_db
def test_without_an_active_rule_the_check_runs_no_statement(sinks):
    ProfileFactory.create_batch(3)
    rule(active=False)
    campaign = make_live_campaign(actions=[sms_action()])
    with CaptureQueriesContext(connection) as queries:
        drive(campaign)
    ledger = MarketingSend._meta.db_table
    assert [q["sql"] for q in queries.captured_queries if ledger in q["sql"]] == []
    assert set(outcomes(campaign, "sms").values()) == {SENT}


# --- reports -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_reports_show_the_frequency_cap_reason(sinks, admin_client, api_client):
    make_profile()
    rule(limit=1)
    drive(make_live_campaign(actions=[sms_action()]))
    capped = make_live_campaign(actions=[sms_action()])
    drive(capped)

    api = api_client.get(f"/api/campaigns/{capped.pk}/report/").json()
    assert api["by_reason"] == {"sms": {"frequency_cap": 1}}
    page = admin_client.get(f"/admin/campaigns/campaign/{capped.pk}/change/")
    assert "Frequency cap reached" in page.content.decode()
    out = io.StringIO()
    call_command("campaign", "report", str(capped.pk), stdout=out)
    assert "sms not sent: frequency cap reached 1" in out.getvalue()


# --- the rules at every door ----------------------------------------------------------------


@pytest.mark.django_db
def test_the_api_keeps_the_rules_and_refuses_bad_input_on_its_field(api_client):
    created = api_client.post(
        "/api/frequency-caps/",
        {"name": "Weekly SMS", "limit": 3, "period": "week", "channel": "sms"},
        format="json",
    )
    assert created.status_code == 201, created.json()
    rule_id = created.json()["id"]
    assert created.json()["active"] is True

    bad_inputs: list[tuple[dict[str, object], str]] = [
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"period": "year"}, "period"),
        ({"channel": "fax"}, "channel"),
    ]
    for bad, field in bad_inputs:
        answer = api_client.post(
            "/api/frequency-caps/", {"name": "Bad", "limit": 1, "period": "day", **bad}, "json"
        )
        assert answer.status_code == 400, (bad, answer.json())
        assert field in answer.json(), (bad, answer.json())
    assert not FrequencyCap.objects.filter(name="Bad").exists()

    changed = api_client.patch(f"/api/frequency-caps/{rule_id}/", {"active": False}, "json")
    assert changed.status_code == 200
    assert changed.json()["active"] is False
    listed = api_client.get("/api/frequency-caps/?active=false&channel=sms").json()
    assert [r["name"] for r in listed["results"]] == ["Weekly SMS"]
    assert api_client.delete(f"/api/frequency-caps/{rule_id}/").status_code == 204
    assert not FrequencyCap.objects.exists()


@pytest.mark.django_db
def test_the_api_needs_the_rules_permissions(api_client_for, user_with_perms):
    reader = api_client_for(user_with_perms("campaigns.view_frequencycap"))
    assert reader.get("/api/frequency-caps/").status_code == 200
    answer = reader.post("/api/frequency-caps/", {"name": "X", "limit": 1, "period": "day"}, "json")
    assert answer.status_code == 403
    assert "detail" in answer.json()
    nobody = api_client_for(user_with_perms())
    assert nobody.get("/api/frequency-caps/").status_code == 403


@pytest.mark.django_db
def test_the_admin_keeps_the_rules_with_errors_on_the_field(client, user_with_perms):
    client.force_login(user_with_perms(*CAP_PERMS))
    url = "/admin/campaigns/frequencycap/add/"
    data = {"name": "Daily", "limit": "0", "period": "day", "channel": "", "active": "on"}
    page = client.post(url, data)
    assert page.status_code == 200
    assert "limit" in page.context["adminform"].form.errors
    assert not FrequencyCap.objects.exists()

    assert client.post(url, {**data, "limit": "2"}).status_code == 302
    saved = FrequencyCap.objects.get()
    assert (saved.limit, saved.period, saved.channel, saved.active) == (2, "day", "", True)
    listing = client.get("/admin/campaigns/frequencycap/").content.decode()
    assert "Daily" in listing
    assert "All channels" in listing
    change = f"/admin/campaigns/frequencycap/{saved.pk}/change/"
    assert client.post(change, {**data, "limit": "5", "channel": "sms"}).status_code == 302
    saved.refresh_from_db()
    assert (saved.limit, saved.channel) == (5, "sms")
    delete = f"/admin/campaigns/frequencycap/{saved.pk}/delete/"
    assert client.post(delete, {"post": "yes"}).status_code == 302
    assert not FrequencyCap.objects.exists()


@pytest.mark.django_db
def test_the_command_lists_adds_and_removes_rules_and_refuses_bad_input(user_with_perms):
    out = io.StringIO()
    call_command("frequency_cap", "add", "Daily", "--limit", "2", "--period", "day", stdout=out)
    call_command(
        "frequency_cap", "add", "SMS", "--limit", "1", "--period", "week", "--channel", "sms"
    )
    call_command("frequency_cap", "list", stdout=out)
    assert "Daily: at most 2 per Day (rolling 24 hours), all channels, active" in out.getvalue()
    assert "SMS: at most 1 per Week (rolling 7 days), SMS, active" in out.getvalue()

    with pytest.raises(CommandError, match="limit"):
        call_command("frequency_cap", "add", "Zero", "--limit", "0", "--period", "day")
    with pytest.raises(CommandError, match="name"):
        call_command("frequency_cap", "add", "Daily", "--limit", "1", "--period", "day")
    with pytest.raises(CommandError, match="No frequency cap is named “Nope”"):
        call_command("frequency_cap", "remove", "Nope")
    user = user_with_perms("campaigns.view_frequencycap", username="reader")
    with pytest.raises(CommandError, match=r"campaigns\.delete_frequencycap"):
        call_command("frequency_cap", "remove", "Daily", "--user", user.username)

    call_command("frequency_cap", "remove", "Daily")
    assert list(FrequencyCap.objects.values_list("name", flat=True)) == ["SMS"]


# --- the exemption at every door --------------------------------------------------------

MARKETER = (
    "campaigns.view_campaign",
    "campaigns.add_campaign",
    "campaigns.change_campaign",
)


def campaign_body(**fields: object) -> dict[str, object]:
    return {"name": "Exempt?", "type": "marketing", **fields}


@pytest.mark.django_db
def test_only_a_user_with_the_permission_exempts_a_campaign_in_the_api(
    api_client_for, user_with_perms
):
    marketer = api_client_for(user_with_perms(*MARKETER))
    refused = marketer.post(
        "/api/campaigns/", campaign_body(frequency_cap_exempt=True), format="json"
    )
    assert refused.status_code == 403
    assert "campaigns.exempt_campaign_from_caps" in refused.json()["detail"]
    assert not Campaign.objects.exists()

    plain = marketer.post("/api/campaigns/", campaign_body(), format="json")
    assert plain.status_code == 201
    assert plain.json()["frequency_cap_exempt"] is False
    url = f"/api/campaigns/{plain.json()['id']}/"
    assert marketer.patch(url, {"frequency_cap_exempt": True}, format="json").status_code == 403
    # Sending the value it has changes nothing, and needs nothing.
    assert marketer.patch(url, {"frequency_cap_exempt": False}, format="json").status_code == 200

    exempter = api_client_for(user_with_perms(*MARKETER, "campaigns.exempt_campaign_from_caps"))
    changed = exempter.patch(url, {"frequency_cap_exempt": True}, format="json")
    assert changed.status_code == 200
    assert changed.json()["frequency_cap_exempt"] is True
    assert marketer.patch(url, {"frequency_cap_exempt": False}, format="json").status_code == 403


@pytest.mark.django_db
def test_only_a_user_with_the_permission_exempts_a_campaign_in_the_admin(client, user_with_perms):
    draft = make_campaign(actions=[])
    form = {
        "name": draft.name,
        "description": "",
        "type": "marketing",
        "kind": "one_shot",
        "tags": "",
        "segment": "",
        "start_at_0": "",
        "start_at_1": "",
        "time_zone": "UTC",
        "frequency_cap_exempt": "on",
        "actions-TOTAL_FORMS": "0",
        "actions-INITIAL_FORMS": "0",
    }
    url = f"/admin/campaigns/campaign/{draft.pk}/change/"
    client.force_login(user_with_perms(*MARKETER))
    refused = client.post(url, form, follow=True).content.decode()
    assert "campaigns.exempt_campaign_from_caps" in refused
    draft.refresh_from_db()
    assert draft.frequency_cap_exempt is False

    client.force_login(user_with_perms(*MARKETER, "campaigns.exempt_campaign_from_caps"))
    page = client.get(url).content.decode()
    assert 'name="frequency_cap_exempt"' in page
    client.post(url, form, follow=True)
    draft.refresh_from_db()
    assert draft.frequency_cap_exempt is True


@pytest.mark.django_db
def test_only_a_user_with_the_permission_exempts_a_campaign_in_the_command(user_with_perms):
    draft = make_campaign(actions=[])
    marketer = user_with_perms(*MARKETER, username="marketer")
    with pytest.raises(CommandError, match=r"campaigns\.exempt_campaign_from_caps"):
        call_command("frequency_cap", "exempt", str(draft.pk), "--user", marketer.username)
    with pytest.raises(CommandError, match="Campaign 999999 does not exist"):
        call_command("frequency_cap", "exempt", "999999")
    exempter = user_with_perms(*MARKETER, "campaigns.exempt_campaign_from_caps", username="boss")
    out = io.StringIO()
    call_command("frequency_cap", "exempt", str(draft.pk), "--user", exempter.username, stdout=out)
    assert "is exempt from the frequency caps" in out.getvalue()
    draft.refresh_from_db()
    assert draft.frequency_cap_exempt is True
    call_command("frequency_cap", "exempt", str(draft.pk), "--off")
    draft.refresh_from_db()
    assert draft.frequency_cap_exempt is False
