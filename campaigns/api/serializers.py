"""What the campaign endpoints read and write.

Input serializers only check shapes and types; the services check the rules (a preset of
the action's channel, a future start time, a unique name…) so every door refuses alike.
"""

from __future__ import annotations

import zoneinfo
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import Manager
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from campaigns.approval import APPROVAL_COMMENT_MAX_LENGTH, campaign_approval
from campaigns.choices import (
    EXPERIMENT_MAX_HOLDOUT_SHARE,
    EXPERIMENT_MAX_VARIANTS,
    EXPERIMENT_WINNER_AFTER_MAX_DAYS,
    VARIANT_LABELS,
    ApprovalStatus,
    CampaignKind,
    CampaignStatus,
    CampaignType,
    CheckLevel,
    DeliveryReason,
    DeliveryStatus,
    EventKind,
    ExecutionStatus,
    ExperimentMetric,
    ReviewCode,
    VersionRole,
)
from campaigns.engagement import OUTCOME_LABELS
from campaigns.experiments import (
    holdout_refusal,
    variants_refusals,
)
from campaigns.models import (
    ACTION_CONTENT_FIELDS,
    Campaign,
    CampaignTransition,
    CampaignVersion,
    ChannelAction,
    ProofSend,
    Variant,
    html_body_refusal,
)
from campaigns.occurrences import campaign_next_runs, run_words, version_schedule_words
from campaigns.operations import OPERATIONS
from campaigns.recurrence import recurrence_parse
from campaigns.selectors import (
    alert_rules,
    campaign_alerts,
    campaign_delivery_error,
    campaign_operations,
)
from channels.choices import ChannelKind
from channels.models import MessagePreset
from channels.rendering import TemplateContentError, validate_content
from segments.models import Segment


class TagListField(serializers.ListField):
    """Tag names in, tag names out (reads the prefetched tags: no query per row)."""

    child = serializers.CharField(max_length=100)

    def to_representation(self, data: Any) -> list[str]:
        if isinstance(data, Manager):
            return sorted(tag.name for tag in data.all())
        return [str(name) for name in data]


# --- output --------------------------------------------------------------------------


class RecurrenceField(serializers.JSONField):
    """A recurrence, refused key by key (``schedule.recurrence.at``) as campaigns.recurrence
    words it; stored with every key."""

    def to_internal_value(self, data: Any) -> Any:
        if data is None:
            return None
        try:
            return recurrence_parse(data).as_json()
        except DjangoValidationError as error:
            raise serializers.ValidationError(error.message_dict) from error


# The schedule's keys of a recurrence, absent from the schedules of versions without one.
RECURRENCE_KEYS = ("recurrence", "end_at", "once_per_profile", "recurrence_words")


class NextRunSerializer(serializers.Serializer[Any]):
    at = serializers.DateTimeField()
    words = serializers.CharField(help_text="“Monday 4 January 2027 at 09:00”, in the zone.")


class ScheduleSerializer(serializers.Serializer[Any]):
    start_at = serializers.DateTimeField(
        allow_null=True,
        required=False,
        help_text="ISO time; null (the default) starts as soon as the campaign is activated.",
    )
    # A name checked against the zones the server knows, not an enum of ~600 of them in
    # the schema.
    time_zone = serializers.CharField(
        max_length=64,
        required=False,
        help_text="The IANA zone name (e.g. Europe/Paris) the schedule's clock times are read "
        "in, and the zone of recipients who have none; default the site's TIME_ZONE.",
    )
    # A recurring campaign's schedule (campaigns.recurrence).
    recurrence = RecurrenceField(
        required=False,
        allow_null=True,
        help_text='Recurring campaigns: {"every": "day"|"week"|"month", "interval": n (1–99), '
        '"at": "HH:MM" (in time_zone), "weekdays": ["monday", …] (week), "month_days": '
        "[1–31] (month; a day a month lacks is skipped)}.",
    )
    end_at = serializers.DateTimeField(
        allow_null=True,
        required=False,
        help_text="Recurring campaigns: the last occurrence is the last at or before it; "
        "null: no end.",
    )
    once_per_profile = serializers.BooleanField(
        required=False,
        help_text="Recurring campaigns: an occurrence leaves out whoever an earlier one "
        "reached on that channel.",
    )
    recurrence_words = serializers.SerializerMethodField(
        help_text="The recurrence in words: “every Monday at 09:00 (Europe/Paris), until 31 "
        "March 2027”; empty without one."
    )

    def validate_time_zone(self, value: str) -> str:
        if value not in zoneinfo.available_timezones():
            raise serializers.ValidationError(f"“{value}” is not a time zone name.")
        return value

    def get_recurrence_words(self, version: Any) -> str:
        return version_schedule_words(version) if isinstance(version, CampaignVersion) else ""

    # Local time and quiet hours (campaigns.delivery.timing).
    in_recipient_time_zone = serializers.BooleanField(
        required=False,
        help_text="Shown when true (and the quiet hours when set). Send at start_at's date "
        "and clock time (read in time_zone) in each recipient's own zone; needs start_at. "
        "The campaign goes Live when the earliest zone reaches it (up to 26 h before the "
        "last).",
    )
    quiet_hours_start = serializers.TimeField(
        allow_null=True,
        required=False,
        format="%H:%M",
        help_text="HH:MM in the recipient's zone: marketing deliveries due from then until "
        "quiet_hours_end wait for the end; replaces the presets' quiet hours. Both or "
        "neither.",
    )
    quiet_hours_end = serializers.TimeField(allow_null=True, required=False, format="%H:%M")

    # Shown only when set: a schedule that uses neither reads as it always did.
    TIMING_DEFAULTS: dict[str, Any] = {
        "in_recipient_time_zone": False,
        "quiet_hours_start": None,
        "quiet_hours_end": None,
    }

    def to_representation(self, instance: Any) -> dict[str, Any]:
        """The recurrence's keys are shown for a version that has a recurrence only (a
        recurring campaign's), and local time and quiet hours only when set, so other
        campaigns' schedules read as they always did."""
        data = super().to_representation(instance)
        if isinstance(instance, CampaignVersion) and not instance.recurrence:
            for key in RECURRENCE_KEYS:
                data.pop(key, None)
        for name, default in self.TIMING_DEFAULTS.items():
            if data.get(name, default) == default:
                data.pop(name, None)
        return data


