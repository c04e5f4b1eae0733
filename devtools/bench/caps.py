"""The frequency caps' cost in the delivery benchmark: the same marketing campaign to the
same audience twice in a row, through the same worker, first with no cap rule active and
then with one active all-channel rule high enough that nobody is capped (so what the second
run adds is the check itself: the per-profile locks, the count and the reservations of
``campaigns.delivery.caps``). The benchmark's main run is a transactional campaign, which
the caps neither check nor count, so the comparison runs marketing campaigns both times.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from campaigns import caps
from campaigns.choices import FREQUENCY_CAP_MAX_LIMIT, CapPeriod
from campaigns.models import Campaign, Delivery, Execution, MarketingSend

from .data import CAMPAIGN_PREFIX

# The rule of the capped run: every channel, the highest limit a rule may have.
BENCH_CAP = {
    "name": "bench cap (nobody reaches it)",
    "limit": FREQUENCY_CAP_MAX_LIMIT,
    "period": CapPeriod.MONTH,
    "channel": "",
}


def cap_ledger_delete() -> None:
    """Drop the caps' ledger rows of earlier benchmark runs (before their deliveries go)."""
    earlier = Execution.objects.filter(campaign__name__startswith=CAMPAIGN_PREFIX)
    deliveries = Delivery.objects.filter(execution__in=earlier).values("pk")
    MarketingSend.objects.filter(delivery_id__in=deliveries).delete()


@contextmanager
def one_cap_rule() -> Iterator[None]:
    """One active cap rule while the block runs (the only active one: the figure is the
    cost of one rule), removed afterwards."""
    others = list(caps.frequency_cap_list(active=True).values_list("name", flat=True))
    if others:
        raise RuntimeError(f"active cap rules would be measured too: {', '.join(others)}")
    rule = caps.frequency_cap_create(user=None, data=BENCH_CAP)
    try:
        yield
    finally:
        caps.frequency_cap_delete(rule=rule, user=None)


def cap_cost(
    run: Callable[[str], tuple[Campaign, dict[str, Any]]], say: Callable[[str], None]
) -> dict[str, float]:
    """`run(label)` sends a marketing campaign to the benchmark's audience and returns its
    figures; once without a rule, once with `one_cap_rule`. The figures: both rates and the
    share of the throughput the check costs."""
    _, without = run("marketing, no cap rule")
    with one_cap_rule():
        campaign, capped = run("marketing, one cap rule")
    skipped = Delivery.objects.filter(execution__campaign=campaign, reason="frequency_cap").count()
    if skipped:
        say(f"warning: the cap rule skipped {skipped} deliveries: the runs differ in work")
    before, after = without["deliveries_per_s"], capped["deliveries_per_s"]
    cost = (1 - after / before) * 100 if before else 0.0
    say(
        f"frequency cap check: {before:.0f}/s without a rule, {after:.0f}/s with one "
        f"({cost:.1f}% of the throughput)"
    )
    return {
        "deliveries_per_s_marketing": round(before, 1),
        "deliveries_per_s_with_cap": round(after, 1),
        "cap_cost_pct": round(cost, 1),
    }
