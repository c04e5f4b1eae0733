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


class VersionRole(models.TextChoices):
    """What one of a campaign's versions is to it now (`selectors.version_role`)."""

    DRAFT = "draft", "draft"
    SCHEDULED = "scheduled", "scheduled"  # the live version, before the campaign starts
    RUNNING = "running", "running"  # the live version while the campaign sends
    LAST_RUN = "last_run", "last run"  # the live version once the campaign has ended
    PAST = "past", "past"


class CampaignType(models.TextChoices):
    MARKETING = "marketing", "Marketing"
    TRANSACTIONAL = "transactional", "Transactional"


class CampaignKind(models.TextChoices):
    """How a campaign's sends are started, beside its type (marketing or transactional):
    once for its segment (now or at a time), on a recurring schedule (one execution per
    occurrence), or by developers through the trigger API (one execution per trigger)."""

    ONE_SHOT = "one_shot", "One-shot"
    RECURRING = "recurring", "Recurring"
    API_TRIGGERED = "api_triggered", "API-triggered"


class ApprovalStatus(models.TextChoices):
    """Where a version stands in the approval flow (see campaigns.approval)."""

    NOT_REQUESTED = "not_requested", "Not requested"
    AWAITING = "awaiting", "Awaiting approval"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"


class ExecutionStatus(models.TextChoices):
    RUNNING = "running", "Running"
    COMPLETED = "completed", "Completed"
    # The campaign was stopped: remaining deliveries stay pending and are never sent.
    HALTED = "halted", "Halted"
    # A step (planning, a batch) kept failing: the engine stopped retrying it and the
    # execution shows the error; remaining deliveries stay pending.
    FAILED = "failed", "Failed"
    # A recurring campaign's occurrence that came too late (the scheduler was down for
    # longer than SALVO_RECURRENCE_GRACE_S): recorded, never run.
    SKIPPED = "skipped", "Skipped"


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


class DeliveryReason(models.TextChoices):
    """Why a delivery was not sent (skipped or failed), or why it waits for a retry: one
    code per place the engine decides so, beside the row's human `error` text."""

    # Skipped: the recipient cannot or must not receive this channel.
    OPTED_OUT = "opted_out", "Opted out"
    NO_ADDRESS = "no_address", "No address"
    PROFILE_DELETED = "profile_deleted", "Profile deleted"
    CHANNEL_REMOVED = "channel_removed", "Channel removed by a newer version"
    # Skipped: the recipient had as many marketing messages as a frequency cap allows.
    FREQUENCY_CAP = "frequency_cap", "Frequency cap reached"
    # Skipped: the address is on the channel's suppression list (channels.Suppression).
    SUPPRESSED = "suppressed", "Suppressed address"
    # Skipped: the recipient is in the campaign's experiment holdout (campaigns.experiments).
    HOLDOUT = "holdout", "Experiment holdout"
    # Pending, not tried yet: waiting for the recipient's local send time, or for the end
    # of the quiet hours in the recipient's time zone.
    RECIPIENT_TIME = "recipient_time", "Waiting for the recipient's local time"
    QUIET_HOURS = "quiet_hours", "Waiting for quiet hours to end"
    # Pending: "test, then send the winner"; the rest of the audience waits for the winner.
    WINNER_WAIT = "winner_wait", "Waiting for the experiment's winner"
    # Failed before any provider saw it.
    BAD_PROFILE_DATA = "bad_profile_data", "Unreadable profile data"
    RENDER_ERROR = "render_error", "Content could not be rendered"
    PREPARE_ERROR = "prepare_error", "Message could not be prepared"
    # The provider's answer.
    PROVIDER_REFUSED = "provider_refused", "Refused by the provider"
    PROVIDER_ERROR = "provider_error", "Provider error, retrying"
    GAVE_UP = "gave_up", "Gave up after the maximum attempts"


class EventKind(models.TextChoices):
    """What a provider (or Salvo's own tracking) reported about a message after it was
    sent: one vocabulary for every ESP (anymail's normalized events), Twilio and FCM."""

    DELIVERED = "delivered", "Delivered"
    DEFERRED = "deferred", "Deferred"
    SOFT_BOUNCED = "soft_bounced", "Soft bounce"
    BOUNCED = "bounced", "Hard bounce"
    REJECTED = "rejected", "Rejected"
    COMPLAINED = "complained", "Complained"
    UNSUBSCRIBED = "unsubscribed", "Unsubscribed"
    OPENED = "opened", "Opened"
    CLICKED = "clicked", "Clicked"