class VariantSerializer(serializers.ModelSerializer[Variant]):
    class Meta:
        model = Variant
        fields = ["label", "share", *ACTION_CONTENT_FIELDS]
        read_only_fields = fields


class ChannelActionSerializer(serializers.ModelSerializer[ChannelAction]):
    variants = VariantSerializer(
        many=True,
        read_only=True,
        help_text="Variants B, C, … of the content (campaigns.experiments); the action's own "
        "content is variant A and keeps the share they leave.",
    )

    class Meta:
        model = ChannelAction
        fields = ["id", "channel", "preset", *ACTION_CONTENT_FIELDS, "variants"]
        read_only_fields = fields


class CampaignVersionSerializer(serializers.ModelSerializer[CampaignVersion]):
    schedule = ScheduleSerializer(source="*", read_only=True)
    actions = ChannelActionSerializer(many=True, read_only=True)

    class Meta:
        model = CampaignVersion
        fields = [
            "id",
            "number",
            "segment",
            "schedule",
            "holdout_share",
            "test_share",
            "winner_after",
            "winner_metric",
            "actions",
            "activated_at",
            "created_at",
        ]
        read_only_fields = fields


class CampaignVersionDetailSerializer(CampaignVersionSerializer):
    activated_by: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="username", read_only=True
    )

    class Meta(CampaignVersionSerializer.Meta):
        fields = [*CampaignVersionSerializer.Meta.fields, "activated_by"]
        read_only_fields = fields


class DeliveryErrorSerializer(serializers.Serializer[Any]):
    """A step of the campaign's delivery that failed (see campaigns.delivery)."""

    step = serializers.CharField(help_text="What failed, e.g. “Planning the audience”.")
    error = serializers.CharField(help_text="The exception, as the worker saw it.")
    at = serializers.DateTimeField(help_text="When it last failed.")
    attempts = serializers.IntegerField(help_text="Attempts of that step that failed in a row.")
    retrying = serializers.BooleanField(
        help_text="The engine will try the step again; false once it gave up (the campaign "
        "stays Live and sends nothing more until stopped)."
    )


class AlertSerializer(serializers.Serializer[Any]):
    """A reason the campaign deserves a look (campaigns.selectors.alert_rules)."""

    code = serializers.ChoiceField(
        choices=[rule.code for rule in alert_rules()],
        help_text="activation_failed: its last activation failed; delivery_error: a step of "
        "its delivery failed; failure_rate: more than SALVO_ALERT_FAILURE_RATE of its "
        "messages sent or failed so far failed; stalled: no delivery progress for "
        "SALVO_DELIVERY_STALL_AFTER_S.",
    )
    message = serializers.CharField(help_text="The same in a sentence.")


def delivery_error_data(campaign: Campaign) -> dict[str, Any] | None:
    """The campaign's `delivery_error`, as the detail and the report show it."""
    error = campaign_delivery_error(campaign=campaign)
    return None if error is None else DeliveryErrorSerializer(error).data


class ApprovalSerializer(serializers.Serializer[Any]):
    """The open draft's place in the approval flow (campaigns.approval)."""

    version = serializers.IntegerField(allow_null=True, help_text="The draft's number.")
    status = serializers.ChoiceField(choices=ApprovalStatus.choices, allow_null=True)
    text = serializers.CharField(help_text="Where it stands, in words.")
    last_edited_by = serializers.CharField(allow_null=True)
    requested_by = serializers.CharField(allow_null=True)
    requested_at = serializers.DateTimeField(allow_null=True)
    decided_by = serializers.CharField(allow_null=True)
    decided_at = serializers.DateTimeField(allow_null=True)
    comment = serializers.CharField(allow_blank=True)


