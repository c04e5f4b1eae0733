"""A campaign's deliveries at the API: who got it, who did not and why, page by page or
as a streamed CSV, with the same filters and permissions.

The engine's steps run in the test process against the local sinks (see
delivery_support); every expected row is derived from the profiles each test makes.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from campaigns import delivery
from campaigns.choices import DeliveryReason
from campaigns.models import Campaign, Delivery, DeliveryCount, DeliveryEvent
from campaigns.selectors import DELIVERY_COLUMNS
from segments.models import Profile
from tests.campaigns.delivery_support import make_profile, plan, planned_audience, send_all
from tests.campaigns.factories import email_action, make_live_campaign, sms_action

pytestmark = pytest.mark.django_db

R = DeliveryReason
SEES_DELIVERIES = ("campaigns.view_campaign", "segments.view_profile")


def url(campaign: Campaign, query: str = "") -> str:
    return f"/api/campaigns/{campaign.pk}/deliveries/" + (f"?{query}" if query else "")


def sent_campaign() -> tuple[Campaign, dict[str, Profile]]:
    """An email + SMS campaign run to the end: one profile reached on both channels, one
    the email provider refuses, one opted out of SMS, one without a phone, one deleted
    after planning."""
    people = {
        "reached": make_profile(),
        "refused": make_profile(email="invalid@example.com"),
        "no_sms": make_profile(consent_sms=False),
        "no_phone": make_profile(phone=""),
        "gone": make_profile(),
    }
    campaign = make_live_campaign(actions=[email_action(), sms_action()])
    execution = plan(campaign)
    Profile.objects.filter(pk=people["gone"].pk).delete()
    send_all(execution)
    delivery.execution_complete_if_done(execution_id=execution.pk)
    return campaign, people


def expected_rows(campaign: Campaign) -> list[dict[str, Any]]:
    """Every delivery of the campaign as the API must show it, read from the rows and the
    profiles themselves, in the list's order."""
    profiles = {p.pk: p for p in Profile.objects.all()}
    events: dict[int, dict[str, int]] = {}
    for event in DeliveryEvent.objects.exclude(delivery_id=None).order_by("occurred_at", "id"):
        assert event.delivery_id is not None
        kinds = events.setdefault(event.delivery_id, {})
        kinds[event.kind] = kinds.get(event.kind, 0) + 1
    address_field = {"email": "email", "sms": "phone"}
    rows = []
    for d in Delivery.objects.filter(execution__campaign=campaign).select_related(
        "action", "version"
    ):
        profile = profiles.get(d.profile_id)
        rows.append(
            {
                "profile_external_id": profile.external_id if profile else "",
                "address": getattr(profile, address_field[d.action.channel]) if profile else "",
                "channel": d.action.channel,
                "status": d.status,
                "reason": d.reason,
                "error": d.error,
                "attempts": d.attempts,
                "provider_message_id": d.provider_message_id,
                "version_number": d.version.number if d.version else None,
                "sent_at": d.sent_at,
                "updated_at": d.updated_at,
                "events": events.get(d.pk, {}),
            }
        )
    rows.sort(key=lambda r: (r["channel"] != "email", r["profile_external_id"]))
    return rows


def as_json(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            **row,
            "sent_at": _iso(row["sent_at"]),
            "updated_at": _iso(row["updated_at"]),
        }
        for row in rows
    ]


def _iso(value: Any) -> Any:
    if value is None:
        return None
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def listed(api_client: Any, campaign: Campaign, query: str = "") -> list[dict[str, Any]]:
    response = api_client.get(url(campaign, query))
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["count"] == len(body["results"])
    return sorted(
        body["results"], key=lambda r: (r["channel"] != "email", r["profile_external_id"])
    )


