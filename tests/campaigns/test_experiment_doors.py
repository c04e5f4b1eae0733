"""Content experiments at every door: variants and the holdout saved, shown and refused the
same way by the services, the API (nested in the action JSON, 400 with the field's
message), the admin and the command (show, and the report's experiment)."""

from __future__ import annotations

import json
from collections import Counter
from io import StringIO
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command

from campaigns import services
from campaigns.models import Assignment, Delivery, Variant
from tests.campaigns.delivery_support import drive, make_profile
from tests.campaigns.doors import create_payload, url
from tests.campaigns.factories import email_action, make_campaign, make_live_campaign, sms_action
from tests.campaigns.test_experiments import opened

pytestmark = pytest.mark.django_db


def variant(share: int, body: str = "Hi B", **fields: Any) -> dict[str, Any]:
    return {"share": share, "body": body, **fields}


def with_variants(*variants: dict[str, Any], holdout: int | None = None) -> dict[str, Any]:
    payload = create_payload()
    payload["actions"][0]["variants"] = list(variants)
    if holdout is not None:
        payload["holdout_share"] = holdout
    return payload


# --- the API ----------------------------------------------------------------------------


def test_the_api_saves_and_shows_variants_nested_in_the_action(api_client):
    payload = with_variants(variant(30, "Hi B", subject="Spring B"), variant(20, "Hi C"))
    payload["holdout_share"] = 10
    response = api_client.post("/api/campaigns/", payload, format="json")
    assert response.status_code == 201, response.content
    shown = api_client.get(url(response.json()["id"])).json()
    draft = shown["draft_version"]
    assert draft["holdout_share"] == 10
    email = next(a for a in draft["actions"] if a["channel"] == "email")
    assert email["variants"] == [
        {"label": "B", "share": 30, "subject": "Spring B", "body": "Hi B", "html_body": ""},
        {"label": "C", "share": 20, "subject": "", "body": "Hi C", "html_body": ""},
    ]


@pytest.mark.parametrize(
    ("payload", "key", "words"),
    [
        (
            lambda: with_variants(*(variant(10) for _ in range(5))),
            "actions[0].variants",
            "At most 5 variants per action: A (the action's own content) and 4 more, not 6.",
        ),
        (
            lambda: with_variants(variant(60), variant(40)),
            "actions[0].variants",
            "The variants' shares add up to 100 %",
        ),
        (
            lambda: with_variants(variant(0)),
            "actions[0].variants[0].share",
            "Variant B's share is a percent from 1 to 99, not 0.",
        ),
        (
            lambda: with_variants(variant(50, "{% load evil %}")),
            "actions[0].variants[0].body",
            "load",
        ),
    ],
    ids=["six-variants", "shares-to-100", "zero-share", "bad-template"],
)
def test_the_api_refuses_bad_variants_on_the_field(api_client, payload, key, words):
    response = api_client.post("/api/campaigns/", payload(), format="json")
    assert response.status_code == 400, response.content
    body = response.json()
    assert any(words in message for message in body[key]), body
    assert not Variant.objects.exists()


@pytest.mark.parametrize("holdout", [-1, 51])
def test_the_api_refuses_a_holdout_out_of_range(api_client, holdout):
    response = api_client.post("/api/campaigns/", with_variants(holdout=holdout), format="json")
    assert response.status_code == 400, response.content
    assert response.json()["holdout_share"] == [
        f"The holdout is a percent from 0 to 50, not {holdout}."
    ]


def test_every_action_with_variants_must_split_the_same_way(api_client):
    payload = with_variants(variant(50))
    payload["actions"][1]["variants"] = [variant(30, "SMS B")]
    response = api_client.post("/api/campaigns/", payload, format="json")
    assert response.status_code == 400, response.content
    message = " ".join(response.json()["actions"])
    assert "split the audience the same way" in message
    assert "Email: A 50 %, B 50 %; SMS: A 70 %, B 30 %" in message


# --- the services (what the admin, the command and the API share) ------------------------


def test_the_services_refuse_the_same_limits():
    with pytest.raises(ValidationError) as refused:
        make_campaign(actions=[email_action(variants=[variant(20)] * 5)])
    assert "At most 5 variants" in str(refused.value)
    with pytest.raises(ValidationError) as refused:
        make_campaign(holdout_share=60)
    assert refused.value.message_dict == {
        "holdout_share": ["The holdout is a percent from 0 to 50, not 60."]
    }


def test_an_activated_versions_variants_cannot_change():
    campaign = make_live_campaign(actions=[email_action(variants=[variant(50)])])
    stored = Variant.objects.get(action__version=campaign.live_version)
    stored.share = 40
    with pytest.raises(ValidationError, match="activated"):
        stored.save()


