"""Message presets in the admin: one fieldset of sender settings per channel; the
suppression list: searched, added to, removed from, imported."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import models
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path

from config.admin_site import ListTitledAdmin

from . import services, suppression
from .choices import (
    ALL_SENDER_FIELDS,
    CHANNEL_FIELDS_SCRIPT,
    CHANNELS,
    SENDER_FIELDS,
    ChannelKind,
    SuppressionSource,
)
from .models import MessagePreset, Suppression
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


# --- the suppression list ------------------------------------------------------------------


class SuppressionAddForm(forms.ModelForm):
    channel = forms.ChoiceField(
        choices=[
            (c, ChannelKind(c).label)
            for c in ChannelKind.values
            if c in suppression.SUPPRESSIBLE_CHANNELS
        ]
    )

    class Meta:
        model = Suppression
        fields = ["channel", "address", "reason", "detail"]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if self.errors:
            return data
        try:
            entry = suppression.suppression_clean(
                channel=data["channel"],
                address=data["address"],
                reason=data["reason"],
                detail=data.get("detail", ""),
            )
        except ValidationError as error:
            raise ValidationError(error.message_dict) from error
        if Suppression.objects.filter(channel=entry.channel, address=entry.address).exists():
            self.add_error("address", f"{entry.address} is on this channel's list already.")
        return data


class SuppressionImportForm(forms.Form):
    file = forms.FileField(
        help_text="CSV in UTF-8 with a header line: channel,address and optionally reason, "
        f"detail; at most {suppression.SUPPRESSION_IMPORT_MAX_ROWS:,} rows."
    )


@admin.register(Suppression)
class SuppressionAdmin(ListTitledAdmin):
    list_display = ("address", "channel", "reason", "source", "created_at", "created_by")
    list_filter = ("channel", "reason", "source")
    search_fields = ("address",)
    search_help_text = "Search addresses."
    list_select_related = ("created_by",)
    show_full_result_count = False
    change_list_template = "admin/channels/suppression/change_list.html"
    form = SuppressionAddForm
    readonly_fields = ("source", "created_at", "created_by")

    def has_change_permission(self, request: HttpRequest, obj: Suppression | None = None) -> bool:
        # An entry is added or removed, never edited: its page only shows it.
        return False

    def get_fields(self, request: HttpRequest, obj: Suppression | None = None) -> Any:
        if obj is None:
            return ["channel", "address", "reason", "detail"]
        return ["channel", "address", "reason", "detail", "source", "created_at", "created_by"]

    def get_readonly_fields(self, request: HttpRequest, obj: Suppression | None = None) -> Any:
        return () if obj is None else self.get_fields(request, obj)

    def save_model(self, request: HttpRequest, obj: Suppression, form: Any, change: bool) -> None:
        # The form ran the same checks; the service runs them again with the permission.
        saved = suppression.suppression_add(
            user=request.user,
            source=SuppressionSource.ADMIN,
            **{
                name: form.cleaned_data[name] for name in ("channel", "address", "reason", "detail")
            },
        )
        obj.pk = saved.pk
        obj.refresh_from_db()

    def delete_model(self, request: HttpRequest, obj: Suppression) -> None:
        suppression.suppressions_remove(user=request.user, suppressions=[obj])

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Suppression]) -> None:
        suppression.suppressions_remove(user=request.user, suppressions=queryset)

    def get_urls(self) -> list[URLPattern]:
        custom = [
            path(
                "import/",
                self.admin_site.admin_view(self.import_view),
                name="channels_suppression_import",
            )
        ]
        return custom + super().get_urls()

    def import_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_add_permission(request):
            raise PermissionDenied
        summary = None
        form = SuppressionImportForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            upload = form.cleaned_data["file"]
            try:
                result = suppression.suppressions_import(
                    user=request.user, stream=upload.file, source=SuppressionSource.IMPORT
                )
            except ValidationError as error:
                form.add_error("file", error.messages)
            else:
                summary = result.as_dict()
                self.message_user(
                    request,
                    f"Imported {upload.name}: {result.added} added, {result.already} on the "
                    "list already.",
                    messages.SUCCESS,
                )
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Import suppressions",
            "form": form,
            "summary": summary,
        }
        return TemplateResponse(request, "admin/channels/suppression/import.html", context)