class CampaignSerializer(serializers.ModelSerializer[Campaign]):
    status = serializers.ChoiceField(choices=CampaignStatus.choices, read_only=True)
    tags = TagListField(read_only=True)
    has_open_draft = serializers.BooleanField(
        read_only=True, help_text="A draft version is open beside the running one."
    )
    live_version = CampaignVersionSerializer(read_only=True, allow_null=True)
    draft_version = CampaignVersionSerializer(read_only=True, allow_null=True)
    allowed_operations = serializers.SerializerMethodField(
        help_text="What the current user may do to the campaign in its current status."
    )
    delivery_error = serializers.SerializerMethodField(
        help_text="Why its delivery is failing or stopped, or null while all is well."
    )
    alerts = serializers.SerializerMethodField(
        help_text="Why the campaign deserves a look (the admin list's alert icon); empty "
        "while all is well."
    )
    approval = serializers.SerializerMethodField(
        help_text="The open draft's approval (see `approval_required`): where it stands (in "
        "words too), who edited it last, who asked and who decided, with the comment."
    )
    next_run_at = serializers.DateTimeField(
        read_only=True,
        allow_null=True,
        help_text="A recurring campaign's next occurrence; null when none is to come.",
    )
    next_runs = serializers.SerializerMethodField(
        help_text="A recurring campaign's next occurrences (up to 5), with their words."
    )

    class Meta:
        model = Campaign
        fields = [
            "id",
            "name",
            "description",
            "type",
            "kind",
            "approval_required",
            "approval",
            "tags",
            "status",
            "has_open_draft",
            "live_version",
            "draft_version",
            "activation_error",
            "delivery_error",
            "alerts",
            "started_at",
            "created_at",
            "updated_at",
            "allowed_operations",
            "next_run_at",
            "next_runs",
        ]
        # Frequency caps (campaigns.caps).
        fields += ["frequency_cap_exempt"]
        # Own tracking (campaigns.tracking).
        fields += ["track_opens", "track_clicks"]
        read_only_fields = fields

    @extend_schema_field(NextRunSerializer(many=True))
    def get_next_runs(self, campaign: Campaign) -> list[dict[str, Any]]:
        version = campaign.live_version
        if version is None:
            return []
        runs = [
            {"at": moment, "words": run_words(moment, version=version)}
            for moment in campaign_next_runs(campaign=campaign)
        ]
        return list(NextRunSerializer(runs, many=True).data)

    @extend_schema_field(
        serializers.ListField(child=serializers.ChoiceField(choices=list(OPERATIONS)))
    )
    def get_allowed_operations(self, campaign: Campaign) -> list[str]:
        request = self.context.get("request")
        user = request.user if request is not None else self.context.get("user")
        if user is None:
            return []
        return campaign_operations(campaign=campaign, user=user)

    @extend_schema_field(ApprovalSerializer())
    def get_approval(self, campaign: Campaign) -> dict[str, Any]:
        return ApprovalSerializer(campaign_approval(campaign)).data

    @extend_schema_field(AlertSerializer(many=True))
    def get_alerts(self, campaign: Campaign) -> list[dict[str, Any]]:
        return [{"code": rule.code, "message": rule.label} for rule in campaign_alerts(campaign)]

    @extend_schema_field(DeliveryErrorSerializer(allow_null=True))
    def get_delivery_error(self, campaign: Campaign) -> dict[str, Any] | None:
        return delivery_error_data(campaign)


class CampaignTransitionSerializer(serializers.ModelSerializer[CampaignTransition]):
    by: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="username", read_only=True
    )
    version: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="number", read_only=True
    )

    class Meta:
        model = CampaignTransition
        fields = ["at", "name", "label", "source", "target", "by", "reason", "version"]
        read_only_fields = fields


# --- input ---------------------------------------------------------------------------


class VariantInputSerializer(serializers.Serializer[Any]):
    share = serializers.IntegerField(
        help_text="Percent of the tested audience (1–99); variant A keeps what they leave."
    )
    subject = serializers.CharField(max_length=255, required=False, allow_blank=True)
    body = serializers.CharField(allow_blank=True)
    html_body = serializers.CharField(
        required=False, allow_blank=True, help_text=Variant.html_body.field.help_text
    )


class ChannelActionInputSerializer(serializers.Serializer[Any]):
    channel = serializers.ChoiceField(choices=ChannelKind.choices)
    preset = serializers.PrimaryKeyRelatedField(queryset=MessagePreset.objects.all())
    subject = serializers.CharField(max_length=255, required=False, allow_blank=True)
    body = serializers.CharField(allow_blank=True)
    html_body = serializers.CharField(
        required=False, allow_blank=True, help_text=ChannelAction.html_body.field.help_text
    )

    variants = VariantInputSerializer(
        many=True,
        required=False,
        help_text=f"Variants B, C, … in order (at most {EXPERIMENT_MAX_VARIANTS - 1}: the "
        f"action's own content is variant A); their shares add up to 99 % at most. Every "
        "action with variants splits the same way. When the action has an HTML part, each "
        "variant gives its own html_body; when it has none, none does.",
    )

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        refusal = html_body_refusal(data["channel"]) if data.get("html_body") else ""
        if refusal:
            raise serializers.ValidationError({"html_body": refusal})
        return data


