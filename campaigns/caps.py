"""Frequency caps: the rules' services and selectors, and a campaign's exemption.

A rule (``FrequencyCap``) allows at most `limit` marketing messages per profile within a
rolling period (day = the last 24 hours, week = 7 days, month = 30 days), on one channel or
on all channels together. Every active rule applies to every marketing campaign at once;
``campaigns.delivery.caps`` enforces them at send time.

Decisions, as Braze does: transactional campaigns are neither capped nor counted (a legal
notice or a receipt is not marketing pressure). A campaign marked exempt
(``Campaign.frequency_cap_exempt``) is never capped, but its messages do count towards the
caps of the others: the person did receive them. Setting or clearing the exemption needs
``campaigns.exempt_campaign_from_caps`` at every door (``require_exemption_change_allowed``).

The admin (``campaigns.admin_caps``), the API (``campaigns.api.caps``) and the command
(``manage.py frequency_cap``) call these functions alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import QuerySet

from config.permissions import require_perms

from .models import Campaign, FrequencyCap

EXEMPT_FROM_CAPS = "campaigns.exempt_campaign_from_caps"
ADD_CAP = "campaigns.add_frequencycap"
CHANGE_CAP = "campaigns.change_frequencycap"
DELETE_CAP = "campaigns.delete_frequencycap"
VIEW_CAP = "campaigns.view_frequencycap"

# What a caller may set on a rule; the rest (id, times) is the database's.
FREQUENCY_CAP_FIELDS = ("name", "channel", "limit", "period", "active")


# --- selectors -------------------------------------------------------------------------


def frequency_cap_list(*, active: bool | None = None) -> QuerySet[FrequencyCap]:
    """The rules, by name; only the active (or inactive) ones when `active` says so."""
    rules = FrequencyCap.objects.order_by("name")
    if active is not None:
        rules = rules.filter(active=active)
    return rules


def active_frequency_caps() -> list[FrequencyCap]:
    """The rules the delivery engine enforces now: one small query, read once per batch."""
    return list(frequency_cap_list(active=True))


# --- services --------------------------------------------------------------------------


def _apply(rule: FrequencyCap, data: Mapping[str, Any]) -> None:
    unknown = sorted(set(data) - set(FREQUENCY_CAP_FIELDS))
    if unknown:
        raise ValidationError({name: "Unknown frequency cap field." for name in unknown})
    for name, value in data.items():
        setattr(rule, name, value)
    rule.full_clean()


@transaction.atomic
def frequency_cap_create(*, user: Any, data: Mapping[str, Any]) -> FrequencyCap:
    """A new rule; it applies from the next chunk any worker sends."""
    require_perms(user, ADD_CAP, to="create a frequency cap")
    rule = FrequencyCap()
    _apply(rule, data)
    rule.save()
    return rule


@transaction.atomic
def frequency_cap_update(*, rule: FrequencyCap, user: Any, data: Mapping[str, Any]) -> FrequencyCap:
    """Change the given fields of a rule (the changed rule is shown: viewing is needed)."""
    require_perms(user, VIEW_CAP, CHANGE_CAP, to="change a frequency cap")
    rule = FrequencyCap.objects.select_for_update().get(pk=rule.pk)
    _apply(rule, data)
    rule.save()
    return rule


@transaction.atomic
def frequency_cap_delete(*, rule: FrequencyCap, user: Any) -> None:
    """Remove a rule. The ledger of sends stays: another rule goes on counting them."""
    require_perms(user, DELETE_CAP, to="delete a frequency cap")
    FrequencyCap.objects.filter(pk=rule.pk).delete()


def require_exemption_change_allowed(*, campaign: Campaign | None, exempt: bool, user: Any) -> None:
    """Exempting a campaign from the caps, or ending its exemption, is the decision of a
    user holding ``campaigns.exempt_campaign_from_caps``; keeping it as it is needs
    nothing (a form always posts the field)."""
    was_exempt = campaign.frequency_cap_exempt if campaign is not None else False
    if exempt != was_exempt and user is not None and not user.has_perm(EXEMPT_FROM_CAPS):
        raise PermissionDenied(
            f"You need the “{EXEMPT_FROM_CAPS}” permission to change whether a campaign is "
            "exempt from frequency caps."
        )


@transaction.atomic
def campaign_cap_exemption_set(*, campaign: Campaign, user: Any, exempt: bool) -> Campaign:
    """Mark a campaign exempt from the frequency caps, or not, in any status: a Live
    campaign's chunks read it from their next batch on."""
    require_perms(user, "campaigns.view_campaign", to="see the campaign")
    campaign = Campaign.objects.select_for_update().get(pk=campaign.pk)
    require_exemption_change_allowed(campaign=campaign, exempt=exempt, user=user)
    if campaign.frequency_cap_exempt != exempt:
        campaign.frequency_cap_exempt = exempt
        campaign.save(update_fields=["frequency_cap_exempt", "updated_at"])
    return campaign
