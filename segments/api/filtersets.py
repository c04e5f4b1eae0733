"""Which profiles and segments a list shows; the same filters serve the API and the admin."""

import django_filters

from segments.choices import SegmentKind
from segments.models import Profile, Segment


class ProfileFilterSet(django_filters.FilterSet):
    external_id = django_filters.CharFilter()
    email = django_filters.CharFilter(lookup_expr="iexact")
    locale = django_filters.CharFilter()
    consent_email = django_filters.BooleanFilter()
    consent_sms = django_filters.BooleanFilter()
    consent_push = django_filters.BooleanFilter()
    created_after = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")
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
