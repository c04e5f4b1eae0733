from __future__ import annotations

import datetime as dt
import zoneinfo
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django_fsm import RETURN_VALUE, ConcurrentTransitionMixin, FSMField, transition
from taggit.managers import TaggableManager

from channels.choices import ChannelKind
from channels.models import QUIET_HOURS_HELP, quiet_hours_pair_constraint

from .choices import (
    EXPERIMENT_MAX_HOLDOUT_SHARE,
    EXPERIMENT_WINNER_AFTER_MAX_DAYS,
    FREQUENCY_CAP_MAX_LIMIT,
    VARIANT_LABELS,
    ApprovalStatus,
    CampaignKind,
    CampaignStatus,
    CampaignType,
    CapPeriod,
    DeliveryReason,
    DeliveryStatus,
    EventKind,
    ExecutionStatus,
    ExperimentMetric,
    ProofStatus,
)
from .operations import step_label, transition_permission

Status = CampaignStatus


def time_zone_choices() -> list[tuple[str, str]]:
    """Every IANA time zone this machine knows (zoneinfo), by name: what a marketer may
    choose as their own."""
    return [(name, name.replace("_", " ")) for name in sorted(zoneinfo.available_timezones())]


def site_time_zone() -> str:
    return str(settings.TIME_ZONE)


def approval_required_by_default() -> bool:
    """A new campaign's approval policy: SALVO_APPROVAL_REQUIRED (see campaigns.approval)."""
    return bool(settings.SALVO_APPROVAL_REQUIRED)


def has_draft_version(campaign: Any) -> bool:
    return campaign.draft_version_id is not None


TRACKING_HELP = (
    "Marketing email only: {what}. Effective only when SALVO_PUBLIC_URL (where recipients "
    "reach Salvo) and SALVO_TRACKING_SECRET are set; transactional messages and other "
    "channels are never tracked."
)


