from __future__ import annotations

from rest_framework import serializers

from channels.choices import ChannelKind, SuppressionReason
from channels.models import MessagePreset, Suppression
from channels.services import PRESET_FIELDS
from channels.suppression import SUPPRESSION_DETAIL_MAX_CHARS


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


class SuppressionSerializer(serializers.ModelSerializer[Suppression]):
    """Shapes only: ``channels.suppression`` checks the rest (a channel with a list, an
    email address that is one) and normalizes the address."""

    channel = serializers.ChoiceField(choices=ChannelKind.choices)
    address = serializers.CharField(
        help_text="Stored normalized: an email address in lower case, others as written."
    )
    reason = serializers.ChoiceField(
        choices=SuppressionReason.choices, default=SuppressionReason.MANUAL
    )
    detail = serializers.CharField(
        required=False, allow_blank=True, max_length=SUPPRESSION_DETAIL_MAX_CHARS
    )

    class Meta:
        model = Suppression
        fields = ["id", "channel", "address", "reason", "source", "detail", "created_at"]
        read_only_fields = ["source", "created_at"]
        # The service answers 409 for an address on the list already, not the serializer.
        validators: list[object] = []
