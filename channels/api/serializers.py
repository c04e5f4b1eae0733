from __future__ import annotations

from rest_framework import serializers

from channels.models import MessagePreset
from channels.services import PRESET_FIELDS


class MessagePresetSerializer(serializers.ModelSerializer[MessagePreset]):
    """Shapes and types only: `channels.services` checks the rules (the sender setting a
    channel needs, a registered backend, a reachable webhook URL, a fixed channel)."""

    quiet_hours_start = serializers.TimeField(
        allow_null=True,
        required=False,
        format="%H:%M",
        help_text="HH:MM in the recipient's time zone: marketing messages due from then until "
        "quiet_hours_end wait for the end (21:00 to 08:00 crosses midnight). Both or neither.",
    )
    quiet_hours_end = serializers.TimeField(allow_null=True, required=False, format="%H:%M")

    class Meta:
        model = MessagePreset
        fields = ["id", *PRESET_FIELDS, "created_at", "updated_at"]
        read_only_fields = ["created_at", "updated_at"]
