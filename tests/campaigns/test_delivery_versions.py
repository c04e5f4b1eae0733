"""A new version activated while a campaign sends: what the real worker processes send.

Runs on whichever profile the environment selects (SQLite + the embedded broker, or
PostgreSQL + Redis). A rate-limited preset spreads the audience over several seconds, so
that the second version is activated while the first is still going out.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest
from django.db import connection

from campaigns import selectors, services
from campaigns.choices import CampaignStatus as Status
from campaigns.models import Campaign, Delivery
from tests.campaigns.delivery_support import SMALL_BATCHES, sinks_and_worker, wait_for_status
from tests.campaigns.factories import activate_acknowledged, make_campaign, sms_action
from tests.channels.factories import MessagePresetFactory
from tests.conftest import wait_until
from tests.segments.factories import ProfileFactory

pytestmark = [pytest.mark.worker, pytest.mark.timeout(300)]

AUDIENCE = 60
RATE_PER_S = 4  # the audience takes about 15 s: room to activate a version mid-send
CHUNK = 2
DELIVERY_ENV = {**SMALL_BATCHES, "SALVO_DELIVERY_SEND_CHUNK": str(CHUNK)}
FIRST_BODY = "v1 for {{ profile.external_id }}"
SECOND_BODY = "v2 for {{ profile.external_id }}"


def live_version_number(campaign: Campaign) -> int | None:
    return (
        Campaign.objects.filter(pk=campaign.pk, status=Status.LIVE)
        .values_list("live_version__number", flat=True)
        .first()
    )


def test_pending_deliveries_go_out_with_the_version_activated_mid_send(celery_process_factory):
    profiles = ProfileFactory.create_batch(AUDIENCE)
    external_ids = {p.phone: p.external_id for p in profiles}
    with sinks_and_worker(celery_process_factory, env=DELIVERY_ENV) as (sink, _, _):
        limited = MessagePresetFactory(channel="sms", rate_limit_per_second=RATE_PER_S)
        campaign = make_campaign(actions=[sms_action(preset=limited, body=FIRST_BODY)])
        activate_acknowledged(campaign=campaign)
        sink.wait_for(6, channel="sms", timeout=120)

        services.campaign_modify(campaign=campaign, user=None)
        services.campaign_update(
            campaign=campaign,
            user=None,
            data={"actions": [{"channel": "sms", "preset": limited, "body": SECOND_BODY}]},
        )
        activate_acknowledged(campaign=campaign)
        # The activation has committed by the time this process sees version 2 running.
        wait_until(
            lambda: live_version_number(campaign) == 2,
            timeout=120,
            interval=0.1,
            message="version 2 never went Live",
        )
        activation_seen_at = time.time()

        wait_for_status(campaign, Status.COMPLETED, timeout=240)
        texts = sink.received("sms")

    received = Counter(r["delivery_id"] for r in texts)
    assert [d for d, n in received.items() if n > 1] == [], "a delivery was sent twice"
    assert sorted(r["to"] for r in texts) == sorted(external_ids)
    # Each text is the one version's content, personalised for its recipient.
    version_of_text = {
        r["delivery_id"]: 1 if r["json"]["text"] == f"v1 for {external_ids[r['to']]}" else 2
        for r in texts
    }
    assert {r["json"]["text"] for r in texts if version_of_text[r["delivery_id"]] == 2} <= {
        f"v2 for {external_id}" for external_id in external_ids.values()
    }
    after = [r for r in texts if r["at"] >= activation_seen_at]
    assert after, "everything was sent before the second version went Live"
    # Nothing is sent with the first version once the second's activation has committed:
    # on PostgreSQL the activation waits for the chunks at the provider. On SQLite a chunk
    # that passed its last check just before the commit may still arrive after it (as with
    # a stop): at most one chunk per worker process, recorded with the version it used.
    late = [r["json"]["text"] for r in after if version_of_text[r["delivery_id"]] == 1]
    assert len(late) <= (0 if connection.vendor == "postgresql" else 2 * CHUNK), late
    assert 1 in version_of_text.values(), "nothing went out with the first version"

    # Every row stores the version whose content its recipient received.
    stored = dict(
        Delivery.objects.filter(execution__campaign=campaign).values_list("pk", "version__number")
    )
    assert {int(d): n for d, n in version_of_text.items()} == stored
    sent = Counter(version_of_text.values())
    assert selectors.campaign_report(campaign=campaign)["by_version"] == {
        str(number): {"total": n, "sent": n, "failed": 0, "skipped": 0}
        for number, n in sorted(sent.items())
    }
