"""The admin's page of a campaign's deliveries: who got it, who did not and why, with the
filters and search of the API's `…/deliveries/`, and the same streamed CSV export.

Read-only. Its rows come from `campaigns.selectors.campaign_deliveries` (the query
validated by `DeliveryFilterSet`, as at the API); the list filters below only offer the
choices and keep them in the page's links.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import PAGE_VAR, SEARCH_VAR
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    StreamingHttpResponse,
)
from django.shortcuts import redirect
from django.urls import URLPattern, path, reverse

from channels.choices import ChannelKind

from .api.filtersets import DeliveryFilterSet
from .choices import DeliveryReason, DeliveryStatus
from .engagement import events_by_delivery, events_summary
from .exports import deliveries_csv_response
from .models import Campaign, CampaignVersion, Delivery
from .selectors import DELIVERY_VIEW_PERMISSIONS, campaign_deliveries

CAMPAIGN_VAR = "campaign"


class _ChosenBySelector(admin.SimpleListFilter):
    """A filter the selector applies (`DeliveryAdmin.get_queryset`): this class offers
    its choices and keeps its parameter in the page's links."""

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset


class CampaignFilter(_ChosenBySelector):
    """The campaign whose deliveries the page lists; shown in the title, not as a
    filter."""

    title = "campaign"
    parameter_name = CAMPAIGN_VAR

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return []


def _choice_filter(parameter: str, label: str, choices: Any) -> type[_ChosenBySelector]:
    """A filter offering the values of a `TextChoices` (channel, status, reason)."""

    def lookups(self: Any, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(str(value), str(name)) for value, name in choices.choices]

    attributes = {"title": label, "parameter_name": parameter, "lookups": lookups}
    return type(f"{parameter.title()}Filter", (_ChosenBySelector,), attributes)


ChannelFilter = _choice_filter("channel", "channel", ChannelKind)
StatusFilter = _choice_filter("status", "status", DeliveryStatus)
ReasonFilter = _choice_filter("reason", "reason not sent", DeliveryReason)


class VersionFilter(_ChosenBySelector):
    title = "version"
    parameter_name = "version"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        campaign = _campaign_of(request)
        if campaign is None:
            return []
        numbers = CampaignVersion.objects.filter(campaign=campaign).values_list("number", flat=True)
        return [(str(number), f"Version {number}") for number in sorted(numbers)]


def _errors_text(errors: Any) -> str:
    """A filter's errors in one line: "status: Select a valid choice. …"."""
    return " ".join(f"{field}: {' '.join(messages)}" for field, messages in errors.items())


def _campaign_of(request: HttpRequest) -> Campaign | None:
    raw = request.GET.get(CAMPAIGN_VAR, "")
    if not raw.isdigit():
        return None
    return Campaign.objects.filter(pk=int(raw)).first()


def _with_events(rows: list[Any]) -> None:
    """The page's deliveries, each with what providers reported about it in one line: one
    query for the page."""
    events = events_by_delivery(row.pk for row in rows)
    for row in rows:
        row.events_summary = events_summary(events[row.pk])


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows that only the system writes (deliveries, conversions): listed and shown, never
    added, changed or deleted by hand, whatever the user's model permissions."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Delivery)
