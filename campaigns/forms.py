"""Admin forms: a campaign with the fields of its draft version, and the draft's actions.

The forms only validate and collect input; `campaigns.admin.CampaignAdmin` hands what they
collect to `services.campaign_create` / `services.campaign_update`, which save it.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.admin import widgets
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.forms.models import BaseInlineFormSet
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from django.utils.text import capfirst

from channels.choices import (
    CHANNEL_FIELDS_SCRIPT,
    CHANNELS_WITH_SUBJECT,
    ChannelKind,
    subject_refusal,
)
from channels.rendering import validate_content
from segments.models import Segment
from segments.selectors import profile_attribute_keys

from .choices import (
    EXPERIMENT_MAX_HOLDOUT_SHARE,
    EXPERIMENT_WINNER_AFTER_MAX_DAYS,
    VARIANT_LABELS,
    CampaignKind,
    ExperimentMetric,
)
from .experiments import (
    VARIANTS_TEXT_HELP,
    variants_parse,
    variants_refusals,
    variants_text,
)
from .models import (
    ACTION_CONTENT_FIELDS,
    Campaign,
    ChannelAction,
    html_body_refusal,
    time_zone_choices,
)
from .recurrence import EVERY, INTERVAL_MAX, WEEKDAYS, recurrence_parse
from .review import unknown_variable_checks

# What the campaign itself holds (the service's CAMPAIGN_FIELDS plus tags)…
CAMPAIGN_FORM_FIELDS: tuple[str, ...] = (
    "name",
    "description",
    "type",
    "kind",
    "approval_required",
    "tags",
)
# Frequency caps: the exemption (only a user with its permission may change it).
CAMPAIGN_FORM_FIELDS += ("frequency_cap_exempt",)
# Own open and click tracking (campaigns.tracking).
CAMPAIGN_FORM_FIELDS += ("track_opens", "track_clicks")
# …and what its draft version holds besides the actions.
VERSION_FORM_FIELDS = ("segment", "start_at", "time_zone")
ACTION_FIELDS = ("channel", "preset", *ACTION_CONTENT_FIELDS)
# What the recurrence fields give the services.
RECURRENCE_SERVICE_FIELDS = ("recurrence", "end_at", "once_per_profile")
# A recurring campaign's schedule (campaigns.recurrence): one field per key of the
# recurrence, then its end and "once per profile".
RECURRENCE_FORM_FIELDS = (
    "recurrence_every",
    "recurrence_interval",
    "recurrence_at",
    "recurrence_weekdays",
    "recurrence_month_days",
    "end_at",
    "once_per_profile",
)
# Local time and quiet hours (campaigns.delivery.timing), and how the version's fieldset
# lays them out: the local-time box beside the start, the quiet hours side by side.
TIMING_FORM_FIELDS = ("in_recipient_time_zone", "quiet_hours_start", "quiet_hours_end")
# Content experiments (campaigns.experiments): the holdout; the variants are on each action.
EXPERIMENT_FORM_FIELDS = ("holdout_share", "test_share", "winner_after", "winner_metric")
VERSION_FIELDSET = (
    "segment",
    ("start_at", "in_recipient_time_zone"),
    "time_zone",
    ("quiet_hours_start", "quiet_hours_end"),
    "holdout_share",
    ("test_share", "winner_after", "winner_metric"),
)


def error_dict(error: ValidationError) -> dict[str, list[str]]:
    """A service's ValidationError as {field or NON_FIELD_ERRORS: messages}."""
    if hasattr(error, "error_dict"):
        return error.message_dict
    return {NON_FIELD_ERRORS: error.messages}


