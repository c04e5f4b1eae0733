"""Content experiments on an email with an HTML part: each variant gives its own HTML part
when the action has one (and none when it has none), at every door; the send, own
tracking, a version's copy, its diff and "test, then send the winner" carry it."""

from __future__ import annotations

import datetime as dt
import email
import re
from collections import Counter
from email.message import EmailMessage
from email.policy import default as default_policy
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.test import override_settings

from campaigns import delivery, services
from campaigns.choices import ExecutionStatus
from campaigns.experiments import experiments_decide_due, variants_parse, variants_text
from campaigns.models import Campaign, Delivery, Variant
from campaigns.selectors import version_diff
from devtools.sinks import RunningSinks, running_sinks
from segments.models import Profile
from tests.campaigns.delivery_support import drive, plan, send_all, time_passes
from tests.campaigns.doors import ADD, add_data, create_payload, url
from tests.campaigns.factories import email_action, make_campaign, make_live_campaign
from tests.campaigns.test_experiments import audience, groups, opened, segment_of
from tests.campaigns.test_tracking import PUBLIC, TRACKING
from tests.channels.factories import MessagePresetFactory
from tests.segments.factories import SegmentFactory

pytestmark = pytest.mark.django_db

HTML_A = '<p>A for {{ profile.external_id }}</p><a href="https://shop.example.com/a">Shop A</a>'
HTML_B = '<p>B for {{ profile.external_id }}</p><a href="https://shop.example.com/b">Shop B</a>'
NEEDS_HTML = "Variant B needs an HTML part, as the action (variant A) has one"
NO_HTML = "Variant B has an HTML part, but the action (variant A) has none"


def variant(share: int = 50, body: str = "Hi B", **fields: Any) -> dict[str, Any]:
    return {"share": share, "subject": "Subject B", "body": body, **fields}


def parsed(raw: str) -> EmailMessage:
    message = email.message_from_string(raw, policy=default_policy)
    assert isinstance(message, EmailMessage)
    return message


def parts(message: EmailMessage) -> tuple[str, str]:
    text, html = message.get_body(("plain",)), message.get_body(("html",))
    assert text is not None
    return text.get_content(), html.get_content() if html is not None else ""


# --- the rule, written once ----------------------------------------------------------------


def test_the_admins_text_writes_a_variants_html_part_after_a_line_html():
    text = "share: 30\nsubject: Spring B\nHi B\nsecond line\nhtml:\n<p>B</p>\n<p>more</p>"
    assert variants_parse(text) == [
        {
            "share": 30,
            "subject": "Spring B",
            "body": "Hi B\nsecond line",
            "html_body": "<p>B</p>\n<p>more</p>",
        }
    ]
    assert variants_parse("share: 30\nHi B")[0]["html_body"] == ""
    stored = [Variant(label="B", share=30, subject="Spring B", body="Hi B", html_body="<p>B</p>")]
    assert variants_text(stored) == "share: 30\nsubject: Spring B\nHi B\nhtml:\n<p>B</p>"
    assert variants_parse(variants_text(stored))[0]["html_body"] == "<p>B</p>"


# --- the doors -----------------------------------------------------------------------------


def html_payload(*variants: dict[str, Any], html: str = HTML_A) -> dict[str, Any]:
    payload = create_payload()
    payload["actions"][0]["html_body"] = html
    payload["actions"][0]["variants"] = list(variants)
    return payload


def test_the_api_saves_and_shows_a_variants_html_part(api_client):
    payload = html_payload(variant(30, html_body=HTML_B))
    response = api_client.post("/api/campaigns/", payload, format="json")
    assert response.status_code == 201, response.content
    shown = api_client.get(url(response.json()["id"])).json()
    email_action_shown = next(
        a for a in shown["draft_version"]["actions"] if a["channel"] == "email"
    )
    assert email_action_shown["html_body"] == HTML_A
    assert email_action_shown["variants"] == [
        {"label": "B", "share": 30, "subject": "Subject B", "body": "Hi B", "html_body": HTML_B}
    ]
    assert Variant.objects.get().html_body == HTML_B


@pytest.mark.parametrize(
    ("action_html", "variant_fields", "words"),
    [(HTML_A, {}, NEEDS_HTML), ("", {"html_body": HTML_B}, NO_HTML)],
    ids=["variant-without-html", "variant-with-html-alone"],
)
def test_the_api_refuses_mismatched_parts_naming_the_variant(
    api_client, action_html, variant_fields, words
):
    payload = html_payload(variant(**variant_fields), html=action_html)
    response = api_client.post("/api/campaigns/", payload, format="json")
    assert response.status_code == 400, response.content
    body = response.json()
    assert any(words in m for m in body["actions[0].variants[0].html_body"]), body
    assert not Variant.objects.exists()


def test_the_api_refuses_a_variants_html_that_cannot_render(api_client):
    payload = html_payload(variant(html_body="{% load evil %}"))
    response = api_client.post("/api/campaigns/", payload, format="json")
    assert response.status_code == 400, response.content
    assert "actions[0].variants[0].html_body" in response.json()


