"""`/api/conversions/`: report conversions (``campaigns.conversions``) and list them."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from rest_framework import mixins, serializers, status, viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from campaigns.conversions import conversion_record
from campaigns.models import Campaign, Conversion
from segments.models import Profile


class ConversionSerializer(serializers.ModelSerializer[Conversion]):
    profile: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="external_id", read_only=True, allow_null=True
    )

    class Meta:
        model = Conversion
        fields = [
            "id",
            "profile",
            "campaign",
            "delivery",
            "value",
            "currency",
            "occurred_at",
            "idempotency_key",
            "created_at",
        ]
        read_only_fields = fields


class ConversionInputSerializer(serializers.Serializer[Any]):
    profile = serializers.SlugRelatedField(
        slug_field="external_id",
        queryset=Profile.objects.all(),
        required=False,
        help_text="The profile's external_id; or name the delivery.",
    )
    delivery = serializers.IntegerField(
        required=False, min_value=1, help_text="The delivery that converted, if known."
    )
    campaign = serializers.PrimaryKeyRelatedField(
        queryset=Campaign.objects.all(),
        required=False,
        help_text="Attribute to this campaign's last delivery to the profile; default: the "
        "last delivery of any campaign.",
    )
    value = serializers.DecimalField(
        max_digits=14, decimal_places=2, min_value=Decimal(0), required=False, default=Decimal(0)
    )
    currency = serializers.RegexField(
        r"^[A-Za-z]{3}$", required=False, allow_blank=True, default="", help_text="ISO 4217."
    )
    occurred_at = serializers.DateTimeField(
        required=False, help_text="When the conversion happened; default: now."
    )
    idempotency_key = serializers.CharField(
        max_length=255, required=False, allow_blank=True, default=""
    )

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        if "profile" not in data and "delivery" not in data:
            raise serializers.ValidationError(
                {"profile": "Name the profile (external_id) or the delivery."}
            )
        return data


class ConversionViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet[Conversion]
):
    """Conversions attributed to the campaign delivery that reached the profile last within
    SALVO_CONVERSION_WINDOW_DAYS (default 7) before it. POST with the same
    `idempotency_key` again answers 200 with the conversion recorded first."""

    queryset = Conversion.objects.select_related("profile").order_by("-occurred_at", "-id")
    serializer_class = ConversionSerializer
    filterset_fields = ["campaign"]
    ordering_fields = ["occurred_at", "value", "created_at"]

    def get_serializer_class(self) -> Any:
        return ConversionInputSerializer if self.action == "create" else ConversionSerializer

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        given = ConversionInputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        data = dict(given.validated_data)
        recorded = conversion_record(
            user=request.user,
            profile=data.get("profile"),
            delivery_id=data.get("delivery"),
            campaign=data.get("campaign"),
            value=data["value"],
            currency=data["currency"],
            occurred_at=data.get("occurred_at"),
            idempotency_key=data["idempotency_key"],
        )
        return Response(
            ConversionSerializer(recorded.conversion).data,
            status=status.HTTP_201_CREATED if recorded.created else status.HTTP_200_OK,
        )
