"""Invariants the database itself enforces, whatever code writes the rows."""

import pytest
from django.db import IntegrityError, transaction

from campaigns.choices import CampaignStatus as Status
from campaigns.models import Campaign, ChannelAction
from tests.campaigns.factories import make_campaign, make_live_campaign
from tests.channels.factories import MessagePresetFactory

pytestmark = pytest.mark.django_db


def refused_by_database(**changes) -> bool:
    campaign = make_live_campaign()
    try:
        with transaction.atomic():
            Campaign.objects.filter(pk=campaign.pk).update(**changes)
    except IntegrityError:
        return True
    return False


def test_unknown_status_is_refused():
    assert refused_by_database(status="paused")


def test_running_campaign_always_has_a_live_version():
    assert refused_by_database(live_version=None)


def test_draft_never_has_a_live_version():
    assert refused_by_database(status=Status.DRAFT)


def test_live_and_draft_versions_differ():
    campaign = make_live_campaign()
    with pytest.raises(IntegrityError), transaction.atomic():
        Campaign.objects.filter(pk=campaign.pk).update(draft_version=campaign.live_version)


def test_one_action_per_channel_per_version():
    campaign = make_campaign()
    with pytest.raises(IntegrityError), transaction.atomic():
        ChannelAction.objects.create(
            version=campaign.draft_version,
            channel="email",
            preset=MessagePresetFactory(),
            subject="Again",
            body="Again",
        )


def test_version_numbers_are_unique_per_campaign():
    campaign = make_campaign()
    with pytest.raises(IntegrityError), transaction.atomic():
        campaign.versions.create(number=1)
