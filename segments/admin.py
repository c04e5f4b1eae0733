"""The marketers' door to the audience: profiles (with import) and segments.

Every change goes through `segments.services`, every read of an audience through
`segments.selectors`; the admin only shows forms and translates errors.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.forms.fields import InvalidJSONInput, JSONString
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from config.admin_site import ListTitledAdmin

from . import selectors, services
from .choices import ConsentChannel, ConsentSource, ImportFormat, SegmentKind
from .models import (
    CONSENT_FIELDS,
    PROFILE_DATA_FIELDS,
    PROFILE_TEXT_FIELDS,
    Profile,
    Segment,
    consent_field,
)
from .rules import rule_catalogue, rule_errors
from .validators import JsonTooDeep, check_json_nesting, json_max_depth

# The rule builder (segments/static/segments/): the page carries the catalogue of fields and
# operators from `segments.rules` and asks `SegmentAdmin.rules_estimate_view` for the live
# count; without script the rules stay a JSON text field.
RULE_BUILDER_SCRIPT = "segments/rule_builder.js"
RULE_BUILDER_STYLE = "segments/rule_builder.css"
# How many matching profiles the builder's live preview lists.
LIVE_PREVIEW_LIMIT = 5

# --- profiles ---------------------------------------------------------------------------


class ProfileImportForm(forms.Form):
    file = forms.FileField(help_text="CSV with a header line, or JSON lines (one object a line).")
    format = forms.ChoiceField(
        choices=[("", "Guess from the file"), *ImportFormat.choices], required=False
    )
    segment = forms.CharField(
        required=False,
        max_length=200,
        help_text="Optional: also add the imported profiles to this static segment "
        "(created if it does not exist).",
    )


class NestingLimitedJSONField(forms.JSONField):
    """Django's JSON form field, refusing text nested deeper than `SALVO_JSON_MAX_DEPTH`
    as invalid instead of letting the parser run out of recursion (a 500), also when the
    form is shown again with the text."""

    def to_python(self, value: Any) -> Any:
        if isinstance(value, str) and not isinstance(value, JSONString) and not self.disabled:
            try:
                check_json_nesting(value)
            except JsonTooDeep as error:
                raise ValidationError(
                    f"Enter valid JSON nested at most {json_max_depth()} levels deep.",
                    code="invalid",
                ) from error
        try:
            return super().to_python(value)
        except ValueError as error:  # e.g. a number of more digits than Python converts
            raise ValidationError(self.error_messages["invalid"], code="invalid") from error

    def bound_data(self, data: Any, initial: Any) -> Any:
        if isinstance(data, str) and not self.disabled:
            try:
                check_json_nesting(data)
                return super().bound_data(data, initial)
            except ValueError:
                return InvalidJSONInput(data)
        return super().bound_data(data, initial)


class ProfileAdminForm(forms.ModelForm):
    class Meta:
        model = Profile
        fields = [*PROFILE_DATA_FIELDS, *CONSENT_FIELDS]
        # The model's validators check the attribute limits (with the path) on the field.
        field_classes = {"attributes": NestingLimitedJSONField}


@admin.register(Profile)
class ProfileAdmin(ListTitledAdmin):
    form = ProfileAdminForm
    list_display = [
        "external_id",
        "email",
        "phone",
        "locale",
        *CONSENT_FIELDS,
        "created_at",
    ]
    list_filter = [*CONSENT_FIELDS, "is_test", "created_at"]
    search_fields = ["^external_id", "^email", "^phone"]
    readonly_fields = ["consent_history", "created_at", "updated_at"]
    fieldsets = [
        (None, {"fields": list(PROFILE_TEXT_FIELDS)}),
        ("Attributes", {"fields": ["attributes"]}),
        (
            "Consent (checked = may receive marketing)",
            {"fields": [*CONSENT_FIELDS, "consent_history"]},
        ),
        ("Proofs", {"fields": ["is_test"]}),
        ("Dates", {"fields": ["created_at", "updated_at"]}),
    ]
    # Counting a million rows on every page load is what makes big changelists slow.
    show_full_result_count = False
    list_per_page = 50
    change_list_template = "admin/segments/profile/change_list.html"

    @admin.display(description="Consent history")
    def consent_history(self, obj: Profile) -> str:
        rows = []
        for channel in ConsentChannel.values:
            at = getattr(obj, f"consent_{channel}_changed_at")
            source = getattr(obj, f"consent_{channel}_source")
            label = ConsentSource(source).label if source in ConsentSource.values else source
            rows.append((ConsentChannel(channel).label, at or "never changed", label or "—"))
        return format_html(
            "<table><tr><th>Channel</th><th>Last change</th><th>Source</th></tr>{}</table>",
            format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td></tr>", rows),
        )

    def save_model(self, request: HttpRequest, obj: Profile, form: Any, change: bool) -> None:
        data = {
            name: form.cleaned_data[name]
            for name in PROFILE_DATA_FIELDS
            if name in form.cleaned_data
        }
        consent = {c: form.cleaned_data[consent_field(c)] for c in ConsentChannel.values}
        if change:
            saved = services.profile_update(
                profile=obj, data=data, consent=consent, source=ConsentSource.ADMIN
            )
        else:
            # A new profile's consent is its first statement, not a change of one.
            saved = services.profile_create(data=data, consent=None, source=ConsentSource.ADMIN)
            changed = {c: v for c, v in consent.items() if v != saved.consent_for(c)}
            if changed:
                saved = services.profile_update(
                    profile=saved, data={}, consent=changed, source=ConsentSource.ADMIN
                )
        obj.pk = saved.pk
        obj.refresh_from_db()

    def get_urls(self) -> list[URLPattern]:
        custom = [
            path(
                "import/",
                self.admin_site.admin_view(self.import_view),
                name="segments_profile_import",
            )
        ]
        return custom + super().get_urls()

    def import_view(self, request: HttpRequest) -> HttpResponse:
        if not (self.has_add_permission(request) and self.has_change_permission(request)):
            raise PermissionDenied
        summary = None
        form = ProfileImportForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            upload = form.cleaned_data["file"]
            try:
                result = services.profiles_import(
                    user=request.user,
                    stream=upload.file,
                    format=form.cleaned_data["format"] or None,
                    filename=upload.name or "",
                    segment_name=form.cleaned_data["segment"].strip(),
                )
            except ValidationError as error:
                form.add_error(None, error.messages)
            except PermissionDenied as error:
                # E.g. filling a segment this user may not change: said on the form.
                form.add_error("segment" if form.cleaned_data["segment"] else None, str(error))
            else:
                summary = result.as_dict()
                level = messages.WARNING if result.rejected else messages.SUCCESS
                self.message_user(
                    request,
                    f"Imported {upload.name}: {result.created} created, {result.updated} "
                    f"updated, {result.rejected} rejected.",
                    level,
                )
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Import profiles",
            "form": form,
            "summary": summary,
        }
        return TemplateResponse(request, "admin/segments/profile/import.html", context)


# --- segments ---------------------------------------------------------------------------


class RuleTreeField(forms.JSONField):
    """The rule tree as JSON text. A tree refused for holding a lone surrogate is shown
    again with its error: as the JSON escape `\\ud800`, since no page can carry the
    character itself (UTF-8 cannot encode it)."""

    def prepare_value(self, value: Any) -> Any:
        text = super().prepare_value(value)
        if not isinstance(text, str):
            return text
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


class SegmentAdminForm(forms.ModelForm):
    class Meta:
        model = Segment
        fields = ["name", "description", "kind", "rules"]
        field_classes = {"rules": RuleTreeField}
        help_texts = {
            "rules": 'A JSON rule tree, e.g. {"all": [{"field": "attributes.country", '
            '"op": "in", "value": ["FR", "BE"]}, {"field": "consent.email", "op": "eq", '
            '"value": true}]}. Leave {} for a static segment.',
        }

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        kind = data.get("kind") or (self.instance.kind if self.instance.pk else None)
        if self.instance.pk and kind != self.instance.kind:
            self.add_error("kind", "A segment's kind cannot change; create a new segment.")
        rules = data.get("rules")
        if "rules" in data and kind == SegmentKind.RULES:
            for message in rule_errors(rules if rules is not None else {}):
                self.add_error("rules", message)
        elif kind == SegmentKind.STATIC and rules:
            self.add_error("rules", "A static segment has no rules; leave {}.")
        return data


class FreezeForm(forms.Form):
    name = forms.CharField(max_length=200)


@admin.register(Segment)
class SegmentAdmin(ListTitledAdmin):
    form = SegmentAdminForm
    list_display = ["name", "kind", "updated_at"]
    list_filter = ["kind"]
    search_fields = ["name", "description"]
    readonly_fields = ["estimate"]
    actions = ["freeze_selected"]
    # The members' sample is drawn below the fields, for the user looking (see change_view),
    # and the rule builder beside the rules (see `_rule_builder_context`).
    change_form_template = "admin/segments/segment/change_form.html"

    class Media:
        js = (RULE_BUILDER_SCRIPT,)
        css = {"all": (RULE_BUILDER_STYLE,)}

    def get_fields(self, request: HttpRequest, obj: Segment | None = None) -> list[Any]:
        fields = ["name", "description", "kind", "rules"]
        return [*fields, "estimate"] if obj is not None else fields

    def get_readonly_fields(self, request: HttpRequest, obj: Segment | None = None) -> list[Any]:
        return ["kind", "estimate"] if obj is not None else []

    @admin.display(description="Estimate")
    def estimate(self, obj: Segment) -> str:
        try:
            estimate = selectors.segment_estimate(segment=obj)
        except ValidationError as error:
            return format_html(
                '<span class="errornote">Invalid rules: {}</span>', "; ".join(error.messages)
            )
        if estimate.exact:
            return format_html("<strong>{}</strong> profiles match now", f"{estimate.count:,}")
        return format_html(
            "<strong>≈ {} ± {}</strong> profiles match now (sampled: counted over a part of "
            "the profiles table, 95% margin; activation counts exactly)",
            f"{estimate.count:,}",
            f"{estimate.margin:,}",
        )

    def _preview(
        self, request: HttpRequest, segment: Segment, limit: int = selectors.PREVIEW_LIMIT
    ) -> dict[str, Any]:
        """The first members as this user may see them: their data, or why not."""
        try:
            sample = selectors.segment_preview(segment=segment, user=request.user, limit=limit)
        except PermissionDenied as refusal:
            return {"refusal": str(refusal)}
        except ValidationError:
            return {"profiles": []}  # the estimate above says what is wrong with the rules
        return {
            "profiles": [
                {
                    "url": reverse("admin:segments_profile_change", args=[p.pk]),
                    "external_id": p.external_id,
                    "email": p.email,
                    "phone": p.phone,
                    "locale": p.locale,
                    "consent": ", ".join(c for c in ConsentChannel.values if p.consent_for(c)),
                }
                for p in sample
            ]
        }

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        segment = self.get_object(request, unquote(object_id))
        if segment is not None and self.has_view_or_change_permission(request, segment):
            extra_context = {
                **(extra_context or {}),
                # A static segment has no rules to build.
                **(self._rule_builder_context() if segment.kind == SegmentKind.RULES else {}),
                "salvo_preview": self._preview(request, segment),
                "salvo_preview_limit": selectors.PREVIEW_LIMIT,
            }
        return super().change_view(request, object_id, form_url, extra_context)

    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        extra_context = {**(extra_context or {}), **self._rule_builder_context()}
        return super().add_view(request, form_url, extra_context)

    def _rule_builder_context(self) -> dict[str, Any]:
        """What the rule builder reads from the page: the fields and operators rules may
        hold (the attribute keys seen in the data among the fields), the channels whose
        reach it shows and where to ask for the live estimate."""
        catalogue = rule_catalogue(attribute_keys=selectors.profile_attribute_keys())
        catalogue["estimate_url"] = reverse("admin:segments_segment_rules_estimate")
        catalogue["channels"] = dict(ConsentChannel.choices)
        return {"salvo_rule_catalogue": catalogue}

    def save_model(self, request: HttpRequest, obj: Segment, form: Any, change: bool) -> None:
        data = {name: form.cleaned_data[name] for name in ("name", "description", "rules")}
        if change:
            saved = services.segment_update(segment=obj, user=request.user, data=data)
        else:
            saved = services.segment_create(
                user=request.user, kind=form.cleaned_data["kind"], **data
            )
        obj.pk = saved.pk
        obj.refresh_from_db()

    def get_urls(self) -> list[URLPattern]:
        custom = [
            path(
                "<int:pk>/estimate/",
                self.admin_site.admin_view(self.estimate_view),
                name="segments_segment_estimate",
            ),
            path(
                "estimate/",
                self.admin_site.admin_view(self.rules_estimate_view),
                name="segments_segment_rules_estimate",
            ),
        ]
        return custom + super().get_urls()

    def rules_estimate_view(self, request: HttpRequest) -> JsonResponse:
        """POST `{"rules": tree}` → the count, reach per channel and first members of the
        profiles the unsaved tree matches, as the rule builder asks while it is edited:
        `{"count", "exact", "margin", "reach": {channel: n}, "reach_margin": {channel: m},
        "preview": {"profiles": [...]} or {"refusal"}}` (sampled on a large table: see
        `selectors.segment_reach`).
        An invalid tree answers 400 `{"detail", "errors": [every bad node]}`; the queries
        stop after `SALVO_SEGMENT_ESTIMATE_TIMEOUT_MS` (503)."""
        if not self.has_view_permission(request):
            return JsonResponse({"detail": "Not allowed."}, status=403)
        if request.method != "POST":
            return JsonResponse({"detail": 'POST {"rules": <rule tree>}.'}, status=405)
        try:
            text = request.body.decode()
            check_json_nesting(text)
            body = json.loads(text)
        except (UnicodeDecodeError, ValueError, JsonTooDeep):
            return JsonResponse(
                {"detail": f"Send a JSON object nested at most {json_max_depth()} levels deep."},
                status=400,
            )
        if not isinstance(body, dict) or "rules" not in body:
            return JsonResponse({"detail": 'Send {"rules": <rule tree>}.'}, status=400)
        errors = rule_errors(body["rules"])
        if errors:
            return JsonResponse({"detail": "; ".join(errors), "errors": errors}, status=400)
        unsaved = Segment(kind=SegmentKind.RULES, rules=body["rules"])
        try:
            with selectors.estimate_time_limit():
                found = selectors.segment_reach(segment=unsaved)
                found["preview"] = self._preview(request, unsaved, limit=LIVE_PREVIEW_LIMIT)
        except selectors.EstimateTimeout as timeout:
            return JsonResponse({"detail": str(timeout)}, status=503)
        return JsonResponse(found)

    def estimate_view(self, request: HttpRequest, pk: int) -> JsonResponse:
        """`{"count", "exact", "margin"}` for a segment: what a campaign form shows beside its
        segment (`selectors.segment_estimate`)."""
        if not self.has_view_permission(request):
            return JsonResponse({"detail": "Not allowed."}, status=403)
        segment = get_object_or_404(Segment, pk=pk)
        try:
            return JsonResponse(selectors.segment_estimate(segment=segment).as_dict())
        except ValidationError as error:
            return JsonResponse({"detail": "; ".join(error.messages)}, status=400)

    @admin.action(description="Freeze into a new static segment", permissions=["add"])
    def freeze_selected(self, request: HttpRequest, queryset: QuerySet[Segment]) -> None:
        stamp = timezone.now().strftime("%Y-%m-%d %H:%M")
        for segment in queryset:
            try:
                frozen = services.segment_freeze(
                    segment=segment,
                    user=request.user,
                    name=f"{segment.name} (frozen {stamp})"[:200],
                )
            except ValidationError as error:
                self.message_user(
                    request, f"“{segment.name}”: {' '.join(error.messages)}", messages.ERROR
                )
            except PermissionDenied as error:
                self.message_user(request, f"“{segment.name}”: {error}", messages.ERROR)
            else:
                self.message_user(
                    request,
                    f"Froze “{segment.name}” into “{frozen.name}” "
                    f"({selectors.segment_count(segment=frozen):,} profiles).",
                    messages.SUCCESS,
                )