class Campaign(ConcurrentTransitionMixin, models.Model):
    """A campaign's identity and lifecycle; its content lives in versions."""

    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True)
    type = models.CharField(
        max_length=16,
        choices=CampaignType.choices,
        default=CampaignType.MARKETING,
        help_text="Transactional campaigns (legal notices…) ignore marketing opt-outs.",
    )
    kind = models.CharField(
        max_length=16,
        choices=CampaignKind.choices,
        default=CampaignKind.ONE_SHOT,
        help_text="One-shot: sent once to its segment, now or at a time. Recurring: sent to "
        "its segment at every occurrence of its schedule. API-triggered: sent to the "
        "recipients each trigger call names.",
    )
    tags = TaggableManager(blank=True)
    approval_required = models.BooleanField(
        default=approval_required_by_default,
        help_text="A version must be approved by someone other than its last editor before "
        "it can be activated. New campaigns follow SALVO_APPROVAL_REQUIRED.",
    )
    status = FSMField(
        max_length=16,
        choices=Status.choices,
        default=Status.DRAFT,
        protected=True,
        db_index=True,
    )
    live_version = models.OneToOneField(
        "CampaignVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    draft_version = models.OneToOneField(
        "CampaignVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    activation_error = models.TextField(
        blank=True, help_text="Why the last activation failed; empty once one succeeds."
    )
    activation_attempts = models.PositiveSmallIntegerField(
        default=0,
        editable=False,
        help_text="Runs of the activation task sent for the current activation (first, "
        "retries after an error, and again when one was lost); bounded by "
        "SALVO_STEP_MAX_ATTEMPTS.",
    )
    started_at = models.DateTimeField(null=True, blank=True, help_text="When it first went Live.")
    # A recurring campaign's next occurrence (campaigns.occurrences): the scheduler starts
    # it once this time has come and moves it on under the campaign's row lock, so two
    # schedulers never start one occurrence twice. Empty once the last one has started.
    next_run_at = models.DateTimeField(null=True, blank=True, editable=False, db_index=True)
    # Frequency caps (campaigns.caps): set only by a user holding
    # campaigns.exempt_campaign_from_caps.
    frequency_cap_exempt = models.BooleanField(
        default=False,
        help_text="Its marketing messages go out whatever the frequency caps say (they still "
        "count towards the caps of other campaigns). Needs the “exempt from frequency caps” "
        "permission.",
    )
    # Own tracking (campaigns.tracking): the campaign's, not a version's, so that every
    # version of a campaign is measured alike and their open and click rates compare.
    track_opens = models.BooleanField(
        default=False,
        help_text=TRACKING_HELP.format(
            what="an invisible image that records when an email is opened (images shown)"
        ),
    )
    track_clicks = models.BooleanField(
        default=False,
        help_text=TRACKING_HELP.format(
            what="links rewritten to pass through Salvo, which "
            "records the click and sends the reader on"
        ),
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        permissions = [
            ("activate_campaign", "Can activate a campaign"),
            ("approve_campaign", "Can approve or reject a campaign version"),
            ("exempt_campaign_from_caps", "Can exempt a campaign from frequency caps"),
            ("trigger_campaign", "Can trigger an API-triggered campaign"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=Status.values), name="campaign_status_valid"
            ),
            models.CheckConstraint(
                condition=Q(kind__in=CampaignKind.values), name="campaign_kind_valid"
            ),
            models.CheckConstraint(
                condition=Q(live_version__isnull=True)
                | Q(draft_version__isnull=True)
                | ~Q(live_version=models.F("draft_version")),
                name="campaign_live_and_draft_differ",
            ),
            # Only a campaign that has never run may lack a live version…
            models.CheckConstraint(
                condition=Q(status__in=[Status.DRAFT, Status.ACTIVATING])
                | Q(live_version__isnull=False),
                name="campaign_activated_has_live_version",
            ),
            # …and a Draft never has one: a failed re-activation returns to the old status.
            models.CheckConstraint(
                condition=~Q(status=Status.DRAFT) | Q(live_version__isnull=True),
                name="campaign_draft_has_no_live_version",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def has_open_draft(self) -> bool:
        """A draft version beside a running one (the mark the lists show)."""
        return self.draft_version_id is not None and self.live_version_id is not None

    # --- Lifecycle: one method per transition of the design's table -------------------

    @transition(
        field=status,
        source=[Status.DRAFT, Status.SCHEDULED, Status.LIVE],
        target=Status.ACTIVATING,
        permission=transition_permission("activate"),
        conditions=[has_draft_version],
    )
    def activate(self) -> None:
        self.activation_error = ""
        self.activation_attempts = 1  # the activation task is sent once this commits

    @transition(
        field=status,
        source=Status.ACTIVATING,
        target=RETURN_VALUE(Status.SCHEDULED, Status.LIVE),
    )
    def activation_succeed(self, *, start_at: dt.datetime | None, now: dt.datetime) -> str:
        self.activation_error = ""  # an attempt that failed before this one is history
        return Status.SCHEDULED if start_at is not None and start_at > now else Status.LIVE

    @transition(
        field=status,
        source=Status.ACTIVATING,
        target=RETURN_VALUE(Status.DRAFT, Status.SCHEDULED, Status.LIVE),
    )
    def activation_fail(self, *, error: str, return_to: str) -> str:
        """Back to the status activation began from: a failed re-activation of a running
        campaign leaves it running as it was, with its draft still open."""
        self.activation_error = error
        return return_to if self.live_version_id is not None else Status.DRAFT

    @transition(field=status, source=Status.SCHEDULED, target=Status.LIVE)
    def start(self, *, now: dt.datetime) -> None:
        if self.started_at is None:
            self.started_at = now

    @transition(field=status, source=Status.LIVE, target=Status.COMPLETED)
    def complete(self) -> None:
        pass

    @transition(
        field=status,
        source=[Status.SCHEDULED, Status.LIVE],
        target=Status.STOPPED,
        permission=transition_permission("stop"),
    )
    def stop(self) -> None:
        pass

    @transition(
        field=status,
        source=[Status.COMPLETED, Status.STOPPED],
        target=Status.ARCHIVED,
        permission=transition_permission("archive"),
    )
    def archive(self) -> None:
        pass


class CampaignVersion(models.Model):
    """The editable content of a campaign: audience, schedule and channel actions.

    Frozen once activated: a running version never changes under a running execution.
    """

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    segment = models.ForeignKey(
        "segments.Segment",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="campaign_versions",
    )
    start_at = models.DateTimeField(
        null=True, blank=True, help_text="Leave empty to start as soon as it is activated."
    )
    time_zone = models.CharField(
        max_length=64,
        choices=time_zone_choices,
        default=site_time_zone,
        help_text="The zone the schedule's clock times (a recurrence's “at”, quiet hours) are "
        "read in, and the zone of recipients who have none.",
    )
    # A recurring campaign's schedule (campaigns.recurrence, validated by the services):
    # {"every", "interval", "at", "weekdays", "month_days"}, read in `time_zone`.
    recurrence = models.JSONField(null=True, blank=True)
    end_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="A recurring campaign's last occurrence is the last at or before this time; "
        "empty: no end.",
    )
    once_per_profile = models.BooleanField(
        default=False,
        help_text="A recurring campaign sends each channel to a profile once: an occurrence "
        "leaves out whoever an earlier one reached on that channel.",
    )
    # Sending in each recipient's local time, and quiet hours (campaigns.delivery.timing).
    in_recipient_time_zone = models.BooleanField(
        default=False,
        help_text="Send at the start's date and clock time (read in the schedule's time zone) "
        "in each recipient's own time zone: the campaign goes Live when the earliest zone "
        "reaches it, up to 26 hours before the last.",
    )
    quiet_hours_start = models.TimeField(
        null=True,
        blank=True,
        help_text=QUIET_HOURS_HELP + " Set here, they replace the presets' quiet hours.",
    )
    quiet_hours_end = models.TimeField(null=True, blank=True)
    # Content experiments (campaigns.experiments).
    holdout_share = models.PositiveSmallIntegerField(
        default=0,
        validators=[MaxValueValidator(EXPERIMENT_MAX_HOLDOUT_SHARE)],
        help_text=f"Percent of the audience held back (0 to {EXPERIMENT_MAX_HOLDOUT_SHARE}): "
        "they get no message of this campaign, and the experiment measures the variants "
        "against them.",
    )
    test_share = models.PositiveSmallIntegerField(
        default=0,
        validators=[MaxValueValidator(99)],
        help_text="Test, then send the winner: percent of the audience (besides the holdout) "
        "that gets the variants first; the rest gets the winner once the test ends. 0: "
        "everyone gets the variants at once.",
    )
    winner_after = models.DurationField(
        null=True,
        blank=True,
        help_text=f"How long the test runs before its winner goes to the rest (at most "
        f"{EXPERIMENT_WINNER_AFTER_MAX_DAYS} days).",
    )
    winner_metric = models.CharField(
        max_length=16,
        choices=ExperimentMetric.choices,
        default=ExperimentMetric.OPENED,
        help_text="What picks the winner. Without a significant difference the best observed "
        "rate wins (a tie: the earlier letter, so A before B).",
    )
    activated_at = models.DateTimeField(null=True, blank=True, editable=False)
    activated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    # Who wrote its content last (created, copied or edited it): the one person who may not
    # approve it.
    last_edited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # The approval flow (campaigns.approval): an edit puts an approved version back to
    # "not requested"; the log keeps every request and decision with its comment.
    approval_status = models.CharField(
        max_length=16,
        choices=ApprovalStatus.choices,
        default=ApprovalStatus.NOT_REQUESTED,
        db_index=True,
    )
    approval_requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    approval_requested_at = models.DateTimeField(null=True, blank=True)
    approval_decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    approval_decided_at = models.DateTimeField(null=True, blank=True)
    approval_comment = models.TextField(blank=True)

    class Meta:
        ordering = ["campaign", "-number"]
        constraints = [
            models.UniqueConstraint(
                fields=["campaign", "number"], name="campaign_version_number_unique"
            ),
            models.CheckConstraint(
                condition=Q(approval_status__in=ApprovalStatus.values),
                name="campaign_version_approval_status_valid",
            ),
            quiet_hours_pair_constraint("campaign_version_quiet_hours_both_or_neither"),
            models.CheckConstraint(
                condition=Q(holdout_share__lte=EXPERIMENT_MAX_HOLDOUT_SHARE),
                name="campaign_version_holdout_share_range",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.campaign} v{self.number}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None and self.is_frozen:
            stored = type(self).objects.filter(pk=self.pk, activated_at__isnull=True).exists()
            if not stored:
                raise ValidationError(f"Version {self.number} is activated and cannot change.")
        super().save(*args, **kwargs)

    @property
    def is_frozen(self) -> bool:
        return self.activated_at is not None


# The content of an action (and of each of its variants): what a marketer writes, every
# door edits, a version copies and the engine renders. Read from here everywhere.
ACTION_CONTENT_FIELDS: tuple[str, ...] = ("subject", "body")
# An email's optional HTML part, sent beside the text body (multipart/alternative).
ACTION_CONTENT_FIELDS += ("html_body",)


def html_body_refusal(channel: str) -> str:
    """Why an action of ``channel`` cannot carry an HTML part ('' when it can)."""
    if channel == ChannelKind.EMAIL or channel not in ChannelKind.values:
        return ""  # an unknown channel is refused as such
    return (
        f"Only an email has an HTML part; a {ChannelKind(channel).label} message sends its "
        "body only. Leave it empty."
    )


class ChannelAction(models.Model):
    """One channel of a version: what goes out, from which preset."""

    version = models.ForeignKey(CampaignVersion, on_delete=models.CASCADE, related_name="actions")
    channel = models.CharField(max_length=16, choices=ChannelKind.choices)
    preset = models.ForeignKey(
        "channels.MessagePreset", on_delete=models.PROTECT, related_name="actions"
    )
    subject = models.CharField(
        max_length=255, blank=True, help_text="Email subject or push title; ignored by SMS."
    )
    body = models.TextField()
    html_body = models.TextField(
        "HTML body",
        blank=True,
        default="",
        help_text="Email only, optional: an HTML version of the body, sent beside it (mail "
        "programs show one or the other). Profile values are HTML-escaped.",
    )

    class Meta:
        ordering = ["version", "channel"]
        constraints = [
            models.CheckConstraint(
                condition=Q(html_body="") | Q(channel=ChannelKind.EMAIL),
                name="channel_action_html_body_email_only",
            ),
            models.UniqueConstraint(
                fields=["version", "channel"], name="channel_action_one_per_channel"
            ),
            models.CheckConstraint(
                condition=Q(channel__in=ChannelKind.values), name="channel_action_channel_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_channel_display()} · {self.version}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if CampaignVersion.objects.filter(pk=self.version_id, activated_at__isnull=False).exists():
            raise ValidationError("The version is activated; its actions cannot change.")
        super().save(*args, **kwargs)

    def clean(self) -> None:
        if self.html_body and html_body_refusal(self.channel):
            raise ValidationError({"html_body": html_body_refusal(self.channel)})
        if self.preset_id is not None and self.preset.channel != self.channel:
            preset_kind = self.preset.get_channel_display()
            raise ValidationError(
                {
                    "preset": f"Preset “{self.preset.name}” is a {preset_kind} preset; "
                    f"this action is {self.get_channel_display()}."
                }
            )


class Variant(models.Model):
    """Another content of an action, sent to the share of the audience assigned its label
    (campaigns.experiments). The action's own content is variant A, which keeps the share
    the other variants leave; a variant's parts match A's (an HTML part exactly when the
    action has one); a version's variants are copied with it and frozen with it."""

    action = models.ForeignKey(ChannelAction, on_delete=models.CASCADE, related_name="variants")
    label = models.CharField(max_length=1, choices=[(label, label) for label in VARIANT_LABELS[1:]])
    share = models.PositiveSmallIntegerField(
        validators=[MinValueValidator(1), MaxValueValidator(99)],
        help_text="Percent of the tested audience that gets this variant; variant A (the "
        "action's own content) gets what the others leave.",
    )
    subject = models.CharField(max_length=255, blank=True)
    body = models.TextField()
    # The variant's own HTML part: given exactly when its action has one (an email's).
    html_body = models.TextField(
        "HTML body",
        blank=True,
        default="",
        help_text="The variant's HTML part: required when the action (variant A) has one, "
        "empty when it has none. Profile values are HTML-escaped.",
    )

    class Meta:
        ordering = ["action", "label"]
        constraints = [
            models.UniqueConstraint(fields=["action", "label"], name="variant_label_per_action"),
            models.CheckConstraint(
                condition=Q(label__in=VARIANT_LABELS[1:]), name="variant_label_valid"
            ),
            models.CheckConstraint(
                condition=Q(share__gte=1, share__lte=99), name="variant_share_range"
            ),
        ]

    def __str__(self) -> str:
        return f"Variant {self.label} of {self.action}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if ChannelAction.objects.filter(
            pk=self.action_id, version__activated_at__isnull=False
        ).exists():
            raise ValidationError("The version is activated; its variants cannot change.")
        super().save(*args, **kwargs)


class CampaignTransition(models.Model):
    """The audit trail: every lifecycle step of a campaign, who took it and why."""

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="transitions")
    name = models.CharField(max_length=32)
    source = models.CharField(max_length=16, choices=Status.choices)
    target = models.CharField(max_length=16, choices=Status.choices)
    version = models.ForeignKey(
        CampaignVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    at = models.DateTimeField(auto_now_add=True, db_index=True)
    reason = models.TextField(blank=True)

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.campaign}: {self.name} {self.source} → {self.target}"

    @property
    def label(self) -> str:
        """What the step did, in words: "Activated" for ``activation_succeed``."""
        return step_label(self.name)


class Execution(models.Model):
    """One run of a campaign version: its audience snapshot and the progress of delivery.

    Planning walks the audience in profile-id chunks up to `audience_max_profile_id` (the
    highest profile id when the run began), inserting delivery rows as it goes;
    `dispatched_through` is how far batches have been handed to the workers.
    """

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="executions")
    version = models.ForeignKey(CampaignVersion, on_delete=models.PROTECT, related_name="+")
    snapshot = models.OneToOneField(
        "segments.AudienceSnapshot",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="execution",
    )
    status = models.CharField(
        max_length=16, choices=ExecutionStatus.choices, default=ExecutionStatus.RUNNING
    )
    # The moment this run is for: a one-shot campaign's start, a recurring campaign's
    # occurrence (empty for a trigger's run: its trigger says when it came); sending in each
    # recipient's time zone reads its date and clock time there.
    scheduled_for = models.DateTimeField(null=True, blank=True)
    audience_max_profile_id = models.BigIntegerField(default=0)
    planned_through = models.BigIntegerField(
        default=0, help_text="Delivery rows exist for every audience profile id up to this."
    )
    planning_done = models.BooleanField(default=False)
    dispatched_through = models.BigIntegerField(
        default=0, help_text="Batches were sent to the workers for profile ids up to this."
    )
    audience_size = models.PositiveIntegerField(default=0)
    started_at = models.DateTimeField(auto_now_add=True)
    last_progress_at = models.DateTimeField(
        null=True, blank=True, help_text="Last time a batch finished or was handed out."
    )
    finished_at = models.DateTimeField(null=True, blank=True)
    # Retention (campaigns.retention) dropped the run's deliveries then; its counters stay,
    # and with them the report.
    deliveries_dropped_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When retention dropped its deliveries (the report keeps their counts).",
    )
    # Set by the stall check when every unfinished delivery waits for a later time (the
    # recipient's local time, the end of quiet hours): no progress is expected before it.
    waiting_until = models.DateTimeField(null=True, blank=True)
    # The last failure of a step of this run (planning, a batch), kept until that step
    # succeeds; once a step used up SALVO_STEP_MAX_ATTEMPTS the execution is Failed and
    # these say why.
    error_step = models.CharField(max_length=200, blank=True, help_text="What failed.")
    error = models.TextField(blank=True, help_text="The exception, as the worker saw it.")
    error_at = models.DateTimeField(null=True, blank=True)
    error_attempts = models.PositiveSmallIntegerField(
        default=0, help_text="Attempts of that step that failed in a row."
    )

    class Meta:
        ordering = ["-started_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=ExecutionStatus.values), name="execution_status_valid"
            ),
            # One execution per occurrence of a recurring campaign, whatever the schedulers.
            models.UniqueConstraint(
                fields=["campaign", "scheduled_for"],
                condition=Q(scheduled_for__isnull=False),
                name="execution_once_per_occurrence",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.version} run {self.pk}"


