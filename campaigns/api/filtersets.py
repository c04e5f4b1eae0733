"""The campaign list's filters, shared by every door that lists campaigns."""

from __future__ import annotations

from typing import Any

import django_filters
from django import forms
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django_filters import fields

from campaigns.choices import ALL_STATUSES, CampaignStatus, CampaignType
from campaigns.models import Campaign
from campaigns.selectors import campaign_list, campaign_statuses_from_query


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
    """Repeatable free values (tag names are not a fixed list)."""

    def valid_value(self, value: Any) -> bool:
        return True


class StatusFilter(django_filters.MultipleChoiceFilter):
    field_class = StatusField


class TagFilter(django_filters.MultipleChoiceFilter):
    field_class = AnyValueField


class CampaignFilterSet(django_filters.FilterSet):
    """Which campaigns a list shows.

    Without `status` the list shows Draft, Scheduled and Live; `status=all` shows every
    status. Status, search and tags are decided by `campaigns.selectors.campaign_list`,
    the same function the admin and the commands use.
    """

    status = StatusFilter(
        choices=[*CampaignStatus.choices, (ALL_STATUSES, "All statuses")],
        help_text="Repeatable. Default: draft, scheduled and live; `all` for every status.",
    )
    search = django_filters.CharFilter(help_text="Words in the name or description.")
    tag = TagFilter(field_name="tags__name", help_text="Repeatable: campaigns with any of them.")
    type = django_filters.ChoiceFilter(choices=CampaignType.choices)

    class Meta:
        model = Campaign
        fields = ["status", "search", "tag", "type"]

    def filter_queryset(self, queryset: QuerySet[Campaign]) -> QuerySet[Campaign]:
        data = self.form.cleaned_data
        chosen = campaign_list(
            statuses=campaign_statuses_from_query(data.get("status") or []),
            search=data.get("search") or "",
            tags=data.get("tag") or [],
        )
        # A subquery keeps the caller's queryset (its joins, prefetches and ordering)
        # and lets the selector alone decide which rows belong to the list.
        queryset = queryset.filter(pk__in=chosen.values("pk"))
        if data.get("type"):
            queryset = queryset.filter(type=data["type"])
        return queryset
