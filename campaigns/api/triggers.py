"""The trigger endpoints of an API-triggered campaign (``campaigns.triggers``):

* ``POST /api/campaigns/{id}/trigger/`` — ``{"recipients": [{"external_id", "profile",
  "context"}], "idempotency_key"}``: 202 with the new trigger; **200** with the same
  trigger when its idempotency key was used before (nothing is sent again); 400 naming
  each bad recipient (``{"detail", "recipients": [{"index", "external_id", "field",
  "message"}]}``, nothing written or sent); 403 without ``campaigns.trigger_campaign``;
  409 when the campaign is not API-triggered or not Live.
* ``GET /api/campaigns/{id}/triggers/`` and ``…/triggers/{trigger_id}/`` — the campaign's
  triggers with their delivery counts (sent, failed, skipped, pending, by channel).

The body is read as it comes (no serializer per recipient): the service checks every
recipient once, and a 10,000-recipient call costs no per-field serializer work.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import permissions, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.generics import get_object_or_404
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from campaigns.models import Campaign, Trigger
from campaigns.triggers import (
    TRIGGER_PERMISSION,
    TriggerRefused,
    campaign_triggers,
    trigger_counts,
    trigger_create,
)
from segments.models import PROFILE_DATA_FIELDS

VIEW_CAMPAIGN = "campaigns.view_campaign"


class TriggerPermission(permissions.BasePermission):
    """Triggering needs ``campaigns.trigger_campaign``; reading the triggers, seeing the
    campaign. Checked before anything is looked up (the service checks the trigger too)."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        user = request.user
        if not (user and user.is_authenticated):
            return False
        if request.method in permissions.SAFE_METHODS:
            return bool(user.has_perm(VIEW_CAMPAIGN))
        return bool(user.has_perm(TRIGGER_PERMISSION))


# --- serializers (the body's shape, for the schema; the service reads the body) --------


class TriggerProfileSerializer(serializers.Serializer[Any]):
    email = serializers.CharField(required=False)
    phone = serializers.CharField(required=False)
    locale = serializers.CharField(required=False)
    time_zone = serializers.CharField(required=False)
    attributes = serializers.DictField(required=False)
    consent = serializers.DictField(child=serializers.BooleanField(), required=False)


class TriggerRecipientInputSerializer(serializers.Serializer[Any]):
    external_id = serializers.CharField(
        help_text="The profile's external_id; a profile that does not exist needs `profile`."
    )
    profile = TriggerProfileSerializer(
        required=False,
        help_text="Profile fields to create the profile with, or to update (only those "
        f"given): {', '.join(n for n in PROFILE_DATA_FIELDS if n != 'external_id')}, consent.",
    )

    def get_fields(self) -> dict[str, serializers.Field[Any, Any, Any, Any]]:
        # "context" is also the serializer's own attribute: declared here, not on the class.
        fields = super().get_fields()
        fields["context"] = serializers.DictField(
            required=False,
            help_text="What the content reads as {{ context.<key> }} for this recipient; a "
            "JSON object within the attributes' limits.",
        )
        return fields


class TriggerInputSerializer(serializers.Serializer[Any]):
    recipients = TriggerRecipientInputSerializer(
        many=True, help_text="At most SALVO_TRIGGER_MAX_RECIPIENTS (10,000) per call."
    )
    idempotency_key = serializers.CharField(
        max_length=255,
        help_text="A repeated call with the same key returns the same trigger and sends "
        "nothing again.",
    )


class TriggerCountsSerializer(serializers.Serializer[Any]):
    total = serializers.IntegerField()
    by_status = serializers.DictField(child=serializers.IntegerField())
    by_channel = serializers.DictField(
        child=serializers.DictField(child=serializers.IntegerField())
    )


class TriggerSerializer(serializers.ModelSerializer[Trigger]):
    status = serializers.CharField(
        source="execution.status", help_text="Its execution: running, completed, halted, failed."
    )
    created_by: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="username", read_only=True
    )
    counts = serializers.SerializerMethodField()

    class Meta:
        model = Trigger
        fields = [
            "id",
            "campaign",
            "idempotency_key",
            "recipients",
            "status",
            "created_by",
            "created_at",
            "counts",
        ]
        read_only_fields = fields

    @extend_schema_field(TriggerCountsSerializer)
    def get_counts(self, trigger: Trigger) -> dict[str, Any]:
        counts = self.context.get("counts")
        if counts is None:
            counts = trigger_counts(triggers=[trigger])
        return dict(counts[trigger.pk])