def test_a_variant_changed_is_an_edit_of_the_draft():
    campaign = make_campaign(actions=[email_action(variants=[variant(50)])])
    draft = campaign.draft_version
    assert draft is not None
    before = services._draft_content(campaign, draft)
    services.campaign_update(
        campaign=campaign,
        user=None,
        data={"actions": [email_action(variants=[variant(50, "Another B")])]},
    )
    assert services._draft_content(campaign, draft) != before


# --- the report: API and command ---------------------------------------------------------


def run(*args: str) -> str:
    out = StringIO()
    call_command("campaign", *args, stdout=out)
    return out.getvalue()


def a_finished_ab_test() -> Any:
    for _ in range(30):
        make_profile()
    campaign = make_live_campaign(
        holdout_share=20,
        actions=[email_action(variants=[variant(50, "Hi B", subject="B")]), sms_action()],
    )
    drive(campaign)
    sent = Delivery.objects.filter(
        execution__campaign=campaign, action__channel="email", status="sent"
    )
    opened(campaign, list(sent.values_list("profile_id", flat=True)[:5]))
    return campaign


def test_the_report_shows_the_experiment_at_the_api_and_the_command(api_client, settings):
    from devtools.sinks import running_sinks

    with running_sinks() as sink:
        for name, value in sink.provider_settings().items():
            setattr(settings, name, value)
        campaign = a_finished_ab_test()
    sizes = Counter(Assignment.objects.filter(campaign=campaign).values_list("group", flat=True))

    report = api_client.get(url(campaign, "report")).json()
    experiment = report["experiment"]
    assert experiment["metric"] == "opened"
    assert {row["group"]: row["n"] for row in experiment["groups"]} == {
        group: n for group, n in sizes.items() if group != "holdout"
    }
    assert sum(row["count"] for row in experiment["groups"]) == 5
    assert experiment["holdout"] == {"n": sizes["holdout"], "count": None, "rate": None}
    assert experiment["winner"] is None
    assert report["by_reason"]["email"]["holdout"] == sizes["holdout"]
    clicked = api_client.get(url(campaign, "report") + "?metric=clicked").json()
    assert clicked["experiment"]["metric"] == "clicked"
    refused = api_client.get(url(campaign, "report") + "?metric=bounces")
    assert refused.status_code == 400
    assert "opened, clicked" in refused.json()["metric"][0]

    text = run("report", str(campaign.pk))
    assert "experiment on opens:" in text
    assert f"holdout: n {sizes['holdout']} (-)" in text
    assert "the holdout gets none" in text
    assert "No winner yet" in text
    as_json = json.loads(run("report", str(campaign.pk), "--json", "--metric", "clicked"))
    assert as_json["experiment"]["metric"] == "clicked"

    shown = run("show", str(campaign.pk))
    assert "holdout:  20 % get nothing" in shown
    assert "variants: A 50 %, B 50 %" in shown
    assert "B: “B” 'Hi B'" in shown


def test_conversions_compare_the_groups_against_the_holdout_at_the_api_and_command(
    api_client, settings
):
    from devtools.sinks import running_sinks
    from segments.models import Profile

    with running_sinks() as sink:
        for name, value in sink.provider_settings().items():
            setattr(settings, name, value)
        campaign = a_finished_ab_test()
    members: dict[str, list[str]] = {}
    for profile_id, group in Assignment.objects.filter(campaign=campaign).values_list(
        "profile_id", "group"
    ):
        external_id = Profile.objects.get(pk=profile_id).external_id
        members.setdefault(group, []).append(external_id)
    converting = [members["holdout"][0], *members["A"][:2]]
    for number, external_id in enumerate(converting):
        answer = api_client.post(
            "/api/conversions/",
            {"profile": external_id, "value": "10", "idempotency_key": f"order-{number}"},
            format="json",
        )
        assert answer.status_code == 201, answer.content  # a held-out profile's too

    experiment = api_client.get(url(campaign, "report") + "?metric=converted").json()["experiment"]
    assert experiment["metric"] == "converted"
    assert experiment["holdout"] == {
        "n": len(members["holdout"]),
        "count": 1,
        "rate": 1 / len(members["holdout"]),
    }
    group_a = next(row for row in experiment["groups"] if row["group"] == "A")
    assert group_a["count"] == 2
    assert group_a["lift"] == pytest.approx(
        (2 / len(members["A"])) / (1 / len(members["holdout"])) - 1
    )
    # The channels count the conversions of what they sent: not the held-out one's.
    engagement = api_client.get(url(campaign, "report")).json()["engagement"]["by_channel"]
    assert sum(counts["converted"]["count"] for counts in engagement.values()) == 2
    assert "experiment on conversions:" in run("report", str(campaign.pk), "--metric", "converted")


