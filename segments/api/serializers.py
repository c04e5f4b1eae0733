"""What the profile and segment endpoints read and write.

Serializers check shapes and types; the services check the rules (E.164 phones, a unique
external_id, a valid rule tree…) so that every door refuses alike.
"""

from typing import Any

from django.db import models
from rest_framework import serializers

from config.api import JSONField
from segments.choices import ConsentChannel, ImportFormat, SegmentKind
from segments.models import PROFILE_DATA_FIELDS, Profile, Segment


class ConsentSerializer(serializers.Serializer):
    email = serializers.BooleanField(required=False)
    sms = serializers.BooleanField(required=False)
    push = serializers.BooleanField(required=False)


class ProfileSerializer(serializers.ModelSerializer):
    # `attributes` (JSON text in a form body too) parsed within the nesting limit; the
    # model field's validator then checks the attribute limits, with the path.
    serializer_field_mapping = {
        **serializers.ModelSerializer.serializer_field_mapping,
        models.JSONField: JSONField,
    }
    consent = ConsentSerializer(required=False, help_text="True means the profile may receive.")
    consent_changes = serializers.SerializerMethodField(
        help_text="When and from where each consent last changed."
    )

    class Meta:
        model = Profile
        fields = [
            "id",
            *PROFILE_DATA_FIELDS,
            "consent",
            "consent_changes",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "created_at", "updated_at"]
        # Uniqueness and formats are the service's to check (one message at every door).
        extra_kwargs: dict[str, dict[str, Any]] = {"external_id": {"validators": []}}

    def get_consent_changes(self, instance: Profile) -> dict[str, dict[str, Any]]:
        changes = {}
        for channel in ConsentChannel.values:
            at = getattr(instance, f"consent_{channel}_changed_at")
            changes[channel] = {
                "at": at.isoformat() if at else None,
                "source": getattr(instance, f"consent_{channel}_source"),
            }
        return changes


class ProfileImportSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="A CSV (with a header) or JSON-lines file.")
    format = serializers.ChoiceField(
        choices=ImportFormat.choices,
        required=False,
        help_text="Guessed from the file name or content when omitted.",
    )
    segment = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=200,
        help_text="Also add every imported profile to this static segment (created if new).",
    )


class ImportRejectionSerializer(serializers.Serializer):
    line = serializers.IntegerField()
    reason = serializers.CharField()


class ImportSummarySerializer(serializers.Serializer):
    """Every line of the file is accounted for: lines = header_lines + blank_lines +
    continuation_lines + rows, and rows = created + updated + rejected."""

    lines = serializers.IntegerField(help_text="Lines in the file.")
    header_lines = serializers.IntegerField(help_text="1 for a CSV file (its header), else 0.")
    blank_lines = serializers.IntegerField(help_text="Blank lines, or rows of empty cells.")
    continuation_lines = serializers.IntegerField(
        help_text="Further lines of rows whose quoted cells span lines."
    )
    rows = serializers.IntegerField(help_text="Rows in the file: created + updated + rejected.")
    created = serializers.IntegerField()
    updated = serializers.IntegerField()
    rejected = serializers.IntegerField()
    rejections = ImportRejectionSerializer(many=True)
    rejections_truncated = serializers.BooleanField()
    segment = serializers.CharField(allow_null=True)


class SegmentSerializer(serializers.ModelSerializer):
    rules = JSONField(
        required=False,
        help_text='A rule tree, e.g. {"all": [{"field": "attributes.country", "op": "eq", '
        '"value": "FR"}]}; empty for a static segment.',
    )
    kind = serializers.ChoiceField(choices=SegmentKind.choices, default=SegmentKind.RULES)

    class Meta:
        model = Segment
        fields = ["id", "name", "description", "kind", "rules", "created_at", "updated_at"]
        read_only_fields = ["id", "created_at", "updated_at"]
        extra_kwargs: dict[str, dict[str, Any]] = {"name": {"validators": []}}


class EstimateSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    exact = serializers.BooleanField(
        help_text="False when counted over a sample of a large profiles table."
    )
    margin = serializers.IntegerField(
        help_text="Half-width of the 95% interval around a sampled count (0 when exact)."
    )


class FreezeSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200, help_text="Name of the new static segment.")
