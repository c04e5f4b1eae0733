"""Message presets in the admin: one fieldset of sender settings per channel."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.db import models
from django.http import HttpRequest

from config.admin_site import ListTitledAdmin

from . import services
from .choices import ALL_SENDER_FIELDS, CHANNEL_FIELDS_SCRIPT, CHANNELS, SENDER_FIELDS
from .models import MessagePreset
from .providers import backend_choices

DELIVERY_FIELDS = ("backend", "rate_limit_per_second")
# Read in each recipient's time zone by campaigns.delivery.timing.
QUIET_HOURS_FIELDS = ("quiet_hours_start", "quiet_hours_end")


@admin.register(MessagePreset)
class MessagePresetAdmin(ListTitledAdmin):
    list_display = ("name", "channel", "sender", "updated_at")
    list_filter = ("channel",)
    search_fields = (
        "name",
        "description",
        *ALL_SENDER_FIELDS,
    )
    search_help_text = "Search names, descriptions and sender settings."

    class Media:
        js = (CHANNEL_FIELDS_SCRIPT,)

    ordering = ("name",)
    # Django 6's default; a sender URL typed without a scheme is meant to be secure.
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}

    @admin.display(description="sender")
    def sender(self, obj: MessagePreset) -> str:
        channel = CHANNELS.get(obj.channel)
        return (getattr(obj, channel.required_sender_field) if channel else "") or "—"

    def get_fieldsets(self, request: HttpRequest, obj: MessagePreset | None = None) -> Any:
        head: list[tuple[str | None, dict[str, Any]]] = [
            (None, {"fields": ("name", "channel", "description")})
        ]
        delivery = ("Delivery", {"fields": DELIVERY_FIELDS, "classes": ("collapse",)})
        quiet = ("Quiet hours", {"fields": [QUIET_HOURS_FIELDS]})
        if obj is not None and obj.channel in CHANNELS:
            channel = CHANNELS[obj.channel]
            sender = (channel.sender_title, {"fields": channel.sender_fields})
            return [*head, sender, delivery, quiet]
        # A new preset: every channel's settings; only the chosen channel's are used.
        return [
            *head,
            *(
                (
                    channel.sender_title,
                    {
                        "fields": channel.sender_fields,
                        "description": f"Only for {channel.label} presets.",
                    },
                )
                for channel in CHANNELS.values()
            ),
            delivery,
            quiet,
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: MessagePreset | None = None) -> Any:
        # services.preset_update refuses a change of channel: campaign actions choose presets
        # by channel. The form does not offer one.
        return ("channel",) if obj is not None else ()

    def get_form(
        self,
        request: HttpRequest,
        obj: MessagePreset | None = None,
        change: bool = False,
        **kwargs: Any,
    ) -> Any:
        form = super().get_form(request, obj, change=change, **kwargs)
        if "channel" in form.base_fields:
            # A new preset: the page hides the sender fields of the channels not chosen.
            form.base_fields["channel"].widget.attrs["data-channel-select"] = ""
            for kind, fields in SENDER_FIELDS.items():
                for name in fields:
                    if name in form.base_fields:
                        form.base_fields[name].widget.attrs["data-channels"] = kind
        if "backend" in form.base_fields:
            # The registered backends of the preset's channel (all of them for a new preset,
            # whose channel is chosen on the same form; the model check pairs them).
            channel = obj.channel if obj is not None else None
            choices = [("", "The channel's default (settings)"), *backend_choices(channel)]
            if obj is not None and obj.backend and obj.backend not in dict(choices):
                # Shown as it is stored, so that saving says why it no longer works rather
                # than silently choosing the default.
                choices.append((obj.backend, f"{obj.backend} (not registered)"))
            form.base_fields["backend"] = forms.ChoiceField(
                choices=choices,
                required=False,
                label="Backend",
                help_text="Provider backend; the channel's default from "
                "SALVO_PROVIDER_BACKENDS unless chosen here.",
            )
        return form

    def save_model(self, request: HttpRequest, obj: MessagePreset, form: Any, change: bool) -> None:
        # The form ran the model's checks already; the service runs them again under the row
        # lock, with the rules the form cannot see (a fixed channel, the permissions).
        fields = form.changed_data if change else list(form.cleaned_data)
        data = {name: form.cleaned_data[name] for name in fields}
        if change:
            saved = services.preset_update(preset=obj, user=request.user, data=data)
        else:
            saved = services.preset_create(user=request.user, data=data)
        obj.pk = saved.pk
        obj.refresh_from_db()

    def delete_model(self, request: HttpRequest, obj: MessagePreset) -> None:
        services.preset_delete(preset=obj, user=request.user)
