"""The campaign list's filters, shared by every door that lists campaigns."""

from __future__ import annotations

from typing import Any

import django_filters
from django import forms
from django.core.exceptions import ValidationError
from django.core.validators import ProhibitNullCharactersValidator
from django.db.models import QuerySet
from django_filters import fields

from campaigns.choices import (
    ALL_STATUSES,
    CampaignKind,
    CampaignStatus,
    CampaignType,
    DeliveryReason,
    DeliveryStatus,
)
from campaigns.models import Campaign, Delivery
from campaigns.selectors import campaign_list, campaign_statuses_from_query
from channels.choices import ChannelKind


class StatusField(fields.MultipleChoiceField):
    """Repeatable `status` values, checked by the selector so every door refuses alike."""

    def validate(self, value: Any) -> None:
        try:
            campaign_statuses_from_query(value)
        except ValidationError as error:
            # django-filter formats each message with "%": the client's own value, quoted in
            # it, goes in as a parameter so that a "%" of its own stays text.
            raise forms.ValidationError(
                [
                    forms.ValidationError("%(message)s", params={"message": message})
                    for message in error.message_dict["status"]
                ]
            ) from error


class AnyValueField(fields.MultipleChoiceField):
    """Repeatable free values (tag names are not a fixed list), each refused as a text
    field refuses it: with a NUL character, which PostgreSQL cannot compare."""

    def valid_value(self, value: Any) -> bool:
        return True

    def validate(self, value: Any) -> None:
        super().validate(value)
        for item in value:
            ProhibitNullCharactersValidator()(item)


class StatusFilter(django_filters.MultipleChoiceFilter):
    field_class = StatusField


class TagFilter(django_filters.MultipleChoiceFilter):
    field_class = AnyValueField


class CampaignFilterSet(django_filters.FilterSet):
    """Which campaigns a list shows.

    Without `status` the list shows Draft, Scheduled and Live; `status=all` shows every
    status. Status, search, tags, channels, alerts and start days are decided by
    `campaigns.selectors.campaign_list`, the same function the admin and the commands use.
    """

    status = StatusFilter(
        choices=[*CampaignStatus.choices, (ALL_STATUSES, "All statuses")],
        help_text="Repeatable. Default: draft, scheduled and live; `all` for every status.",
    )
    search = django_filters.CharFilter(help_text="Words in the name or description.")
    tag = TagFilter(field_name="tags__name", help_text="Repeatable: campaigns with any of them.")
    type = django_filters.ChoiceFilter(choices=CampaignType.choices)
    kind = django_filters.ChoiceFilter(choices=CampaignKind.choices)
    channel = django_filters.MultipleChoiceFilter(
        choices=ChannelKind.choices,
        help_text="Repeatable: campaigns whose version shown (running, else draft) sends on "
        "any of them.",
    )
    has_alerts = django_filters.BooleanFilter(
        help_text="true: campaigns with at least one of `alerts`; false: those with none."
    )
    awaiting_approval = django_filters.BooleanFilter(
        help_text="true: campaigns whose open draft awaits approval; false: the others."
    )
    start_after = django_filters.DateFilter(
        help_text="Campaigns that went Live, or are set to start, on this day or later "
        "(YYYY-MM-DD, the server's time zone)."
    )
    start_before = django_filters.DateFilter(
        help_text="…on this day or earlier (YYYY-MM-DD, included)."
    )

    class Meta:
        model = Campaign
        fields = [
            "status",
            "search",
            "tag",
            "type",
            "kind",
            "channel",
            "has_alerts",
            "awaiting_approval",
            "start_after",
            "start_before",
        ]

    def filter_queryset(self, queryset: QuerySet[Campaign]) -> QuerySet[Campaign]:
        data = self.form.cleaned_data
        chosen = campaign_list(
            statuses=campaign_statuses_from_query(data.get("status") or []),
            search=data.get("search") or "",
            tags=data.get("tag") or [],
            channels=data.get("channel") or [],
            kind=data.get("kind") or "",
            has_alerts=data.get("has_alerts"),
            awaiting_approval=data.get("awaiting_approval"),
            start_from=data.get("start_after"),
            start_to=data.get("start_before"),
        )
        # A subquery keeps the caller's queryset (its joins, prefetches and ordering)
        # and lets the selector alone decide which rows belong to the list.
        queryset = queryset.filter(pk__in=chosen.values("pk"))
        if data.get("type"):
            queryset = queryset.filter(type=data["type"])
        return queryset


class WholeNumberFilter(django_filters.NumberFilter):
    """A whole number: "1.5" is refused, not rounded."""

    field_class = forms.IntegerField


class DeliveryFilterSet(django_filters.FilterSet):
    """Which of a campaign's deliveries a list or an export shows: the API's
    `…/deliveries/` (JSON and CSV) and the admin's deliveries page validate the query with
    it and pass `selector_filters()` to `campaigns.selectors.campaign_deliveries`."""

    channel = django_filters.ChoiceFilter(choices=ChannelKind.choices)
    status = django_filters.ChoiceFilter(choices=DeliveryStatus.choices)
    reason = django_filters.ChoiceFilter(
        choices=DeliveryReason.choices, help_text="Why it was not sent (or waits for a retry)."
    )
    version = WholeNumberFilter(
        min_value=1, help_text="The number of the version whose content decided it."
    )
    search = django_filters.CharFilter(
        help_text="A profile's external id, email or phone (the whole value)."
    )

    class Meta:
        model = Delivery
        fields = ["channel", "status", "reason", "version", "search"]

    def selector_filters(self) -> dict[str, Any]:
        """The valid query as `campaign_deliveries`' keyword arguments."""
        data = self.form.cleaned_data
        return {
            "channel": data.get("channel") or "",
            "status": data.get("status") or "",
            "reason": data.get("reason") or "",
            "version": data.get("version"),
            "search": (data.get("search") or "").strip(),
        }

    def filter_queryset(self, queryset: QuerySet[Delivery]) -> QuerySet[Delivery]:
        # The selector applies the filters (it knows the campaign and the indexes).
        return queryset