class CampaignAdminForm(forms.ModelForm):
    """The campaign's own fields plus its draft version's audience and schedule."""

    segment = forms.ModelChoiceField(
        queryset=Segment.objects.order_by("name"),
        required=False,
        help_text="Who receives the campaign. Needed to activate it.",
    )
    start_at = forms.SplitDateTimeField(
        required=False,
        label="Start at",
        widget=widgets.AdminSplitDateTime,
        help_text="Leave empty to start as soon as the campaign is activated.",
    )

    time_zone = forms.ChoiceField(
        choices=time_zone_choices,
        required=False,
        label="Schedule time zone",
        help_text="The zone the schedule's clock times are read in, and the zone of "
        "recipients who have none.",
    )

    # --- the recurrence (recurring campaigns): plain fields, no script needed ------------
    recurrence_every = forms.ChoiceField(
        choices=[("", "Does not repeat"), *((every, f"Every {every}") for every in EVERY)],
        required=False,
        label="Repeats",
        help_text="Recurring campaigns only: each occurrence sends to the segment as it is then.",
    )
    recurrence_interval = forms.IntegerField(
        min_value=1,
        max_value=INTERVAL_MAX,
        initial=1,
        required=False,
        label="Interval",
        help_text="Every how many days, weeks or months (1: every one).",
    )
    recurrence_at = forms.CharField(
        max_length=5,
        required=False,
        label="At",
        widget=forms.TextInput(attrs={"placeholder": "09:00", "size": 5}),
        help_text="The clock time of each occurrence, HH:MM, in the schedule time zone.",
    )
    recurrence_weekdays = forms.MultipleChoiceField(
        choices=[(day, day.capitalize()) for day in WEEKDAYS],
        required=False,
        label="On weekdays",
        widget=forms.CheckboxSelectMultiple,
        help_text="Weekly recurrences: the days of the week it runs on.",
    )
    recurrence_month_days = forms.CharField(
        required=False,
        label="On days of the month",
        widget=forms.TextInput(attrs={"placeholder": "1, 15"}),
        help_text="Monthly recurrences: days from 1 to 31, separated by commas; a day a month "
        "lacks (29–31) is skipped that month.",
    )
    end_at = forms.SplitDateTimeField(
        required=False,
        label="End at",
        widget=widgets.AdminSplitDateTime,
        help_text="The last occurrence is the last one before this time; empty: no end.",
    )
    once_per_profile = forms.BooleanField(
        required=False,
        label="Once per profile",
        help_text="An occurrence leaves out whoever an earlier one reached on that channel.",
    )

    in_recipient_time_zone = forms.BooleanField(
        required=False,
        label="In each recipient's time zone",
        help_text="Send at the start's date and clock time (read in the schedule's time zone) "
        "in each recipient's own zone; needs a start. The campaign goes Live when the "
        "earliest zone reaches it, up to 26 hours before the last.",
    )
    quiet_hours_start = forms.TimeField(
        required=False,
        label="Quiet hours from",
        widget=widgets.AdminTimeWidget(attrs={"aria-label": "Quiet hours from"}),
        help_text="In the recipient's time zone: marketing messages due between the two "
        "times wait for the end (21:00 to 08:00 crosses midnight). Replaces the presets' "
        "quiet hours. Both or neither.",
    )
    quiet_hours_end = forms.TimeField(
        required=False,
        label="to",
        widget=widgets.AdminTimeWidget(attrs={"aria-label": "Quiet hours to"}),
    )

    holdout_share = forms.IntegerField(
        required=False,
        min_value=0,
        max_value=EXPERIMENT_MAX_HOLDOUT_SHARE,
        initial=0,
        label="Experiment holdout (%)",
        help_text=f"Percent of the audience (0 to {EXPERIMENT_MAX_HOLDOUT_SHARE}) held back: "
        "they get no message of this campaign, and the experiment's results measure the "
        "variants against them.",
    )

    test_share = forms.IntegerField(
        required=False,
        min_value=0,
        max_value=99,
        label="Test, then send the winner: test share (%)",
        help_text="Percent of the audience (besides the holdout) that gets the variants "
        "first; the rest gets the winner when the test ends. Empty or 0: everyone at once.",
    )
    winner_after = forms.DurationField(
        required=False,
        label="after",
        widget=forms.TextInput(attrs={"placeholder": "04:00:00", "size": 10}),
        help_text=f"How long the test runs (HH:MM:SS, or “2 00:00:00” for two days; at most "
        f"{EXPERIMENT_WINNER_AFTER_MAX_DAYS} days).",
    )
    winner_metric = forms.ChoiceField(
        choices=ExperimentMetric.choices,
        required=False,
        label="on",
        help_text="The winner is the variant significantly best on this; without a "
        "significant difference, the best observed rate (a tie: the earlier letter, A first).",
    )

    # Set by CampaignAdmin when the service refused input these forms had accepted (a race,
    # or a rule only the service knows): the form then shows the refusal as its own errors.
    service_error: ValidationError | None = None

    class Meta:
        model = Campaign
        fields = CAMPAIGN_FORM_FIELDS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The field's <label> cannot point at two inputs: each says what it is itself.
        date_input, time_input = self.fields["start_at"].widget.widgets
        date_input.attrs["aria-label"] = "Start date"
        time_input.attrs["aria-label"] = "Start time"
        end_date, end_time = self.fields["end_at"].widget.widgets
        end_date.attrs["aria-label"] = "End date"
        end_time.attrs["aria-label"] = "End time"
        # Typed and shown in the user's own zone (campaigns.middleware), stored in UTC.
        self.fields["start_at"].help_text = (
            f"In your time zone, {timezone.get_current_timezone_name()}. "
            f"{self.fields['start_at'].help_text}"
        )
        version = self.instance.draft_version if self.instance.pk else None
        if version is not None:
            self.initial.setdefault("segment", version.segment_id)
            self.initial.setdefault("start_at", version.start_at)
            self.initial.setdefault("time_zone", version.time_zone)
            self._recurrence_initial(version)
            for name in (*TIMING_FORM_FIELDS, *EXPERIMENT_FORM_FIELDS):
                self.initial.setdefault(name, getattr(version, name))
        else:
            self.initial.setdefault("time_zone", timezone.get_current_timezone_name())

    def clean_holdout_share(self) -> int:
        return self.cleaned_data.get("holdout_share") or 0  # empty: no holdout

    def clean_test_share(self) -> int:
        return self.cleaned_data.get("test_share") or 0  # empty: no test first

    def clean_winner_metric(self) -> str:
        return self.cleaned_data.get("winner_metric") or ExperimentMetric.OPENED

    def _recurrence_initial(self, version: Any) -> None:
        self.initial.setdefault("end_at", version.end_at)
        self.initial.setdefault("once_per_profile", version.once_per_profile)
        rule = version.recurrence or {}
        self.initial.setdefault("recurrence_every", rule.get("every", ""))
        self.initial.setdefault("recurrence_interval", rule.get("interval", 1))
        self.initial.setdefault("recurrence_at", rule.get("at", ""))
        self.initial.setdefault("recurrence_weekdays", rule.get("weekdays", []))
        days = rule.get("month_days", [])
        self.initial.setdefault("recurrence_month_days", ", ".join(str(d) for d in days))

    def _clean_recurrence(self, cleaned: dict[str, Any]) -> None:
        """The recurrence fields as one recurrence (or None), each refusal on its field."""
        every = cleaned.get("recurrence_every")
        if not every:
            cleaned["recurrence"] = None
            return
        text = cleaned.get("recurrence_month_days") or ""
        try:
            days = [int(part) for part in text.replace(" ", ",").split(",") if part]
        except ValueError:
            self.add_error("recurrence_month_days", "Days of the month are numbers from 1 to 31.")
            return
        data = {
            "every": every,
            "interval": cleaned.get("recurrence_interval") or 1,
            "at": cleaned.get("recurrence_at") or "",
            "weekdays": cleaned.get("recurrence_weekdays") or [],
            "month_days": days,
        }
        try:
            cleaned["recurrence"] = recurrence_parse(data).as_json()
        except ValidationError as error:
            for key, messages in error.message_dict.items():
                field = f"recurrence_{key}"
                self.add_error(field if field in self.fields else None, messages)

    def clean(self) -> dict[str, Any] | None:
        cleaned = super().clean()
        if cleaned is not None and "recurrence_every" in self.fields:
            self._clean_recurrence(cleaned)
        if self.service_error is not None:
            for field, messages in error_dict(self.service_error).items():
                if field == "actions":
                    continue  # shown above the actions, by DraftActionFormSet
                self.add_error(field if field in self.fields else None, messages)
        return cleaned

    def service_data(self) -> dict[str, Any]:
        """The validated input, keyed as campaign_create / campaign_update take it."""
        return {
            name: self.cleaned_data[name]
            for name in (
                *CAMPAIGN_FORM_FIELDS,
                *VERSION_FORM_FIELDS,
                *RECURRENCE_SERVICE_FIELDS,
                *TIMING_FORM_FIELDS,
                *EXPERIMENT_FORM_FIELDS,
            )
            # A form posted without a zone (a script's) keeps the version's.
            if name in self.cleaned_data and (name != "time_zone" or self.cleaned_data[name])
        }