class Delivery(models.Model):
    """One channel action for one profile in one execution: sent at most once."""

    # Rows are written by the million with INSERT … SELECT from rows that exist: per-row
    # constraint triggers and extra indexes would halve that rate, so the foreign keys are
    # kept by the ORM (on_delete) and the unique constraint's index serves every lookup.
    # No index holds a column that sending changes (status, texts, times), so recording an
    # outcome is a heap-only update that rewrites no index (see the fillfactor in
    # migration 0003).
    execution = models.ForeignKey(
        Execution,
        on_delete=models.CASCADE,
        related_name="deliveries",
        db_constraint=False,
        db_index=False,
    )
    action = models.ForeignKey(
        ChannelAction,
        on_delete=models.PROTECT,
        related_name="deliveries",
        db_constraint=False,
        db_index=False,
    )
    # A delivery is history that outlives the profile it went to.
    profile = models.ForeignKey(
        "segments.Profile",
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_index=False,
        related_name="deliveries",
    )
    status = models.CharField(
        max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING
    )
    # The version whose content the delivery was decided with (sent, skipped or failed,
    # or its last attempt while it waits for a retry); empty until then. The action above
    # names the channel within the execution; while the campaign sends, a newer version's
    # action of that channel gives the content (see campaigns.delivery). A delivery is
    # history: nothing here stops a version from going, and no index is kept for it.
    version = models.ForeignKey(
        CampaignVersion,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_index=False,
        related_name="+",
    )
    # Why it was not sent (skipped, failed, or pending a retry), as a code the reports
    # count; `error` says the same for a person, with the details.
    reason = models.CharField(max_length=32, choices=DeliveryReason.choices, blank=True, default="")
    attempts = models.PositiveSmallIntegerField(default=0)
    provider_message_id = models.CharField(max_length=255, blank=True, default="")
    error = models.TextField(blank=True, default="")
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    # SQLite only: the claim of the worker sending the row now, which holds it until
    # `next_attempt_at` (its lease); see campaigns.delivery. Always empty on PostgreSQL,
    # where the sending worker holds the row locked instead.
    claim = models.UUIDField(null=True, blank=True, editable=False)
    sent_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        # By the columns: ordering by the relations would join their tables to every query.
        ordering = ["execution_id", "action_id", "profile_id"]
        verbose_name_plural = "deliveries"
        constraints = [
            models.UniqueConstraint(
                fields=["execution", "action", "profile"], name="delivery_once_per_recipient"
            ),
            models.CheckConstraint(
                condition=Q(status__in=DeliveryStatus.values), name="delivery_status_valid"
            ),
            models.CheckConstraint(
                condition=Q(reason__in=["", *DeliveryReason.values]), name="delivery_reason_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.action} → {self.profile_id}: {self.status}"


class DeliveryEvent(models.Model):
    """One thing a provider, or Salvo's own tracking, reported about a sent message: kept
    once per provider event (``event_id``: the provider's own id of the event, or a digest
    of what makes it unique), so that a provider sending it twice records it once.

    ``delivery`` is found from what the message carried (Salvo's delivery id, which goes
    out with every message as its idempotency key and metadata, and exists from planning
    on). No database constraint ties it to the delivery: a foreign key's check would wait
    on the row lock of the chunk that is sending it.

    On PostgreSQL the table is partitioned by ``execution_id`` (migration 0023), so its
    unique key holds ``execution_id`` too: an event is kept once per provider event and
    execution, which is once, since an event is about one delivery."""

    provider = models.CharField(max_length=32)
    event_id = models.CharField(max_length=255)
    kind = models.CharField(max_length=16, choices=EventKind.choices)
    delivery = models.ForeignKey(
        Delivery,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="events",
    )
    # The execution of its delivery, 0 when it names none that exists: what the events are
    # partitioned by on PostgreSQL, beside their deliveries, so that retention drops a
    # month of them whole (``campaigns.delivery.partitions``). A number, not a foreign key:
    # 0 names no execution, and the column must never be empty (it is in the primary key).
    execution_id = models.BigIntegerField(default=0, editable=False)
    provider_message_id = models.CharField(max_length=255, blank=True, default="", db_index=True)
    channel = models.CharField(max_length=16, choices=ChannelKind.choices)
    recipient = models.CharField(max_length=320, blank=True, default="")
    occurred_at = models.DateTimeField()
    received_at = models.DateTimeField(auto_now_add=True)
    # What the provider said (a bounce's reply), or the link a click followed.
    detail = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-occurred_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["provider", "event_id"], name="delivery_event_once"),
            models.CheckConstraint(
                condition=Q(kind__in=EventKind.values), name="delivery_event_kind_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} · {self.recipient or self.provider_message_id}"


class ExecutionActionCounter(models.Model):
    """A number of deliveries of one action of an execution, in one status: what the
    engine's counters share. Every worker's transaction updates these rows last thing
    before it commits: a constraint check would also lock the execution row, which
    planning holds, so the relations are kept by the ORM."""

    execution = models.ForeignKey(
        Execution,
        on_delete=models.CASCADE,
        related_name="+",
        db_constraint=False,
        db_index=False,
    )
    action = models.ForeignKey(
        ChannelAction,
        on_delete=models.PROTECT,
        related_name="+",
        db_constraint=False,
        db_index=False,
    )
    status = models.CharField(max_length=16, choices=DeliveryStatus.choices)
    count = models.BigIntegerField(default=0)

    class Meta:
        abstract = True


class DeliveryCount(ExecutionActionCounter):
    """How many deliveries of one action of an execution are in one status, decided with
    one version for one reason.

    Kept up to date in the transactions that change deliveries (planning adds pending
    rows, each sent chunk moves its rows on), so that progress bars, the report and the
    completion check read a handful of rows instead of counting millions. Pending rows are
    counted under the execution's own version and no reason: they are not decided yet (a
    row waiting for a retry shows its reason on the row itself). A finished row is counted
    under the version whose content decided it and, when not sent, its reason.
    """

    version = models.ForeignKey(
        CampaignVersion,
        on_delete=models.DO_NOTHING,
        related_name="+",
        db_constraint=False,
        db_index=False,
    )
    reason = models.CharField(max_length=32, choices=DeliveryReason.choices, blank=True, default="")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["execution", "action", "version", "status", "reason"],
                name="delivery_count_per_outcome",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.action} {self.status} {self.reason}: {self.count}"


# The width of a timeline bucket, in seconds: fine enough that a one-minute campaign draws
# a dozen points, and the report merges buckets for longer runs (a three-hour one is 2,160
# buckets per channel and status, merged in the database into a chart's worth of points).
TIMELINE_BUCKET_S = 5


class DeliveryTimeline(ExecutionActionCounter):
    """How many deliveries of one action of an execution finished in one status during one
    TIMELINE_BUCKET_S-second bucket: what the report's chart and its current rate read.

    Written beside the `DeliveryCount` rows, in the same transaction as the deliveries it
    counts, by the time the outcome was recorded (the sent time of a sent delivery)."""

    # The bucket's start, in whole seconds since the Unix epoch (a multiple of
    # TIMELINE_BUCKET_S): an integer the report can round down to any coarser interval by
    # integer division, in SQL on every database.
    bucket = models.BigIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["execution", "action", "bucket", "status"],
                name="delivery_timeline_per_bucket",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.action} {self.status} @{self.bucket}: {self.count}"