class CampaignInputSerializer(serializers.Serializer[Any]):
    """A campaign and the content of its draft version; PATCH sends any subset."""

    name = serializers.CharField(max_length=200)
    description = serializers.CharField(required=False, allow_blank=True)
    tags = TagListField(required=False)
    type = serializers.ChoiceField(choices=CampaignType.choices, required=False)
    kind = serializers.ChoiceField(
        choices=CampaignKind.choices,
        required=False,
        help_text="one_shot (default), recurring or api_triggered; fixed once the campaign "
        "has run.",
    )
    approval_required = serializers.BooleanField(
        required=False,
        help_text="A version needs an approval before activation; default "
        "SALVO_APPROVAL_REQUIRED. Turning it off needs the approve permission.",
    )
    segment = serializers.PrimaryKeyRelatedField(
        queryset=Segment.objects.all(), allow_null=True, required=False
    )
    # Frequency caps (campaigns.caps).
    frequency_cap_exempt = serializers.BooleanField(
        required=False,
        help_text="Never capped by the frequency caps (its sends still count for the others). "
        "Changing it needs the campaigns.exempt_campaign_from_caps permission.",
    )
    track_opens = serializers.BooleanField(
        required=False, help_text=Campaign.track_opens.field.help_text
    )
    track_clicks = serializers.BooleanField(
        required=False, help_text=Campaign.track_clicks.field.help_text
    )
    schedule = ScheduleSerializer(required=False)
    holdout_share = serializers.IntegerField(
        required=False,
        help_text=f"Percent of the audience held back from the campaign as the experiment's "
        f"holdout (0–{EXPERIMENT_MAX_HOLDOUT_SHARE}).",
    )
    actions = ChannelActionInputSerializer(many=True, required=False)

    test_share = serializers.IntegerField(
        required=False,
        help_text="Test, then send the winner: percent (1–99) of the audience besides the "
        "holdout that gets the variants first; 0 (default): everyone at once.",
    )
    winner_after = serializers.DurationField(
        required=False,
        allow_null=True,
        help_text=f'How long the test runs (e.g. "04:00:00"; at most '
        f"{EXPERIMENT_WINNER_AFTER_MAX_DAYS} days) before the rest gets the winner: the "
        "variant significantly best on winner_metric, else the best observed (a tie: the "
        "earlier letter).",
    )
    winner_metric = serializers.ChoiceField(choices=ExperimentMetric.choices, required=False)

    def validate_holdout_share(self, value: int) -> int:
        refusal = holdout_refusal(value)
        if refusal:
            raise serializers.ValidationError(refusal)
        return value

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        """Content that can never render is refused here, before the service, keyed by the
        field that holds it (``actions[1].body``) as well as listed under ``actions`` as
        the services word it."""
        keyed: dict[str, list[str]] = {}
        kind = data.get("kind") or getattr(self.instance, "kind", CampaignKind.ONE_SHOT)
        for index, action in enumerate(data.get("actions") or []):
            variants = action.get("variants") or []
            refusals = variants_refusals(
                variants, channel=action["channel"], html_body=action.get("html_body") or ""
            )
            for key, messages in refusals.items():
                keyed.setdefault(f"actions[{index}].{key}", []).extend(messages)
            html_refusal = html_body_refusal(action["channel"])
            for number, variant in enumerate(variants):
                if variant.get("html_body") and html_refusal:
                    where = f"actions[{index}].variants[{number}].html_body"
                    keyed.setdefault(where, []).append(html_refusal)
            contents = [(f"actions[{index}]", action)] + [
                (f"actions[{index}].variants[{number}]", variant)
                for number, variant in enumerate(variants)
            ]
            for where, content in contents:
                try:
                    validate_content(
                        **{field: content.get(field) or "" for field in ACTION_CONTENT_FIELDS},
                        trigger_context=kind == CampaignKind.API_TRIGGERED,
                    )
                except TemplateContentError as error:
                    for field, messages in error.message_dict.items():
                        keyed.setdefault(f"{where}.{field}", []).extend(messages)
        if keyed:
            listed = [
                f"{key}: {message}" for key, messages in keyed.items() for message in messages
            ]
            raise serializers.ValidationError({"actions": listed, **keyed})
        return data

    def to_service_data(self) -> dict[str, Any]:
        """The validated input as the keyword arguments the services take."""
        data = dict(self.validated_data)
        schedule = data.pop("schedule", None)
        if schedule is not None:
            data.update(schedule)
        return data


class StopInputSerializer(serializers.Serializer[Any]):
    reason = serializers.CharField(required=False, allow_blank=True, default="")


class ApprovalCommentSerializer(serializers.Serializer[Any]):
    comment = serializers.CharField(
        required=False,
        allow_blank=True,
        default="",
        max_length=APPROVAL_COMMENT_MAX_LENGTH,
        help_text="Kept in the transition log; required to reject.",
    )


