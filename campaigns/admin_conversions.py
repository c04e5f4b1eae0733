"""Conversions in the admin: a read-only list. Conversions come in through the API
(``POST /api/conversions/``, ``campaigns.conversions``), which attributes them."""

from __future__ import annotations

from django.contrib import admin

from config.admin_site import ListTitledAdmin

from .admin_deliveries import ReadOnlyAdmin
from .models import Conversion


@admin.register(Conversion)
class ConversionAdmin(ReadOnlyAdmin, ListTitledAdmin):
    list_display = ("occurred_at", "campaign", "profile", "value", "currency", "delivery_id")
    list_filter = ("campaign",)
    search_fields = ("profile__external_id", "idempotency_key")
    list_select_related = ("campaign", "profile")
    date_hierarchy = "occurred_at"
    fields = (
        "profile",
        "campaign",
        "delivery_id",
        "value",
        "currency",
        "occurred_at",
        "idempotency_key",
        "created_by",
        "created_at",
    )
    readonly_fields = fields