class ProofSend(models.Model):
    """One proof message: a variant of an action of a version (A: the action's own
    content) sent to one test profile when someone asked for a proof (campaigns.proofs).
    Kept apart from `Delivery` on purpose: a proof belongs to no execution, counts in no
    report and does not make a profile "already sent" for the campaign's real sends."""

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="proof_sends")
    version = models.ForeignKey(CampaignVersion, on_delete=models.CASCADE, related_name="+")
    action = models.ForeignKey(ChannelAction, on_delete=models.CASCADE, related_name="+")
    variant = models.CharField(
        max_length=1,
        choices=[(label, label) for label in VARIANT_LABELS],
        default=VARIANT_LABELS[0],
        help_text="The action's variant the proof sent: A is the action's own content.",
    )
    profile = models.ForeignKey("segments.Profile", on_delete=models.CASCADE, related_name="+")
    status = models.CharField(
        max_length=16, choices=ProofStatus.choices, default=ProofStatus.PENDING
    )
    provider_message_id = models.CharField(max_length=255, blank=True, default="")
    error = models.TextField(blank=True, default="")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        # The permission to send one (held by the Marketer group): on this model rather
        # than on Campaign, whose Meta the lifecycle's permissions live in.
        permissions = [("send_proof", "Can send a proof of a campaign")]
        indexes = [
            # The campaign page's and the API's list: a campaign's newest proofs first.
            models.Index(fields=["campaign", "-created_at", "-id"], name="proof_send_recent"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=ProofStatus.values), name="proof_send_status_valid"
            ),
            models.CheckConstraint(
                condition=Q(variant__in=VARIANT_LABELS), name="proof_send_variant_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"Proof of {self.action}, variant {self.variant} → {self.profile_id}: {self.status}"


class UserPreference(models.Model):
    """A user's own settings for the admin: the time zone every time is shown in and every
    schedule they type is read in (campaigns.middleware.AdminTimeZoneMiddleware). A user
    without one works in the site's TIME_ZONE."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="preference"
    )
    time_zone = models.CharField(
        max_length=64,
        choices=time_zone_choices,
        default=site_time_zone,
        help_text="Times in the admin are shown in this zone, and schedules you type are "
        "read in it.",
    )

    def __str__(self) -> str:
        return f"{self.user}: {self.time_zone}"


# --- API triggers (campaigns.triggers) ------------------------------------------------


class Trigger(models.Model):
    """One call that triggered an API-triggered campaign for the recipients it named: it
    owns one execution of the running version, whose delivery rows it wrote. The
    idempotency key is unique per campaign, so a repeated call (even two racing) finds this
    trigger instead of sending again."""

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="triggers")
    execution = models.OneToOneField(
        Execution, on_delete=models.CASCADE, related_name="trigger", editable=False
    )
    idempotency_key = models.CharField(max_length=255)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    recipients = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["campaign", "idempotency_key"], name="trigger_once_per_idempotency_key"
            ),
        ]

    def __str__(self) -> str:
        return f"Trigger {self.pk} of {self.campaign}"


class TriggerRecipient(models.Model):
    """The context one recipient of a trigger was given, read by each chunk of its
    execution in one query (the unique index on (execution, profile) serves it) and shown
    to content as ``{{ context.<key> }}``."""

    execution = models.ForeignKey(
        Execution,
        on_delete=models.CASCADE,
        related_name="+",
        db_constraint=False,
        db_index=False,
    )
    # History that outlives the profile, as a delivery does.
    profile = models.ForeignKey(
        "segments.Profile",
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_index=False,
        related_name="+",
    )
    context = models.JSONField(default=dict, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["execution", "profile"], name="trigger_recipient_once_per_execution"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.execution_id} → {self.profile_id}"


# --- frequency caps (campaigns.caps, campaigns.delivery.caps) ------------------------------


class FrequencyCap(models.Model):
    """A rule: at most `limit` marketing messages per profile within a rolling `period`, on
    one channel or on all channels. Transactional campaigns are neither capped nor counted."""

    name = models.CharField(max_length=200, unique=True)
    channel = models.CharField(
        max_length=16,
        choices=ChannelKind.choices,
        blank=True,
        help_text="The channel whose messages it counts and caps; empty: all channels together.",
    )
    limit = models.PositiveIntegerField(
        validators=[MinValueValidator(1), MaxValueValidator(FREQUENCY_CAP_MAX_LIMIT)],
        help_text=f"At most this many marketing messages per profile within the period "
        f"(1 to {FREQUENCY_CAP_MAX_LIMIT:,}).",
    )
    period = models.CharField(
        max_length=8,
        choices=CapPeriod.choices,
        help_text="A rolling window before each send: day = the last 24 hours, week = the "
        "last 7 days, month = the last 30 days.",
    )
    active = models.BooleanField(default=True, help_text="Only active rules cap anything.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(limit__gte=1, limit__lte=FREQUENCY_CAP_MAX_LIMIT),
                name="frequency_cap_limit_range",
            ),
            models.CheckConstraint(
                condition=Q(period__in=CapPeriod.values), name="frequency_cap_period_valid"
            ),
            models.CheckConstraint(
                condition=Q(channel__in=["", *ChannelKind.values]),
                name="frequency_cap_channel_valid",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class MarketingSend(models.Model):
    """The caps' ledger: one row per marketing message sent, or reserved by a worker about
    to send it (``campaigns.delivery.caps``). The caps count these rows, never the
    deliveries (which have no index by profile).

    The index on (profile, at) serves the count of one profile's sends within a period; the
    unique delivery id lets a delivery find its own reservation (a crashed worker's row sent
    again counts once). No foreign keys: rows are written in every chunk, and a send stays
    counted after its profile or campaign is gone. Rows older than the longest cap period
    are deleted every hour (``campaigns.retention.caps_ledger_trim``)."""

    profile_id = models.BigIntegerField()
    channel = models.CharField(max_length=16)
    at = models.DateTimeField()
    delivery_id = models.BigIntegerField(unique=True)

    class Meta:
        indexes = [models.Index(fields=["profile_id", "at"], name="marketing_send_profile_at")]

    def __str__(self) -> str:
        return f"{self.channel} to profile {self.profile_id} at {self.at}"


class Conversion(models.Model):
    """A conversion (a purchase, a sign-up…) a client reported for a profile, attributed to
    the campaign delivery that reached the profile last within the attribution window
    (``campaigns.conversions``). The delivery says which channel and version converted.

    ``idempotency_key`` makes a reported conversion count once however often the client
    sends it. The delivery is no database foreign key, as for events: a delivery row is
    history written by the million, and a constraint check would wait on its row lock."""

    profile = models.ForeignKey(
        "segments.Profile", null=True, on_delete=models.SET_NULL, related_name="+"
    )
    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="conversions")
    delivery = models.ForeignKey(
        Delivery,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
    )
    value = models.DecimalField(max_digits=14, decimal_places=2, default=0)
    currency = models.CharField(max_length=3, blank=True, default="", help_text="ISO 4217.")
    occurred_at = models.DateTimeField()
    idempotency_key = models.CharField(max_length=255, blank=True, default="")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-occurred_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["idempotency_key"],
                condition=~Q(idempotency_key=""),
                name="conversion_once_per_idempotency_key",
            ),
            models.CheckConstraint(condition=Q(value__gte=0), name="conversion_value_not_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.campaign} · {self.value} {self.currency}".strip()


# --- content experiments (campaigns.experiments) --------------------------------------


class Assignment(models.Model):
    """The experiment group of one profile in one campaign: a variant's label, or the
    holdout. Decided once from a stable hash of (campaign, profile) and kept, so every
    re-run, re-plan and occurrence finds the same group, and the results join it to the
    deliveries and their events. Written in bulk by planning; the unique index serves the
    sender's one lookup per chunk."""

    campaign = models.ForeignKey(
        Campaign, on_delete=models.CASCADE, related_name="+", db_index=False
    )
    # History that outlives the profile, as a delivery does.
    profile = models.ForeignKey(
        "segments.Profile",
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_index=False,
        related_name="+",
    )
    group = models.CharField(max_length=8)
    assigned_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["campaign", "profile"], name="assignment_once_per_profile"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.campaign_id} → {self.profile_id}: {self.group}"


