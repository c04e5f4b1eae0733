"""The campaign list tells the story: channels, audience, sent / total and alerts, with the
same filters (has alerts, channel, start date) at the admin and the API, in a constant
number of queries."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import pytest
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from campaigns import selectors, services
from campaigns.choices import CampaignStatus
from campaigns.models import Campaign
from channels.models import MessagePreset
from tests.campaigns.delivery_support import drive, make_segment, plan
from tests.campaigns.factories import (
    activate_acknowledged,
    email_action,
    make_campaign,
    make_live_campaign,
    sms_action,
)
from tests.campaigns.test_admin import _changelist_queries
from tests.segments.factories import ProfileFactory
from tests.settings_loader import refusal

Status = CampaignStatus
CHANGELIST = reverse("admin:campaigns_campaign_changelist")

pytestmark = pytest.mark.django_db


def group_segment(group: str, *, good: int, without_tags: int = 0) -> Any:
    """A segment of its own profiles: `good` ones whose `tags` attribute renders, and
    `without_tags` ones a body looping over `profile.tags` fails to render for."""
    for _ in range(good):
        ProfileFactory(attributes={"group": group, "tags": [1]})
    for _ in range(without_tags):
        ProfileFactory(attributes={"group": group})
    return make_segment(rules={"field": "attributes.group", "op": "eq", "value": group})


TAGS_BODY = "{% for t in profile.tags %}{{ t }}{% endfor %}"


@dataclass
class Scenario:
    """Campaigns of every kind the list tells apart, and what each is known to be."""

    campaigns: dict[str, Campaign]
    channels: dict[str, set[str]]
    alerts: dict[str, set[str]]
    start_days: dict[str, dt.date | None]

    def names(self, predicate: Any) -> set[str]:
        return {name for name in self.campaigns if predicate(name)}


def build_scenario() -> Scenario:
    today = timezone.localdate()
    # Sent to all 4 of its profiles on both channels: no alert.
    clean = make_live_campaign(
        name="Clean",
        segment=group_segment("clean", good=4),
        actions=[email_action(), sms_action()],
    )
    drive(clean)
    # 1 of 3 SMS fails to render: a 33 % failure rate, over the 5 % default.
    failing = make_live_campaign(
        name="Failing",
        segment=group_segment("failing", good=2, without_tags=1),
        actions=[sms_action(body=TAGS_BODY)],
    )
    drive(failing)
    # 1 of 40 fails: 2.5 %, under the threshold.
    tolerable = make_live_campaign(
        name="Tolerable",
        segment=group_segment("tolerable", good=39, without_tags=1),
        actions=[sms_action(body=TAGS_BODY)],
    )
    drive(tolerable)
    # Its preset lost its sender address between the activation and its task: the
    # activation fails back to Draft.
    preset: MessagePreset = email_action()["preset"]
    broken = make_campaign(
        name="Activation failed",
        segment=group_segment("broken", good=1),
        actions=[email_action(preset=preset)],
    )
    activate_acknowledged(campaign=broken)
    MessagePreset.objects.filter(pk=preset.pk).update(from_email="")
    broken = services.campaign_activation_complete(campaign_id=broken.pk)
    assert broken.status == Status.DRAFT
    assert broken.activation_error
    # Live, its audience planned, and nothing sent since (no worker runs here).
    waiting = make_live_campaign(
        name="Waiting", segment=group_segment("waiting", good=3), actions=[sms_action()]
    )
    plan(waiting)
    # Not started: a scheduled one and a draft, each with a start day of its own.
    later = make_live_campaign(
        name="Scheduled",
        start_at=timezone.now() + dt.timedelta(days=10),
        actions=[email_action()],
    )
    draft = make_campaign(
        name="Draft",
        start_at=timezone.now() + dt.timedelta(days=20),
        actions=[sms_action()],
    )
    campaigns = {
        c.name: Campaign.objects.get(pk=c.pk)
        for c in (clean, failing, tolerable, broken, waiting, later, draft)
    }
    return Scenario(
        campaigns=campaigns,
        channels={
            "Clean": {"email", "sms"},
            "Failing": {"sms"},
            "Tolerable": {"sms"},
            "Activation failed": {"email"},
            "Waiting": {"sms"},
            "Scheduled": {"email"},
            "Draft": {"sms"},
        },
        alerts={"Failing": {"failure_rate"}, "Activation failed": {"activation_failed"}},
        start_days={
            "Clean": today,
            "Failing": today,
            "Tolerable": today,
            "Activation failed": None,
            "Waiting": today,
            "Scheduled": today + dt.timedelta(days=10),
            "Draft": today + dt.timedelta(days=20),
        },
    )


def listed(**filters: Any) -> set[str]:
    return {c.name for c in selectors.campaign_list(statuses=None, **filters)}


def admin_listed(client: Any, **params: str) -> set[str]:
    response = client.get(CHANGELIST, {"status": "all", **params})
    assert response.status_code == 200
    return {c.name for c in response.context["cl"].result_list}


def api_listed(client: Any, **params: str) -> set[str]:
    response = client.get("/api/campaigns/", {"status": "all", "page_size": 100, **params})
    assert response.status_code == 200, response.content
    return {row["name"] for row in response.json()["results"]}


# --- what each row shows ---------------------------------------------------------------


def test_rows_show_channels_audience_and_sent_of_total(local_sinks, admin_client):
    scenario = build_scenario()
    rows: dict[str, Any] = {c.name: c for c in selectors.campaign_list(statuses=None)}

    # Every delivery of "Clean" was sent: 4 profiles × 2 channels.
    assert (rows["Clean"].delivery_sent, rows["Clean"].delivery_total) == (8, 8)
    assert rows["Clean"].audience_size == 4
    assert (rows["Failing"].delivery_sent, rows["Failing"].delivery_failed) == (2, 1)
    # Planned, not sent.
    assert (rows["Waiting"].delivery_sent, rows["Waiting"].delivery_total) == (0, 3)
    # Never ran: no execution, no figures.
    assert rows["Draft"].audience_size is None
    assert rows["Draft"].delivery_total == 0

    html = admin_client.get(CHANGELIST, {"status": "all"}).content.decode()
    clean_row = html[html.index(">Clean<") :].split("</tr>")[0]
    assert '<td class="field-channel_list">Email, SMS</td>' in clean_row
    assert '<td class="field-audience">4</td>' in clean_row
    assert '<td class="field-sent_of_total">8 / 8</td>' in clean_row
    assert set(scenario.campaigns) == set(rows)


def test_the_alert_icon_says_why_in_its_tooltip_and_to_screen_readers(local_sinks, admin_client):
    scenario = build_scenario()
    html = admin_client.get(CHANGELIST, {"status": "all"}).content.decode()

    def row(name: str) -> str:
        return html[html.index(f">{name}<") :].split("</tr>")[0]

    broken = scenario.campaigns["Activation failed"]
    assert 'class="salvo-alert"' in row("Activation failed")
    assert f"Activation: {broken.activation_error}" in row("Activation failed")
    assert '<span class="visually-hidden">Alert: Activation:' in row("Activation failed")
    assert "More than 5% of its messages sent or failed so far failed." in row("Failing")
    for name in scenario.campaigns.keys() - scenario.alerts.keys():
        assert 'class="salvo-alert"' not in row(name), name


# --- the alert rules ---------------------------------------------------------------------


def test_alerts_follow_the_rules_and_the_failure_rate_setting(local_sinks):
    scenario = build_scenario()

    def alerts(**filters: Any) -> dict[str, set[str]]:
        return {
            c.name: {rule.code for rule in selectors.campaign_alerts(c)}
            for c in selectors.campaign_list(statuses=None, **filters)
            if selectors.campaign_alerts(c)
        }

    assert alerts() == scenario.alerts
    # 1 of 40 failed (2.5 %): over a 2 % threshold, "Tolerable" alerts too.
    with override_settings(SALVO_ALERT_FAILURE_RATE=0.02):
        assert alerts() == {**scenario.alerts, "Tolerable": {"failure_rate"}}
    # Seen after the stall timeout, the running executions that made no progress since
    # (all of them: no worker runs in this test) are stuck.
    later = timezone.now() + dt.timedelta(seconds=91)
    with override_settings(SALVO_DELIVERY_STALL_AFTER_S=90):
        stuck = alerts(now=later)
    running = {
        name
        for name, campaign in scenario.campaigns.items()
        if campaign.executions.filter(status="running").exists()
    }
    assert running == {"Waiting"}  # the others were sent to the end and completed
    assert {name for name, codes in stuck.items() if "stalled" in codes} == running


# --- filters: the same answer at every door ----------------------------------------------


def test_filters_return_exactly_the_campaigns_the_data_says(local_sinks, admin_client, api_client):
    scenario = build_scenario()
    today = timezone.localdate()
    with_alerts = set(scenario.alerts)
    without_alerts = set(scenario.campaigns) - with_alerts
    assert listed(has_alerts=True) == with_alerts
    assert listed(has_alerts=False) == without_alerts
    assert admin_listed(admin_client, has_alerts="yes") == with_alerts
    assert admin_listed(admin_client, has_alerts="no") == without_alerts
    assert api_listed(api_client, has_alerts="true") == with_alerts
    assert api_listed(api_client, has_alerts="false") == without_alerts

    for channel in ("email", "sms", "push"):
        expected = scenario.names(lambda name, ch=channel: ch in scenario.channels[name])
        assert listed(channels=[channel]) == expected, channel
        assert admin_listed(admin_client, channel=channel) == expected, channel
        assert api_listed(api_client, channel=channel) == expected, channel

    def starting(first: dt.date | None, last: dt.date | None) -> set[str]:
        return scenario.names(
            lambda name: (
                (day := scenario.start_days[name]) is not None
                and (first is None or day >= first)
                and (last is None or day <= last)
            )
        )

    ranges = [
        (today, today),
        (today + dt.timedelta(days=5), None),
        (None, today + dt.timedelta(days=15)),
        (today + dt.timedelta(days=10), today + dt.timedelta(days=20)),
    ]
    for first, last in ranges:
        expected = starting(first, last)
        assert listed(start_from=first, start_to=last) == expected, (first, last)
        params = {
            key: day.isoformat()
            for key, day in (("start_from", first), ("start_to", last))
            if day is not None
        }
        assert admin_listed(admin_client, **params) == expected, params
        api_params = {
            key: day.isoformat()
            for key, day in (("start_after", first), ("start_before", last))
            if day is not None
        }
        assert api_listed(api_client, **api_params) == expected, api_params


def test_the_api_list_shows_each_campaigns_alerts(local_sinks, api_client):
    scenario = build_scenario()
    rows = api_client.get("/api/campaigns/", {"status": "all", "page_size": 100}).json()
    shown = {row["name"]: {a["code"] for a in row["alerts"]} for row in rows["results"]}
    assert {name: codes for name, codes in shown.items() if codes} == scenario.alerts


def test_a_start_day_that_is_not_a_date_is_refused_at_each_door(admin_client, api_client):
    response = admin_client.get(CHANGELIST, {"start_from": "2026-02-30"})
    assert response.status_code == 302
    assert "e=1" in response["Location"]
    refused = api_client.get("/api/campaigns/", {"start_after": "2026-02-30"})
    assert refused.status_code == 400
    assert "start_after" in refused.json()


@pytest.mark.parametrize("rate", ["-0.1", "1", "5", "five percent"])
def test_a_failure_rate_threshold_outside_0_to_1_refuses_to_start(tmp_path, rate):
    line = refusal({"SALVO_ALERT_FAILURE_RATE": rate}, tmp_path)
    assert "SALVO_ALERT_FAILURE_RATE" in line


# --- queries -----------------------------------------------------------------------------


def _campaigns_with_figures(count: int) -> int:
    """`count` campaigns of every kind the list renders differently: an open draft with
    tags (first, so that a single campaign already has every relation the list
    prefetches), sent, failing, activation failed. Returns how many have an alert."""
    kinds = [(i + 3) % 4 for i in range(count)]
    for i, kind in enumerate(kinds):
        if kind == 0:
            drive(
                make_live_campaign(
                    segment=group_segment(f"q{i}", good=1), actions=[sms_action(body=TAGS_BODY)]
                )
            )
        elif kind == 1:
            drive(
                make_live_campaign(
                    segment=group_segment(f"q{i}", good=1, without_tags=1),
                    actions=[sms_action(body=TAGS_BODY), email_action()],
                    tags=[f"t{i}"],
                )
            )
        elif kind == 2:
            preset: MessagePreset = email_action()["preset"]
            broken = make_campaign(actions=[email_action(preset=preset)])
            activate_acknowledged(campaign=broken)
            MessagePreset.objects.filter(pk=preset.pk).update(from_email="")
            services.campaign_activation_complete(campaign_id=broken.pk)
        else:
            live = make_live_campaign(segment=group_segment(f"q{i}", good=1), tags=["t"])
            services.campaign_modify(campaign=live, user=None)
    return sum(kind in (1, 2) for kind in kinds)


def test_the_list_costs_the_same_queries_for_1_and_20_campaigns(local_sinks, admin_client):
    _campaigns_with_figures(1)
    one = _changelist_queries(admin_client)
    _campaigns_with_figures(19)
    twenty = _changelist_queries(admin_client)
    assert Campaign.objects.count() == 20
    assert twenty == one


@pytest.mark.postgres
def test_the_list_costs_the_same_queries_on_postgresql(local_sinks, admin_client, api_client):
    def api_queries() -> tuple[int, int]:
        with CaptureQueriesContext(connection) as queries:
            listing = api_client.get("/api/campaigns/", {"status": "all", "has_alerts": "true"})
        return len(queries), len(listing.json()["results"])

    alerting = _campaigns_with_figures(1)
    one = _changelist_queries(admin_client)
    # The API's page of alerting campaigns, once it holds rows of each alerting kind.
    alerting += _campaigns_with_figures(4)
    api_few, shown = api_queries()
    assert shown == alerting
    alerting += _campaigns_with_figures(15)
    assert _changelist_queries(admin_client) == one
    api_many, shown = api_queries()
    assert shown == alerting
    assert api_many == api_few