def test_every_delivery_is_listed_with_its_profile_address_reason_and_version(
    refusing_sinks, api_client
):
    campaign, people = sent_campaign()
    rows = listed(api_client, campaign)

    assert rows == sorted(
        as_json(expected_rows(campaign)),
        key=lambda r: (r["channel"] != "email", r["profile_external_id"]),
    )
    # What the data says, read back through the API's words.
    by_person = {(r["profile_external_id"], r["channel"]): r for r in rows}
    assert by_person[(people["refused"].external_id, "email")]["reason"] == R.PROVIDER_REFUSED
    assert by_person[(people["no_sms"].external_id, "sms")]["reason"] == R.OPTED_OUT
    assert by_person[(people["no_phone"].external_id, "sms")]["reason"] == R.NO_ADDRESS
    assert by_person[(people["reached"].external_id, "sms")]["address"] == people["reached"].phone
    # The deleted profile's rows stay, without an id or address.
    gone = [r for r in rows if r["reason"] == R.PROFILE_DELETED]
    assert [(r["profile_external_id"], r["address"]) for r in gone] == [("", "")] * 2


@pytest.mark.parametrize(
    ("query", "keeps"),
    [
        ("channel=sms", lambda r: r["channel"] == "sms"),
        ("status=skipped", lambda r: r["status"] == "skipped"),
        ("reason=opted_out", lambda r: r["reason"] == "opted_out"),
        (
            "channel=email&status=failed",
            lambda r: (r["channel"], r["status"]) == ("email", "failed"),
        ),
        ("version=1", lambda r: r["version_number"] == 1),
        ("version=2", lambda r: r["version_number"] == 2),
    ],
)
def test_each_filter_keeps_the_rows_it_names(refusing_sinks, api_client, query, keeps):
    campaign, _ = sent_campaign()
    everything = as_json(expected_rows(campaign))
    wanted = sorted(
        (r for r in everything if keeps(r)),
        key=lambda r: (r["channel"] != "email", r["profile_external_id"]),
    )
    assert listed(api_client, campaign, query) == wanted


def test_search_finds_a_profile_by_external_id_email_or_phone(refusing_sinks, api_client):
    campaign, people = sent_campaign()
    reached = people["reached"]
    for term in (reached.external_id, reached.email.upper(), reached.phone):
        rows = listed(api_client, campaign, f"search={term.replace('+', '%2B')}")
        assert {(r["profile_external_id"], r["channel"]) for r in rows} == {
            (reached.external_id, "email"),
            (reached.external_id, "sms"),
        }


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("channel=fax", "channel"),
        ("status=lost", "status"),
        ("reason=bored", "reason"),
        ("version=zero", "version"),
        ("version=0", "version"),
        ("version=1.5", "version"),
    ],
)
def test_an_invalid_filter_is_a_400_naming_the_field(api_client, query, field):
    campaign = make_live_campaign(actions=[email_action()])
    for suffix in ("", "&format=csv"):
        response = api_client.get(url(campaign, query + suffix))
        assert response.status_code == 400
        assert response["Content-Type"].startswith("application/json")
        assert list(response.json()) == [field]
        assert response.json()[field][0]


def test_seeing_deliveries_needs_the_campaign_and_profile_view_permissions(
    user_with_perms, api_client_for
):
    campaign = make_live_campaign(actions=[email_action()])
    for perms in ([SEES_DELIVERIES[0]], [SEES_DELIVERIES[1]], []):
        client = api_client_for(user_with_perms(*perms))
        for query in ("", "format=csv", "status=lost", "format=csv&status=lost"):
            response = client.get(url(campaign, query))
            assert response.status_code == 403, (perms, query)
            assert response["Content-Type"].startswith("application/json")
            assert "detail" in response.json()
    allowed = api_client_for(user_with_perms(*SEES_DELIVERIES))
    assert allowed.get(url(campaign)).status_code == 200
    assert allowed.get(url(campaign, "format=csv")).status_code == 200


def csv_rows(response: Any) -> list[dict[str, str]]:
    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"].startswith("text/csv")
    text = b"".join(response.streaming_content).decode()
    reader = csv.reader(io.StringIO(text))
    header = next(reader)
    assert tuple(header) == DELIVERY_COLUMNS
    return [dict(zip(header, row, strict=True)) for row in reader]


