"""One recipient whose data cannot be read or walked fails alone, with its reason; the
campaign goes on and completes."""

import pytest
from django.db import connection

from campaigns import selectors
from campaigns.choices import CampaignStatus, DeliveryReason, DeliveryStatus
from campaigns.models import Delivery
from segments.models import Profile
from tests.campaigns.delivery_support import (
    expected_report,
    make_profile,
    sinks_and_worker,
    wait_for_status,
)
from tests.campaigns.factories import activate_acknowledged, make_campaign, sms_action
from tests.segments.factories import ProfileFactory

Status = CampaignStatus
# Deeper than Python's recursion limit (1,000) lets rendering walk on every supported
# version, and within what both databases store (SQLite's JSON functions accept up to 2,000
# levels). 900 levels, what the issue found accepted at the API, failed on Python 3.11 alone:
# its comprehensions are frames of their own, two a level, and 3.12 inlines them (PEP 709).
DEEP = 1000
TOO_DEEP = 1500
# Which of the two reasons such data gets depends on how deep the interpreter's JSON decoder
# goes: not to 1,000 levels on 3.11, to 1,000 but not 1,500 on 3.12, past 10,000 on 3.13
# (its C recursion limit), where these decode and then fail when walked.
RECURSION_REASONS = {
    "Cannot read the profile's attributes: RecursionError": DeliveryReason.BAD_PROFILE_DATA,
    "Cannot prepare the message: RecursionError": DeliveryReason.PREPARE_ERROR,
}


def nested_json(levels: int) -> str:
    return '{"a":' * levels + "1" + "}" * levels


def store_attributes_as_text(profile: Profile, document: str) -> None:
    """Write the attributes straight into the database, as no door would accept them."""
    table = connection.ops.quote_name(Profile._meta.db_table)
    value = "CAST(%s AS jsonb)" if connection.vendor == "postgresql" else "%s"
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET attributes = {value} WHERE id = %s", [document, profile.pk]
        )


@pytest.mark.worker
@pytest.mark.timeout(180)
def test_profiles_whose_data_cannot_be_read_or_walked_fail_alone(celery_process_factory):
    good = ProfileFactory.create_batch(12)
    deep = make_profile(external_id="deep")
    too_deep = make_profile(external_id="too-deep")
    store_attributes_as_text(deep, nested_json(DEEP))
    store_attributes_as_text(too_deep, nested_json(TOO_DEEP))

    with sinks_and_worker(celery_process_factory) as (sink, _, _):
        campaign = make_campaign(actions=[sms_action(body="Hi {{ profile.external_id }}")])
        activate_acknowledged(campaign=campaign)

        wait_for_status(campaign, Status.COMPLETED)

        assert sorted(r["to"] for r in sink.received()) == sorted(p.phone for p in good)
    rows = {d.profile_id: d for d in Delivery.objects.filter(execution__campaign=campaign)}
    assert {rows[p.pk].status for p in good} == {DeliveryStatus.SENT}
    for bad in (deep, too_deep):
        assert rows[bad.pk].status == DeliveryStatus.FAILED
        prefix = next((p for p in RECURSION_REASONS if rows[bad.pk].error.startswith(p)), None)
        assert prefix, rows[bad.pk].error
        assert rows[bad.pk].reason == RECURSION_REASONS[prefix]
    assert selectors.campaign_delivery_counts(campaign=campaign) == expected_report(
        sms={"sent": good, "failed": [deep, too_deep]}
    )
