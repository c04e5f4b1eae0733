"""The campaign lifecycle as every door's tests expect it, written once.

The services, the API, the command and the admin are each checked against this table, so a
change of the lifecycle is one edit here and the doors cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from campaigns.choices import CampaignStatus as Status
from campaigns.models import Campaign, CampaignTransition, CampaignVersion

# Every state a campaign can be in, as (status, has an open draft beside a running version).
STATES: list[tuple[str, bool]] = [(s, False) for s in Status.values] + [
    (Status.SCHEDULED, True),
    (Status.LIVE, True),
]

# From which states each operation is allowed; every other state must refuse it.
ALLOWED: dict[str, set[tuple[str, bool]]] = {
    "activate": {(Status.DRAFT, False), (Status.SCHEDULED, True), (Status.LIVE, True)},
    "stop": {(Status.SCHEDULED, False), (Status.LIVE, False)}
    | {(Status.SCHEDULED, True), (Status.LIVE, True)},
    "archive": {(Status.COMPLETED, False), (Status.STOPPED, False)},
    "modify": {(Status.SCHEDULED, False), (Status.LIVE, False)},
    "discard_draft": {(Status.SCHEDULED, True), (Status.LIVE, True)},
    "duplicate": set(STATES),
    "delete": {(Status.DRAFT, False)},
    # The engine's, when the last delivery is done; no door offers it.
    "complete": {(Status.LIVE, False), (Status.LIVE, True)},
}

# The operations a user runs as an action: `POST /api/campaigns/{id}/<operation>/`,
# `manage.py campaign <operation>`. (Delete is the API's DELETE and the admin's delete page.)
ACTIONS = ("activate", "stop", "archive", "modify", "discard_draft", "duplicate")

# What a user may do from a state: the API's `allowed_operations`.
USER_OPERATIONS = (*ACTIONS, "delete")

# The approval flow's operations: open by the draft's approval state (and the campaign's
# policy), not by the status alone; see tests/campaigns/test_approval.py.
APPROVAL_OPERATIONS = ("request_approval", "approve", "reject")

# What a successful operation leaves the campaign in.
TARGET = {
    "stop": Status.STOPPED,
    "archive": Status.ARCHIVED,
    "activate": Status.ACTIVATING,
}


def version(campaign: Campaign, which: str = "draft") -> CampaignVersion:
    """The campaign's draft (or live) version, which the test knows is there."""
    found = campaign.draft_version if which == "draft" else campaign.live_version
    assert found is not None, f"{campaign} has no {which} version"
    return found


def last_step(campaign: Campaign) -> CampaignTransition:
    """The newest entry of the campaign's transition log."""
    step = campaign.transitions.first()
    assert step is not None
    return step


def snapshot(campaign: Campaign) -> tuple[Any, ...]:
    """Everything a refused request must leave as it was."""
    return (
        Campaign.objects.filter(pk=campaign.pk).values().first(),
        list(CampaignVersion.objects.filter(campaign_id=campaign.pk).values()),
        CampaignTransition.objects.filter(campaign_id=campaign.pk).count(),
        sorted(Campaign.objects.get(pk=campaign.pk).tags.names()),
    )
