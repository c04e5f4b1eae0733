"""The campaign endpoints: each reads through a selector or calls one service.

Domain errors are not caught here: the project exception handler (config/api.py) turns
them into 409 / 400 / 403 responses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar, cast

from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpResponseBase
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import filters, permissions, status, viewsets
from rest_framework.decorators import action
from rest_framework.renderers import BaseRenderer, BrowsableAPIRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import BaseSerializer
from rest_framework.views import APIView

from campaigns import services
from campaigns.choices import CampaignKind
from campaigns.engagement import events_by_delivery
from campaigns.exceptions import ActivationRefused
from campaigns.experiments import EXPERIMENT_METRICS, experiment_results
from campaigns.exports import deliveries_csv_response
from campaigns.models import Campaign
from campaigns.operations import OPERATIONS
from campaigns.preview import (
    PREVIEW_PERMISSIONS,
    campaign_preview,
    preview_profile,
    preview_version,
)
from campaigns.proofs import PROOF_PERMISSIONS, campaign_proof_request, campaign_proof_sends
from campaigns.review import campaign_review, version_content_warnings
from campaigns.selectors import (
    DELIVERY_VIEW_PERMISSIONS,
    campaign_deliveries,
    campaign_delivery_error,
    campaign_list,
    campaign_report,
    campaign_transitions,
    campaign_versions,
)
from config.permissions import require_perms

from .filtersets import CampaignFilterSet, DeliveryFilterSet
from .serializers import (
    ActivateInputSerializer,
    ActivationRefusedSerializer,
    ApprovalCommentSerializer,
    CampaignInputSerializer,
    CampaignPreviewSerializer,
    CampaignReportSerializer,
    CampaignReviewSerializer,
    CampaignSavedSerializer,
    CampaignSerializer,
    CampaignTransitionSerializer,
    CampaignVersionDetailSerializer,
    CampaignVersionSerializer,
    DeliverySerializer,
    DuplicateInputSerializer,
    ErrorSerializer,
    PreviewInputSerializer,
    ProofInputSerializer,
    ProofSendSerializer,
    StopInputSerializer,
)
from .triggers import CampaignTriggerActions

Row = TypeVar("Row")

# The viewset's actions that are lifecycle operations, by the table's name for them.
OPERATION_OF_ACTION: dict[str, str] = {
    **{name: name for name in OPERATIONS},
    "destroy": "delete",
}


class CampaignOperationPermission(permissions.BasePermission):
    """The operation's permissions from the table, which its service checks too: a user
    without them gets 403 before anything is looked up (or shown)."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        user = request.user
        if not (user and user.is_authenticated):
            return False
        return OPERATIONS[OPERATION_OF_ACTION[getattr(view, "action", "")]].allowed_to(user)


class PreviewPermission(permissions.BasePermission):
    """A preview shows a profile's data: seeing campaigns and profiles, checked before
    anything is looked up (the selector checks it too)."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        user = request.user
        return bool(user and user.is_authenticated and user.has_perms(PREVIEW_PERMISSIONS))


class ProofPermission(permissions.BasePermission):
    """Sending a proof needs ``campaigns.send_proof`` besides seeing the campaign; its
    list, seeing the campaign. Checked before anything is looked up (the service checks
    the sending too)."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        user = request.user
        if not (user and user.is_authenticated):
            return False
        if request.method in permissions.SAFE_METHODS:
            return bool(user.has_perm("campaigns.view_campaign"))
        return bool(user.has_perms(PROOF_PERMISSIONS))


class CSVRenderer(BaseRenderer):
    """Lets `?format=csv` choose the deliveries' streamed CSV export; the view writes the
    file itself (`campaigns.exports`), and an error is answered in JSON."""

    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(
        self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None
    ) -> bytes:
        raise NotImplementedError("The deliveries view streams its CSV itself.")


CONFLICT = OpenApiResponse(ErrorSerializer, description="The current status does not allow it.")
INVALID = OpenApiResponse(description="Invalid input: field errors.")


