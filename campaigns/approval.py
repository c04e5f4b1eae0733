"""The approval policy: when a version needs an approval, who may give it, and what each
door says about where it stands.

A campaign with `approval_required` (new campaigns take SALVO_APPROVAL_REQUIRED) activates
a version only once someone other than its last editor approved it. A Marketer writes and
asks (`request_approval`); an Approver approves or rejects, with a comment (required to
reject); an edit of an approved version voids the approval. The services that change the
state are in `campaigns.services` (`campaign_request_approval`, `campaign_approve`,
`campaign_reject`); this module holds the rules they and the selectors share, as plain
functions of the rows.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.utils import formats, timezone

from .choices import ApprovalStatus, CampaignStatus
from .exceptions import CampaignConflict
from .models import Campaign, CampaignVersion, approval_required_by_default
from .operations import APPROVE_CAMPAIGN

# The longest comment a request, an approval or a rejection keeps (characters).
APPROVAL_COMMENT_MAX_LENGTH = 2000

# The approval steps, by operation name: the approval status each one needs.
NEEDED_STATUS: dict[str, tuple[str, ...]] = {
    "request_approval": (ApprovalStatus.NOT_REQUESTED, ApprovalStatus.REJECTED),
    "approve": (ApprovalStatus.AWAITING,),
    "reject": (ApprovalStatus.AWAITING,),
}
# A version being activated or that ran is frozen: nothing about it is asked or decided.
OPEN_STATUSES = (CampaignStatus.DRAFT, CampaignStatus.SCHEDULED, CampaignStatus.LIVE)


def _username(user: Any) -> str:
    return user.get_username() if user is not None else "the system"


def _when(moment: Any) -> str:
    local = timezone.localtime(moment)
    return f"{formats.date_format(local, 'DATETIME_FORMAT')} {local.tzname()}"


def approval_step_refusal(campaign: Campaign, name: str) -> str:
    """Why the campaign's state refuses the approval step `name` now; "" when it allows it."""
    draft = campaign.draft_version
    if campaign.status not in OPEN_STATUSES or draft is None:
        return (
            f"Campaign “{campaign.name}” has no draft version waiting to be activated "
            f"(it is {CampaignStatus(campaign.status).label})."
        )
    if name == "request_approval" and not campaign.approval_required:
        return (
            f"Campaign “{campaign.name}” does not require an approval: activate it directly, "
            "or turn on “approval required” first."
        )
    if draft.approval_status not in NEEDED_STATUS[name]:
        current = ApprovalStatus(draft.approval_status).label.lower()
        if name == "request_approval":
            return f"Version {draft.number} of “{campaign.name}” is already {current}."
        return (
            f"Version {draft.number} of “{campaign.name}” is {current}: only a version awaiting "
            "approval can be approved or rejected; request an approval first."
        )
    return ""


def require_not_last_editor(version: CampaignVersion, user: Any) -> None:
    """An approval comes from someone other than the version's last editor."""
    if user is not None and version.last_edited_by_id == user.pk:
        raise PermissionDenied(
            f"You edited version {version.number} last: another user with the "
            f"“{APPROVE_CAMPAIGN}” permission must approve it."
        )


def unapproved_text(*, campaign: Campaign, version: CampaignVersion | None) -> str:
    """Why the approval policy keeps `version` from being activated, or "" when it does
    not (no policy, or approved): the activation's refusal and the review's error."""
    if not campaign.approval_required or version is None:
        return ""
    if version.approval_status == ApprovalStatus.APPROVED:
        return ""
    return (
        f"Campaign “{campaign.name}” requires an approval and version {version.number} is "
        f"{ApprovalStatus(version.approval_status).label.lower()}. Request an approval; "
        "someone other than its last editor must approve it."
    )


def require_approved_for_activation(campaign: Campaign) -> None:
    """`campaign_activate`'s check: under the approval policy the draft must be approved.
    Raises the services' state refusal (HTTP 409) saying what to do."""
    refusal = unapproved_text(campaign=campaign, version=campaign.draft_version)
    if refusal:
        raise CampaignConflict(f"Cannot activate: {refusal}")


def require_policy_change_allowed(*, campaign: Campaign | None, required: bool, user: Any) -> None:
    """Turning the approval policy off for a campaign (or creating one without it while
    SALVO_APPROVAL_REQUIRED is on) is an approver's decision, not the author's."""
    was_required = campaign.approval_required if campaign else approval_required_by_default()
    if was_required and not required and user is not None and not user.has_perm(APPROVE_CAMPAIGN):
        raise PermissionDenied(
            f"You need the “{APPROVE_CAMPAIGN}” permission to turn off the approval a "
            "campaign requires."
        )


def version_approval_text(*, campaign: Campaign, version: CampaignVersion | None) -> str:
    """Where the version stands, in a sentence for the review page, the change page, the
    API and the command: "Awaiting approval: asked by ann on 30 Nov 2026, 10:00 UTC"."""
    if version is None:
        return "No draft version."
    status = version.approval_status
    if status == ApprovalStatus.NOT_REQUESTED:
        if not campaign.approval_required:
            return "No approval required."
        return f"Approval required; not requested yet for version {version.number}."
    if status == ApprovalStatus.AWAITING:
        return (
            f"Awaiting approval: asked by {_username(version.approval_requested_by)} on "
            f"{_when(version.approval_requested_at)}."
        )
    decided = "Approved" if status == ApprovalStatus.APPROVED else "Rejected"
    comment = f": “{version.approval_comment}”" if version.approval_comment else "."
    return (
        f"{decided} by {_username(version.approval_decided_by)} on "
        f"{_when(version.approval_decided_at)}{comment}"
    )


def campaign_approval(campaign: Campaign) -> dict[str, Any]:
    """The open draft's approval, as the API and the command's JSON show it."""
    version = campaign.draft_version
    text = version_approval_text(campaign=campaign, version=version)
    if version is None:
        return {
            "version": None,
            "status": None,
            "text": text,
            "last_edited_by": None,
            "requested_by": None,
            "requested_at": None,
            "decided_by": None,
            "decided_at": None,
            "comment": "",
        }
    return {
        "version": version.number,
        "status": version.approval_status,
        "text": text,
        "last_edited_by": _name_or_none(version.last_edited_by),
        "requested_by": _name_or_none(version.approval_requested_by),
        "requested_at": version.approval_requested_at,
        "decided_by": _name_or_none(version.approval_decided_by),
        "decided_at": version.approval_decided_at,
        "comment": version.approval_comment,
    }


def _name_or_none(user: Any) -> str | None:
    return user.get_username() if user is not None else None


def clean_comment(comment: str, *, required: bool) -> str:
    """The comment as kept: trimmed, within APPROVAL_COMMENT_MAX_LENGTH, present when
    `required` (a rejection says why)."""
    comment = comment.strip()
    if required and not comment:
        raise ValidationError({"comment": "Say why the version is rejected."})
    if len(comment) > APPROVAL_COMMENT_MAX_LENGTH:
        raise ValidationError(
            {
                "comment": f"The comment is {len(comment)} characters long; at most "
                f"{APPROVAL_COMMENT_MAX_LENGTH} are kept."
            }
        )
    return comment
