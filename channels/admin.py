"""Message presets in the admin: one fieldset of sender settings per channel."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db import models
from django.http import HttpRequest

from .choices import ChannelKind
from .models import REQUIRED_SENDER_FIELD, MessagePreset

SENDER_FIELDSETS: dict[str, tuple[str, tuple[str, ...]]] = {
    ChannelKind.EMAIL: ("Email sender", ("from_name", "from_email", "reply_to")),
    ChannelKind.SMS: ("SMS sender", ("sms_sender_id",)),
    ChannelKind.PUSH: ("Push application", ("push_app_id",)),
    ChannelKind.WEBHOOK: ("Webhook endpoint", ("webhook_url",)),
}
DELIVERY_FIELDS = ("backend", "rate_limit_per_second")


@admin.register(MessagePreset)
class MessagePresetAdmin(admin.ModelAdmin):
    list_display = ("name", "channel", "sender", "updated_at")
    list_filter = ("channel",)
    search_fields = (
        "name",
        "description",
        "from_name",
        "from_email",
        "sms_sender_id",
        "push_app_id",
        "webhook_url",
    )
    search_help_text = "Search names, descriptions and sender settings."
    ordering = ("name",)
    # Django 6's default; a sender URL typed without a scheme is meant to be secure.
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}

    @admin.display(description="sender")
    def sender(self, obj: MessagePreset) -> str:
        field = REQUIRED_SENDER_FIELD.get(obj.channel)
        return (getattr(obj, field) if field else "") or "—"

    def get_fieldsets(self, request: HttpRequest, obj: MessagePreset | None = None) -> Any:
        head: list[tuple[str | None, dict[str, Any]]] = [
            (None, {"fields": ("name", "channel", "description")})
        ]
        delivery = ("Delivery", {"fields": DELIVERY_FIELDS, "classes": ("collapse",)})
        if obj is not None and obj.channel in SENDER_FIELDSETS:
            title, fields = SENDER_FIELDSETS[obj.channel]
            return [*head, (title, {"fields": fields}), delivery]
        # A new preset: every channel's settings; only the chosen channel's are used.
        return [
            *head,
            *(
                (
                    title,
                    {
                        "fields": fields,
                        "description": f"Only for {ChannelKind(kind).label} presets.",
                    },
                )
                for kind, (title, fields) in SENDER_FIELDSETS.items()
            ),
            delivery,
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: MessagePreset | None = None) -> Any:
        # Actions choose a preset of their own channel: a preset never changes channel
        # (that would silently break them); make a new preset instead.
        return ("channel",) if obj is not None else ()