@extend_schema_view(
    create=extend_schema(
        request=CampaignInputSerializer,
        responses={201: CampaignSavedSerializer, 400: INVALID},
        description="Create a Draft campaign with version 1.",
    ),
    partial_update=extend_schema(
        request=CampaignInputSerializer,
        responses={200: CampaignSavedSerializer, 400: INVALID, 409: CONFLICT},
        description="Edit the open draft version (only the keys given; `actions` replaces "
        "all actions). 409 when the campaign has no draft.",
    ),
    destroy=extend_schema(
        responses={204: None, 409: CONFLICT}, description="Delete a Draft campaign."
    ),
)
class CampaignViewSet(CampaignTriggerActions, viewsets.ModelViewSet[Campaign]):
    """Campaigns: list, create, edit the draft, and every lifecycle operation."""

    serializer_class = CampaignSerializer
    filterset_class = CampaignFilterSet
    filter_backends = [DjangoFilterBackend, filters.OrderingFilter]
    ordering_fields = ["name", "created_at", "updated_at", "status"]
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def get_queryset(self) -> QuerySet[Campaign]:
        return campaign_list(statuses=None).prefetch_related(
            "live_version__actions", "draft_version__actions"
        )

    def filter_queryset(self, queryset: QuerySet[Campaign, Row]) -> QuerySet[Campaign, Row]:
        # The filters choose the list's rows; a campaign addressed by its id is found
        # whatever its status (the default list hides Stopped ones, a URL must not).
        if self.detail:
            return queryset
        return super().filter_queryset(queryset)

    def get_permissions(self) -> Sequence[Any]:
        if self.action in OPERATION_OF_ACTION:
            return [CampaignOperationPermission()]
        return super().get_permissions()

    def get_serializer_class(self) -> type[BaseSerializer[Any]]:
        if self.action in ("create", "partial_update"):
            return CampaignInputSerializer
        return CampaignSerializer

    def _campaign_response(self, campaign: Campaign, code: int = status.HTTP_200_OK) -> Response:
        fresh = self.get_queryset().get(pk=campaign.pk)
        return Response(CampaignSerializer(fresh, context=self.get_serializer_context()).data, code)

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = CampaignInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        campaign = services.campaign_create(user=request.user, **serializer.to_service_data())
        return self._saved_response(campaign, status.HTTP_201_CREATED)

    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        campaign = self.get_object()
        serializer = CampaignInputSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        services.campaign_update(
            campaign=campaign, user=request.user, data=serializer.to_service_data()
        )
        return self._saved_response(campaign)

    def _saved_response(self, campaign: Campaign, code: int = status.HTTP_200_OK) -> Response:
        """The campaign as saved, with `warnings`: what its draft's content holds that
        saving accepts but the review will ask to acknowledge (unknown variables)."""
        response = self._campaign_response(campaign, code)
        draft = Campaign.objects.get(pk=campaign.pk).draft_version
        warnings = (
            version_content_warnings(
                version=draft, trigger_context=campaign.kind == CampaignKind.API_TRIGGERED
            )
            if draft
            else []
        )
        response.data["warnings"] = [check.as_dict() for check in warnings]
        return response

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        services.campaign_delete(campaign=self.get_object(), user=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        request=ActivateInputSerializer,
        responses={
            202: CampaignSerializer,
            400: OpenApiResponse(
                ActivationRefusedSerializer,
                description="The review refuses: its errors, or the warnings not acknowledged.",
            ),
            409: CONFLICT,
        },
        description="Draft (or a running campaign's open draft) → Activating, once the "
        "review (`GET …/review/`) has no error and every warning's code is in "
        "`acknowledge`. The errors are checked again in the activation task, which moves "
        "it to Scheduled or Live.",
    )
    @action(detail=True, methods=["post"])
    def activate(self, request: Request, pk: str | None = None) -> Response:
        serializer = ActivateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            campaign = services.campaign_activate(
                campaign=self.get_object(),
                user=request.user,
                acknowledge=serializer.validated_data["acknowledge"],
            )
        except ActivationRefused as refusal:
            # The review's shape, so that a client can acknowledge what it lists.
            body = {
                "detail": " ".join(refusal.messages),
                "unacknowledged": refusal.unacknowledged,
                **CampaignReviewSerializer(refusal.review).data,
            }
            return Response(body, status.HTTP_400_BAD_REQUEST)
        return self._campaign_response(campaign, status.HTTP_202_ACCEPTED)

    @extend_schema(
        responses={200: CampaignReviewSerializer},
        description="What activating the open draft would do: reach per channel, schedule, "
        "estimated sending time at the presets' rates, each action rendered for a sample "
        "profile, and the checks (errors block; warnings need acknowledging by code).",
    )
    @action(detail=True, methods=["get"], pagination_class=None, filter_backends=[])
    def review(self, request: Request, pk: str | None = None) -> Response:
        review = campaign_review(campaign=self.get_object(), user=request.user)
        return Response(CampaignReviewSerializer(review).data)

    @extend_schema(
        request=StopInputSerializer,
        responses={200: CampaignSerializer, 409: CONFLICT},
        description="Scheduled or Live → Stopped (terminal).",
    )
    @action(detail=True, methods=["post"])
    def stop(self, request: Request, pk: str | None = None) -> Response:
        serializer = StopInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        campaign = services.campaign_stop(
            campaign=self.get_object(),
            user=request.user,
            reason=serializer.validated_data["reason"],
        )
        return self._campaign_response(campaign)

    @extend_schema(
        request=None,
        responses={200: CampaignSerializer, 409: CONFLICT},
        description="Completed or Stopped → Archived.",
    )
    @action(detail=True, methods=["post"])
    def archive(self, request: Request, pk: str | None = None) -> Response:
        campaign = services.campaign_archive(campaign=self.get_object(), user=request.user)
        return self._campaign_response(campaign)

    @extend_schema(
        request=DuplicateInputSerializer,
        responses={201: CampaignSerializer, 400: INVALID},
        description="A new Draft with this campaign's latest content.",
    )
    @action(detail=True, methods=["post"])
    def duplicate(self, request: Request, pk: str | None = None) -> Response:
        serializer = DuplicateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        copy = services.campaign_duplicate(
            campaign=self.get_object(),
            user=request.user,
            name=serializer.validated_data["name"],
        )
        return self._campaign_response(copy, status.HTTP_201_CREATED)

    @extend_schema(
        request=None,
        responses={201: CampaignVersionSerializer, 409: CONFLICT},
        description="Open a draft version of a Scheduled or Live campaign.",
    )
    @action(detail=True, methods=["post"])
    def modify(self, request: Request, pk: str | None = None) -> Response:
        draft = services.campaign_modify(campaign=self.get_object(), user=request.user)
        return Response(CampaignVersionSerializer(draft).data, status.HTTP_201_CREATED)

    @extend_schema(
        request=None,
        responses={200: CampaignSerializer, 409: CONFLICT},
        description="Drop the open draft of a Scheduled or Live campaign.",
    )
    @action(detail=True, methods=["post"], url_path="discard-draft")
    def discard_draft(self, request: Request, pk: str | None = None) -> Response:
        campaign = services.campaign_discard_draft(campaign=self.get_object(), user=request.user)
        return self._campaign_response(campaign)

    def _approval_step(self, request: Request, service: Any) -> Response:
        serializer = ApprovalCommentSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        campaign = service(
            campaign=self.get_object(),
            user=request.user,
            comment=serializer.validated_data["comment"],
        )
        return self._campaign_response(campaign)

    @extend_schema(
        request=ApprovalCommentSerializer,
        responses={200: CampaignSerializer, 409: CONFLICT},
        description="Ask for the open draft's approval (the campaign requires one).",
    )
    @action(detail=True, methods=["post"], url_path="request-approval")
    def request_approval(self, request: Request, pk: str | None = None) -> Response:
        return self._approval_step(request, services.campaign_request_approval)

    @extend_schema(
        request=ApprovalCommentSerializer,
        responses={200: CampaignSerializer, 403: None, 409: CONFLICT},
        description="Approve the draft awaiting approval; 403 for its last editor.",
    )
    @action(detail=True, methods=["post"])
    def approve(self, request: Request, pk: str | None = None) -> Response:
        return self._approval_step(request, services.campaign_approve)

    @extend_schema(
        request=ApprovalCommentSerializer,
        responses={200: CampaignSerializer, 400: INVALID, 403: None, 409: CONFLICT},
        description="Reject the draft awaiting approval; `comment` says why (required).",
    )
    @action(detail=True, methods=["post"])
    def reject(self, request: Request, pk: str | None = None) -> Response:
        return self._approval_step(request, services.campaign_reject)

    def _page(self, rows: QuerySet[Any], serializer: type[BaseSerializer[Any]]) -> Response:
        """A page of rows in the shape of every list (count, next, previous, results)."""
        page = self.paginate_queryset(rows)
        assert page is not None  # the project's pagination class is set
        return self.get_paginated_response(serializer(page, many=True).data)

    @extend_schema(responses=CampaignVersionDetailSerializer(many=True))
    @action(detail=True, methods=["get"], filter_backends=[])
    def versions(self, request: Request, pk: str | None = None) -> Response:
        """The campaign's versions, newest first, a page at a time."""
        return self._page(
            campaign_versions(campaign=self.get_object()), CampaignVersionDetailSerializer
        )

    @extend_schema(responses=CampaignTransitionSerializer(many=True))
    @action(detail=True, methods=["get"], filter_backends=[])
    def transitions(self, request: Request, pk: str | None = None) -> Response:
        """The campaign's transition log, newest first, a page at a time."""
        return self._page(
            campaign_transitions(campaign=self.get_object()), CampaignTransitionSerializer
        )

    @extend_schema(
        responses=CampaignReportSerializer,
        parameters=[
            OpenApiParameter(
                "metric",
                str,
                enum=list(EXPERIMENT_METRICS),
                description="What the experiment block compares the variants on (default opened).",
            )
        ],
    )
    @action(detail=True, methods=["get"], pagination_class=None, filter_backends=[])
    def report(self, request: Request, pk: str | None = None) -> Response:
        """Delivery counts by channel, status, reason and version, a timeline of sends,
        the current rate and the time left, and each execution's counts."""
        campaign = self.get_object()
        metric = request.query_params.get("metric", "")
        if metric and metric not in EXPERIMENT_METRICS:
            raise ValidationError(
                {"metric": f"Choose one of {', '.join(EXPERIMENT_METRICS)}, not {metric!r}."}
            )
        report = {
            **campaign_report(campaign=campaign),
            "delivery_error": campaign_delivery_error(campaign=campaign),
            "experiment": experiment_results(campaign=campaign, metric=metric),
        }
        return Response(CampaignReportSerializer(report).data)

    @extend_schema(
        parameters=[
            *(
                OpenApiParameter(
                    name,
                    int if name == "version" else str,
                    enum=[value for value, _ in (query.extra.get("choices") or [])] or None,
                    description=str(query.extra.get("help_text") or ""),
                )
                for name, query in DeliveryFilterSet.base_filters.items()
            ),
            OpenApiParameter(
                "format",
                str,
                enum=["json", "csv"],
                description="csv: every matching row as a streamed CSV download (no pages).",
            ),
        ],
        responses={200: DeliverySerializer(many=True), 400: INVALID},
    )
    @action(
        detail=True,
        methods=["get"],
        filter_backends=[],
        renderer_classes=[JSONRenderer, BrowsableAPIRenderer, CSVRenderer],
    )
    def deliveries(self, request: Request, pk: str | None = None) -> HttpResponseBase:
        """Who got it and who did not, and why: the campaign's deliveries with the
        profile's id and address, a page at a time, or all of them as CSV (`?format=csv`).
        Needs the permissions to see campaigns and profiles."""
        campaign = self.get_object()
        # Refused before the query is read: a user who may not see them learns nothing
        # from a 400 either.
        require_perms(request.user, *DELIVERY_VIEW_PERMISSIONS, to="see a campaign's deliveries")
        query = DeliveryFilterSet(request.query_params)
        if not query.is_valid():
            raise ValidationError(query.errors)
        rows = campaign_deliveries(campaign=campaign, user=request.user, **query.selector_filters())
        if isinstance(request.accepted_renderer, CSVRenderer):
            return deliveries_csv_response(campaign=campaign, rows=rows)
        page: list[Any] | None = self.paginate_queryset(cast(QuerySet[Any], rows))
        assert page is not None  # the project's pagination class is set
        events = events_by_delivery(row.pk for row in page)
        for row in page:
            row.event_counts = events[row.pk]
        return self.get_paginated_response(DeliverySerializer(page, many=True).data)

    @extend_schema(
        request=PreviewInputSerializer,
        parameters=[
            OpenApiParameter("version", int, description="A version number, as in the body.")
        ],
        responses={
            200: CampaignPreviewSerializer,
            400: OpenApiResponse(
                description="No such profile (keyed by `profile` or `external_id`) or version."
            ),
        },
    )
    @action(
        detail=True,
        methods=["post"],
        permission_classes=[PreviewPermission],
        pagination_class=None,
        filter_backends=[],
    )
    def preview(self, request: Request, pk: str | None = None) -> Response:
        """Each action of the open draft (else the running version, or `version`) rendered
        for one profile by the delivery engine's own code: email subject, text and HTML,
        SMS with its length, push title and body, the webhook's JSON; a render error per
        action. Sends nothing and records nothing. Needs the permissions to see campaigns
        and profiles."""
        campaign = self.get_object()
        data = request.data
        if hasattr(data, "items") and "version" in request.query_params:
            data = {"version": request.query_params["version"], **dict(data.items())}
        serializer = PreviewInputSerializer(data=data)
        serializer.is_valid(raise_exception=True)
        chosen = serializer.validated_data
        profile = preview_profile(pk=chosen.get("profile"), external_id=chosen.get("external_id"))
        version = preview_version(campaign=campaign, number=chosen.get("version"))
        preview = campaign_preview(
            campaign=campaign, profile=profile, user=request.user, version=version
        )
        return Response(CampaignPreviewSerializer(preview).data)

    @extend_schema(
        request=ProofInputSerializer,
        responses={
            202: ProofSendSerializer(many=True),
            400: OpenApiResponse(
                description="No test profile, a named profile that is not one, more than "
                "SALVO_PROOF_MAX_RECIPIENTS test profiles, a variant the version lacks, or a "
                "version without actions."
            ),
        },
    )
    @action(
        detail=True,
        methods=["post"],
        permission_classes=[ProofPermission],
        pagination_class=None,
        filter_backends=[],
    )
    def proof(self, request: Request, pk: str | None = None) -> Response:
        """Send every action of the open draft (else the running version), each of its
        variants (or those named in `variants`), to the test profiles, or to those named,
        through the presets' real providers, subjects prefixed `[Proof]` (`[Proof B]` for
        a variant's). Answers at once with the proof sends, pending: a worker sends
        them (`GET …/proofs/` shows their outcome). Needs `campaigns.send_proof`."""
        campaign = self.get_object()
        serializer = ProofInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        chosen = serializer.validated_data
        sends = campaign_proof_request(
            campaign=campaign,
            user=request.user,
            profiles=chosen.get("profiles", ()),
            external_ids=chosen.get("external_ids", ()),
            variants=chosen.get("variants", ()),
        )
        return Response(ProofSendSerializer(sends, many=True).data, status.HTTP_202_ACCEPTED)

    @extend_schema(responses=ProofSendSerializer(many=True))
    @action(detail=True, methods=["get"], permission_classes=[ProofPermission], filter_backends=[])
    def proofs(self, request: Request, pk: str | None = None) -> Response:
        """The campaign's proof sends with their outcome, newest first, a page at a time."""
        return self._page(campaign_proof_sends(campaign=self.get_object()), ProofSendSerializer)

    def finalize_response(
        self, request: Request, response: Response, *args: Any, **kwargs: Any
    ) -> Response:
        # A refusal of a CSV export is a JSON error like every other one (a CSV export
        # itself comes here as a StreamingHttpResponse, and passes as it is).
        if isinstance(response, Response) and isinstance(
            getattr(request, "accepted_renderer", None), CSVRenderer
        ):
            request.accepted_renderer = JSONRenderer()
            request.accepted_media_type = JSONRenderer.media_type
        return super().finalize_response(request, response, *args, **kwargs)