class DuplicateInputSerializer(serializers.Serializer[Any]):
    name = serializers.CharField(
        max_length=200,
        required=False,
        allow_blank=True,
        default="",
        help_text="Defaults to “<name> (copy)”.",
    )


class ErrorSerializer(serializers.Serializer[Any]):
    detail = serializers.CharField()


# --- the campaign report (GET /api/campaigns/{id}/report/) ------------------------------


class StatusCountsSerializer(serializers.Serializer[dict[str, int]]):
    total = serializers.IntegerField()
    pending = serializers.IntegerField()
    sent = serializers.IntegerField()
    failed = serializers.IntegerField()
    skipped = serializers.IntegerField()


class VersionCountsSerializer(serializers.Serializer[dict[str, int]]):
    total = serializers.IntegerField(help_text="Deliveries decided with this version.")
    sent = serializers.IntegerField()
    failed = serializers.IntegerField()
    skipped = serializers.IntegerField()


class TimelinePointSerializer(serializers.Serializer[dict[str, Any]]):
    at = serializers.DateTimeField(help_text="The start of the interval.")
    sent = serializers.DictField(
        child=serializers.IntegerField(), help_text="Deliveries sent per channel."
    )
    failed = serializers.DictField(
        child=serializers.IntegerField(), help_text="Deliveries failed per channel."
    )


class TimelineSerializer(serializers.Serializer[dict[str, Any]]):
    interval_s = serializers.IntegerField(
        help_text="Seconds per point: the shortest interval that draws the campaign's span "
        "in at most 120 points."
    )
    points = TimelinePointSerializer(many=True)


class RateSerializer(serializers.Serializer[dict[str, Any]]):
    window_s = serializers.IntegerField(help_text="The recent window the rate is taken over.")
    per_s = serializers.FloatField(help_text="Deliveries finished per second, every channel.")
    by_channel = serializers.DictField(child=serializers.FloatField())
    time_left_s = serializers.FloatField(
        allow_null=True,
        help_text="Seconds until nothing is pending at the current rate (0 when nothing is); "
        "null when it cannot be told: the campaign no longer sends, or a channel with "
        "deliveries left finished none lately.",
    )
    time_left_s_by_channel = serializers.DictField(
        child=serializers.FloatField(allow_null=True),
        help_text="The same per channel: its pending deliveries at its own rate.",
    )


class ExecutionReportSerializer(serializers.Serializer[dict[str, Any]]):
    id = serializers.IntegerField()
    version = serializers.IntegerField(help_text="The version number it started with.")
    status = serializers.ChoiceField(choices=ExecutionStatus.choices)
    started_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)
    deliveries_dropped_at = serializers.DateTimeField(
        allow_null=True,
        help_text="When retention (SALVO_RETENTION_DAYS) dropped this run's deliveries: its "
        "counts stay, its rows are no longer listed. Null while they are kept.",
    )
    audience_size = serializers.IntegerField(
        help_text="Profiles planned so far: the whole audience once `planning_done`."
    )
    planning_done = serializers.BooleanField(
        help_text="Every profile of the audience has its delivery rows."
    )
    scheduled_for = serializers.DateTimeField(
        allow_null=True,
        help_text="A recurring campaign's occurrence this run is for (status `skipped`: it "
        "came later than SALVO_RECURRENCE_GRACE_S and never ran); null for other kinds.",
    )
    total = serializers.IntegerField()
    by_status = serializers.DictField(child=serializers.IntegerField())
    by_channel = serializers.DictField(child=StatusCountsSerializer())
    by_reason = serializers.DictField(
        child=serializers.DictField(child=serializers.IntegerField()),
        help_text="Per channel, this execution's deliveries skipped or failed for each reason.",
    )


class WaitingSerializer(serializers.Serializer[dict[str, Any]]):
    count = serializers.IntegerField()
    until = serializers.DateTimeField(help_text="When the last of them is due.")


class EngagementCountSerializer(serializers.Serializer[dict[str, Any]]):
    count = serializers.IntegerField(
        help_text="Deliveries with at least one such event; for converted, the conversions."
    )
    rate = serializers.FloatField(
        allow_null=True, help_text="count over the deliveries sent; null when none was sent."
    )
    value = serializers.DecimalField(
        max_digits=16,
        decimal_places=2,
        required=False,
        help_text="converted only: the conversions' total value.",
    )


class EngagementSerializer(serializers.Serializer[dict[str, Any]]):
    """What recipients did, from providers' events (``campaigns.engagement``)."""

    by_channel = serializers.DictField(
        child=serializers.DictField(child=EngagementCountSerializer()),
        help_text="Per channel, per outcome: " + ", ".join(OUTCOME_LABELS) + ".",
    )
    by_version = serializers.DictField(
        child=serializers.DictField(child=EngagementCountSerializer()),
        help_text="Per version number, per kind.",
    )
    by_variant = serializers.DictField(
        child=serializers.DictField(child=EngagementCountSerializer()),
        help_text="Per group of the campaign's experiment (variant label, holdout, rest), per "
        "kind: profiles, not deliveries, and rates of the group's profiles; empty without one.",
    )