def test_the_services_take_matching_parts_and_refuse_mismatched_ones():
    campaign = make_campaign(
        actions=[email_action(html_body=HTML_A, variants=[variant(html_body=HTML_B)])]
    )
    assert Variant.objects.get(action__version=campaign.draft_version).html_body == HTML_B
    with pytest.raises(ValidationError) as refused:
        make_campaign(actions=[email_action(html_body=HTML_A, variants=[variant()])])
    assert f"actions[0].variants[0].html_body: {NEEDS_HTML}" in str(refused.value)
    with pytest.raises(ValidationError) as refused:
        make_campaign(actions=[email_action(variants=[variant(html_body=HTML_B)])])
    assert NO_HTML in str(refused.value)


def admin_row(variants: str, html: str) -> list[dict[str, Any]]:
    preset = MessagePresetFactory.create(channel="email")
    return [
        {
            "channel": "email",
            "preset": preset.pk,
            "subject": "Spring",
            "body": "Hi",
            "html_body": html,
            "variants": variants,
        }
    ]


def test_the_admin_saves_a_variants_html_part_and_refuses_a_missing_one(admin_client):
    page = admin_client.post(ADD, add_data(SegmentFactory(), admin_row("share: 50\nHi B", HTML_A)))
    assert page.status_code == 200
    errors = page.context["inline_admin_formsets"][0].formset.forms[0].errors
    assert any(NEEDS_HTML in message for message in errors["variants"]), errors
    assert not Variant.objects.exists()

    rows = admin_row(f"share: 50\nsubject: B\nHi B\nhtml:\n{HTML_B}", HTML_A)
    page = admin_client.post(ADD, add_data(SegmentFactory(), rows))
    assert page.status_code == 302, page.context["errors"] if page.context else ""
    stored = Variant.objects.get()
    assert (stored.subject, stored.body, stored.html_body) == ("B", "Hi B", HTML_B)
    # The row shows it again as written.
    campaign = Campaign.objects.get(name="Spring sale")
    from tests.campaigns.doors import change_url

    form = admin_client.get(change_url(campaign)).context["inline_admin_formsets"][0].formset
    assert f"html:\n{HTML_B}" in form.forms[0].initial["variants"]


# --- the send ------------------------------------------------------------------------------


def an_html_ab_test(prefix: str, size: int, **fields: Any) -> Campaign:
    audience(prefix, size)
    preset = MessagePresetFactory.create(channel="email", reply_to="help@example.com")
    return make_live_campaign(
        segment=segment_of(prefix),
        actions=[
            email_action(
                preset=preset,
                subject="Subject A",
                body="A for {{ profile.external_id }}",
                html_body=HTML_A,
                variants=[variant(body="B for {{ profile.external_id }}", html_body=HTML_B)],
            )
        ],
        **fields,
    )


def test_each_group_gets_its_own_html_tracked_like_as():
    campaign = an_html_ab_test("html-ab-", 30, track_opens=True, track_clicks=True)
    with running_sinks() as sink, override_settings(**sink.provider_settings(), **TRACKING):
        drive(campaign)
        received = {m["delivery_id"]: parsed(m["raw"]) for m in sink.received("email")}
    assigned = groups(campaign)
    assert set(assigned.values()) == {"A", "B"}
    names = dict(Profile.objects.values_list("pk", "external_id"))
    rows = Delivery.objects.filter(execution__campaign=campaign)
    assert len(received) == rows.count() == 30
    for row in rows:
        message = received[str(row.pk)]
        group = assigned[row.profile_id]
        text, html = parts(message)
        assert message["Subject"] == f"Subject {group}"
        assert text.startswith(f"{group} for {names[row.profile_id]}")
        assert f"<p>{group} for {names[row.profile_id]}</p>" in html
        # The variant's own link, rewritten to a tracked one; the open pixel added.
        assert "shop.example.com" not in html
        [link] = re.findall(r'href="([^"]+)"', html)
        assert link.startswith(PUBLIC + "/t/c/"), link
        assert PUBLIC + "/t/o/" in html, html
    # Following B's tracked link lands on B's own URL.
    from django.test import Client

    b_row = next(row for row in rows if assigned[row.profile_id] == "B")
    [link] = re.findall(r'href="([^"]+)"', parts(received[str(b_row.pk)])[1])
    with override_settings(**TRACKING):
        response = Client().get(link.removeprefix(PUBLIC))
    assert response.status_code == 302
    assert response["Location"] == "https://shop.example.com/b"


# --- versions ------------------------------------------------------------------------------