class PresetSelect(forms.Select):
    """The preset picker: each option says its preset's channel (``data-channel``), so the
    page offers only the presets of the channel chosen on the same row."""

    def create_option(self, name: str, value: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        option = super().create_option(name, value, *args, **kwargs)
        preset = getattr(value, "instance", None)  # a ModelChoiceIteratorValue; '' is none
        if preset is not None:
            option["attrs"]["data-channel"] = preset.channel
        return option


class WarnedWidget(forms.Widget):
    """A content input that shows, right after itself, what saving accepted but the
    review will ask about (``warnings``, set by the form): beside the field, not blocking."""

    warnings: list[str]

    def render(self, name: str, value: Any, attrs: Any = None, renderer: Any = None) -> Any:
        html = super().render(name, value, attrs, renderer)
        if not getattr(self, "warnings", None):
            return html
        notes = format_html_join("", "<li>{}</li>", ((w,) for w in self.warnings))
        return format_html('{}<ul class="salvo-field-warnings" role="note">{}</ul>', html, notes)


class WarnedTextarea(WarnedWidget, forms.Textarea):
    pass


class WarnedTextInput(WarnedWidget, forms.TextInput):
    pass


class ChannelActionForm(forms.ModelForm):
    """One channel action; ChannelAction.clean refuses a preset of another channel, and the
    form (as the services do) a subject on a channel without one."""

    variants = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 30}),
        help_text=VARIANTS_TEXT_HELP,
    )

    class Meta:
        model = ChannelAction
        fields = ACTION_FIELDS
        widgets = {
            "channel": forms.Select(attrs={"data-channel-select": ""}),
            "preset": PresetSelect(attrs={"data-channel-options": ""}),
            "subject": WarnedTextInput(
                attrs={"size": 24, "data-channels": " ".join(sorted(CHANNELS_WITH_SUBJECT))}
            ),
            "body": WarnedTextarea(attrs={"rows": 3, "cols": 36}),
            "html_body": forms.Textarea(
                attrs={"rows": 3, "cols": 36, "data-channels": ChannelKind.EMAIL}
            ),
        }

    class Media:
        js = (CHANNEL_FIELDS_SCRIPT,)

    def __init__(
        self,
        *args: Any,
        known_attributes: set[str] | None = None,
        trigger_context: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.known_attributes = known_attributes
        # An API-triggered campaign's content may read {{ context.<key> }}.
        self.trigger_context = trigger_context
        if not self.is_bound and self.instance.pk:
            self._warn(self.instance.subject, self.instance.body)
            self.initial["variants"] = variants_text(self.instance.variants.all())
        # A table row of the inline has no <label>s, only column headers: name each input.
        for field in self.fields.values():
            # The admin wraps a relation's select (add/change links): name the select.
            widget: forms.Widget = getattr(field.widget, "widget", None) or field.widget
            widget.attrs.setdefault("aria-label", capfirst(str(field.label)))

    def clean(self) -> dict[str, Any] | None:
        cleaned = super().clean() or {}
        refusal = subject_refusal(cleaned.get("channel") or "") if cleaned.get("subject") else ""
        if refusal:
            self.add_error("subject", refusal)
            return cleaned
        html_refusal = (
            html_body_refusal(cleaned.get("channel") or "") if cleaned.get("html_body") else ""
        )
        if html_refusal:
            self.add_error("html_body", html_refusal)
            return cleaned
        # The services check content too; checked here, a refusal lands on its field.
        validate_content(
            **{field: cleaned.get(field) or "" for field in ACTION_CONTENT_FIELDS},
            trigger_context=self.trigger_context,
        )
        self._warn(cleaned.get("subject") or "", cleaned.get("body") or "")
        self._clean_variants(cleaned)
        return cleaned

    def _clean_variants(self, cleaned: dict[str, Any]) -> None:
        """The variants' text as the services take it, its refusals on the field."""
        try:
            variants = variants_parse(cleaned.get("variants") or "")
        except ValueError as error:
            self.add_error("variants", str(error))
            return
        refusals = variants_refusals(
            variants, channel=cleaned.get("channel") or "", html_body=cleaned.get("html_body") or ""
        )
        problems = [m for messages in refusals.values() for m in messages]
        # Past the last label, the count is refused: their content is not checked.
        for label, variant in zip(VARIANT_LABELS[1:], variants, strict=False):
            refusal = html_body_refusal(cleaned.get("channel") or "")
            if variant["html_body"] and refusal:
                problems.append(f"Variant {label}: {refusal}")
                continue
            try:
                validate_content(
                    **{field: variant[field] for field in ACTION_CONTENT_FIELDS},
                    trigger_context=self.trigger_context,
                )
            except ValidationError as error:
                problems += [f"Variant {label}: {m}" for m in error.messages]
        if problems:
            self.add_error("variants", problems)
        cleaned["variants"] = variants

    def _warn(self, subject: str, body: str) -> None:
        """Put the unknown-variable warnings beside the subject and body."""
        if self.known_attributes is None:
            return
        checks = unknown_variable_checks(
            label="This",
            where="",
            subject=subject,
            body=body,
            known=self.known_attributes,
            trigger_context=self.trigger_context,
        )
        for name in ("subject", "body"):
            widget = self.fields[name].widget
            if isinstance(widget, WarnedWidget):
                widget.warnings = [check.message for check in checks if check.field == name]


class DraftActionFormSet(BaseInlineFormSet):
    """The channel actions of a campaign's draft version (its parent is the version)."""

    def __init__(self, *args: Any, service_errors: list[str] | None = None, **kwargs: Any):
        self.service_errors = service_errors or []
        super().__init__(*args, **kwargs)

    @cached_property
    def known_attributes(self) -> set[str]:
        """The attribute keys content may read, read once for every row."""
        return set(profile_attribute_keys())

    @cached_property
    def trigger_context(self) -> bool:
        """Whether the content may read an API trigger's context: the kind the campaign's
        form posts beside these rows (it may change while the campaign is a Draft), else
        the campaign's."""
        kind = self.data.get("kind") if self.is_bound else None
        if not kind and self.instance.campaign_id:
            kind = self.instance.campaign.kind
        return kind == CampaignKind.API_TRIGGERED

    def get_form_kwargs(self, index: int | None) -> dict[str, Any]:
        return {
            **super().get_form_kwargs(index),
            "known_attributes": self.known_attributes,
            "trigger_context": self.trigger_context,
        }

    def add_fields(self, form: forms.Form, index: int | None) -> None:
        super().add_fields(form, index)
        if "DELETE" in form.fields:
            form.fields["DELETE"].widget.attrs["aria-label"] = "Delete this action"

    def _deleted(self, form: forms.Form) -> bool:
        return bool(self.can_delete and form.cleaned_data.get("DELETE"))

    def clean(self) -> None:
        if any(self.errors):
            return
        channels: dict[str, int] = {}
        for form in self.forms:
            if not form.cleaned_data or self._deleted(form):
                continue
            channel = form.cleaned_data["channel"]
            if channel in channels:
                label = dict(form.fields["channel"].choices).get(channel, channel)
                raise ValidationError(
                    f"Only one {label} action per version: rows {channels[channel]} and "
                    f"{self.forms.index(form) + 1} are both {label}."
                )
            channels[channel] = self.forms.index(form) + 1
        if self.service_errors:
            raise ValidationError(self.service_errors)
        super().clean()

    def action_specs(self) -> list[dict[str, Any]]:
        """The actions to keep, as the services take them: [{channel, preset, subject, body}]."""
        return [
            {name: form.cleaned_data.get(name) for name in (*ACTION_FIELDS, "variants")}
            for form in self.forms
            if form.cleaned_data and not self._deleted(form)
        ]
