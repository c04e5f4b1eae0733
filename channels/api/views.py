from typing import Any

from rest_framework import viewsets

from channels import services
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

    def perform_create(self, serializer: Any) -> None:
        serializer.instance = services.preset_create(
            user=self.request.user, data=serializer.validated_data
        )

    def perform_update(self, serializer: Any) -> None:
        serializer.instance = services.preset_update(
            preset=serializer.instance, user=self.request.user, data=serializer.validated_data
        )

    def perform_destroy(self, instance: MessagePreset) -> None:
        try:
            services.preset_delete(preset=instance, user=self.request.user)
        except services.PresetInUse as error:
            raise Conflict(str(error)) from error