def test_a_new_version_copies_the_variants_html_and_the_diff_shows_it_changing():
    campaign = make_live_campaign(
        actions=[email_action(html_body=HTML_A, variants=[variant(html_body=HTML_B)])]
    )
    draft = services.campaign_modify(campaign=campaign, user=None)
    copied = Variant.objects.get(action__version=draft)
    assert copied.html_body == HTML_B
    live = Variant.objects.get(action__version=campaign.live_version)
    live.html_body = "<p>changed</p>"
    with pytest.raises(ValidationError, match="activated"):
        live.save()

    preset = draft.actions.get().preset
    services.campaign_update(
        campaign=campaign,
        user=None,
        data={
            "actions": [
                email_action(
                    preset=preset,
                    html_body=HTML_A,
                    variants=[variant(html_body="<p>New B</p>")],
                )
            ]
        },
    )
    campaign.refresh_from_db()
    assert campaign.live_version is not None
    assert campaign.draft_version is not None
    [_, email_section] = version_diff(old=campaign.live_version, new=campaign.draft_version)
    changed = {f.label: f for f in email_section.fields if f.changed}
    assert list(changed) == ["Variants"]
    assert ("-", HTML_B) in (changed["Variants"].lines or [])
    assert ("+", "<p>New B</p>") in (changed["Variants"].lines or [])


def test_a_variants_html_change_is_an_edit_of_the_draft():
    campaign = make_campaign(
        actions=[email_action(html_body=HTML_A, variants=[variant(html_body=HTML_B)])]
    )
    draft = campaign.draft_version
    assert draft is not None
    before = services._draft_content(campaign, draft)
    services.campaign_update(
        campaign=campaign,
        user=None,
        data={
            "actions": [email_action(html_body=HTML_A, variants=[variant(html_body="<p>x</p>")])]
        },
    )
    assert services._draft_content(campaign, draft) != before


# --- test, then send the winner ------------------------------------------------------------


def test_the_rest_gets_the_winners_html():
    # An hour's test, so that no slow send reaches the rest before the opens are in.
    hour = dt.timedelta(hours=1)
    campaign = an_html_ab_test(
        "html-ttw-", 200, test_share=40, winner_after=hour, winner_metric="opened"
    )
    sinks: RunningSinks
    with running_sinks() as sinks, override_settings(**sinks.provider_settings()):
        execution = plan(campaign)
        send_all(execution)
        assigned = groups(campaign)
        b = [p for p, g in assigned.items() if g == "B"]
        a = [p for p, g in assigned.items() if g == "A"]
        opened(campaign, b[: len(b) * 3 // 4] + a[:1])
        assert experiments_decide_due(now=execution.started_at + hour) == [campaign.pk]
        time_passes(execution, hour.total_seconds() + 1)
        send_all(execution)
        delivery.execution_complete_if_done(execution_id=execution.pk)
        received = sinks.received("email")
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.COMPLETED
    rest = {p for p, g in assigned.items() if g == "rest"}
    assert rest
    by_delivery = dict(Delivery.objects.filter(execution=execution).values_list("pk", "profile_id"))
    got: Counter[str] = Counter()
    for message in received:
        profile_id = by_delivery[int(message["delivery_id"])]
        html = parts(parsed(message["raw"]))[1]
        if profile_id in rest:
            assert "<p>B for " in html, html
            assert "https://shop.example.com/b" in html
            got["rest"] += 1
    assert got["rest"] == len(rest)


def test_the_command_shows_a_variants_html_part():
    from io import StringIO

    from django.core.management import call_command

    campaign = make_campaign(
        actions=[email_action(html_body=HTML_A, variants=[variant(body="Hi B", html_body=HTML_B)])]
    )
    out = StringIO()
    call_command("campaign", "show", str(campaign.pk), stdout=out)
    assert "B: “Subject B” 'Hi B' (with an HTML part)" in out.getvalue()


# --- activation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stored", "words"),
    [
        ({"html_body": ""}, NEEDS_HTML),
        ({"html_body": "{% load x %}"}, "variant B, html_body"),
    ],
    ids=["parts-no-longer-match", "html-cannot-render"],
)
def test_activation_refuses_a_stored_variant_whose_html_cannot_go_out(stored, words):
    from tests.campaigns.factories import activate_acknowledged

    campaign = make_campaign(
        actions=[email_action(html_body=HTML_A, variants=[variant(html_body=HTML_B)])]
    )
    Variant.objects.filter(action__version__campaign=campaign).update(**stored)
    with pytest.raises(ValidationError, match=re.escape(words)):
        activate_acknowledged(campaign=campaign)


# --- the published contract ----------------------------------------------------------------


def test_the_openapi_schema_documents_a_variants_html_part():
    from io import StringIO

    import yaml
    from django.core.management import call_command

    out = StringIO()
    call_command("spectacular", stdout=out)
    components = yaml.safe_load(out.getvalue())["components"]["schemas"]
    shown = {name: c for name, c in components.items() if name.startswith("Variant")}
    assert set(shown) == {"Variant", "VariantInputRequest"}, set(shown)
    for component in shown.values():
        assert "html_body" in component["properties"]
    described = components["VariantInputRequest"]["properties"]["html_body"]["description"]
    assert "HTML part" in described


def test_the_diff_has_no_variants_row_when_neither_version_has_variants():
    campaign = make_live_campaign(actions=[email_action(html_body=HTML_A)])
    draft = services.campaign_modify(campaign=campaign, user=None)
    assert campaign.live_version is not None
    [_, email_section] = version_diff(old=campaign.live_version, new=draft)
    assert [f.label for f in email_section.fields] == ["Preset", "Subject", "Body", "HTML body"]
