"""/metrics: Prometheus families that add up to what a campaign did, read by allowed
addresses only. A real worker and scheduler run the campaign; the page is read in-process."""

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from campaigns.choices import CampaignStatus
from tests.campaigns.delivery_support import sinks_and_worker, wait_for_status
from tests.campaigns.factories import activate_acknowledged, email_action, make_campaign
from tests.conftest import wait_for_workers_idle, wait_until
from tests.segments.factories import ProfileFactory


def samples(client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200, response.content
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


@pytest.mark.worker
@pytest.mark.timeout(180)
def test_metrics_add_up_to_what_a_small_campaign_did(
    celery_process_factory, client, settings, tmp_path: Path
):
    # A folder of this test's own for the worker's multiprocess files, read by the page.
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    settings.SALVO_METRICS_DIR = str(metrics_dir)
    ProfileFactory.create_batch(25)
    env = {"SALVO_METRICS_DIR": str(metrics_dir)}
    with sinks_and_worker(celery_process_factory, env=env, beat=True) as (_, worker, _):
        campaign = make_campaign(actions=[email_action()])
        activate_acknowledged(campaign=campaign)
        wait_for_status(campaign, CampaignStatus.COMPLETED)
        wait_for_workers_idle([worker])
        seen = samples(client)

        # The scheduler ticks every 0.5 s: its lag stays well below the 10 s asked here.
        wait_until(
            lambda: samples(client).get(("salvo_scheduler_lag_seconds", ()), 99) < 10,
            message="no recent scheduler tick in /metrics",
        )
    assert seen[("salvo_deliveries", (("channel", "email"), ("status", "sent")))] == 25
    assert seen[("salvo_deliveries", (("channel", "email"), ("status", "pending")))] == 0
    assert seen[("salvo_executions_in_progress", ())] == 0
    assert seen[("salvo_queue_depth", (("queue", "delivery"),))] == 0
    assert ("salvo_queue_depth", (("queue", "control"),)) in seen
    # 25 recipients in batches of 10 (SMALL_BATCHES): three batch tasks at least.
    assert seen[("salvo_delivery_batch_duration_seconds_count", ())] >= 3
    assert seen[("salvo_delivery_batch_duration_seconds_sum", ())] > 0


@pytest.mark.django_db
def test_metrics_refuse_an_address_not_allowed_unless_it_has_the_token(client, settings):
    assert client.get("/metrics").status_code == 200  # the test client is 127.0.0.1
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 403

    settings.SALVO_METRICS_ALLOWED_IPS = ["10.1.2.3"]
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 200
    assert client.get("/metrics").status_code == 403

    settings.SALVO_METRICS_TOKEN = "scrape-secret"
    bearer = {"HTTP_AUTHORIZATION": "Bearer scrape-secret"}
    assert client.get("/metrics", REMOTE_ADDR="192.0.2.9", **bearer).status_code == 200
    wrong = {"HTTP_AUTHORIZATION": "Bearer guess"}
    assert client.get("/metrics", REMOTE_ADDR="192.0.2.9", **wrong).status_code == 403
