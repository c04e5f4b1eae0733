"""Conversions: what a client reports a profile did (a purchase, a sign-up), attributed to
the campaign that reached the profile last.

Attribution (last touch). A conversion at time T of profile P goes to the delivery sent to
P last within ``SALVO_CONVERSION_WINDOW_DAYS`` before T, of any campaign, or of the
campaign the client names; a client that names the delivery gets that one, if it was sent
to P within the window. Nothing sent within the window is a refusal (400), never a
conversion attributed to nothing. A profile an experiment held out (its delivery skipped with
the reason ``holdout``) was reached by the campaign as much as the others: its conversion
goes to that campaign, which measures its variants against it (``campaigns.experiments``),
and counts for no channel in the report.

Cost. Deliveries have no index by profile (their writes must stay cheap), so the look-up
first lists the executions that ran within the window (few) and their actions, then asks
the unique index on (execution, action, profile) for P's rows: a few index probes, not a
scan of the deliveries.

Idempotency. A conversion reported with an ``idempotency_key`` is recorded once: the same
key again returns the conversion recorded first; the same key with another profile,
campaign, value or time is a conflict (409).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Count, Q, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from config.permissions import require_perms
from segments.models import Profile

from .choices import DeliveryReason, DeliveryStatus
from .exceptions import CampaignConflict
from .models import Campaign, ChannelAction, Conversion, Delivery, Execution

ADD_CONVERSION = "campaigns.add_conversion"


@dataclass(frozen=True)
class ConversionRecorded:
    conversion: Conversion
    created: bool  # False: the idempotency key's conversion, recorded before


def conversion_window() -> dt.timedelta:
    return dt.timedelta(days=settings.SALVO_CONVERSION_WINDOW_DAYS)


def _window_text() -> str:
    days = settings.SALVO_CONVERSION_WINDOW_DAYS
    return f"the {days} day{'s' if days != 1 else ''} before it (SALVO_CONVERSION_WINDOW_DAYS)"


def _reached(since: dt.datetime, until: dt.datetime) -> Q:
    """A delivery that reached its profile within [since, until]: sent then, or held out
    then (an experiment's holdout is measured against the rest: its conversions count)."""
    return Q(status=DeliveryStatus.SENT, sent_at__gte=since, sent_at__lte=until) | Q(
        status=DeliveryStatus.SKIPPED,
        reason=DeliveryReason.HOLDOUT,
        updated_at__gte=since,
        updated_at__lte=until,
    )


def _reached_at(delivery: Delivery) -> dt.datetime | None:
    if delivery.status == DeliveryStatus.SENT:
        return delivery.sent_at
    if delivery.status == DeliveryStatus.SKIPPED and delivery.reason == DeliveryReason.HOLDOUT:
        return delivery.updated_at
    return None


def _last_delivery(
    *, profile_id: int, campaign: Campaign | None, since: dt.datetime, until: dt.datetime
) -> Delivery | None:
    """The delivery that reached the profile last within [since, until] (``_reached``), of
    `campaign` or any."""
    executions = Execution.objects.filter(started_at__lte=until).filter(
        Q(finished_at__isnull=True) | Q(finished_at__gte=since)
    )
    if campaign is not None:
        executions = executions.filter(campaign=campaign)
    runs = dict(executions.values_list("pk", "version_id"))
    if not runs:
        return None
    actions = ChannelAction.objects.filter(version_id__in=set(runs.values())).values_list(
        "pk", flat=True
    )
    return (
        Delivery.objects.filter(
            execution_id__in=list(runs),
            action_id__in=list(actions),
            profile_id=profile_id,
        )
        .filter(_reached(since, until))
        .select_related("execution")
        .order_by(Coalesce("sent_at", "updated_at").desc(), "-pk")
        .first()
    )


def _attribution(
    *,
    profile: Profile | None,
    delivery_id: int | None,
    campaign: Campaign | None,
    occurred_at: dt.datetime,
) -> tuple[int, Delivery]:
    since = occurred_at - conversion_window()
    if delivery_id is not None:
        delivery = Delivery.objects.select_related("execution").filter(pk=delivery_id).first()
        if delivery is None:
            raise ValidationError({"delivery": f"No delivery has the id {delivery_id}."})
        if profile is not None and delivery.profile_id != profile.pk:
            raise ValidationError(
                {"delivery": f"Delivery {delivery_id} did not go to profile “{profile}”."}
            )
        if campaign is not None and delivery.execution.campaign_id != campaign.pk:
            raise ValidationError(
                {"delivery": f"Delivery {delivery_id} is not of campaign “{campaign.name}”."}
            )
        sent = _reached_at(delivery)
        if sent is None:
            raise ValidationError({"delivery": f"Delivery {delivery_id} was not sent."})
        if not since <= sent <= occurred_at:
            raise ValidationError(
                {
                    "delivery": f"Delivery {delivery_id} was sent at {sent.isoformat()}, "
                    f"outside {_window_text()}."
                }
            )
        return delivery.profile_id, delivery
    assert profile is not None
    found = _last_delivery(profile_id=profile.pk, campaign=campaign, since=since, until=occurred_at)
    if found is None:
        of = f" of campaign “{campaign.name}”" if campaign is not None else ""
        raise ValidationError(
            {
                "occurred_at": f"Nothing{of} was sent to profile “{profile.external_id}” "
                f"within {_window_text()}: there is nothing to attribute it to."
            }
        )
    return profile.pk, found


@transaction.atomic
def conversion_record(
    *,
    user: Any,
    profile: Profile | None = None,
    delivery_id: int | None = None,
    campaign: Campaign | None = None,
    value: Decimal = Decimal(0),
    currency: str = "",
    occurred_at: dt.datetime | None = None,
    idempotency_key: str = "",
) -> ConversionRecorded:
    """Record a conversion of `profile` (or of the profile `delivery_id` went to),
    attributed as the module says. Raises ValidationError (nothing to attribute it to,
    bad input) or CampaignConflict (the idempotency key names another conversion)."""
    require_perms(user, ADD_CONVERSION, to="record a conversion")
    if profile is None and delivery_id is None:
        raise ValidationError({"profile": "Name the profile (external_id) or the delivery."})
    if value < 0:
        raise ValidationError({"value": "A conversion's value cannot be negative."})
    occurred_at = occurred_at or timezone.now()
    if occurred_at > timezone.now() + dt.timedelta(minutes=5):
        raise ValidationError({"occurred_at": "A conversion cannot happen in the future."})
    profile_id, delivery = _attribution(
        profile=profile, delivery_id=delivery_id, campaign=campaign, occurred_at=occurred_at
    )
    fields = {
        "profile_id": profile_id,
        "campaign_id": delivery.execution.campaign_id,
        "delivery_id": delivery.pk,
        "value": value,
        "currency": currency.upper(),
        "occurred_at": occurred_at,
    }
    if idempotency_key:
        known = Conversion.objects.filter(idempotency_key=idempotency_key).first()
        if known is not None:
            return _replayed(known, fields, idempotency_key)
    try:
        with transaction.atomic():
            conversion = Conversion.objects.create(
                **fields, idempotency_key=idempotency_key, created_by=_actor(user)
            )
    except IntegrityError:  # the same key recorded by a concurrent request meanwhile
        known = Conversion.objects.filter(idempotency_key=idempotency_key).first()
        if known is None:
            raise
        return _replayed(known, fields, idempotency_key)
    return ConversionRecorded(conversion, created=True)


def _replayed(known: Conversion, fields: dict[str, Any], key: str) -> ConversionRecorded:
    if any(getattr(known, name) != value for name, value in fields.items()):
        raise CampaignConflict(
            f"The idempotency key “{key}” was used for conversion {known.pk}, with other "
            "values; use a new key for a new conversion."
        )
    return ConversionRecorded(known, created=False)


def _actor(user: Any) -> Any:
    return user if getattr(user, "pk", None) is not None else None


@dataclass(frozen=True)
class ConversionCount:
    converted: int
    value: Decimal


def campaign_conversions(*, campaign: Campaign) -> dict[str, dict[Any, ConversionCount]]:
    """The report's conversions of a campaign: ``{"by_channel": {channel: …},
    "by_version": {version number: …}}``, each the deliveries that converted (as the
    report counts every outcome: a rate over the deliveries sent) and the total value of
    their conversions (one query)."""
    rows = (
        # A held-out profile's conversions are the experiment's (its holdout), not a
        # channel's: the channel sent it nothing.
        Conversion.objects.filter(campaign=campaign)
        .exclude(delivery__status=DeliveryStatus.SKIPPED)
        .values("delivery__action__channel", "delivery__version__number")
        .annotate(converted=Count("delivery_id", distinct=True), total=Sum("value"))
        .order_by()
    )
    by_channel: dict[Any, list[Any]] = defaultdict(lambda: [0, Decimal(0)])
    by_version: dict[Any, list[Any]] = defaultdict(lambda: [0, Decimal(0)])
    for row in rows:
        for table, key in (
            (by_channel, row["delivery__action__channel"]),
            (by_version, row["delivery__version__number"]),
        ):
            table[key][0] += row["converted"]
            table[key][1] += row["total"] or Decimal(0)
    return {
        "by_channel": {k: ConversionCount(*v) for k, v in by_channel.items()},
        "by_version": {k: ConversionCount(*v) for k, v in by_version.items()},
    }
