from __future__ import annotations

from rest_framework import serializers

from channels.models import MessagePreset


class MessagePresetSerializer(serializers.ModelSerializer[MessagePreset]):
    """Shapes and types only: `channels.services` checks the rules (the sender setting a
    channel needs, a registered backend, a reachable webhook URL, a fixed channel)."""

    class Meta:
        model = MessagePreset
        fields = [
            "id",
            "name",
            "channel",
            "description",
            "from_name",
            "from_email",
            "reply_to",
            "sms_sender_id",
            "push_app_id",
            "webhook_url",
            "backend",
            "rate_limit_per_second",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["created_at", "updated_at"]
