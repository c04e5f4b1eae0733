from django.db.models import ProtectedError
from rest_framework import viewsets

from channels.models import MessagePreset
from config.api import Conflict

from .filtersets import MessagePresetFilterSet
from .serializers import MessagePresetSerializer


class MessagePresetViewSet(viewsets.ModelViewSet[MessagePreset]):
    """Message presets: the sender settings a campaign's channel action goes out with."""

    queryset = MessagePreset.objects.all()
    serializer_class = MessagePresetSerializer
    filterset_class = MessagePresetFilterSet
    search_fields = ["name", "description"]
    ordering_fields = ["name", "channel", "created_at", "updated_at"]
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def perform_destroy(self, instance: MessagePreset) -> None:
        try:
            instance.delete()
        except ProtectedError as error:
            raise Conflict(
                f"Preset “{instance.name}” is used by campaign actions and cannot be deleted."
            ) from error