class ExperimentWinner(models.Model):
    """The variant a "test, then send the winner" campaign sent to the rest of its
    audience: decided once, when the test ended (campaigns.experiments.experiment_decide),
    and kept, so every worker sends the same one."""

    campaign = models.OneToOneField(
        Campaign, on_delete=models.CASCADE, related_name="experiment_winner"
    )
    group = models.CharField(max_length=1)
    metric = models.CharField(max_length=16, choices=ExperimentMetric.choices)
    # Whether the test showed it significantly better than the runner-up; if not it won by
    # the best observed rate.
    significant = models.BooleanField(default=False)
    p_value = models.FloatField(null=True, blank=True)
    decided_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.campaign_id}: variant {self.group}"


# --- engagement counters (campaigns.engagement) ------------------------------------------


class DeliveryEngagement(models.Model):
    """The first event of one kind a delivery had: what makes the report count a delivery
    once per kind, however many times it was opened or its bounce reported. Written by
    ``events_record`` (``INSERT … ON CONFLICT DO NOTHING RETURNING``: only the first one
    comes back and is counted), only for a delivery that exists, with the delivery's
    action and version as they were then. ``version`` is empty when the delivery's version
    was not decided yet (an event before its send's outcome committed): such a row is in no
    ``EngagementCount`` and the report counts it with its delivery's version at read time
    (the partial index finds the few there are)."""

    delivery = models.ForeignKey(
        Delivery, on_delete=models.DO_NOTHING, db_constraint=False, db_index=False, related_name="+"
    )
    kind = models.CharField(max_length=16, choices=EventKind.choices)
    execution = models.ForeignKey(
        Execution, on_delete=models.CASCADE, db_constraint=False, db_index=False, related_name="+"
    )
    action = models.ForeignKey(
        ChannelAction,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_index=False,
        related_name="+",
    )
    version = models.ForeignKey(
        CampaignVersion,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_index=False,
        related_name="+",
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["delivery", "kind"], name="delivery_engagement_once"),
        ]
        indexes = [
            models.Index(
                fields=["execution"],
                condition=Q(version__isnull=True),
                name="delivery_engagement_undecided",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.delivery_id}: {self.kind}"


class EngagementCount(models.Model):
    """How many deliveries of one action of an execution, decided with one version, had at
    least one event of one kind: the report's engagement figures, kept by ``events_record``
    in the events' own transaction (from the ``DeliveryEngagement`` rows it inserted), so the
    report reads a handful of rows however many events there are."""

    execution = models.ForeignKey(
        Execution, on_delete=models.CASCADE, db_constraint=False, db_index=False, related_name="+"
    )
    action = models.ForeignKey(
        ChannelAction,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_index=False,
        related_name="+",
    )
    version = models.ForeignKey(
        CampaignVersion,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_index=False,
        related_name="+",
    )
    kind = models.CharField(max_length=16, choices=EventKind.choices)
    count = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["execution", "action", "version", "kind"], name="engagement_count_per_kind"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.action_id} v{self.version_id} {self.kind}: {self.count}"


