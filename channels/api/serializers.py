from __future__ import annotations

import copy
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import serializers

from channels.models import MessagePreset


class MessagePresetSerializer(serializers.ModelSerializer[MessagePreset]):
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

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        # The model's clean() knows which sender setting each channel needs; run it on a
        # copy so that a refused PATCH leaves the instance as it was.
        candidate = copy.copy(self.instance) if self.instance is not None else MessagePreset()
        for field, value in attrs.items():
            setattr(candidate, field, value)
        try:
            candidate.clean()
        except DjangoValidationError as error:
            raise serializers.ValidationError(error.message_dict) from error
        return attrs
