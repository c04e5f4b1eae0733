"""``bench_events --attach``: the events name sent deliveries of a campaign of the run's
own, the report's counters count them (the benchmark checks the report against the events
it posted), and the report's time is printed."""

from __future__ import annotations

import pytest

from campaigns.models import Campaign, DeliveryEngagement, DeliveryEvent, EngagementCount
from devtools.bench.events import ATTACH_PREFIX
from tests.devtools.test_bench import bench_events_summary


@pytest.mark.timeout(300)
def test_bench_events_attach_counts_the_events_of_real_deliveries_and_times_the_report(
    transactional_db, monkeypatch
):
    summary = bench_events_summary(
        monkeypatch,
        *("--events", "80", "--clients", "3", "--format", "sendgrid", "--per-post", "9"),
        *("--duplicates", "0.3", "--attach"),
    )

    assert summary["deliveries"] == 80
    assert summary["report_ms"] > 0
    campaign = Campaign.objects.get(name__startswith=ATTACH_PREFIX)
    attached = DeliveryEvent.objects.filter(delivery__execution__campaign=campaign)
    assert attached.count() == 80
    counted = attached.exclude(kind="soft_bounced")
    assert DeliveryEngagement.objects.count() == counted.count()
    assert sum(EngagementCount.objects.values_list("count", flat=True)) == counted.count()