class ProfileEngagement(models.Model):
    """The first event of one kind a profile of a campaign's experiment had, on any delivery
    of the campaign: an experiment's groups count profiles, not deliveries (a profile is in
    one group on every channel). Written beside ``DeliveryEngagement`` only for a profile
    with an ``Assignment``, with the group it had."""

    campaign = models.ForeignKey(
        Campaign, on_delete=models.CASCADE, db_constraint=False, db_index=False, related_name="+"
    )
    profile = models.ForeignKey(
        "segments.Profile",
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_index=False,
        related_name="+",
    )
    kind = models.CharField(max_length=16, choices=EventKind.choices)
    group = models.CharField(max_length=8)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["campaign", "profile", "kind"], name="profile_engagement_once"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.campaign_id} → {self.profile_id}: {self.kind}"


class GroupEngagementCount(models.Model):
    """How many profiles of one group of a campaign's experiment had at least one event of
    one kind: the experiment's results, kept as ``EngagementCount`` is."""

    campaign = models.ForeignKey(
        Campaign, on_delete=models.CASCADE, db_constraint=False, db_index=False, related_name="+"
    )
    group = models.CharField(max_length=8)
    kind = models.CharField(max_length=16, choices=EventKind.choices)
    count = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["campaign", "group", "kind"], name="group_engagement_count_per_kind"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.campaign_id} {self.group} {self.kind}: {self.count}"


class AssignmentCount(models.Model):
    """How many profiles one group of a campaign's experiment holds: kept by
    ``campaigns.experiments.assignments_store`` in the transaction that stores them (only
    the assignments its INSERT stored count), so the results read a row per group instead
    of counting a campaign's assignments."""

    campaign = models.ForeignKey(
        Campaign, on_delete=models.CASCADE, db_constraint=False, db_index=False, related_name="+"
    )
    group = models.CharField(max_length=8)
    count = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["campaign", "group"], name="assignment_count_per_group"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.campaign_id} {self.group}: {self.count}"
