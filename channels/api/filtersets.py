import django_filters

from channels.choices import ChannelKind
from channels.models import MessagePreset


class MessagePresetFilterSet(django_filters.FilterSet):
    channel = django_filters.ChoiceFilter(choices=ChannelKind.choices)

    class Meta:
        model = MessagePreset
        fields = ["channel"]
