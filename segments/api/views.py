"""Profile and segment endpoints: thin viewsets over `segments.services` and `.selectors`."""

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from segments import selectors, services
from segments.choices import ConsentSource
from segments.models import Profile, Segment

from .filtersets import ProfileFilterSet, SegmentFilterSet
from .serializers import (
    EstimateSerializer,
    FreezeSerializer,
    ImportSummarySerializer,
    ProfileImportSerializer,
    ProfileSerializer,
    SegmentSerializer,
)


class ProfileViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    viewsets.GenericViewSet,
):
    """Profiles: who Salvo can reach, with per-channel consent (true = may receive)."""

    queryset = Profile.objects.all()
    serializer_class = ProfileSerializer
    filterset_class = ProfileFilterSet
    search_fields = ["^external_id", "^email", "^phone"]
    ordering_fields = ["external_id", "created_at", "updated_at", "id"]
    http_method_names = ["get", "post", "patch", "head", "options"]

    def perform_create(self, serializer: Any) -> None:
        data = dict(serializer.validated_data)
        consent = data.pop("consent", None)
        serializer.instance = services.profile_create(
            data=data, consent=consent, source=ConsentSource.API
        )

    def perform_update(self, serializer: Any) -> None:
        data = dict(serializer.validated_data)
        consent = data.pop("consent", None)
        serializer.instance = services.profile_update(
            profile=serializer.instance, data=data, consent=consent, source=ConsentSource.API
        )

    @extend_schema(
        request={"multipart/form-data": ProfileImportSerializer},
        responses={200: ImportSummarySerializer},
        description="Bulk upsert by external_id from a CSV or JSON-lines file. Good rows are "
        "kept, bad rows reported with their line numbers; an unreadable file (binary, not "
        "UTF-8, huge lines, no external_id column) is refused whole with a 400.",
    )
    @action(
        detail=False,
        methods=["post"],
        url_path="import",
        parser_classes=[MultiPartParser, FormParser],
    )
    def import_file(self, request: Request) -> Response:
        form = ProfileImportSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        upload = form.validated_data["file"]
        summary = services.profiles_import(
            user=request.user,
            stream=upload.file,
            format=form.validated_data.get("format"),
            filename=upload.name or "",
            segment_name=form.validated_data.get("segment", "").strip(),
        )
        return Response(summary.as_dict(), status=status.HTTP_200_OK)


class SegmentViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    viewsets.GenericViewSet,
):
    """Segments: a rule tree evaluated in the database, or a static list of profiles."""

    queryset = Segment.objects.all()
    serializer_class = SegmentSerializer
    filterset_class = SegmentFilterSet
    search_fields = ["name", "description"]
    ordering_fields = ["name", "created_at", "id"]
    http_method_names = ["get", "post", "patch", "head", "options"]

    def get_queryset(self) -> QuerySet[Segment]:
        return Segment.objects.all()

    def perform_create(self, serializer: Any) -> None:
        serializer.instance = services.segment_create(
            user=self.request.user, **serializer.validated_data
        )

    def perform_update(self, serializer: Any) -> None:
        serializer.instance = services.segment_update(
            segment=serializer.instance, user=self.request.user, data=serializer.validated_data
        )

    @extend_schema(
        responses={200: EstimateSerializer},
        description=(
            "How many profiles the segment holds now: exact, or on a large profiles table "
            "(PostgreSQL) counted over a sample, `exact` false, give or take `margin` (95%)."
        ),
    )
    @action(detail=True, methods=["get"])
    def estimate(self, request: Request, pk: str | None = None) -> Response:
        estimate = selectors.segment_estimate(segment=self.get_object())
        return Response(EstimateSerializer(estimate.as_dict()).data)

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "limit", int, description="How many profiles (1–100, default 20).", required=False
            )
        ],
        responses={200: ProfileSerializer(many=True)},
        description="A sample of the segment's members (the first ones by id).",
    )
    @action(detail=True, methods=["get"])
    def preview(self, request: Request, pk: str | None = None) -> Response:
        raw = request.query_params.get("limit", str(selectors.PREVIEW_LIMIT))
        if not raw.isdigit() or not 1 <= int(raw) <= selectors.MAX_PREVIEW_LIMIT:
            return Response(
                {"limit": [f"A whole number from 1 to {selectors.MAX_PREVIEW_LIMIT}."]},
                status=status.HTTP_400_BAD_REQUEST,
            )
        profiles = selectors.segment_preview(
            segment=self.get_object(), user=request.user, limit=int(raw)
        )
        return Response(ProfileSerializer(profiles, many=True).data)

    @extend_schema(
        request=FreezeSerializer,
        responses={201: SegmentSerializer},
        description="Copy the segment's current members into a new static segment.",
    )
    @action(detail=True, methods=["post"])
    def freeze(self, request: Request, pk: str | None = None) -> Response:
        segment = self.get_object()
        form = FreezeSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        frozen = services.segment_freeze(
            segment=segment, user=request.user, name=form.validated_data["name"]
        )
        return Response(SegmentSerializer(frozen).data, status=status.HTTP_201_CREATED)
