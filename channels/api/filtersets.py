from typing import Any

import django_filters
from django.db.models import QuerySet

from channels.choices import ChannelKind, SuppressionReason, SuppressionSource
from channels.models import MessagePreset, Suppression
from segments.api.filtersets import UtcIsoDateTimeFilter


class MessagePresetFilterSet(django_filters.FilterSet):
    channel = django_filters.ChoiceFilter(choices=ChannelKind.choices)

    class Meta:
        model = MessagePreset
        fields = ["channel"]


class SuppressionFilterSet(django_filters.FilterSet):
    """The suppression list's filters, at the API (the admin offers the same choices)."""

    channel = django_filters.ChoiceFilter(choices=ChannelKind.choices)
    reason = django_filters.ChoiceFilter(choices=SuppressionReason.choices)
    source = django_filters.ChoiceFilter(choices=SuppressionSource.choices)
    address = django_filters.CharFilter(
        method="filter_address", help_text="The address, in any case for an email address."
    )
    # Any ISO 8601 offset, read as the moment it names (PostgreSQL holds offsets < 16 h).
    created_after = UtcIsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = UtcIsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = Suppression
        fields = ["channel", "reason", "source", "address"]

    def filter_address(self, queryset: QuerySet[Suppression], name: str, value: str) -> Any:
        # Stored normalized: an email address in lower case, anything else as written.
        value = value.strip()
        return queryset.filter(address__in={value, value.lower()})
