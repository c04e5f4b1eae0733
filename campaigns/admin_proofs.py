"""The campaign page's proofs: the "Send proof" button's view (with the variants to send,
when the version has any: checkboxes, none checked meaning every one), and the list of the
campaign's newest proof sends with their variant and outcome, which the page refreshes in place (the
JSON `proofs_section_view`) while one is being sent.

Both call `campaigns.proofs`, as the API and the command do. The list costs one query
whatever the number of proofs, profiles or deliveries (the newest `RECENT_PROOF_SENDS`,
with their version, action, profile and requester joined).
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, JsonResponse
from django.shortcuts import redirect
from django.template.loader import render_to_string
from django.urls import reverse

from .choices import ProofStatus
from .models import Campaign
from .proofs import (
    PROOF_PERMISSIONS,
    RECENT_PROOF_SENDS,
    campaign_proof_request,
    campaign_proof_sends,
    proof_variant_labels,
)

# The change form's checkboxes of the variants to prove (none checked: every variant).
PROOF_VARIANTS_VAR = "proof_variants"


def proof_context(*, campaign: Campaign, request: HttpRequest) -> dict[str, Any]:
    """What the change page shows of proofs: whether the user may send one, the URLs to
    ask and to refresh, the variants a proof may choose among, the newest proof sends and
    whether one of them is being sent."""
    sends = list(campaign_proof_sends(campaign=campaign)[:RECENT_PROOF_SENDS])
    can_send = request.user.has_perms(PROOF_PERMISSIONS)
    return {
        "salvo_can_send_proof": can_send,
        "salvo_proof_variants": proof_variant_labels(campaign=campaign) if can_send else [],
        "salvo_proof_variants_var": PROOF_VARIANTS_VAR,
        "salvo_proof_url": reverse("admin:campaigns_campaign_proof", args=[campaign.pk]),
        "salvo_proofs_url": reverse("admin:campaigns_campaign_proofs", args=[campaign.pk]),
        "salvo_proof_sends": sends,
        "salvo_proofs_pending": any(send.status == ProofStatus.PENDING for send in sends),
    }


def proofs_section_view(model_admin: Any, request: HttpRequest, object_id: str) -> HttpResponse:
    """GET: the proofs section's table as HTML, and whether a proof is still being sent
    (the page asks again while it is), for whoever may view the campaign."""
    if request.method != "GET":
        return HttpResponseNotAllowed(["GET"])
    campaign: Campaign = model_admin.viewable_campaign(request, object_id)
    context = proof_context(campaign=campaign, request=request)
    html = render_to_string("admin/campaigns/campaign/_proofs.html", context, request)
    return JsonResponse({"html": html, "pending": context["salvo_proofs_pending"]})


def proof_request_view(model_admin: Any, request: HttpRequest, object_id: str) -> HttpResponse:
    """POST: send a proof of the campaign to the test profiles, then back to its page,
    at the proofs' list, with what happened or why not."""
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    campaign: Campaign = model_admin.viewable_campaign(request, object_id)
    page = reverse("admin:campaigns_campaign_change", args=[campaign.pk]) + "#proofs"
    try:
        sends = campaign_proof_request(
            campaign=campaign,
            user=request.user,
            variants=request.POST.getlist(PROOF_VARIANTS_VAR),
        )
    except PermissionDenied as error:
        model_admin.message_user(request, str(error), messages.ERROR)
    except ValidationError as error:
        for message in error.messages:
            model_admin.message_user(request, f"Cannot send a proof: {message}", messages.ERROR)
    else:
        profiles = sorted({send.profile.external_id for send in sends})
        model_admin.message_user(
            request,
            f"A proof of version {sends[0].version.number} of “{campaign.name}” is being sent "
            f"({len(sends)} message{'s' if len(sends) != 1 else ''}) to "
            f"{', '.join(profiles)}; reload the page to see each outcome below.",
            messages.SUCCESS,
        )
    return redirect(page)
