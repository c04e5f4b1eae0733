"""Frequency caps across campaigns and worker processes at once: two campaigns sending to
the same people at the same moment, through two real Celery worker processes, on whichever
profile the environment selects (SQLite + the filesystem broker, or PostgreSQL + Redis)."""

from __future__ import annotations

from collections import Counter

import pytest

from campaigns import caps
from campaigns.choices import CampaignStatus, DeliveryReason, DeliveryStatus
from campaigns.models import Delivery
from devtools.sinks import running_sinks
from segments.models import Profile
from tests.campaigns.delivery_support import SMALL_BATCHES, wait_for_status
from tests.campaigns.factories import (
    activate_acknowledged,
    email_action,
    make_campaign,
    sms_action,
)
from tests.segments.factories import ProfileFactory

pytestmark = [pytest.mark.worker, pytest.mark.timeout(180)]

AUDIENCE = 400


def test_two_campaigns_racing_for_the_same_people_under_a_cap_of_one_send_one_each(
    celery_process_factory,
):
    Profile.objects.bulk_create(ProfileFactory.build_batch(AUDIENCE))
    profiles = list(Profile.objects.values_list("pk", flat=True))
    caps.frequency_cap_create(
        user=None, data={"name": "One a day", "limit": 1, "period": "day", "channel": ""}
    )
    # Every message waits a little at the provider, so that both campaigns' chunks are in
    # flight at the same moment for the same profiles.
    with running_sinks(slow=".", slow_s=0.02) as sink:
        env = {**sink.provider_env(), **SMALL_BATCHES, "SALVO_DELIVERY_SEND_THREADS": "2"}
        for _ in range(2):
            celery_process_factory("worker", "--concurrency", "2", extra_env=env)
        newsletter = make_campaign(actions=[email_action()])
        promotion = make_campaign(actions=[sms_action()])
        activate_acknowledged(campaign=newsletter)
        activate_acknowledged(campaign=promotion)
        wait_for_status(newsletter, CampaignStatus.COMPLETED, timeout=150)
        wait_for_status(promotion, CampaignStatus.COMPLETED, timeout=150)
        received = sink.received()

    rows = Delivery.objects.filter(execution__campaign__in=[newsletter, promotion])
    sent = Counter(rows.filter(status=DeliveryStatus.SENT).values_list("profile_id", flat=True))
    capped = Counter(
        rows.filter(status=DeliveryStatus.SKIPPED, reason=DeliveryReason.FREQUENCY_CAP).values_list(
            "profile_id", flat=True
        )
    )
    assert sent == Counter(profiles), "a profile got two messages, or none"
    assert capped == Counter(profiles)
    assert len(received) == AUDIENCE