class CampaignReportSerializer(serializers.Serializer[dict[str, Any]]):
    """What a campaign's deliveries came to (``campaigns.selectors.campaign_report``)."""

    total = serializers.IntegerField()
    by_status = serializers.DictField(child=serializers.IntegerField())
    by_channel = serializers.DictField(child=StatusCountsSerializer())
    by_reason = serializers.DictField(
        child=serializers.DictField(child=serializers.IntegerField()),
        help_text="Per channel, deliveries skipped or failed for each reason: "
        + ", ".join(DeliveryReason.values)
        + ".",
    )
    by_version = serializers.DictField(
        child=VersionCountsSerializer(),
        help_text="Per version number, the deliveries decided with its content.",
    )
    timeline = TimelineSerializer()
    rate = RateSerializer()
    executions = ExecutionReportSerializer(many=True, help_text="Newest first.")
    delivery_error = DeliveryErrorSerializer(allow_null=True)
    experiment = serializers.JSONField(
        allow_null=True,
        required=False,
        help_text="The content experiment compared on ?metric= (opened, clicked): metric, "
        "alpha, groups [{group, n, count, rate, lift, p_value}], holdout {n, count, rate}, "
        "holdout_measured, note, comparison {best, runner_up, z, p_value, significant}, "
        "winner (only when significant); null when the campaign runs none.",
    )
    waiting = serializers.DictField(
        child=serializers.DictField(child=WaitingSerializer()),
        help_text="Per channel and reason (recipient_time: the recipient's local send time; "
        "quiet_hours: the end of the recipient's quiet hours), the deliveries still waiting "
        "and until when the last of them waits.",
    )
    engagement = EngagementSerializer()


class DeliverySerializer(serializers.Serializer[Any]):
    """One row of a campaign's deliveries (`campaign_deliveries`' annotations, and the
    page's events in one query: no query per row); the CSV export has the same columns in
    the same order but `events`, which the report counts for the whole campaign."""

    profile_external_id = serializers.CharField(
        help_text="Empty when the profile was deleted since."
    )
    address = serializers.CharField(help_text="The channel's address (a webhook: its URL).")
    channel = serializers.ChoiceField(choices=ChannelKind.choices)
    status = serializers.ChoiceField(choices=DeliveryStatus.choices)
    reason = serializers.CharField(help_text="A DeliveryReason code; empty when sent or pending.")
    error = serializers.CharField()
    attempts = serializers.IntegerField()
    provider_message_id = serializers.CharField()
    version_number = serializers.IntegerField(
        allow_null=True, help_text="The version whose content decided it; null while pending."
    )
    sent_at = serializers.DateTimeField(allow_null=True)
    updated_at = serializers.DateTimeField(allow_null=True)
    events = serializers.DictField(
        source="event_counts",
        child=serializers.IntegerField(),
        help_text="What providers reported about it: how many events of each kind "
        f"({', '.join(EventKind.values)}), in the order they first happened; {{}} when none.",
    )


# --- preview ---------------------------------------------------------------------------


class PreviewInputSerializer(serializers.Serializer[Any]):
    """Whom to preview for: a profile by its id or by its external id (one of them)."""

    profile = serializers.IntegerField(
        required=False, min_value=1, help_text="The profile's id (or give `external_id`)."
    )
    external_id = serializers.CharField(
        required=False, max_length=255, help_text="The profile's external id."
    )
    version = serializers.IntegerField(
        required=False,
        min_value=1,
        help_text="A version number; default: the open draft, else the running version "
        "(also accepted as `?version=N`).",
    )

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        if "profile" not in data and not data.get("external_id"):
            raise serializers.ValidationError(
                {"profile": "Choose a profile: give its id or its external id."}
            )
        return data


