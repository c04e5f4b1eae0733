"""Frequency cap rules in the admin, saved and deleted through ``campaigns.caps``."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from config.admin_site import ListTitledAdmin

from . import caps
from .models import FrequencyCap


@admin.register(FrequencyCap)
class FrequencyCapAdmin(ListTitledAdmin):
    list_display = ("name", "limit", "period", "channel_scope", "active", "updated_at")
    list_filter = ("active", "period", "channel")
    search_fields = ("name",)
    ordering = ("name",)
    fields = caps.FREQUENCY_CAP_FIELDS

    @admin.display(description="channel", ordering="channel")
    def channel_scope(self, obj: FrequencyCap) -> str:
        return obj.get_channel_display() if obj.channel else "All channels"

    def save_model(self, request: HttpRequest, obj: FrequencyCap, form: Any, change: bool) -> None:
        # The form ran the model's checks; the service runs them again with the permissions.
        fields = form.changed_data if change else list(form.cleaned_data)
        data = {name: form.cleaned_data[name] for name in fields}
        if change:
            saved = caps.frequency_cap_update(rule=obj, user=request.user, data=data)
        else:
            saved = caps.frequency_cap_create(user=request.user, data=data)
        obj.pk = saved.pk
        obj.refresh_from_db()

    def delete_model(self, request: HttpRequest, obj: FrequencyCap) -> None:
        caps.frequency_cap_delete(rule=obj, user=request.user)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[FrequencyCap]) -> None:
        for rule in queryset:
            caps.frequency_cap_delete(rule=rule, user=request.user)
