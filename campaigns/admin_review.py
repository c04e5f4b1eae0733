"""The admin's review page: every activation in the admin goes through it.

The Activate button, "Save and activate" and the list action all lead here instead of
activating at once. The page shows each campaign's review (``campaigns.review``, as the
API and the command show it): the segment and the reach per channel, the schedule with
its time zone, each action rendered for a sample profile, the estimated sending time and
the checks. Errors leave no way to confirm; each warning code has a checkbox that must be
ticked; the confirm button names the number of recipients. Confirming posts to the
campaign's own review URL, which calls ``campaign_activate`` with the codes ticked: the
service decides again, so a page left open while the data changed cannot activate what it
did not show.

The list action with several campaigns opens one page holding a review per campaign, each
with its own checkboxes and confirmation: campaigns have different warnings and numbers of
recipients, and one button activating several would confirm numbers nobody read. After a
confirmation the page comes back with the rest; a campaign activated meanwhile says so.
At most ``REVIEW_MAX_CAMPAIGNS`` campaigns are reviewed at once, so the page's cost stays
bounded (each review is a fixed number of queries whatever the size of the audience).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django_fsm import can_proceed

from . import services
from .approval import version_approval_text
from .exceptions import REFUSALS, ActivationRefused, refusal_text
from .models import Campaign
from .review import CampaignReview, campaign_review

# The list action reviews at most this many campaigns on one page.
REVIEW_MAX_CAMPAIGNS = 20
ACKNOWLEDGE_VAR, NEXT_VAR, ID_VAR = "acknowledge", "next", "id"


def confirm_label(review: CampaignReview) -> str:
    """The confirm button's words: what it does, and to how many."""
    noun = "profile" if review.recipients == 1 else "profiles"
    return f"Activate: send to {review.recipients:,} {noun}"


def _entry(
    request: HttpRequest, campaign: Campaign, *, back: str, refused: Sequence[str] = ()
) -> dict[str, Any]:
    """One campaign's block of the page. `refused`: the codes a refused confirmation left
    unticked, marked on the page."""
    if not can_proceed(campaign.activate):
        return {"campaign": campaign, "review": None, "status": campaign.get_status_display()}
    review = campaign_review(campaign=campaign, user=request.user)
    warnings: dict[str, list[str]] = {}
    for check in review.warnings:
        warnings.setdefault(check.code, []).append(check.message)
    return {
        "campaign": campaign,
        "review": review,
        "warnings": [
            {"code": code, "messages": texts, "refused": code in refused}
            for code, texts in warnings.items()
        ],
        "confirm": confirm_label(review),
        "approval": (
            version_approval_text(campaign=campaign, version=review.version)
            if campaign.approval_required
            else ""
        ),
        "url": reverse("admin:campaigns_campaign_review", args=[campaign.pk]),
        "back": back,
    }


def _render(
    model_admin: Any, request: HttpRequest, entries: list[dict[str, Any]], title: str
) -> HttpResponse:
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.opts,
        "title": title,
        "salvo_campaign": entries[0]["campaign"] if len(entries) == 1 else None,
        "salvo_entries": entries,
    }
    return TemplateResponse(request, "admin/campaigns/campaign/review.html", context)


def _back(request: HttpRequest, campaign: Campaign) -> str:
    """Where a confirmation returns: the page it came from when that is ours, else the
    campaign's page."""
    wanted = request.POST.get(NEXT_VAR) or request.GET.get(NEXT_VAR, "")
    if wanted and url_has_allowed_host_and_scheme(
        wanted, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return wanted
    return reverse("admin:campaigns_campaign_change", args=[campaign.pk])


def review_page(model_admin: Any, request: HttpRequest, object_id: str) -> HttpResponse:
    """GET: the campaign's review, for whoever may view it. POST: activate it with the
    warnings ticked (the service checks the permission, the state and the review)."""
    campaign: Campaign = model_admin.viewable_campaign(request, object_id)
    back = _back(request, campaign)
    if request.method == "GET":
        return _render(
            model_admin, request, [_entry(request, campaign, back=back)], _title(campaign)
        )
    if request.method != "POST":
        return HttpResponseNotAllowed(["GET", "POST"])
    acknowledge = request.POST.getlist(ACKNOWLEDGE_VAR)
    try:
        activated = services.campaign_activate(
            campaign=campaign, user=request.user, acknowledge=acknowledge
        )
    except ActivationRefused as refusal:
        for message in refusal.messages:
            model_admin.message_user(request, f"Cannot activate: {message}", messages.ERROR)
        entry = _entry(request, campaign, back=back, refused=refusal.unacknowledged)
        return _render(model_admin, request, [entry], _title(campaign))
    except (ValidationError, *REFUSALS) as error:  # besides the review's: a message, back
        model_admin.message_user(request, refusal_text(error), messages.ERROR)
        return redirect(back)
    model_admin.message_user(
        request,
        f"Activation of “{activated.name}” started: its review passed and it is Activating; "
        "it becomes Scheduled or Live in a moment.",
        messages.SUCCESS,
    )
    return redirect(back)


def reviews_page(model_admin: Any, request: HttpRequest) -> HttpResponse:
    """The reviews of the campaigns chosen in the list (``?id=…``, repeated), each with
    its own confirmation."""
    ids = [value for value in request.GET.getlist(ID_VAR) if value.isdigit()]
    if len(ids) > REVIEW_MAX_CAMPAIGNS:
        model_admin.message_user(
            request,
            f"Review at most {REVIEW_MAX_CAMPAIGNS} campaigns at once: select fewer.",
            messages.ERROR,
        )
        return redirect(reverse("admin:campaigns_campaign_changelist"))
    campaigns = [
        campaign
        for campaign in Campaign.objects.filter(pk__in=ids).order_by("name")
        if model_admin.has_view_or_change_permission(request, campaign)
    ]
    if not campaigns:
        model_admin.message_user(request, "No campaign to review.", messages.WARNING)
        return redirect(reverse("admin:campaigns_campaign_changelist"))
    back = request.get_full_path()
    entries = [_entry(request, campaign, back=back) for campaign in campaigns]
    return _render(model_admin, request, entries, f"Review and activate {len(entries)} campaigns")


def reviews_url(campaigns: Sequence[Campaign]) -> str:
    """The review page of these campaigns: one campaign's own page, or the page of several."""
    if len(campaigns) == 1:
        return reverse("admin:campaigns_campaign_review", args=[campaigns[0].pk])
    query = "&".join(f"{ID_VAR}={campaign.pk}" for campaign in campaigns)
    return f"{reverse('admin:campaigns_campaign_reviews')}?{query}"


def _title(campaign: Campaign) -> str:
    return f"Review and activate “{campaign}”"
