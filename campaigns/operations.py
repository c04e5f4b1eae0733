"""The campaign lifecycle as one table: each operation's name, wording, permissions,
confirmation and service.

Read by the model (the transitions' permission), the services (the permission check and the
refusal wording), the selectors (what a user may do now), the admin (buttons, list actions,
confirmations), the API (its 403 before any lookup) and the command. A new operation is one
entry here, and one service.

Every operation a person asks for shows or changes a campaign they must be able to see: its
permissions include the view permission besides its own.

Roles (the groups of migration 0006): a Marketer writes (add, change, delete a Draft,
duplicate, modify) and asks for an approval; an Approver also approves or rejects, and
controls the run: activate, stop and archive all need `activate_campaign`, since starting,
halting and retiring what reaches the audience is one responsibility; a Viewer reads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

VIEW_CAMPAIGN = "campaigns.view_campaign"
ADD_CAMPAIGN = "campaigns.add_campaign"
CHANGE_CAMPAIGN = "campaigns.change_campaign"
DELETE_CAMPAIGN = "campaigns.delete_campaign"
ACTIVATE_CAMPAIGN = "campaigns.activate_campaign"
APPROVE_CAMPAIGN = "campaigns.approve_campaign"


@dataclass(frozen=True)
class Operation:
    name: str  # the transition / API action name: "discard_draft"
    label: str  # a button's words: "Discard draft"
    done: str  # its past participle, for "can be …" and "was …": "discarded"
    # What a person needs, all of them; empty for the system's own transitions.
    permissions: tuple[str, ...]
    service_name: str  # the function of campaigns.services that does it
    confirmation: str = ""  # irreversible operations ask first

    @property
    def verb(self) -> str:
        """The label as words in a sentence: "discard draft"."""
        return self.label.lower()

    @property
    def service(self) -> Callable[..., Any]:
        # The services read this table: they are imported when an operation is run.
        from campaigns import services

        return getattr(services, self.service_name)

    def allowed_to(self, user: Any) -> bool:
        """Whether ``user`` holds every permission the operation needs."""
        return bool(self.permissions) and user.has_perms(self.permissions)


# What people ask for, in the order the admin shows them.
OPERATIONS: dict[str, Operation] = {
    operation.name: operation
    for operation in (
        Operation(
            "activate",
            "Activate",
            "activated",
            (VIEW_CAMPAIGN, ACTIVATE_CAMPAIGN),
            "campaign_activate",
        ),
        Operation(
            "request_approval",
            "Request approval",
            "sent for approval",
            (VIEW_CAMPAIGN, CHANGE_CAMPAIGN),
            "campaign_request_approval",
        ),
        Operation(
            "approve",
            "Approve",
            "approved",
            (VIEW_CAMPAIGN, APPROVE_CAMPAIGN),
            "campaign_approve",
        ),
        Operation(
            "reject",
            "Reject",
            "rejected",
            (VIEW_CAMPAIGN, APPROVE_CAMPAIGN),
            "campaign_reject",
        ),
        Operation(
            "modify", "Modify", "modified", (VIEW_CAMPAIGN, CHANGE_CAMPAIGN), "campaign_modify"
        ),
        Operation(
            "discard_draft",
            "Discard draft",
            "discarded",
            (VIEW_CAMPAIGN, CHANGE_CAMPAIGN),
            "campaign_discard_draft",
            confirmation="Discard the open draft? Its changes are lost; the running version stays.",
        ),
        Operation(
            "stop",
            "Stop",
            "stopped",
            (VIEW_CAMPAIGN, ACTIVATE_CAMPAIGN),
            "campaign_stop",
            confirmation="Stop this campaign? No delivery starts after this, and it can never "
            "run again.",
        ),
        Operation(
            "archive", "Archive", "archived", (VIEW_CAMPAIGN, ACTIVATE_CAMPAIGN), "campaign_archive"
        ),
        Operation(
            "duplicate",
            "Duplicate",
            "duplicated",
            (VIEW_CAMPAIGN, ADD_CAMPAIGN),
            "campaign_duplicate",
        ),
        Operation(
            "delete", "Delete", "deleted", (VIEW_CAMPAIGN, DELETE_CAMPAIGN), "campaign_delete"
        ),
    )
}

# The transitions only the system takes (scheduler, activation task, delivery).
SYSTEM_TRANSITIONS: dict[str, Operation] = {
    operation.name: operation
    for operation in (
        Operation("start", "Start", "started", (), "campaigns_start_due"),
        Operation("complete", "Complete", "completed", (), "campaign_complete"),
        Operation(
            "activation_succeed",
            "Finish activation",
            "activated",
            (),
            "campaign_activation_complete",
        ),
        Operation(
            "activation_fail",
            "Fail activation",
            "returned from activation",
            (),
            "campaign_activation_complete",
        ),
    )
}

# Every step of the lifecycle, by name.
LIFECYCLE: dict[str, Operation] = {**OPERATIONS, **SYSTEM_TRANSITIONS}

# What each step the transition log records did, in a marketer's words; the record, the API
# and scripts keep the name. Read through ``step_label``.
STEP_LABELS: dict[str, str] = {
    "create": "Created",
    "duplicate": "Created as a copy",
    "modify": "Draft opened",
    "discard_draft": "Draft discarded",
    "activate": "Activation requested",
    "request_approval": "Approval requested",
    "approve": "Approved",
    "reject": "Rejected",
    "void_approval": "Approval voided by an edit",
    "activation_succeed": "Activated",
    "activation_fail": "Activation failed",
    "start": "Went live",
    "complete": "Completed: every delivery done",
    "stop": "Stopped",
    "archive": "Archived",
    "delete": "Deleted",
    # A recurring campaign's occurrence found too late (campaigns.occurrences).
    "skip_occurrence": "Occurrence skipped",
}


def step_label(name: str) -> str:
    """The log's words for the step ``name``: "activation_succeed" → "Activated". A name
    this table does not know (written by a newer release) is shown as words."""
    return STEP_LABELS.get(name) or name.replace("_", " ").capitalize()


def transition_permission(name: str) -> Callable[[Any, Any], bool]:
    """The ``permission`` of a django-fsm transition: the table's permissions for it."""
    operation = OPERATIONS[name]

    def allowed(instance: Any, user: Any) -> bool:
        return operation.allowed_to(user)

    return allowed