class CheckLevel(models.TextChoices):
    """How much a review check weighs: an error blocks activation; a warning needs to be
    acknowledged by its code."""

    ERROR = "error", "Error"
    WARNING = "warning", "Warning"


class ReviewCode(models.TextChoices):
    """The review's checks (``campaigns.review``), one stable code each: a client
    acknowledges a warning by its code at every door."""

    # Errors: the version cannot be activated.
    NO_DRAFT = "no_draft", "No version to activate"
    NO_SEGMENT = "no_segment", "No segment"
    INVALID_RULES = "invalid_rules", "Invalid segment rules"
    START_IN_PAST = "start_in_past", "Start time in the past"
    NO_ACTION = "no_action", "No channel action"
    PRESET_CHANNEL = "preset_channel", "Preset of another channel"
    PRESET_INCOMPLETE = "preset_incomplete", "Preset without its sender"
    EMPTY_BODY = "empty_body", "Empty body"
    MISSING_SUBJECT = "missing_subject", "Email without a subject"
    TEMPLATE_ERROR = "template_error", "Template error"
    NOT_APPROVED = "not_approved", "Not approved"
    # Recurring campaigns (campaigns.recurrence).
    INVALID_RECURRENCE = "invalid_recurrence", "Invalid recurrence"
    NO_OCCURRENCE = "no_occurrence", "No occurrence before the end"
    # Warnings: it can be activated once someone has acknowledged them.
    EMPTY_AUDIENCE = "empty_audience", "Empty audience"
    TINY_AUDIENCE = "tiny_audience", "Tiny audience"
    UNKNOWN_VARIABLE = "unknown_variable", "Variable no profile provides"
    SMS_SEGMENTS = "sms_segments", "SMS longer than one segment"
    NO_UNSUBSCRIBE_LINK = "no_unsubscribe_link", "Marketing email without an unsubscribe link"
    UNKNOWN_RULE_ATTRIBUTE = "unknown_rule_attribute", "Segment rule on an attribute no profile has"
    NO_RECURRENCE = "no_recurrence", "Recurring campaign without a recurrence"


class ProofStatus(models.TextChoices):
    """What became of one proof message (see campaigns.proofs)."""

    PENDING = "pending", "Sending"
    SENT = "sent", "Sent"
    FAILED = "failed", "Failed"
    # The engine would not send it to this profile (opted out, no address for the channel).
    SKIPPED = "skipped", "Not sent"


# --- frequency caps (campaigns.caps) ------------------------------------------------------


class CapPeriod(models.TextChoices):
    """The rolling window a frequency cap counts in: the last 24 hours, 7 days or 30 days
    before each send (not calendar days, weeks or months)."""

    DAY = "day", "Day (rolling 24 hours)"
    WEEK = "week", "Week (rolling 7 days)"
    MONTH = "month", "Month (rolling 30 days)"


CAP_PERIOD_SECONDS: dict[str, int] = {
    CapPeriod.DAY: 24 * 3600,
    CapPeriod.WEEK: 7 * 24 * 3600,
    CapPeriod.MONTH: 30 * 24 * 3600,
}
# A cap allows from 1 to this many marketing messages per period: a larger number caps
# nothing a person would notice, and each check counts up to this many sends per profile.
FREQUENCY_CAP_MAX_LIMIT = 1000


# Content experiments (campaigns.experiments): an action's own content is variant A, and up
# to EXPERIMENT_MAX_VARIANTS - 1 more variants (B, C, …) each take a share of the audience;
# A keeps the rest. The labels are letters, so the limit is also the number of letters.
EXPERIMENT_MAX_VARIANTS = 5
VARIANT_LABELS: tuple[str, ...] = ("A", "B", "C", "D", "E")[:EXPERIMENT_MAX_VARIANTS]
# A version may hold back at most this share (%) of its audience as the holdout.
EXPERIMENT_MAX_HOLDOUT_SHARE = 50
# The group of an assignment held back from every message of the campaign.
HOLDOUT_GROUP = "holdout"
# "Test, then send the winner": the group of the audience that waits for the winner.
REST_GROUP = "rest"
# The longest a test may run before its winner goes to the rest.
EXPERIMENT_WINNER_AFTER_MAX_DAYS = 30


class ExperimentMetric(models.TextChoices):
    """What an experiment's variants are compared on (campaigns.experiments counts each)."""

    OPENED = "opened", "Opens"
    CLICKED = "clicked", "Clicks"
    CONVERTED = "converted", "Conversions"
