"""The marketers' home: campaigns in the Django admin.

Like the API and the commands, the admin changes campaigns only through
`campaigns.services` and reads them through `campaigns.selectors`; what it adds is the
translation of the services' refusals into form errors and admin messages (never a 500).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from itertools import pairwise
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.utils import construct_change_message, unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.forms import BaseFormSet, ModelForm
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, JsonResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django_fsm import ConcurrentTransition, TransitionNotAllowed

from channels.choices import ChannelKind
from config.admin_site import ListTitledAdmin
from config.formats import short_datetime
from config.permissions import require_perms

from . import services
from .admin_approval import DECISIONS, approval_page
from .admin_preview import preview_page
from .admin_proofs import proof_context, proof_request_view, proofs_section_view
from .admin_report import refresh_ms as report_refresh_ms
from .admin_report import report_context, report_html
from .admin_review import REVIEW_MAX_CAMPAIGNS, review_page, reviews_page, reviews_url
from .admin_triggers import triggers_context
from .approval import require_approved_for_activation, version_approval_text
from .choices import ALL_STATUSES, STATUS_COLOURS, CampaignKind, CampaignStatus
from .delivery.timing import schedule_words
from .exceptions import REFUSALS, CampaignConflict, refusal_text
from .experiments import variants_text
from .forms import (
    ACTION_FIELDS,
    CAMPAIGN_FORM_FIELDS,
    RECURRENCE_FORM_FIELDS,
    VERSION_FIELDSET,
    CampaignAdminForm,
    ChannelActionForm,
    DraftActionFormSet,
    error_dict,
)
from .models import Campaign, CampaignVersion, ChannelAction
from .occurrences import campaign_next_runs, run_words, version_schedule_words
from .operations import OPERATIONS, Operation
from .selectors import (
    campaign_alerts,
    campaign_delivery_error,
    campaign_list,
    campaign_operations,
    campaign_statuses_from_query,
    campaign_transitions,
    campaign_versions,
    delivery_error_summary,
    version_change_notes,
    version_diff,
    version_role,
)

Status = CampaignStatus


def campaign_is_editable(campaign: Campaign) -> bool:
    """Whether the admin form edits this campaign: it has a draft that is not being activated."""
    return campaign.draft_version_id is not None and campaign.status != Status.ACTIVATING


def _text_colour(background: str) -> str:
    """Black or white, whichever reads better on `background` (WCAG relative luminance)."""
    channels = [int(background.lstrip("#")[i : i + 2], 16) / 255 for i in (0, 2, 4)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    luminance = 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    return "#000" if (luminance + 0.05) / 0.05 > 1.05 / (luminance + 0.05) else "#fff"


def status_badge_html(campaign: Campaign) -> SafeString:
    colour = STATUS_COLOURS.get(campaign.status, "#57606a")
    badge = format_html(
        '<span class="salvo-badge salvo-status-{}" style="background:{};color:{}">{}</span>',
        campaign.status,
        colour,
        _text_colour(colour),
        campaign.get_status_display(),
    )
    if campaign.has_open_draft:
        badge = format_html(
            '{} <span class="salvo-open-draft" title="A draft version waits to be activated or '
            'discarded; the running version is unchanged.">✎ open draft</span>',
            badge,
        )
    return badge


def alert_sentences(campaign: Campaign) -> list[str]:
    """What the alert beside a row of `campaign_list` says, one sentence per alert that
    holds (`selectors.alert_rules`); empty when all is well."""
    sentences = []
    for rule in campaign_alerts(campaign):
        if rule.code == "activation_failed":
            sentences.append(f"Activation: {campaign.activation_error}")
            continue
        error = campaign_delivery_error(campaign=campaign)
        if rule.code == "delivery_error" and error is not None:
            sentences.append(delivery_error_summary(error))
            continue
        sentences.append(rule.label)
    return sentences


def alert_icon_html(campaign: Campaign) -> SafeString:
    """The list's alert: an icon whose tooltip (title) says why, and the same words for
    screen readers, which do not read titles reliably."""
    sentences = alert_sentences(campaign)
    if not sentences:
        return SafeString("")
    text = " ".join(sentences)
    return format_html(
        '<span class="salvo-alert" title="{}"><span aria-hidden="true">⚠</span>'
        '<span class="visually-hidden">Alert: {}</span></span>',
        text,
        text,
    )


# --- changelist filters -----------------------------------------------------------------


class StatusListFilter(admin.SimpleListFilter):
    """Draft, Scheduled and Live unless asked otherwise: the same default as the API."""

    title = "status"
    parameter_name = "status"
    default_label = "Draft, Scheduled and Live"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(value, str(label)) for value, label in Status.choices]

    def _statuses(self) -> list[str] | None:
        value = self.value()
        try:
            return campaign_statuses_from_query(value.split(",") if value else [])
        except ValidationError as error:
            # The admin redirects to the unfiltered list rather than failing.
            raise IncorrectLookupParameters(error) from error

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        statuses = self._statuses()
        return queryset if statuses is None else queryset.filter(status__in=statuses)

    def choices(self, changelist: Any) -> Iterator[Any]:
        value = (self.value() or "").lower()
        yield {
            "selected": not value,
            "query_string": changelist.get_query_string(remove=[self.parameter_name]),
            "display": self.default_label,
        }
        yield {
            "selected": value == ALL_STATUSES,
            "query_string": changelist.get_query_string({self.parameter_name: ALL_STATUSES}),
            "display": "All",
        }
        for lookup, title in self.lookup_choices:
            yield {
                "selected": value == lookup,
                "query_string": changelist.get_query_string({self.parameter_name: lookup}),
                "display": title,
            }


class TagListFilter(admin.SimpleListFilter):
    title = "tag"
    parameter_name = "tag"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        # Only the tags some campaign carries (the class-level manager lists those).
        return [(tag.name, tag.name) for tag in Campaign.tags.order_by("name")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(tags__name=value) if value else queryset


class YesNoListFilter(admin.SimpleListFilter):
    """A yes/no filter decided by one boolean argument of `selectors.campaign_list`."""

    selector_argument = ""

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Yes"), ("no", "No")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value not in ("yes", "no"):
            return queryset
        wanted: dict[str, Any] = {self.selector_argument: value == "yes"}
        chosen = campaign_list(statuses=None, **wanted)
        return queryset.filter(pk__in=chosen.values("pk"))


class AlertListFilter(YesNoListFilter):
    """Campaigns with or without an alert: the rules of `selectors.alert_rules`."""

    title = "has alerts"
    parameter_name = selector_argument = "has_alerts"


class AwaitingApprovalListFilter(YesNoListFilter):
    """Campaigns whose open draft awaits an approval (or not)."""

    title = "awaiting approval"
    parameter_name = selector_argument = "awaiting_approval"


class ChannelListFilter(admin.SimpleListFilter):
    """Campaigns whose shown version (running, else draft) sends on the channel."""

    title = "channel"
    parameter_name = "channel"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(value, str(label)) for value, label in ChannelKind.choices]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if not value:
            return queryset
        chosen = campaign_list(statuses=None, channels=[value])
        return queryset.filter(pk__in=chosen.values("pk"))


class StartDateRangeFilter(admin.ListFilter):
    """Campaigns that went Live (or are set to start) between two days, both included:
    two date inputs in the sidebar (`start_from`, `start_to`, YYYY-MM-DD)."""

    title = "start date"
    template = "admin/campaigns/campaign/start_date_filter.html"
    parameters = ("start_from", "start_to")

    def __init__(
        self, request: HttpRequest, params: dict[str, Any], model: Any, model_admin: Any
    ) -> None:
        super().__init__(request, params, model, model_admin)
        self.values: dict[str, str] = {}
        for name in self.parameters:
            if name in params:
                value = params.pop(name)
                self.values[name] = value[-1] if isinstance(value, list) else value
                self.used_parameters[name] = self.values[name]

    def has_output(self) -> bool:
        return True

    def expected_parameters(self) -> list[str | None]:
        return list(self.parameters)

    def _day(self, name: str) -> dt.date | None:
        text = self.values.get(name, "").strip()
        if not text:
            return None
        try:
            return dt.date.fromisoformat(text)
        except ValueError as error:
            # The admin redirects to the unfiltered list rather than failing.
            raise IncorrectLookupParameters(
                f"{name}: “{text}” is not a day (YYYY-MM-DD)."
            ) from error

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        start_from, start_to = self._day("start_from"), self._day("start_to")
        if start_from is None and start_to is None:
            return queryset
        chosen = campaign_list(statuses=None, start_from=start_from, start_to=start_to)
        return queryset.filter(pk__in=chosen.values("pk"))

    def choices(self, changelist: Any) -> Iterator[Any]:
        # One "choice": what the template's form needs.
        yield {
            "values": self.values,
            "clear_query_string": changelist.get_query_string(remove=list(self.parameters)),
            "other_parameters": [
                (key, value)
                for key, values in changelist.params.items()
                if key not in self.parameters
                for value in (values if isinstance(values, list) else [values])
            ],
        }


# --- the draft's channel actions ---------------------------------------------------------


class DraftActionInline(admin.TabularInline):
    """The channel actions of the campaign's draft version, edited on the campaign's page.

    ChannelAction points at CampaignVersion, not at Campaign, so the inline's parent model
    is CampaignVersion: the admin's system checks then find the foreign key they look for,
    and the stock `get_formset` builds a CampaignVersion → ChannelAction formset.
    `CampaignAdmin.get_formset_kwargs` binds it to `campaign.draft_version`. Every `obj`
    the admin passes to this inline's methods is still the Campaign.
    """

    model = ChannelAction
    form = ChannelActionForm
    formset = DraftActionFormSet
    fields = (*ACTION_FIELDS, "variants")
    extra = 0
    max_num = len(ChannelAction._meta.get_field("channel").choices or ())
    verbose_name = "channel action"
    verbose_name_plural = "channel actions (sent at the same time)"

    def __init__(self, parent_model: type[Any], admin_site: admin.AdminSite) -> None:
        super().__init__(parent_model, admin_site)
        self.parent_model = CampaignVersion

    @admin.display(description="variants")
    def variants(self, action: ChannelAction) -> str:
        """The row's variants as text, for whoever sees the actions read-only."""
        return variants_text(action.variants.all())

    def get_extra(self, request: HttpRequest, obj: Campaign | None = None, **kwargs: Any) -> int:
        # One empty row on a new campaign; an existing draft adds rows with "Add another".
        return 1 if obj is None else 0

    # The actions are part of the campaign: the campaign's permissions govern them.
    def _may_edit(self, request: HttpRequest, obj: Campaign | None) -> bool:
        if obj is None:
            return request.user.has_perm("campaigns.add_campaign")
        return campaign_is_editable(obj) and request.user.has_perm("campaigns.change_campaign")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._may_edit(request, obj)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._may_edit(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._may_edit(request, obj)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm("campaigns.view_campaign") or self._may_edit(request, obj)


# --- the campaign admin ------------------------------------------------------------------


class ServiceRefusal(Exception):
    """A service refused what the admin's forms accepted; carries the service's error."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def recurrence_fieldset(campaign: Campaign | None) -> tuple[str, dict[str, Any]]:
    """The schedule widget's recurrence (recurring campaigns), saying the running schedule
    and its next runs in words."""
    lines = ["Recurring campaigns: when it repeats, read in the schedule time zone."]
    version = campaign.live_version if campaign is not None else None
    if campaign is not None and version is not None:
        words = version_schedule_words(version)
        if words:
            lines.append(f"Running now: {words}.")
        runs = [
            run_words(moment, version=version) for moment in campaign_next_runs(campaign=campaign)
        ]
        if runs:
            lines.append("Next runs: " + "; ".join(runs) + ".")
    return (
        "Recurrence",
        {"fields": RECURRENCE_FORM_FIELDS, "description": " ".join(lines)},
    )


@admin.register(Campaign)
class CampaignAdmin(ListTitledAdmin):
    form = CampaignAdminForm
    inlines = [DraftActionInline]
    list_display = (
        "name",
        "status_badge",
        "channel_list",
        "audience",
        "sent_of_total",
        "type",
        "kind",
        "tag_list",
        "segment_name",
        "start_time",
        "updated",
    )
    list_filter = (
        StatusListFilter,
        AlertListFilter,
        AwaitingApprovalListFilter,
        ChannelListFilter,
        StartDateRangeFilter,
        "type",
        "kind",
        TagListFilter,
    )
    search_fields = ("name", "description")
    search_help_text = "Search campaign names and descriptions."
    show_facets = admin.ShowFacets.NEVER
    list_per_page = 50
    actions = ("activate_selected", "stop_selected", "archive_selected")

    # --- list ------------------------------------------------------------------------

    def get_queryset(self, request: HttpRequest) -> QuerySet[Campaign]:
        # The list: the rows and prefetching the API's list uses (figures, alerts);
        # StatusListFilter narrows the statuses. One campaign's pages (change page, report
        # refresh, lifecycle, diff) read none of those annotations, and building and running
        # them (twice per change page: change_view, then Django's changeform_view) was 40% of
        # the change page's time.
        match = request.resolver_match
        if match is not None and match.url_name == "campaigns_campaign_changelist":
            return campaign_list(statuses=None)
        return super().get_queryset(request)

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: Campaign) -> SafeString:
        return format_html("{} {}", status_badge_html(obj), alert_icon_html(obj))

    @admin.display(description="channels")
    def channel_list(self, obj: Campaign) -> str:
        version = self._shown_version(obj)
        if version is None:
            return "—"
        # The prefetched actions, sorted in Python: no query per row.
        actions = sorted(version.actions.all(), key=lambda action: action.channel)
        return ", ".join(action.get_channel_display() for action in actions) or "—"

    @admin.display(description="audience", ordering="audience_size")
    def audience(self, obj: Campaign) -> str:
        size = obj.audience_size  # type: ignore[attr-defined]
        return "—" if size is None else f"{size:,}"

    @admin.display(description="sent / total")
    def sent_of_total(self, obj: Campaign) -> str:
        total = obj.delivery_total  # type: ignore[attr-defined]
        return "—" if not total else f"{obj.delivery_sent:,} / {total:,}"  # type: ignore[attr-defined]

    @admin.display(description="tags")
    def tag_list(self, obj: Campaign) -> str:
        # Sorted in Python: the prefetched tags are read without another query.
        return ", ".join(sorted(tag.name for tag in obj.tags.all())) or "—"

    @staticmethod
    def _shown_version(obj: Campaign) -> CampaignVersion | None:
        return obj.live_version or obj.draft_version

    @admin.display(description="segment")
    def segment_name(self, obj: Campaign) -> str:
        version = self._shown_version(obj)
        return str(version.segment) if version and version.segment else "—"

    @admin.display(description="start")
    def start_time(self, obj: Campaign) -> str:
        version = self._shown_version(obj)
        if obj.next_run_at is not None and obj.status in (Status.SCHEDULED, Status.LIVE):
            return f"Next run {short_datetime(obj.next_run_at)}"  # a recurring campaign
        if version and version.start_at:
            return short_datetime(version.start_at)
        if obj.started_at:
            return short_datetime(obj.started_at)
        return "On activation" if version else "—"

    @admin.display(description="recurrence")
    def recurrence_text(self, obj: Campaign) -> str:
        version = obj.live_version or obj.draft_version
        words = version_schedule_words(version) if version is not None else ""
        runs = campaign_next_runs(campaign=obj)
        if runs and obj.live_version is not None:
            live = obj.live_version
            words += ". Next runs: " + "; ".join(run_words(m, version=live) for m in runs)
        return words or "—"

    @admin.display(description="updated", ordering="updated_at")
    def updated(self, obj: Campaign) -> str:
        return short_datetime(obj.updated_at)

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        found = super().get_actions(request)
        # Deleting in bulk would bypass the Draft-only rule of services.campaign_delete.
        found.pop("delete_selected", None)
        return found

    # Each list action is offered to whoever holds its operation's permissions (the table's).
    def has_activate_permission(self, request: HttpRequest) -> bool:
        return OPERATIONS["activate"].allowed_to(request.user)

    def has_stop_permission(self, request: HttpRequest) -> bool:
        return OPERATIONS["stop"].allowed_to(request.user)

    def has_archive_permission(self, request: HttpRequest) -> bool:
        return OPERATIONS["archive"].allowed_to(request.user)

    def _apply_each(
        self, request: HttpRequest, queryset: QuerySet[Campaign], *, operation: Operation, done: str
    ) -> None:
        succeeded = 0
        for campaign in queryset.order_by("name"):
            try:
                operation.service(campaign=campaign, user=request.user)
            except (ValidationError, *REFUSALS) as error:
                reason = refusal_text(error)
                if f"“{campaign.name}”" not in reason:
                    reason = f"“{campaign.name}” cannot be {operation.done}: {reason}"
                self.message_user(request, reason, messages.ERROR)
            else:
                succeeded += 1
        if succeeded:
            noun = "campaign" if succeeded == 1 else "campaigns"
            self.message_user(request, f"{done} {succeeded} {noun}.", messages.SUCCESS)

    @admin.action(description="Review and activate selected campaigns", permissions=["activate"])
    def activate_selected(self, request: HttpRequest, queryset: QuerySet[Campaign]) -> HttpResponse:
        # Through the review page: each campaign's review and confirmation (admin_review).
        return redirect(reviews_url(list(queryset.order_by("name")[: REVIEW_MAX_CAMPAIGNS + 1])))

    @admin.action(description="Stop selected campaigns", permissions=["stop"])
    def stop_selected(self, request: HttpRequest, queryset: QuerySet[Campaign]) -> None:
        self._apply_each(request, queryset, operation=OPERATIONS["stop"], done="Stopped")

    @admin.action(description="Archive selected campaigns", permissions=["archive"])
    def archive_selected(self, request: HttpRequest, queryset: QuerySet[Campaign]) -> None:
        self._apply_each(request, queryset, operation=OPERATIONS["archive"], done="Archived")

    # --- permissions -------------------------------------------------------------------

    def has_change_permission(self, request: HttpRequest, obj: Campaign | None = None) -> bool:
        # Without an editable draft there is nothing to change: the page is view-only and
        # the lifecycle buttons (separate POSTs) are what remains.
        if not super().has_change_permission(request, obj):
            return False
        return obj is None or campaign_is_editable(obj)

    def has_delete_permission(self, request: HttpRequest, obj: Campaign | None = None) -> bool:
        # The delete operation's permissions; only Drafts are deleted, anything that ran is
        # stopped or archived instead.
        if not OPERATIONS["delete"].allowed_to(request.user):
            return False
        return obj is None or obj.status == Status.DRAFT

    def delete_model(self, request: HttpRequest, obj: Campaign) -> None:
        services.campaign_delete(campaign=obj, user=request.user)

    def delete_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        try:
            return super().delete_view(request, object_id, extra_context)
        except (CampaignConflict, TransitionNotAllowed, ConcurrentTransition) as error:
            # The campaign left Draft between the confirmation page and the POST.
            self.message_user(request, refusal_text(error), messages.ERROR)
            return redirect(reverse("admin:campaigns_campaign_change", args=[object_id]))

    # --- add / change form ---------------------------------------------------------------

    def get_fieldsets(self, request: HttpRequest, obj: Campaign | None = None) -> Any:
        if obj is None:
            return [
                (None, {"fields": CAMPAIGN_FORM_FIELDS}),
                ("Audience and schedule (version 1)", {"fields": VERSION_FIELDSET}),
                recurrence_fieldset(None),
            ]
        if not self.has_change_permission(request, obj):
            shown: tuple[str, ...] = ("name", "description", "type", "kind", "tag_list")
            if obj.kind == CampaignKind.RECURRING:
                shown = (*shown, "recurrence_text")  # its schedule and next runs in words
            return [(None, {"fields": shown})]
        draft = obj.draft_version
        assert draft is not None  # campaign_is_editable
        title = f"Draft version {draft.number}"
        if obj.has_open_draft:
            title += " (replaces the running version once activated)"
        return [
            (None, {"fields": CAMPAIGN_FORM_FIELDS}),
            (title, {"fields": VERSION_FIELDSET}),
            recurrence_fieldset(obj),
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: Campaign | None = None) -> Any:
        if obj is None:
            return ()
        if obj.live_version_id is not None:
            # services.campaign_update refuses a type or kind change once the campaign has run.
            return ("tag_list", "type", "kind")
        return ("tag_list",)

    def get_inline_instances(self, request: HttpRequest, obj: Campaign | None = None) -> Any:
        if obj is not None and not campaign_is_editable(obj):
            return []  # the versions block shows their actions instead
        return super().get_inline_instances(request, obj)

    def get_formset_kwargs(
        self, request: HttpRequest, obj: Campaign, inline: Any, prefix: str
    ) -> dict[str, Any]:
        kwargs = super().get_formset_kwargs(request, obj, inline, prefix)
        if isinstance(inline, DraftActionInline):
            draft = obj.draft_version if obj.pk else None
            kwargs["instance"] = draft or CampaignVersion()
            refusal = getattr(request, "salvo_service_error", None)
            if refusal is not None:
                kwargs["service_errors"] = error_dict(refusal).get("actions", [])
        return kwargs

    def get_form(
        self, request: HttpRequest, obj: Campaign | None = None, change: bool = False, **kwargs: Any
    ) -> type[ModelForm]:
        form = super().get_form(request, obj, change=change, **kwargs)
        refusal = getattr(request, "salvo_service_error", None)
        if refusal is not None:
            form = type(form.__name__, (form,), {"service_error": refusal})
        return form

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        if request.method == "POST" and object_id is not None:
            campaign = self.get_object(request, unquote(object_id))
            if (
                campaign is not None
                and not campaign_is_editable(campaign)
                and super().has_change_permission(request, campaign)
            ):
                # The page was editable when it was loaded; meanwhile the campaign was
                # activated (or its draft discarded). Say so rather than answer 403.
                self.message_user(
                    request,
                    f"Your changes were not saved: “{campaign}” is "
                    f"{campaign.get_status_display()} and has no draft to edit now.",
                    messages.ERROR,
                )
                return redirect(reverse("admin:campaigns_campaign_change", args=[campaign.pk]))
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except ServiceRefusal as refusal:
            # The transaction of the first pass rolled back. Input errors: render the page
            # again, the forms now carrying the service's errors. State refusals: say why
            # and show the campaign as it is now.
            if isinstance(refusal.error, ValidationError):
                request.salvo_service_error = refusal.error  # type: ignore[attr-defined]
                return super().changeform_view(request, object_id, form_url, extra_context)
            self.message_user(request, refusal_text(refusal.error), messages.ERROR)
            if object_id is None:
                return redirect(reverse("admin:campaigns_campaign_changelist"))
            return redirect(reverse("admin:campaigns_campaign_change", args=[object_id]))

    def save_form(self, request: HttpRequest, form: Any, change: bool) -> Campaign:
        return form.instance  # saved by the service in save_related, with the actions

    def save_model(self, request: HttpRequest, obj: Campaign, form: Any, change: bool) -> None:
        pass  # see save_related: the service needs the actions formset too

    def save_related(
        self, request: HttpRequest, form: Any, formsets: list[BaseFormSet], change: bool
    ) -> None:
        data = form.service_data()
        for formset in formsets:
            if isinstance(formset, DraftActionFormSet):
                data["actions"] = formset.action_specs()
        try:
            if change:
                services.campaign_update(campaign=form.instance, user=request.user, data=data)
                return
            campaign = services.campaign_create(user=request.user, **data)
        except (ValidationError, *REFUSALS) as error:
            raise ServiceRefusal(error) from error
        # The admin goes on (change message, redirect) with its own object: make it the row
        # the service created.
        form.instance.pk = campaign.pk
        form.instance.refresh_from_db()

    def construct_change_message(
        self, request: HttpRequest, form: Any, formsets: Any, add: bool = False
    ) -> list[dict[str, Any]]:
        # The formsets were not saved (the service replaced the actions), so they hold no
        # new/changed/deleted objects for Django's message; say which fields changed.
        message = construct_change_message(form, [], add)
        if any(formset.has_changed() for formset in formsets):
            message.append({"changed": {"fields": ["channel actions"]}})
        return message

    def response_change(self, request: HttpRequest, obj: Campaign) -> HttpResponse:
        if request.POST.get("_lifecycle") == "activate":
            # "Save and activate": the edits are saved (above, in this transaction); now the
            # activation, whose refusal leaves the saved edits in place.
            self.message_user(request, f"The campaign “{obj}” was saved.", messages.SUCCESS)
            return self._run_operation(request, obj, "activate")
        return super().response_change(request, obj)

    # --- lifecycle -----------------------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        return [
            path(
                "<path:object_id>/lifecycle/<str:operation>/",
                self.admin_site.admin_view(self.lifecycle_view),
                name="campaigns_campaign_lifecycle",
            ),
            path(
                "<path:object_id>/review/",
                self.admin_site.admin_view(self.review_view),
                name="campaigns_campaign_review",
            ),
            path(
                "review/",
                self.admin_site.admin_view(self.reviews_view),
                name="campaigns_campaign_reviews",
            ),
            path(
                "<path:object_id>/report/",
                self.admin_site.admin_view(self.report_view),
                name="campaigns_campaign_report",
            ),
            path(
                "<path:object_id>/preview/",
                self.admin_site.admin_view(self.preview_view),
                name="campaigns_campaign_preview",
            ),
            path(
                "<path:object_id>/proof/",
                self.admin_site.admin_view(self.proof_view),
                name="campaigns_campaign_proof",
            ),
            path(
                "<path:object_id>/proofs/",
                self.admin_site.admin_view(self.proofs_view),
                name="campaigns_campaign_proofs",
            ),
            path(
                "<path:object_id>/versions/diff/",
                self.admin_site.admin_view(self.version_diff_view),
                name="campaigns_campaign_version_diff",
            ),
            *super().get_urls(),
        ]

    def review_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The campaign's review, and its confirmation: every activation goes through it."""
        return review_page(self, request, object_id)

    def reviews_view(self, request: HttpRequest) -> HttpResponse:
        """The reviews of the campaigns the list action chose, each confirmed on its own."""
        return reviews_page(self, request)

    def preview_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The campaign's actions rendered for a chosen profile (`admin_preview`)."""
        return preview_page(self, request, object_id)

    def proof_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The "Send proof" button (`admin_proofs`)."""
        return proof_request_view(self, request, object_id)

    def proofs_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The proofs section's refresh (`admin_proofs`)."""
        return proofs_section_view(self, request, object_id)

    def viewable_campaign(self, request: HttpRequest, object_id: str) -> Campaign:
        """The campaign a page of its own shows (diff, report, preview): 404 when there is
        none, `PermissionDenied` unless the user may view it."""
        campaign = self.get_object(request, unquote(object_id))
        if campaign is None:
            raise Http404(f"No campaign has the id “{object_id}”.")
        if not self.has_view_or_change_permission(request, campaign):
            raise PermissionDenied
        return campaign

    def version_diff_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Two versions of the campaign side by side (`?old=N&new=M`, version numbers;
        by default the two newest), for whoever may view the campaign."""
        campaign = self.viewable_campaign(request, object_id)
        versions = list(campaign_versions(campaign=campaign))
        by_number = {str(version.number): version for version in versions}
        errors = []
        chosen = []
        for name, default in (("old", versions[1:2]), ("new", versions[:1])):
            number = request.GET.get(name, "")
            if not number:
                chosen.append(default[0] if default else None)
            elif number in by_number:
                chosen.append(by_number[number])
            else:
                errors.append(
                    f"“{number}” is not a version of this campaign: choose one of "
                    f"{', '.join(reversed(list(by_number)))}."
                )
                chosen.append(None)
        old, new = chosen
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"Compare versions of “{campaign}”",
            "salvo_campaign": campaign,
            "salvo_versions": versions,
            "salvo_old": old,
            "salvo_new": new,
            "salvo_errors": errors,
            "salvo_diff": version_diff(old=old, new=new) if old and new else None,
        }
        return TemplateResponse(request, "admin/campaigns/campaign/version_diff.html", context)

    def report_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The live report's refresh (JSON), for whoever may view the campaign: its
        status, the report's HTML, and when to ask again (null: nothing more is sent)."""
        if request.method != "GET":
            return HttpResponseNotAllowed(["GET"])
        campaign = self.viewable_campaign(request, object_id)
        # admin_view already marks it never_cache: each answer is the state of the moment.
        return JsonResponse(
            {
                "status": campaign.status,
                "status_display": campaign.get_status_display(),
                "status_badge": str(status_badge_html(campaign)),
                "refresh_ms": report_refresh_ms(campaign),
                "html": report_html(campaign=campaign, request=request),
            }
        )

    def lifecycle_view(self, request: HttpRequest, object_id: str, operation: str) -> HttpResponse:
        """One lifecycle button: POST runs the operation's service, then back to the page."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if operation not in OPERATIONS:
            raise Http404(f"Unknown campaign operation “{operation}”.")
        campaign = self.get_object(request, unquote(object_id))
        if campaign is None:
            self.message_user(request, f"No campaign has the id “{object_id}”.", messages.WARNING)
            return redirect(reverse("admin:campaigns_campaign_changelist"))
        if not self.has_view_or_change_permission(request, campaign):
            raise PermissionDenied
        if operation == "delete":
            return redirect(reverse("admin:campaigns_campaign_delete", args=[campaign.pk]))
        if operation in DECISIONS:
            try:
                return approval_page(self, request, campaign, operation)
            except REFUSALS as error:
                self.message_user(request, refusal_text(error), messages.ERROR)
                return redirect(reverse("admin:campaigns_campaign_change", args=[campaign.pk]))
        return self._run_operation(request, campaign, operation)

    def _run_operation(self, request: HttpRequest, campaign: Campaign, operation: str) -> Any:
        user = request.user
        page = reverse("admin:campaigns_campaign_change", args=[campaign.pk])
        name = campaign.name
        try:
            if operation == "activate":  # the review page asks for the confirmation
                step = OPERATIONS[operation]
                require_perms(user, *step.permissions, to=f"use “{step.label}” on a campaign")
                refusal = services.activation_refusal(campaign)
                if refusal is not None:
                    raise refusal
                require_approved_for_activation(campaign)  # before a review it cannot pass
                return redirect(reviews_url([campaign]))
            if operation == "modify":
                draft = services.campaign_modify(campaign=campaign, user=user)
                done = (
                    f"Version {draft.number} of “{name}” is open as a draft: edit it below, then "
                    "activate it to replace the running version."
                )
            elif operation == "discard_draft":
                services.campaign_discard_draft(campaign=campaign, user=user)
                done = f"The open draft of “{name}” was discarded; the running version stays."
            elif operation == "stop":
                services.campaign_stop(campaign=campaign, user=user)
                done = f"“{name}” is stopped: no delivery starts from now on."
            elif operation == "archive":
                services.campaign_archive(campaign=campaign, user=user)
                done = f"“{name}” is archived."
            elif operation == "request_approval":
                services.campaign_request_approval(campaign=campaign, user=user)
                done = f"Approval of “{name}” requested: an approver can now approve or reject it."
            elif operation == "duplicate":
                copy = services.campaign_duplicate(campaign=campaign, user=user)
                done = f"“{copy.name}” was created as a Draft copy of “{name}”."
                page = reverse("admin:campaigns_campaign_change", args=[copy.pk])
            else:
                raise Http404(f"Unknown campaign operation “{operation}”.")
        except ValidationError as error:
            # Every failed check, one message each, so the marketer can fix them all at once.
            for message in error.messages:
                self.message_user(
                    request, f"Cannot {OPERATIONS[operation].verb}: {message}", messages.ERROR
                )
        except REFUSALS as error:
            self.message_user(request, refusal_text(error), messages.ERROR)
        else:
            self.message_user(request, done, messages.SUCCESS)
        return redirect(page)

    def _lifecycle_buttons(self, request: HttpRequest, campaign: Campaign) -> list[dict[str, Any]]:
        editable = self.has_change_permission(request, campaign)
        buttons = []
        for operation in campaign_operations(campaign=campaign, user=request.user):
            if operation == "delete":
                url = reverse("admin:campaigns_campaign_delete", args=[campaign.pk])
            else:
                url = reverse("admin:campaigns_campaign_lifecycle", args=[campaign.pk, operation])
            buttons.append(
                {
                    "operation": operation,
                    "label": OPERATIONS[operation].label,
                    "url": url,
                    # With an editable form, Activate saves the edits first.
                    "save_first": operation == "activate" and editable,
                    "confirm": OPERATIONS[operation].confirmation,
                }
            )
        return buttons

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        campaign = self.get_object(request, unquote(object_id))
        if campaign is not None:
            versions = list(campaign_versions(campaign=campaign))
            # Newest first: each row links to the changes from the version before it.
            for newer, older in pairwise(versions):
                newer.previous_number = older.number  # type: ignore[attr-defined]
            for version in versions:
                version.timing_words = schedule_words(version)  # type: ignore[attr-defined]
            by_pk = {version.pk: version for version in versions}
            draft = by_pk.get(campaign.draft_version_id)
            extra_context = {
                **(extra_context or {}),
                "salvo_campaign": campaign,
                "salvo_status_badge": status_badge_html(campaign),
                "salvo_buttons": self._lifecycle_buttons(request, campaign),
                "salvo_editable": self.has_change_permission(request, campaign),
                "salvo_live_version": by_pk.get(campaign.live_version_id),
                "salvo_live_role": version_role(campaign).label,
                # A draft the form cannot edit (being activated) is shown like the live one.
                "salvo_readonly_draft": None if campaign_is_editable(campaign) else draft,
                "salvo_versions": versions,
                "salvo_transitions": list(campaign_transitions(campaign=campaign)[:100]),
                "salvo_delivery_error": campaign_delivery_error(campaign=campaign),
                "salvo_change_notes": version_change_notes(campaign=campaign),
                "salvo_approval_text": (
                    version_approval_text(campaign=campaign, version=draft) if draft else ""
                ),
                **proof_context(campaign=campaign, request=request),
                **triggers_context(campaign=campaign),
            }
            report = report_context(campaign=campaign, request=request)
            refresh = report_refresh_ms(campaign)
            if report is not None or refresh is not None:
                extra_context.update(
                    salvo_report=report,
                    salvo_refresh_ms=refresh,
                    salvo_report_url=reverse("admin:campaigns_campaign_report", args=[campaign.pk]),
                )
        return super().change_view(request, object_id, form_url, extra_context)


# Registered by importing them: the deliveries page and the frequency caps' rules.
from . import admin_caps, admin_conversions, admin_deliveries  # noqa: E402, F401