def test_the_report_counts_every_outcome_per_variant_at_every_door(
    api_client, admin_client, settings
):
    from devtools.sinks import running_sinks

    with running_sinks() as sink:
        for name, value in sink.provider_settings().items():
            setattr(settings, name, value)
        campaign = a_finished_ab_test()  # five profiles opened their email
    groups = dict(Assignment.objects.filter(campaign=campaign).values_list("profile_id", "group"))
    sizes = Counter(groups.values())
    opened_by_group = Counter(
        groups[profile_id]
        for profile_id in Delivery.objects.filter(
            execution__campaign=campaign, events__kind="opened"
        ).values_list("profile_id", flat=True)
    )

    by_variant = api_client.get(url(campaign, "report")).json()["engagement"]["by_variant"]
    assert set(by_variant) == set(sizes)
    for group, n in sizes.items():
        assert by_variant[group]["opened"] == {
            "count": opened_by_group[group],
            "rate": round(opened_by_group[group] / n, 4),
        }
        assert by_variant[group]["bounced"]["count"] == 0
    assert by_variant["holdout"]["opened"]["count"] == 0

    text = run("report", str(campaign.pk))
    assert "A (profiles) after the send: delivered 0 (0.0%), bounced 0" in text
    page = admin_client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
    row = page[page.index('<tr data-group="A">') :]
    row = row[: row.index("</tr>")]
    assert f'data-event="opened"><span data-figure="count">{opened_by_group["A"]}</span>' in row
    assert "Holdout (profiles)" in page


# --- the admin ----------------------------------------------------------------------------

VARIANTS_TEXT = "share: 30\nsubject: Spring B\nHi B\nsecond line\n---\nshare: 20\nHi C"


def admin_rows(variants: str) -> list[dict[str, Any]]:
    from tests.channels.factories import MessagePresetFactory

    preset = MessagePresetFactory.create(channel="email")
    return [
        {
            "channel": "email",
            "preset": preset.pk,
            "subject": "Spring",
            "body": "Hi",
            "variants": variants,
        }
    ]


def test_the_admin_saves_variants_on_the_action_row_and_the_holdout(admin_client):
    from tests.campaigns.doors import ADD, add_data, change_url
    from tests.segments.factories import SegmentFactory

    data = add_data(SegmentFactory(), admin_rows(VARIANTS_TEXT), holdout_share="10")
    response = admin_client.post(ADD, data)
    assert response.status_code == 302, response.context["errors"] if response.context else ""
    from campaigns.models import Campaign

    campaign = Campaign.objects.get(name="Spring sale")
    assert campaign.draft_version is not None
    assert campaign.draft_version.holdout_share == 10
    stored = Variant.objects.filter(action__version=campaign.draft_version)
    assert list(stored.values_list("label", "share", "subject", "body")) == [
        ("B", 30, "Spring B", "Hi B\nsecond line"),
        ("C", 20, "", "Hi C"),
    ]
    page = admin_client.get(change_url(campaign)).content.decode()
    assert "share: 30\nsubject: Spring B\nHi B\nsecond line\n---\nshare: 20\nHi C" in page
    assert 'name="holdout_share" value="10"' in page


@pytest.mark.parametrize(
    ("variants", "fields", "field", "words"),
    [
        ("\n---\n".join(["share: 10\nB"] * 5), {}, "variants", "At most 5 variants per action"),
        ("share: 60\nB\n---\nshare: 40\nC", {}, "variants", "add up to 100 %"),
        ("B without a share", {}, "variants", "must start with a line “share: <percent>”"),
        ("", {"holdout_share": "51"}, "holdout_share", "less than or equal to 50"),
    ],
    ids=["six-variants", "shares-to-100", "no-share", "holdout"],
)
def test_the_admin_refuses_bad_variants_and_holdout_on_the_field(
    admin_client, variants, fields, field, words
):
    from tests.campaigns.doors import ADD, add_data
    from tests.segments.factories import SegmentFactory

    response = admin_client.post(ADD, add_data(SegmentFactory(), admin_rows(variants), **fields))
    assert response.status_code == 200
    if field == "variants":
        errors = response.context["inline_admin_formsets"][0].formset.forms[0].errors
    else:
        errors = response.context["adminform"].form.errors
    assert any(words in message for message in errors[field]), errors
    assert not Variant.objects.exists()


def test_the_admin_report_compares_the_groups(admin_client, settings):
    from devtools.sinks import running_sinks
    from tests.campaigns.report_page import report_url

    with running_sinks() as sink:
        for name, value in sink.provider_settings().items():
            setattr(settings, name, value)
        campaign = a_finished_ab_test()
    html = admin_client.get(report_url(campaign)).json()["html"]
    assert "Experiment: opens" in html
    assert "Experiment: clicks" in html
    assert 'data-group="holdout"' in html
    assert "the holdout gets none" in html
    assert "No winner yet" in html