def as_csv(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The rows as the export writes them: text, empty for none, times ISO 8601 in UTC."""

    def text(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, dt.datetime):
            return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return str(value)

    # The export leaves out each row's events: the report counts them for the campaign.
    return [{k: text(v) for k, v in row.items() if k != "events"} for row in rows]


def test_the_csv_export_streams_every_row_as_created(refusing_sinks, api_client):
    campaign, _ = sent_campaign()
    response = api_client.get(url(campaign, "format=csv"))

    assert response["Content-Disposition"] == (
        f'attachment; filename="campaign-{campaign.pk}-deliveries.csv"'
    )
    key = lambda r: (r["channel"] != "email", r["profile_external_id"])  # noqa: E731
    assert sorted(csv_rows(response), key=key) == sorted(as_csv(expected_rows(campaign)), key=key)


def test_the_csv_export_applies_the_filters(refusing_sinks, api_client):
    campaign, _ = sent_campaign()
    rows = csv_rows(api_client.get(url(campaign, "format=csv&channel=sms&status=skipped")))
    expected = [
        r for r in expected_rows(campaign) if (r["channel"], r["status"]) == ("sms", "skipped")
    ]
    key = lambda r: r["profile_external_id"]  # noqa: E731
    assert sorted(rows, key=key) == sorted(as_csv(expected), key=key)
    assert {r["reason"] for r in rows} == {R.OPTED_OUT, R.NO_ADDRESS, R.PROFILE_DELETED}


def page_queries(api_client: Any, campaign: Campaign, query: str) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = api_client.get(url(campaign, query))
    assert response.status_code == 200
    return len(queries)


def test_a_page_costs_the_same_queries_for_10_and_1000_deliveries(api_client):
    small = planned_audience("small-", 5).campaign
    large = planned_audience("large-", 500).campaign
    assert api_client.get(url(large)).json()["count"] == 1000
    for query in ("", "channel=sms&version=1&search=large-00007", "page=2"):
        if query == "page=2":
            assert page_queries(api_client, large, query) == page_queries(api_client, small, "")
        else:
            assert page_queries(api_client, small, query) == page_queries(api_client, large, query)


FILTERS = [
    "",
    "channel=sms",
    "status=skipped",
    "status=pending",
    "channel=email&status=failed",
    f"channel=sms&status=skipped&reason={R.OPTED_OUT}",
    f"reason={R.PROFILE_DELETED}",
    "version=1",
    "status=sent&version=1",
]


@pytest.mark.parametrize("query", FILTERS)
def test_the_count_of_a_page_is_the_number_of_rows_listed(refusing_sinks, api_client, query):
    campaign, _ = sent_campaign()
    # And a campaign still sending: its rows are pending.
    live = planned_audience("later-", 3).campaign

    for shown in (campaign, live):
        everything = api_client.get(url(shown, f"{query}&page_size=1000".lstrip("&"))).json()
        listed = everything["results"]
        assert everything["count"] == len(listed)
        wanted = dict(pair.split("=") for pair in query.split("&") if pair)
        expected = [
            row
            for row in expected_rows(shown)
            if all(
                str(row["version_number"] if name == "version" else row[name]) == value
                for name, value in wanted.items()
            )
        ]
        assert len(listed) == len(expected)


def test_counting_a_page_reads_the_engines_counters_not_every_delivery(refusing_sinks, api_client):
    campaign = planned_audience("counted-", 50).campaign

    with CaptureQueriesContext(connection) as queries:
        assert api_client.get(url(campaign, "channel=sms&status=pending")).json()["count"] == 50
    sql = [q["sql"] for q in queries]
    assert [s for s in sql if "SUM(" in s and DeliveryCount._meta.db_table in s]
    assert not [s for s in sql if "COUNT(" in s and f'FROM "{Delivery._meta.db_table}"' in s]