class DeliveryAdmin(ReadOnlyAdmin):
    list_display = (
        "profile_text",
        "address",
        "channel",
        "status_text",
        "reason_text",
        "error",
        "attempts",
        "provider_message_id",
        "events_text",
        "version_text",
        "sent_at",
        "updated_at",
    )
    list_display_links = None
    list_filter = (CampaignFilter, ChannelFilter, StatusFilter, ReasonFilter, VersionFilter)
    search_fields = ("profile_id",)  # shows the search box; the selector searches
    search_help_text = "A profile's external id, email or phone (the whole value)."
    list_per_page = 100
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    sortable_by = ()
    actions = None

    # --- who may see it: campaigns and profiles, as at the API; nobody changes it -------

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perms(DELIVERY_VIEW_PERMISSIONS)

    def has_module_permission(self, request: HttpRequest) -> bool:
        # Reached from a campaign's page, never listed on its own.
        return False

    # --- rows ----------------------------------------------------------------------------

    def _rows(self, request: HttpRequest, campaign: Campaign) -> QuerySet[Delivery]:
        query = DeliveryFilterSet(request.GET)
        if not query.is_valid():
            raise IncorrectLookupParameters(_errors_text(query.errors))
        filters = query.selector_filters()
        filters["search"] = request.GET.get(SEARCH_VAR, "").strip()
        return campaign_deliveries(campaign=campaign, user=request.user, **filters)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Delivery]:
        campaign = _campaign_of(request)
        if campaign is None:
            raise IncorrectLookupParameters("No campaign chosen.")
        return self._rows(request, campaign)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Delivery], search_term: str
    ) -> tuple[QuerySet[Delivery], bool]:
        return queryset, False

    # Not named after the model's fields: the admin would read the relation, a query per row.
    @admin.display(description="profile")
    def profile_text(self, obj: Any) -> str:
        return obj.profile_external_id or "— (deleted)"

    @admin.display(description="address")
    def address(self, obj: Any) -> str:
        return obj.address or "—"

    @admin.display(description="channel")
    def channel(self, obj: Any) -> str:
        return str(ChannelKind(obj.channel).label)

    @admin.display(description="status")
    def status_text(self, obj: Delivery) -> str:
        return obj.get_status_display()

    @admin.display(description="reason")
    def reason_text(self, obj: Delivery) -> str:
        return obj.get_reason_display() if obj.reason else "—"

    @admin.display(description="events")
    def events_text(self, obj: Any) -> str:
        return getattr(obj, "events_summary", "") or "—"

    def get_changelist_instance(self, request: HttpRequest) -> Any:
        changelist = super().get_changelist_instance(request)
        # Reading the page's rows fills the queryset's cache: the page shows these objects.
        _with_events(list(changelist.result_list))
        return changelist

    @admin.display(description="version")
    def version_text(self, obj: Any) -> str:
        return "—" if obj.version_number is None else str(obj.version_number)

    # --- the page and its export ------------------------------------------------------

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        campaign = _campaign_of(request)
        if campaign is None:
            self.message_user(
                request,
                "Choose a campaign: its page links to its deliveries.",
                messages.WARNING,
            )
            return redirect(reverse("admin:campaigns_campaign_changelist"))
        query = DeliveryFilterSet(request.GET)
        if not query.is_valid():
            # Django would answer "?e=1" and lose the campaign: say what was wrong instead.
            self.message_user(request, _errors_text(query.errors), messages.ERROR)
            return redirect(f"{request.path}?{CAMPAIGN_VAR}={campaign.pk}")
        export = request.GET.copy()
        for name in (PAGE_VAR, "e", "o"):
            export.pop(name, None)
        export_url = f"{reverse('admin:campaigns_delivery_export')}?{export.urlencode()}"
        extra_context = {
            **(extra_context or {}),
            "title": f"Deliveries of “{campaign}”",
            "subtitle": None,
            "salvo_campaign": campaign,
            "salvo_export_url": export_url,
        }
        return super().changelist_view(request, extra_context)

    def get_urls(self) -> list[URLPattern]:
        # The list and its export: a delivery has no page of its own to add, change,
        # delete or read its history on.
        return [
            path(
                "",
                self.admin_site.admin_view(self.changelist_view),
                name="campaigns_delivery_changelist",
            ),
            path(
                "export/",
                self.admin_site.admin_view(self.export_view),
                name="campaigns_delivery_export",
            ),
        ]

    def export_view(self, request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
        """The page's rows, all of them, as the API's streamed CSV."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        campaign = _campaign_of(request)
        if campaign is None:
            raise Http404("No campaign has this id.")
        try:
            rows = self._rows(request, campaign)
        except IncorrectLookupParameters as error:
            return HttpResponseBadRequest(str(error), content_type="text/plain; charset=utf-8")
        return deliveries_csv_response(campaign=campaign, rows=rows)
