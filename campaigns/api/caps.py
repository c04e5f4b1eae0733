"""`/api/frequency-caps/`: the frequency cap rules, through ``campaigns.caps``."""

from __future__ import annotations

from typing import Any

import django_filters
from rest_framework import serializers, viewsets

from campaigns import caps
from campaigns.choices import CapPeriod
from campaigns.models import FrequencyCap
from channels.choices import ChannelKind


class FrequencyCapSerializer(serializers.ModelSerializer[FrequencyCap]):
    """Shapes and types; ``campaigns.caps`` checks the rules again (limits, permissions)."""

    class Meta:
        model = FrequencyCap
        fields = ["id", *caps.FREQUENCY_CAP_FIELDS, "created_at", "updated_at"]
        read_only_fields = ["created_at", "updated_at"]
        extra_kwargs = {"channel": {"required": False}, "active": {"required": False}}


class FrequencyCapFilterSet(django_filters.FilterSet):
    channel = django_filters.ChoiceFilter(choices=ChannelKind.choices)
    period = django_filters.ChoiceFilter(choices=CapPeriod.choices)
    active = django_filters.BooleanFilter()

    class Meta:
        model = FrequencyCap
        fields = ["channel", "period", "active"]


class FrequencyCapViewSet(viewsets.ModelViewSet[FrequencyCap]):
    """Frequency caps: at most `limit` marketing messages per profile within a rolling
    `period` (day = 24 h, week = 7 days, month = 30 days), on `channel` or on all channels
    (empty)."""

    queryset = FrequencyCap.objects.order_by("name")
    serializer_class = FrequencyCapSerializer
    filterset_class = FrequencyCapFilterSet
    search_fields = ["name"]
    ordering_fields = ["name", "limit", "period", "created_at", "updated_at"]
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def perform_create(self, serializer: Any) -> None:
        serializer.instance = caps.frequency_cap_create(
            user=self.request.user, data=serializer.validated_data
        )

    def perform_update(self, serializer: Any) -> None:
        serializer.instance = caps.frequency_cap_update(
            rule=serializer.instance, user=self.request.user, data=serializer.validated_data
        )

    def perform_destroy(self, instance: FrequencyCap) -> None:
        caps.frequency_cap_delete(rule=instance, user=self.request.user)
