from typing import Any

from rest_framework import mixins, viewsets

from channels import services, suppression
from channels.choices import SuppressionSource
from channels.models import MessagePreset, Suppression
from config.api import Conflict

from .filtersets import MessagePresetFilterSet, SuppressionFilterSet
from .serializers import MessagePresetSerializer, SuppressionSerializer


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


class SuppressionViewSet(
    mixins.CreateModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    mixins.ListModelMixin,
    viewsets.GenericViewSet[Suppression],
):
    """The suppression list: addresses that get no more messages on their channel (a hard
    bounce, a complaint, an unsubscribe at the provider, or added by hand). 409 when the
    address is on the list already."""

    queryset = Suppression.objects.all()
    serializer_class = SuppressionSerializer
    filterset_class = SuppressionFilterSet
    search_fields = ["address"]
    ordering_fields = ["created_at", "address", "channel", "reason"]

    def perform_create(self, serializer: Any) -> None:
        try:
            serializer.instance = suppression.suppression_add(
                user=self.request.user, source=SuppressionSource.API, **serializer.validated_data
            )
        except suppression.AlreadySuppressed as error:
            raise Conflict(str(error)) from error

    def perform_destroy(self, instance: Suppression) -> None:
        suppression.suppressions_remove(user=self.request.user, suppressions=[instance])
