from django.db import models


class CampaignStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    ACTIVATING = "activating", "Activating"
    SCHEDULED = "scheduled", "Scheduled"
    LIVE = "live", "Live"
    STOPPED = "stopped", "Stopped"
    COMPLETED = "completed", "Completed"
    ARCHIVED = "archived", "Archived"


# What every list shows unless the user asks for other statuses.
DEFAULT_VISIBLE_STATUSES: tuple[str, ...] = (
    CampaignStatus.DRAFT,
    CampaignStatus.SCHEDULED,
    CampaignStatus.LIVE,
)
# The query value meaning "every status" (API `?status=all`, admin "All", command `--all`).
ALL_STATUSES = "all"

STATUS_COLOURS: dict[str, str] = {
    CampaignStatus.DRAFT: "#6c757d",
    CampaignStatus.ACTIVATING: "#b58900",
    CampaignStatus.SCHEDULED: "#1f6feb",
    CampaignStatus.LIVE: "#1a7f37",
    CampaignStatus.STOPPED: "#cf222e",
    CampaignStatus.COMPLETED: "#8250df",
    CampaignStatus.ARCHIVED: "#57606a",
}


class CampaignType(models.TextChoices):
    MARKETING = "marketing", "Marketing"
    TRANSACTIONAL = "transactional", "Transactional"


class ExecutionStatus(models.TextChoices):
    RUNNING = "running", "Running"
    COMPLETED = "completed", "Completed"
    # The campaign was stopped: remaining deliveries stay pending and are never sent.
    HALTED = "halted", "Halted"
    # A step (planning, a batch) kept failing: the engine stopped retrying it and the
    # execution shows the error; remaining deliveries stay pending.
    FAILED = "failed", "Failed"


class DeliveryStatus(models.TextChoices):
    # Not sent yet: waiting for its batch, for a retry, or being sent right now (on
    # PostgreSQL a worker holds the row locked while it sends and records the outcome in the
    # same transaction; on SQLite the row carries the worker's claim until then).
    PENDING = "pending", "Pending"
    SENT = "sent", "Sent"
    FAILED = "failed", "Failed"
    SKIPPED = "skipped", "Skipped"


# A delivery in one of these states never changes again.
DELIVERY_TERMINAL_STATUSES: tuple[str, ...] = (
    DeliveryStatus.SENT,
    DeliveryStatus.FAILED,
    DeliveryStatus.SKIPPED,
)
