"""Campaigns are made through the services, as every door makes them."""

from typing import Any

from campaigns import services
from campaigns.models import Campaign
from campaigns.review import review_warning_codes
from campaigns.selectors import Actor
from tests.channels.factories import MessagePresetFactory
from tests.segments.factories import ProfileFactory, SegmentFactory

_counter = {"n": 0}


def channel_action(channel: str, overrides: dict[str, Any], **defaults: Any) -> dict[str, Any]:
    """A channel action's data: `defaults` under `overrides`, with a preset of the channel
    unless the overrides name one."""
    preset = overrides.pop("preset", None) or MessagePresetFactory(channel=channel)
    return {"channel": channel, "preset": preset, **defaults, **overrides}


def email_action(**overrides: Any) -> dict[str, Any]:
    return channel_action(
        "email", overrides, subject="Hello", body="Hello {{ profile.external_id }}"
    )


def sms_action(**overrides: Any) -> dict[str, Any]:
    return channel_action("sms", overrides, body="Hi from Salvo")


def push_action(**overrides: Any) -> dict[str, Any]:
    return channel_action("push", overrides, subject="Hello", body="Hi from Salvo")


def webhook_action(**overrides: Any) -> dict[str, Any]:
    return channel_action("webhook", overrides, body="{{ profile.external_id }}")


def make_campaign(**fields: Any) -> Campaign:
    """A Draft campaign ready to activate unless fields say otherwise."""
    _counter["n"] += 1
    fields.setdefault("name", f"Campaign {_counter['n']}")
    if "segment" not in fields:
        fields["segment"] = SegmentFactory()
    if "actions" not in fields:
        fields["actions"] = [email_action(), sms_action()]
    return services.campaign_create(user=None, **fields)


def campaign_reaching_nobody(*, name: str) -> Campaign:
    """A Draft SMS campaign whose segment matches none of the profiles stored (one in
    France, the segment asks for Japan): its review warns `empty_audience`, nothing else."""
    ProfileFactory.create(external_id="ann-1", attributes={"country": "FR"})
    nobody = SegmentFactory.create(
        rules={"all": [{"field": "attributes.country", "op": "eq", "value": "JP"}]}
    )
    return make_campaign(name=name, segment=nobody, actions=[sms_action(body="Hi")])


def review_warnings(campaign: Campaign) -> list[str]:
    """The codes of the warnings the campaign's review lists now: what a user who read it
    acknowledges (``{"acknowledge": …}`` at the API, ``--yes`` at the command)."""
    return review_warning_codes(campaign=campaign)


def activate_acknowledged(*, campaign: Campaign, user: Actor | None = None) -> Campaign:
    """Activate as a user who read the review: acknowledging every warning it lists (an
    empty test segment, no unsubscribe link without SALVO_PUBLIC_URL), and no error, which
    still refuses."""
    return services.campaign_activate(
        campaign=campaign, user=user, acknowledge=review_warnings(campaign)
    )


def make_live_campaign(**fields: Any) -> Campaign:
    campaign = make_campaign(**fields)
    activate_acknowledged(campaign=campaign)
    return services.campaign_activation_complete(campaign_id=campaign.pk)


def make_scheduled_campaign(**fields: Any) -> Campaign:
    import datetime as dt

    from django.utils import timezone

    fields.setdefault("start_at", timezone.now() + dt.timedelta(days=1))
    return make_live_campaign(**fields)


def make_campaign_in_status(status: str, *, with_draft: bool = False, **fields: Any) -> Campaign:
    """A campaign brought to `status` through the services, as users would; with_draft
    opens a draft version beside the running one."""
    from campaigns.choices import CampaignStatus as Status

    if status == Status.DRAFT:
        return make_campaign(**fields)
    if status == Status.ACTIVATING:
        return activate_acknowledged(campaign=make_campaign(**fields))
    if status == Status.SCHEDULED:
        campaign = make_scheduled_campaign(**fields)
    else:
        campaign = make_live_campaign(**fields)
    if status == Status.STOPPED:
        campaign = services.campaign_stop(campaign=campaign, user=None)
    if status in (Status.COMPLETED, Status.ARCHIVED):
        campaign = services.campaign_complete(campaign=campaign)
    if status == Status.ARCHIVED:
        campaign = services.campaign_archive(campaign=campaign, user=None)
    if with_draft:
        services.campaign_modify(campaign=campaign, user=None)
    return Campaign.objects.get(pk=campaign.pk)
