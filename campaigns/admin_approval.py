"""The admin's approval page: approve or reject a campaign's draft with a comment.

The change page's Approve and Reject buttons come here (they are operations of the table
in `campaigns.operations`, offered to whoever holds their permissions); the form posts
back with its comment, and the service (`campaign_approve` / `campaign_reject`) decides, as
at the API and the command. A refusal of the comment (missing to reject, too long) is
shown on its field; a refusal of the state or the user goes back to the change page with
the reason.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import reverse

from config.permissions import require_perms

from .approval import APPROVAL_COMMENT_MAX_LENGTH, approval_step_refusal, version_approval_text
from .exceptions import CampaignConflict
from .models import Campaign
from .operations import OPERATIONS

DECISIONS = ("approve", "reject")


class ApprovalDecisionForm(forms.Form):
    comment = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4, "cols": 60}),
        required=False,
        max_length=APPROVAL_COMMENT_MAX_LENGTH,
        help_text="Kept in the campaign's log. Required to reject: say what to change.",
    )


def approval_page(
    model_admin: Any, request: HttpRequest, campaign: Campaign, operation: str
) -> HttpResponse:
    """GET (or the change page's button, which posts no comment): the form. A POST with a
    comment: the decision. The services' refusals of the state or the user are raised for
    the caller to show (see `CampaignAdmin.lifecycle_view`)."""
    decision = OPERATIONS[operation]
    # Refused before the form is shown, as the service refuses the decision.
    require_perms(request.user, *decision.permissions, to=f"{decision.verb} a campaign version")
    refusal = approval_step_refusal(campaign, operation)
    if refusal:
        raise CampaignConflict(refusal)
    page = reverse("admin:campaigns_campaign_change", args=[campaign.pk])
    form = ApprovalDecisionForm(request.POST if "comment" in request.POST else None)
    if form.is_bound and form.is_valid():
        try:
            decision.service(
                campaign=campaign, user=request.user, comment=form.cleaned_data["comment"]
            )
        except ValidationError as error:
            for message in error.message_dict.get("comment", error.messages):
                form.add_error("comment", message)
        else:
            draft = campaign.draft_version
            number = draft.number if draft is not None else "?"
            model_admin.message_user(
                request,
                f"Version {number} of “{campaign}” was {decision.done}.",
                messages.SUCCESS,
            )
            return redirect(page)
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.opts,
        "title": f"{decision.label} “{campaign}”",
        "salvo_campaign": campaign,
        "salvo_decision": decision,
        "salvo_approval_text": version_approval_text(
            campaign=campaign, version=campaign.draft_version
        ),
        "form": form,
    }
    return TemplateResponse(request, "admin/campaigns/campaign/approval.html", context)
