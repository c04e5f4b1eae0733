"""Taking a campaign through a lifecycle transition: lock, check, apply, log.

The lowest room that changes a campaign's status. The services build every operation on
these helpers; the delivery engine uses them to complete a campaign whose last delivery is
done, so that it never imports the services (which start the engine: a cycle).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.db import transaction
from django_fsm import TransitionNotAllowed, can_proceed

from .choices import CampaignStatus
from .models import Campaign, CampaignTransition, CampaignVersion
from .operations import LIFECYCLE

if TYPE_CHECKING:
    from .selectors import Actor

Status = CampaignStatus


def transition_actor(user: Actor | None) -> Any:
    """Who the transition log names: the person, or None for the system."""
    return user if user is not None and user.is_authenticated else None


def lock_campaign(campaign: Campaign | int) -> Campaign:
    """The campaign's current row, locked until the transaction ends (call inside atomic)."""
    pk = campaign if isinstance(campaign, int) else campaign.pk
    return Campaign.objects.select_for_update().get(pk=pk)


def status_label(value: str) -> str:
    return str(Status(value).label)


def _sources_of(transition_name: str) -> list[str]:
    method = getattr(Campaign, transition_name)
    return [s for s in method._django_fsm.transitions if s in Status.values]


def transition_refusal(campaign: Campaign, transition_name: str) -> TransitionNotAllowed:
    """Why the campaign's current status refuses the transition, in a person's words."""
    step = LIFECYCLE[transition_name]
    *others, last = [status_label(s) for s in _sources_of(transition_name)]
    sources = f"{', '.join(others)} or {last}" if others else last
    message = (
        f"Cannot {step.verb} campaign “{campaign.name}”: it is "
        f"{status_label(campaign.status)}; only a {sources} campaign can be {step.done}."
    )
    if transition_name == "activate" and campaign.status in (Status.SCHEDULED, Status.LIVE):
        message = (
            f"Cannot activate campaign “{campaign.name}”: it has no open draft version. "
            "Use “modify” to open one."
        )
    return TransitionNotAllowed(message, object=campaign, method=transition_name)


def transition_apply(
    campaign: Campaign,
    name: str,
    *,
    user: Actor | None,
    reason: str = "",
    version: CampaignVersion | None = None,
    **kwargs: Any,
) -> Campaign:
    """Apply a lifecycle transition to a locked campaign, save it and log it."""
    method = getattr(campaign, name)
    if not can_proceed(method):
        raise transition_refusal(campaign, name)
    source = campaign.status
    method(**kwargs)
    campaign.save()
    transition_log(campaign, name, source=source, user=user, reason=reason, version=version)
    return campaign


def transition_log(
    campaign: Campaign,
    name: str,
    *,
    source: str,
    user: Actor | None,
    reason: str = "",
    version: CampaignVersion | None = None,
) -> None:
    """Record a step of the campaign in its transition log."""
    CampaignTransition.objects.create(
        campaign=campaign,
        name=name,
        source=source,
        target=campaign.status,
        by=transition_actor(user),
        reason=reason,
        version=version,
    )


def draft_discard(campaign: Campaign, *, user: Actor | None, why: str = "") -> None:
    """Delete the locked campaign's open draft, if any, and log it (with `why` when the
    system discards it)."""
    draft = campaign.draft_version
    if draft is None:
        return
    campaign.draft_version = None
    campaign.save()
    reason = f"Version {draft.number} discarded" + (f": {why}." if why else ".")
    transition_log(campaign, "discard_draft", source=campaign.status, user=user, reason=reason)
    draft.delete()


@transaction.atomic
def campaign_complete(*, campaign: Campaign | int, reason: str = "") -> Campaign:
    """Live → Completed: called when the last delivery of the execution is done. An open
    draft is discarded with it: a Completed campaign can never activate it."""
    campaign = lock_campaign(campaign)
    transition_apply(campaign, "complete", user=None, reason=reason)
    draft_discard(campaign, user=None, why="the campaign completed")
    return campaign
