"""A trigger delivered by a real worker process: 1,000 recipients on two channels, each
message exactly once; the same idempotency key again sends nothing."""

from __future__ import annotations

import pytest

from campaigns.models import Delivery, Execution, Trigger
from campaigns.triggers import trigger_counts
from tests.campaigns.delivery_support import sinks_and_worker
from tests.campaigns.test_triggers import live_triggered, recipients
from tests.conftest import wait_until

pytestmark = [pytest.mark.worker, pytest.mark.timeout(180)]

# Batches of a realistic size: 1,000 recipients in a few of them per channel.
TRIGGER_BATCHES = {
    "SALVO_DELIVERY_BATCH_SIZE": "200",
    "SALVO_DELIVERY_WINDOW": "4",
    "SALVO_DELIVERY_SEND_CHUNK": "100",
}


def test_a_trigger_of_1000_recipients_reaches_each_once_on_two_channels(
    celery_process_factory, api_client
):
    with sinks_and_worker(celery_process_factory, env=TRIGGER_BATCHES) as (sink, _, _):
        campaign = live_triggered()
        body = {"recipients": recipients(1000), "idempotency_key": "orders-0001"}

        first = api_client.post(f"/api/campaigns/{campaign.pk}/trigger/", body, format="json")
        assert first.status_code == 202, first.content
        trigger = Trigger.objects.get(pk=first.json()["id"])
        wait_until(
            lambda: trigger_counts(triggers=[trigger])[trigger.pk]["by_status"]["pending"] == 0,
            timeout=150,
            interval=0.5,
            message="the trigger's deliveries never all finished",
        )
        again = api_client.post(f"/api/campaigns/{campaign.pk}/trigger/", body, format="json")

        assert again.status_code == 200, again.content
        assert again.json()["id"] == trigger.pk
        counts = again.json()["counts"]
        assert counts["by_channel"]["email"]["sent"] == 1000
        assert counts["by_channel"]["sms"]["sent"] == 1000
        assert Trigger.objects.count() == 1
        assert Execution.objects.filter(campaign=campaign).count() == 1
        assert Delivery.objects.count() == 2000
        sent = {str(pk) for pk in Delivery.objects.values_list("pk", flat=True)}
        received = [r["delivery_id"] for r in sink.received()]
        assert sorted(received) == sorted(sent)
        assert sink.duplicates() == 0
        sms = {r["to"]: r["json"]["text"] for r in sink.received("sms")}
        assert sms["+33612340999"] == "Order A999 ships today"
        # The execution is over; the campaign stays Live for the next trigger.
        wait_until(
            lambda: Execution.objects.get(pk=trigger.execution_id).status == "completed",
            timeout=60,
            interval=0.5,
            message="the trigger's execution never completed",
        )
        campaign.refresh_from_db()
        assert campaign.status == "live"
