"""Real worker processes configured from the environment (``provider_env``) send through
Twilio and FCM to the sink; a number Twilio refuses, a token FCM no longer knows and a
number a status callback reports unreachable are all skipped by the next campaign."""

from __future__ import annotations

import secrets
from urllib.parse import urlencode, urlsplit

import pytest
from django.test import override_settings
from twilio.request_validator import RequestValidator

from campaigns.choices import CampaignStatus, DeliveryReason, DeliveryStatus
from campaigns.models import Campaign, Delivery
from devtools.sinks import twilio as twilio_sink
from tests.campaigns.delivery_support import make_profile, sinks_and_worker, wait_for_status
from tests.campaigns.factories import activate_acknowledged, make_campaign, push_action, sms_action
from tests.channels.factories import MessagePresetFactory

pytestmark = [pytest.mark.worker, pytest.mark.timeout(180)]

PUBLIC_URL = "https://salvo.example"
# The public URL puts signed links in mail: the worker needs a key of its own.
PUBLIC_ENV = {"SALVO_PUBLIC_URL": PUBLIC_URL, "SALVO_UNSUBSCRIBE_SECRET": secrets.token_hex(32)}

SENT = (DeliveryStatus.SENT, "")
REFUSED = (DeliveryStatus.FAILED, DeliveryReason.PROVIDER_REFUSED)
SUPPRESSED = (DeliveryStatus.SKIPPED, DeliveryReason.SUPPRESSED)


def run_campaign() -> Campaign:
    sms = MessagePresetFactory(
        channel="sms",
        backend="channels.providers.twilio.TwilioSmsBackend",
        sms_sender_id="+15005550006",
    )
    push = MessagePresetFactory(channel="push", backend="channels.providers.fcm.FcmPushBackend")
    campaign = make_campaign(actions=[sms_action(preset=sms), push_action(preset=push)])
    activate_acknowledged(campaign=campaign)
    wait_for_status(campaign, CampaignStatus.COMPLETED)
    return campaign


def outcomes(campaign: Campaign) -> dict[tuple[int, str], tuple[str, str]]:
    rows = Delivery.objects.filter(execution__campaign=campaign)
    return {(r.profile_id, r.action.channel): (r.status, r.reason) for r in rows}


def test_workers_send_through_twilio_and_fcm_and_skip_what_came_back_unreachable(
    celery_process_factory, client
):
    kept = make_profile()
    invalid = make_profile(phone="+15005550001", push_token="uninstalled-app-token")
    unreachable = make_profile()
    with sinks_and_worker(celery_process_factory, env=PUBLIC_ENV, reject="uninstalled") as (
        sink,
        _,
        _,
    ):
        first = run_campaign()
        assert outcomes(first) == {
            (kept.pk, "sms"): SENT,
            (kept.pk, "push"): SENT,
            (invalid.pk, "sms"): REFUSED,
            (invalid.pk, "push"): REFUSED,
            (unreachable.pk, "sms"): SENT,
            (unreachable.pk, "push"): SENT,
        }
        # Twilio reports later that the handset of `unreachable` is unknown.
        record = next(r for r in sink.received("sms") if r["to"] == unreachable.phone)
        url = record["form"]["StatusCallback"]
        params = {
            "MessageSid": record["message_id"],
            "MessageStatus": "undelivered",
            "ErrorCode": "30005",
            "To": unreachable.phone,
        }
        signature = RequestValidator(twilio_sink.AUTH_TOKEN).compute_signature(url, params)
        with override_settings(**sink.provider_settings(), SALVO_PUBLIC_URL=PUBLIC_URL):
            answer = client.post(
                f"{urlsplit(url).path}?{urlsplit(url).query}",
                urlencode(params),
                content_type="application/x-www-form-urlencoded",
                headers={"X-Twilio-Signature": signature},
            )
        assert answer.status_code == 204

        attempts = len(sink.attempts("sms")), len(sink.attempts("push"))
        second = run_campaign()

        assert outcomes(second) == {
            (kept.pk, "sms"): SENT,
            (kept.pk, "push"): SENT,
            (invalid.pk, "sms"): SUPPRESSED,
            (invalid.pk, "push"): SUPPRESSED,
            (unreachable.pk, "sms"): SUPPRESSED,
            (unreachable.pk, "push"): SENT,  # its phone is unknown, its device is not
        }
        assert [r["to"] for r in sink.attempts("sms")[attempts[0] :]] == [kept.phone]
        assert sorted(r["to"] for r in sink.attempts("push")[attempts[1] :]) == sorted(
            [kept.push_token, unreachable.push_token]
        )
        assert sink.duplicates() == 0
