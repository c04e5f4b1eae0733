import datetime as dt

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone

from .choices import REQUIRED_SENDER_FIELD, ChannelKind, SuppressionReason, SuppressionSource

# --- quiet hours (read by campaigns.delivery.timing) ---------------------------------------


def quiet_hours_refusal(start: dt.time | None, end: dt.time | None) -> dict[str, str]:
    """What is wrong with a pair of quiet hours, by field: both or neither, and not the
    same time (a window of no length, or of the whole day, is not quiet hours)."""
    if (start is None) != (end is None):
        missing = "quiet_hours_end" if end is None else "quiet_hours_start"
        return {missing: "Quiet hours need both a start and an end, or neither."}
    if start is not None and start == end:
        return {"quiet_hours_end": "Quiet hours must end at another time than they start."}
    return {}


def quiet_hours_pair_constraint(name: str) -> models.CheckConstraint:
    """The database's own check of a pair of quiet hours: both or neither."""
    return models.CheckConstraint(
        condition=models.Q(quiet_hours_start__isnull=True, quiet_hours_end__isnull=True)
        | models.Q(quiet_hours_start__isnull=False, quiet_hours_end__isnull=False),
        name=name,
    )


QUIET_HOURS_HELP = (
    "Marketing messages that fall due between these times in the recipient's time zone wait "
    "until the end (e.g. 21:00 to 08:00, across midnight); transactional ones are sent. "
    "Both or neither."
)


class MessagePreset(models.Model):
    """A channel surface: who a message comes from and which provider carries it."""

    name = models.CharField(max_length=200, unique=True)
    channel = models.CharField(max_length=16, choices=ChannelKind.choices)
    description = models.TextField(blank=True)
    from_name = models.CharField(max_length=200, blank=True)
    from_email = models.EmailField(blank=True)
    reply_to = models.EmailField(blank=True)
    sms_sender_id = models.CharField(
        max_length=16, blank=True, help_text="Alphanumeric sender id or E.164 number."
    )
    push_app_id = models.CharField(max_length=200, blank=True)
    webhook_url = models.URLField(blank=True)
    backend = models.CharField(
        max_length=255,
        blank=True,
        help_text="Dotted path of a provider backend; empty uses the channel's default "
        "from settings.SALVO_PROVIDER_BACKENDS.",
    )
    rate_limit_per_second = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0.001)],
        help_text="Most messages per second through this preset, shared by all workers; "
        "empty means no limit.",
    )
    quiet_hours_start = models.TimeField(null=True, blank=True, help_text=QUIET_HOURS_HELP)
    quiet_hours_end = models.TimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(channel__in=ChannelKind.values), name="preset_channel_valid"
            ),
            models.CheckConstraint(
                condition=models.Q(rate_limit_per_second__isnull=True)
                | models.Q(rate_limit_per_second__gt=0),
                name="preset_rate_limit_positive",
            ),
            quiet_hours_pair_constraint("preset_quiet_hours_both_or_neither"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.get_channel_display()})"

    def clean(self) -> None:
        quiet = quiet_hours_refusal(self.quiet_hours_start, self.quiet_hours_end)
        if quiet:
            raise ValidationError(quiet)
        required = REQUIRED_SENDER_FIELD.get(self.channel)
        if required and not getattr(self, required):
            label = required.replace("_", " ")
            raise ValidationError(
                {required: f"This {self.get_channel_display()} preset needs a {label}."}
            )
        if self.channel == ChannelKind.WEBHOOK and self.webhook_url:
            from .destinations import url_refusal

            refusal = url_refusal(self.webhook_url)
            if refusal:
                raise ValidationError({"webhook_url": refusal})
        if self.backend and self.channel in ChannelKind.values:
            # Imported here: the providers package imports this module for type hints.
            from .providers import backend_problem

            problem = backend_problem(self.backend, channel=self.channel)
            if problem:
                raise ValidationError({"backend": problem})


class RateLimitBucket(models.Model):
    """The shared token bucket of one rate-limit key when Redis is not the broker.

    Updated only by ``channels.ratelimit``, under a row lock (an IMMEDIATE transaction on
    SQLite), so that every worker process sees one bucket.
    """

    key = models.CharField(max_length=200, unique=True)
    # Tokens available now; negative while callers hold reservations for the future.
    level = models.FloatField()
    # time.time() of the last update: a float, so sub-millisecond refills are not lost.
    refilled_at = models.FloatField()

    def __str__(self) -> str:
        return self.key


class Suppression(models.Model):
    """An address that gets no more messages on its channel: it bounced hard, complained,
    unsubscribed at the provider, or was added by hand. Every campaign skips it with the
    reason ``suppressed`` (transactional ones only for ``SUPPRESSES_TRANSACTIONAL``).

    ``address`` is stored as ``normalized_address`` gives it, so that one unique index
    both refuses a second entry and answers a chunk's lookup."""

    channel = models.CharField(max_length=16, choices=ChannelKind.choices)
    address = models.CharField(max_length=320)
    reason = models.CharField(max_length=32, choices=SuppressionReason.choices)
    source = models.CharField(max_length=16, choices=SuppressionSource.choices)
    detail = models.TextField(
        blank=True, help_text="What the provider said, or why it was added by hand."
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["channel", "address"], name="suppression_one_per_address"
            ),
            models.CheckConstraint(
                condition=models.Q(channel__in=ChannelKind.values), name="suppression_channel_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.address} ({self.get_channel_display()}, {self.get_reason_display()})"
