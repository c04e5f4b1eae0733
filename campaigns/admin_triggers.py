"""The campaign page's triggers block: an API-triggered campaign's newest triggers, each
with its recipients and its deliveries' counts (sent, failed, skipped, pending, by
channel), read through ``campaigns.triggers`` as the API reads them.

Two queries whatever the number of triggers or deliveries: the newest
``RECENT_TRIGGERS`` triggers with their executions, and their counters.
"""

from __future__ import annotations

from typing import Any

from .choices import CampaignKind, DeliveryStatus
from .models import Campaign
from .triggers import campaign_triggers, trigger_counts

# How many of the newest triggers the block lists (the API pages through them all).
RECENT_TRIGGERS = 20


def triggers_context(*, campaign: Campaign) -> dict[str, Any]:
    """What the change page shows of triggers; nothing for a campaign of another kind."""
    if campaign.kind != CampaignKind.API_TRIGGERED:
        return {}
    triggers = list(campaign_triggers(campaign=campaign)[:RECENT_TRIGGERS])
    counts = trigger_counts(triggers=triggers)
    rows = [
        {
            "trigger": trigger,
            "by_status": [
                (status, counts[trigger.pk]["by_status"][status])
                for status in DeliveryStatus.values
            ],
            "channels": sorted(counts[trigger.pk]["by_channel"].items()),
        }
        for trigger in triggers
    ]
    return {
        "salvo_triggers": rows,
        "salvo_trigger_statuses": [
            (status, DeliveryStatus(status).label) for status in DeliveryStatus.values
        ],
        "salvo_triggers_shown": RECENT_TRIGGERS,
        "salvo_triggers_block": True,
    }
