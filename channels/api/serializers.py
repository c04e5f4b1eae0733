from __future__ import annotations

from rest_framework import serializers

from channels.models import MessagePreset
from channels.services import PRESET_FIELDS


class MessagePresetSerializer(serializers.ModelSerializer[MessagePreset]):
    """Shapes and types only: `channels.services` checks the rules (the sender setting a
    channel needs, a registered backend, a reachable webhook URL, a fixed channel)."""

    class Meta:
        model = MessagePreset
        fields = ["id", *PRESET_FIELDS, "created_at", "updated_at"]
        read_only_fields = ["created_at", "updated_at"]
