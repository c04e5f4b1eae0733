from django.core.exceptions import ValidationError
from django.db import models

from .choices import ChannelKind

# The sender setting each channel cannot go without.
REQUIRED_SENDER_FIELD: dict[str, str] = {
    ChannelKind.EMAIL: "from_email",
    ChannelKind.SMS: "sms_sender_id",
    ChannelKind.PUSH: "push_app_id",
    ChannelKind.WEBHOOK: "webhook_url",
}


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
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(channel__in=ChannelKind.values), name="preset_channel_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.get_channel_display()})"

    def clean(self) -> None:
        required = REQUIRED_SENDER_FIELD.get(self.channel)
        if required and not getattr(self, required):
            label = required.replace("_", " ")
            raise ValidationError(
                {required: f"A {self.get_channel_display()} preset needs {label}."}
            )
