"""Which profiles and segments a list shows; the same filters serve the API and the admin."""

import datetime as dt
from typing import Any

import django_filters
from django.core.exceptions import ValidationError
from django_filters.fields import IsoDateTimeField

from segments.choices import SegmentKind
from segments.models import Profile, Segment


class UtcIsoDateTimeField(IsoDateTimeField):
    """An ISO 8601 time, converted to UTC before it reaches a query.

    Python accepts any offset under 24 hours, PostgreSQL only up to 15:59: a time such as
    "…-22:53" handed on as it is makes the database refuse the whole query. In UTC it is
    just a time; one that UTC cannot hold (year 1 with a positive offset) is invalid input.
    """

    def to_python(self, value: Any) -> dt.datetime | None:
        parsed = super().to_python(value)
        if parsed is None or parsed.tzinfo is None:
            return parsed
        try:
            return parsed.astimezone(dt.UTC)
        except OverflowError:
            raise ValidationError("Enter a time between the years 1 and 9999 in UTC.") from None


class UtcIsoDateTimeFilter(django_filters.IsoDateTimeFilter):
    field_class = UtcIsoDateTimeField


class ProfileFilterSet(django_filters.FilterSet):
    external_id = django_filters.CharFilter()
    email = django_filters.CharFilter(lookup_expr="iexact")
    locale = django_filters.CharFilter()
    consent_email = django_filters.BooleanFilter()
    consent_sms = django_filters.BooleanFilter()
    consent_push = django_filters.BooleanFilter()
    created_after = UtcIsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = UtcIsoDateTimeFilter(field_name="created_at", lookup_expr="lt")
    segment = django_filters.ModelChoiceFilter(
        field_name="static_segments",
        queryset=Segment.objects.filter(kind=SegmentKind.STATIC),
        help_text="Members of this static segment.",
    )

    class Meta:
        model = Profile
        fields = [
            "external_id",
            "email",
            "locale",
            "consent_email",
            "consent_sms",
            "consent_push",
            "created_after",
            "created_before",
            "segment",
        ]


class SegmentFilterSet(django_filters.FilterSet):
    kind = django_filters.ChoiceFilter(choices=SegmentKind.choices)
    name = django_filters.CharFilter(lookup_expr="icontains")

    class Meta:
        model = Segment
        fields = ["kind", "name"]
