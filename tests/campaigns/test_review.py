"""The review before activation: reach, checks and acknowledgements, at the service and
the API (the admin's review page and the command have tests of their own)."""

import datetime as dt

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from campaigns import services
from campaigns.choices import CampaignStatus as Status
from campaigns.choices import CampaignType, ReviewCode
from campaigns.exceptions import ActivationRefused
from campaigns.models import ChannelAction
from campaigns.review import activation_review
from tests.campaigns.doors import url
from tests.campaigns.factories import (
    email_action,
    make_campaign,
    push_action,
    review_warnings,
    sms_action,
    webhook_action,
)
from tests.channels.factories import MessagePresetFactory
from tests.segments.factories import ProfileFactory, SegmentFactory

pytestmark = pytest.mark.django_db


def codes(review, level=None):
    return [c.code for c in review.checks if level is None or c.level == level]


def three_profiles():
    """One reachable everywhere, one opted out of SMS, one without an email address."""
    ProfileFactory(external_id="full")
    ProfileFactory(external_id="no-sms", consent_sms=False)
    ProfileFactory(external_id="no-email", email="")


# --- reach ------------------------------------------------------------------------------


def test_reach_applies_consent_and_missing_addresses_per_channel():
    three_profiles()
    campaign = make_campaign(actions=[email_action(), sms_action()])

    review = activation_review(campaign=campaign)

    assert review.reach == {"email": 2, "sms": 2}
    assert review.recipients == 3
    assert review.audience == 3


def test_a_transactional_campaign_reaches_the_opted_out():
    three_profiles()
    campaign = make_campaign(type=CampaignType.TRANSACTIONAL, actions=[sms_action()])

    assert activation_review(campaign=campaign).reach == {"sms": 3}


def test_the_estimate_is_the_slowest_rate_limited_channel():
    for _ in range(12):
        ProfileFactory()
    slow = MessagePresetFactory(channel="sms", rate_limit_per_second=4)
    campaign = make_campaign(actions=[email_action(), sms_action(preset=slow)])

    review = activation_review(campaign=campaign)

    assert review.estimate_s == 3.0
    assert review.as_dict()["estimate"]["by_channel"]["email"]["seconds"] is None


def test_the_sample_renders_each_action_for_the_first_member():
    ProfileFactory(external_id="first-one")
    campaign = make_campaign(actions=[email_action(body="Hi {{ profile.external_id }}")])

    review = activation_review(campaign=campaign)

    assert review.sample is not None
    assert review.sample.actions[0].body == "Hi first-one"


def test_review_costs_the_same_queries_for_one_or_many_profiles_and_actions():
    ProfileFactory()
    small = make_campaign(actions=[email_action()])
    with CaptureQueriesContext(connection) as one:
        activation_review(campaign=small)

    for _ in range(30):
        ProfileFactory(attributes={"country": "BE", "first_name": "Ann"})
    big = make_campaign(actions=[email_action(), sms_action(), push_action(), webhook_action()])
    with CaptureQueriesContext(connection) as many:
        activation_review(campaign=big)

    assert len(many) <= len(one) + 1, [q["sql"] for q in many.captured_queries]


# --- checks -----------------------------------------------------------------------------


def test_errors_block_and_name_their_field():
    campaign = make_campaign(segment=None, actions=[])
    review = activation_review(campaign=campaign)
    assert {"no_segment", "no_action"} <= set(codes(review, "error"))
    fields = {c.code: c.field for c in review.checks}
    assert fields["no_segment"] == "segment"
    assert fields["no_action"] == "actions"


def test_a_start_in_the_past_and_a_preset_of_another_channel_are_errors():
    campaign = make_campaign(
        start_at=timezone.now() + dt.timedelta(seconds=60),
        actions=[email_action(), sms_action()],
    )
    # Content stored before the checks existed, or changed behind the services' back.
    ChannelAction.objects.filter(version=campaign.draft_version, channel="sms").update(
        preset=MessagePresetFactory(channel="push"), body="{% if profile.x %}open"
    )
    campaign.draft_version.start_at = timezone.now() - dt.timedelta(minutes=1)
    campaign.draft_version.save(update_fields=["start_at"])

    review = activation_review(campaign=campaign)

    errors = {c.code: c.field for c in review.errors}
    assert errors["start_in_past"] == "start_at"
    assert errors["preset_channel"] == "actions[1].preset"
    assert errors["template_error"] == "actions[1].body"


def test_an_empty_audience_is_a_warning():
    campaign = make_campaign()
    assert "empty_audience" in codes(activation_review(campaign=campaign), "warning")


def test_a_tiny_audience_is_a_warning_below_the_setting(settings):
    settings.SALVO_REVIEW_TINY_AUDIENCE = 3
    ProfileFactory()
    ProfileFactory()
    campaign = make_campaign(actions=[sms_action()])
    assert "tiny_audience" in codes(activation_review(campaign=campaign))

    ProfileFactory()
    assert "tiny_audience" not in codes(activation_review(campaign=campaign))


def test_a_variable_nobody_provides_is_a_warning_on_its_field():
    ProfileFactory(attributes={"first_name": "Ann"})
    campaign = make_campaign(
        actions=[sms_action(body="Hi {{ profile.frist_name }}, {{ profile.first_name }}")]
    )

    unknown = [
        c for c in activation_review(campaign=campaign).checks if c.code == "unknown_variable"
    ]

    assert [(c.field, "frist_name" in c.message) for c in unknown] == [("actions[0].body", True)]