class PreviewProfileSerializer(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    external_id = serializers.CharField()
    email = serializers.CharField()
    phone = serializers.CharField()


class SmsLengthSerializer(serializers.Serializer[Any]):
    encoding = serializers.ChoiceField(choices=["GSM-7", "UCS-2"])
    characters = serializers.IntegerField(
        help_text="GSM-7 septets (extension characters count two) or UTF-16 code units."
    )
    segments = serializers.IntegerField(
        help_text="Messages it takes: 160 septets or 70 units in one, 153 or 67 per part."
    )


class ContentPreviewSerializer(serializers.Serializer[Any]):
    """One content of an action (its own, variant A, or one of its variants B–E)
    rendered for the profile by the delivery engine's own code, as if the profile were in
    that variant's group."""

    # A declared field, taken off the class by DRF's metaclass: it does not replace the
    # serializer's own `label` (which mypy cannot see).
    label = serializers.CharField(  # type: ignore[assignment]
        help_text=f"The variant, one of {', '.join(VARIANT_LABELS)}: A is the action's own content."
    )
    share = serializers.IntegerField(help_text="Its percent of the tested audience.")
    profile_gets = serializers.BooleanField(
        help_text="Whether this is the content the profile would get (its group's; false "
        "for every variant when it is held out or waits for the winner)."
    )
    to = serializers.CharField(help_text="The address it would go to; empty when it has none.")
    subject = serializers.CharField(help_text="Email subject or push title; empty otherwise.")
    body = serializers.CharField(help_text="The rendered body (an email's text part).")
    text = serializers.CharField(allow_null=True, help_text="Email: the text part; else null.")
    html = serializers.CharField(
        allow_null=True, help_text="Email: the HTML part; null when the email has none."
    )
    headers = serializers.DictField(
        child=serializers.CharField(), help_text="Extra headers, e.g. List-Unsubscribe."
    )
    sms = SmsLengthSerializer(allow_null=True, help_text="SMS: its length; else null.")
    payload = serializers.DictField(
        allow_null=True, help_text="Webhook: the JSON its backend would post; else null."
    )
    skipped = serializers.CharField(
        help_text="Why the engine would not send it to this profile (opted out, no "
        "address); the content is shown anyway. Empty when it would be sent."
    )
    error = serializers.CharField(
        allow_null=True,
        help_text="Why it cannot be rendered for this profile, in the engine's words "
        "(render_error); null when it renders.",
    )

    def to_representation(self, instance: Any) -> dict[str, Any]:
        data = super().to_representation(instance)
        data["error"] = instance.error or None
        return data


class ActionPreviewSerializer(ContentPreviewSerializer):
    """One action rendered for the profile by the delivery engine's own code: its own
    content (variant A), and each of its variants B, C, … in `variants`."""

    channel = serializers.ChoiceField(choices=ChannelKind.choices)
    preset = serializers.CharField(help_text="The preset's name.")
    variants = ContentPreviewSerializer(
        many=True, help_text="The action's variants B, C, …, each rendered for the profile."
    )


class SplitGroupSerializer(serializers.Serializer[Any]):
    label = serializers.CharField()  # type: ignore[assignment]  # see ContentPreviewSerializer
    share = serializers.IntegerField(help_text="Percent of the tested audience.")

    def to_representation(self, instance: Any) -> dict[str, Any]:
        label, share = instance
        return {"label": label, "share": share}


class PreviewExperimentSerializer(serializers.Serializer[Any]):
    """The profile's place in the campaign's experiment."""

    group = serializers.CharField(
        help_text="A variant's label, `holdout` (no message of the campaign), or `rest` (a "
        "“test, then send the winner” campaign's rest, which gets the winner)."
    )
    stored = serializers.BooleanField(
        help_text="Whether planning stored this group; false: computed now as planning "
        "will store it."
    )
    held_out = serializers.BooleanField(help_text="Whether the profile is in the holdout.")
    holdout_share = serializers.IntegerField(help_text="The version's holdout, in percent.")
    split = SplitGroupSerializer(many=True, help_text="The version's groups, A first.")


class PersonalisationSerializer(serializers.Serializer[Any]):
    profile_fields = serializers.ListField(
        child=serializers.CharField(), help_text="The profile's own fields, e.g. profile.email."
    )
    attribute_keys = serializers.ListField(
        child=serializers.CharField(),
        help_text="Attribute keys seen among the newest profiles, e.g. profile.first_name.",
    )


class CampaignPreviewSerializer(serializers.Serializer[Any]):
    """`POST …/preview/`: each action of a version rendered for one profile. Sends and
    writes nothing."""

    version = serializers.IntegerField(source="version.number", help_text="Version number.")
    version_role = serializers.ChoiceField(
        source="role",
        choices=VersionRole.values,
        help_text="What the version is to the campaign now: its draft; the live version "
        "scheduled, running, or its last run once the campaign has ended; or a past version.",
    )
    profile = PreviewProfileSerializer()
    experiment = PreviewExperimentSerializer(
        allow_null=True,
        help_text="The profile's group when the campaign runs an experiment; else null.",
    )
    actions = ActionPreviewSerializer(many=True)
    personalisation = PersonalisationSerializer(
        help_text="What content can insert: `{{ <name> }}`."
    )


# --- the review before activation (GET …/review/, POST …/activate/) --------------------


class ReviewCheckSerializer(serializers.Serializer[Any]):
    level = serializers.ChoiceField(choices=CheckLevel.choices)
    code = serializers.ChoiceField(choices=ReviewCode.choices)
    message = serializers.CharField()
    field = serializers.CharField(
        help_text="What it is about: segment, start_at, actions[i].preset|subject|body|"
        "html_body, a variant's actions[i].variants[j].subject|body|html_body; empty for "
        "the whole campaign."
    )


class ReviewScheduleSerializer(serializers.Serializer[Any]):
    start_at = serializers.DateTimeField(
        allow_null=True, help_text="When it starts (UTC); null: as soon as it is activated."
    )
    recurrence = serializers.CharField(
        required=False,
        help_text="A recurring campaign's recurrence in words; absent for other kinds.",
    )
    timing = serializers.ListField(
        child=serializers.CharField(),
        required=False,
        help_text="Only when the version sends in local time or keeps quiet hours: those "
        "in words, e.g. “Sent at 09:00 on 2026-12-01 "
        "in each recipient's time zone … from … to … UTC.”",
    )


class ChannelEstimateSerializer(serializers.Serializer[Any]):
    rate_per_s = serializers.FloatField(
        allow_null=True, help_text="The preset's rate limit; null: none."
    )
    seconds = serializers.FloatField(
        allow_null=True, help_text="Sending time at that rate; null: as fast as workers go."
    )


class ReviewEstimateSerializer(serializers.Serializer[Any]):
    seconds = serializers.FloatField(
        allow_null=True,
        help_text="The slowest channel's sending time (channels send side by side); null "
        "when no channel is rate-limited.",
    )
    by_channel = serializers.DictField(child=ChannelEstimateSerializer())


class CampaignReviewSerializer(serializers.Serializer[Any]):
    """`GET …/review/`: what activating the open draft would do, and its checks. Errors
    block activation; warnings must be acknowledged by code (`POST …/activate/` with
    `{"acknowledge": [codes]}`)."""

    reach = serializers.DictField(
        child=serializers.IntegerField(),
        help_text="Per channel, the profiles it will send to: the segment's members less "
        "those opted out (marketing) or without an address for it.",
    )
    recipients = serializers.IntegerField(help_text="Profiles at least one channel reaches.")
    audience = serializers.IntegerField(help_text="The segment's members.")
    schedule = ReviewScheduleSerializer()
    estimate = ReviewEstimateSerializer()
    checks = ReviewCheckSerializer(many=True)
    sample = CampaignPreviewSerializer(
        allow_null=True,
        help_text="Each action rendered for the segment's first member; null when the "
        "segment is empty or the user may not see profiles.",
    )

    def to_representation(self, instance: Any) -> dict[str, Any]:
        data = dict(instance.as_dict())
        data["sample"] = (
            CampaignPreviewSerializer(instance.sample).data if instance.sample else None
        )
        return data


class ActivationRefusedSerializer(CampaignReviewSerializer):
    """A refused activation: the review, and why (`detail`); `unacknowledged` lists the
    warning codes to acknowledge when there is no error."""

    detail = serializers.CharField()
    unacknowledged = serializers.ListField(child=serializers.ChoiceField(ReviewCode.choices))


class ActivateInputSerializer(serializers.Serializer[Any]):
    acknowledge = serializers.ListField(
        child=serializers.ChoiceField(choices=ReviewCode.choices),
        required=False,
        default=list,
        help_text="The codes of the review's warnings you have read and accept.",
    )


class CampaignSavedSerializer(CampaignSerializer):
    """A campaign as `POST` and `PATCH` answer: saved, with what its content holds that
    the review will ask to acknowledge (a variable no profile provides)."""

    warnings = ReviewCheckSerializer(many=True, read_only=True)

    class Meta(CampaignSerializer.Meta):
        fields = [*CampaignSerializer.Meta.fields, "warnings"]


class ProofInputSerializer(serializers.Serializer[Any]):
    """Whom a proof goes to: every test profile, or those named here (each must be one)."""

    profiles = serializers.ListField(
        child=serializers.IntegerField(min_value=1),
        required=False,
        help_text="Ids of test profiles to send the proof to (default: every test profile).",
    )
    external_ids = serializers.ListField(
        child=serializers.CharField(max_length=255),
        required=False,
        help_text="External ids of test profiles to send the proof to.",
    )
    variants = serializers.ListField(
        # Labels, checked against the version's by the service (a 400 keyed `variants`).
        child=serializers.CharField(max_length=1),
        required=False,
        max_length=len(VARIANT_LABELS),
        help_text=f"The variants to send, among {', '.join(VARIANT_LABELS)} (A: each "
        "action's own content); default: every "
        "variant of each action. An action with none of them is left out; a variant no "
        "action has is refused. Each proof's subject is marked with its variant "
        "(`[Proof B] …`) when its action has variants.",
    )


class ProofSendSerializer(serializers.ModelSerializer[ProofSend]):
    version = serializers.IntegerField(source="version.number", read_only=True)
    channel = serializers.CharField(source="action.channel", read_only=True)
    external_id = serializers.CharField(source="profile.external_id", read_only=True)
    variant = serializers.CharField(
        read_only=True,
        help_text=f"The action's variant sent, one of {', '.join(VARIANT_LABELS)} (A: its own "
        "content).",
    )
    requested_by = serializers.CharField(
        source="requested_by.get_username", read_only=True, default=None
    )

    class Meta:
        model = ProofSend
        fields = [
            "id",
            "version",
            "action",
            "channel",
            "variant",
            "profile",
            "external_id",
            "status",
            "provider_message_id",
            "error",
            "requested_by",
            "created_at",
            "sent_at",
        ]
        read_only_fields = fields