class RecipientProblemSerializer(serializers.Serializer[Any]):
    index = serializers.IntegerField()
    external_id = serializers.CharField()
    field = serializers.CharField()
    message = serializers.CharField()


class TriggerRefusedSerializer(serializers.Serializer[Any]):
    detail = serializers.CharField()
    recipients = RecipientProblemSerializer(many=True)


# --- the viewset's actions ------------------------------------------------------------------


class CampaignTriggerActions(viewsets.GenericViewSet[Campaign]):
    """The trigger actions of ``CampaignViewSet`` (which inherits them)."""

    def _trigger_response(self, triggers: list[Trigger]) -> dict[str, Any]:
        return {"counts": trigger_counts(triggers=triggers)}

    @extend_schema(
        request=TriggerInputSerializer,
        responses={
            202: TriggerSerializer,
            200: OpenApiResponse(
                TriggerSerializer,
                description="The idempotency key was used before: its trigger, sent nothing.",
            ),
            400: TriggerRefusedSerializer,
            403: None,
            409: OpenApiResponse(description="Not an API-triggered campaign, or not Live."),
        },
    )
    @action(
        detail=True,
        methods=["post"],
        permission_classes=[TriggerPermission],
        pagination_class=None,
        filter_backends=[],
    )
    def trigger(self, request: Request, pk: str | None = None) -> Response:
        """Send every action of the running version to each recipient at once, with its
        context; creates or updates the profiles given data. A bad recipient refuses the
        whole call. Needs `campaigns.trigger_campaign`."""
        campaign = get_object_or_404(Campaign, pk=pk)
        data = request.data if isinstance(request.data, dict) else {}
        try:
            result = trigger_create(
                campaign=campaign,
                user=request.user,
                recipients=data.get("recipients"),
                idempotency_key=data.get("idempotency_key"),  # type: ignore[arg-type]
            )
        except TriggerRefused as refused:
            body = {
                "detail": refused.detail,
                "recipients": [problem.as_dict() for problem in refused.problems],
            }
            return Response(body, status.HTTP_400_BAD_REQUEST)
        trigger = result.trigger
        code = status.HTTP_202_ACCEPTED if result.created else status.HTTP_200_OK
        context = {**self.get_serializer_context(), **self._trigger_response([trigger])}
        return Response(TriggerSerializer(trigger, context=context).data, code)

    @extend_schema(responses=TriggerSerializer(many=True))
    @action(
        detail=True, methods=["get"], permission_classes=[TriggerPermission], filter_backends=[]
    )
    def triggers(self, request: Request, pk: str | None = None) -> Response:
        """The campaign's triggers, newest first, with their counts, a page at a time."""
        campaign = get_object_or_404(Campaign, pk=pk)
        page = self.paginate_queryset(campaign_triggers(campaign=campaign))  # type: ignore[arg-type]
        assert page is not None  # the project's pagination class is set
        context = {**self.get_serializer_context(), **self._trigger_response(page)}
        return self.get_paginated_response(TriggerSerializer(page, many=True, context=context).data)

    @extend_schema(responses={200: TriggerSerializer, 404: None})
    @action(
        detail=True,
        methods=["get"],
        url_path=r"triggers/(?P<trigger_id>[0-9]+)",
        permission_classes=[TriggerPermission],
        pagination_class=None,
        filter_backends=[],
    )
    def trigger_detail(
        self, request: Request, pk: str | None = None, trigger_id: str | None = None
    ) -> Response:
        """One trigger with its counts: sent, failed, skipped and pending, by channel."""
        campaign = get_object_or_404(Campaign, pk=pk)
        trigger = get_object_or_404(campaign_triggers(campaign=campaign), pk=trigger_id)
        context = {**self.get_serializer_context(), **self._trigger_response([trigger])}
        return Response(TriggerSerializer(trigger, context=context).data)