def test_a_long_sms_warns_with_its_segments_and_encoding():
    ProfileFactory()
    campaign = make_campaign(actions=[sms_action(body="é" * 150 + "😀")])

    (check,) = [c for c in activation_review(campaign=campaign).checks if c.code == "sms_segments"]

    assert "3 segments" in check.message
    assert "UCS-2" in check.message
    assert check.field == "actions[0].body"


def test_a_marketing_email_without_an_unsubscribe_link_warns(settings):
    ProfileFactory()
    settings.SALVO_PUBLIC_URL = ""
    campaign = make_campaign(actions=[email_action()])
    assert "no_unsubscribe_link" in codes(activation_review(campaign=campaign))

    settings.SALVO_PUBLIC_URL = "https://salvo.example.com"
    assert "no_unsubscribe_link" not in codes(activation_review(campaign=campaign))


def test_a_rule_on_an_attribute_no_profile_has_warns():
    ProfileFactory(attributes={"country": "FR"})
    segment = SegmentFactory(
        rules={"all": [{"field": "attributes.contry", "op": "eq", "value": "FR"}]}
    )
    campaign = make_campaign(segment=segment, actions=[sms_action()])

    review = activation_review(campaign=campaign)

    (check,) = [c for c in review.checks if c.code == "unknown_rule_attribute"]
    assert "contry" in check.message
    assert "empty_audience" in codes(review)


def test_every_code_is_a_review_code():
    three_profiles()
    campaign = make_campaign(segment=None, actions=[sms_action(body="{{ profile.nope }}")])
    assert set(codes(activation_review(campaign=campaign))) <= set(ReviewCode.values)


# --- the service enforces the acknowledgements --------------------------------------------


def test_activation_refuses_unacknowledged_warnings_and_changes_nothing():
    campaign = make_campaign()

    with pytest.raises(ActivationRefused) as refused:
        services.campaign_activate(campaign=campaign, user=None, acknowledge=["empty_audience"])

    assert [c.code for c in refused.value.refused] == ["no_unsubscribe_link"]
    assert "no_unsubscribe_link" in " ".join(refused.value.messages)
    campaign.refresh_from_db()
    assert campaign.status == Status.DRAFT


def test_activation_with_every_warning_acknowledged_goes_ahead():
    campaign = make_campaign()
    activated = services.campaign_activate(
        campaign=campaign, user=None, acknowledge=review_warnings(campaign)
    )
    assert activated.status == Status.ACTIVATING


def test_errors_cannot_be_acknowledged():
    campaign = make_campaign(segment=None)
    with pytest.raises(ActivationRefused) as refused:
        services.campaign_activate(campaign=campaign, user=None, acknowledge=ReviewCode.values)
    assert [c.code for c in refused.value.refused] == ["no_segment"]


# --- the API ---------------------------------------------------------------------------


def test_api_review_shows_reach_schedule_estimate_sample_and_checks(api_client):
    three_profiles()
    campaign = make_campaign(actions=[email_action(), sms_action()])

    body = api_client.get(url(campaign, "review")).json()

    assert body["reach"] == {"email": 2, "sms": 2}
    assert body["recipients"] == 3
    assert body["schedule"] == {"start_at": None}
    assert body["sample"]["actions"][0]["channel"] == "email"
    assert [(c["level"], c["code"]) for c in body["checks"]] == [
        ("warning", "tiny_audience"),
        ("warning", "no_unsubscribe_link"),
    ]


def test_api_activate_answers_400_listing_the_unacknowledged_warnings(api_client):
    campaign = make_campaign()

    response = api_client.post(url(campaign, "activate"), {}, format="json")

    assert response.status_code == 400
    body = response.json()
    assert body["unacknowledged"] == ["empty_audience", "no_unsubscribe_link"]
    assert body["reach"] == {"email": 0, "sms": 0}
    assert "empty_audience" in body["detail"]
    assert {c["code"] for c in body["checks"]} == {"empty_audience", "no_unsubscribe_link"}
    campaign.refresh_from_db()
    assert campaign.status == Status.DRAFT

    acknowledged = {"acknowledge": body["unacknowledged"]}
    response = api_client.post(url(campaign, "activate"), acknowledged, format="json")
    assert response.status_code == 202, response.content


def test_api_activate_with_errors_lists_them(api_client):
    campaign = make_campaign(segment=None)

    response = api_client.post(
        url(campaign, "activate"), {"acknowledge": review_warnings(campaign)}, format="json"
    )

    assert response.status_code == 400
    assert response.json()["unacknowledged"] == []
    assert "Choose a segment" in response.json()["detail"]


def test_api_activate_refuses_an_unknown_code(api_client):
    campaign = make_campaign()
    response = api_client.post(url(campaign, "activate"), {"acknowledge": ["nope"]}, format="json")
    assert response.status_code == 400
    assert "acknowledge" in response.json()


def test_api_review_needs_to_see_the_campaign(api_client_for, user_with_perms):
    campaign = make_campaign()
    response = api_client_for(user_with_perms()).get(url(campaign, "review"))
    assert response.status_code in (403, 404)
