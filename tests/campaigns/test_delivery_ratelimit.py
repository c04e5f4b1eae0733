"""A preset's rate limit held by two real worker processes together, measured at the sink.

Runs once per bucket backend (SALVO_RATELIMIT_BACKEND given to the workers explicitly) on
whichever profile the environment selects: SQLite + the embedded broker, or PostgreSQL +
Redis, so that the PostgreSQL row-lock bucket (the choice beside an amqp:// broker) runs too.
"""

from __future__ import annotations

import pytest

from campaigns import selectors
from campaigns.choices import CampaignStatus as Status
from devtools.sinks import running_sinks
from tests.campaigns.delivery_support import SMALL_BATCHES, expected_report, wait_for_status
from tests.campaigns.factories import activate_acknowledged, make_campaign, push_action, sms_action
from tests.channels.factories import MessagePresetFactory
from tests.segments.factories import ProfileFactory

pytestmark = [pytest.mark.worker, pytest.mark.timeout(240)]

RATE_PER_S = 10
# The bucket lets one second's worth go at once after a quiet spell.
BURST = RATE_PER_S
AUDIENCE = 60
# Above the limit by at most this fraction. The bucket allows N ≤ BURST + RATE × (time
# between the first and the last permission); the sink stamps each message when it arrives,
# later than its permission, so a first message delayed by D seconds shortens the measured
# span by D. The span is at least (AUDIENCE − BURST) / RATE = 5 s here: 20% covers a first
# message delayed by up to a second. Two workers each holding their own bucket would show
# twice the rate.
RATE_TOLERANCE = 0.2

DELIVERY_ENV = {
    **SMALL_BATCHES,
    # Two messages per reservation: the sink sees the pace, not one burst per second.
    "SALVO_DELIVERY_SEND_CHUNK": "2",
    "SALVO_DELIVERY_SENDING_TIMEOUT_S": "2",
}


@pytest.mark.parametrize("bucket_backend", ["database", "redis"])
def test_two_workers_keep_a_presets_rate_between_them_and_push_goes_out_beside(
    celery_process_factory, request, bucket_backend
):
    bucket_env = {"SALVO_RATELIMIT_BACKEND": bucket_backend}
    if bucket_backend == "redis":
        bucket_env["SALVO_RATELIMIT_REDIS_URL"] = request.getfixturevalue("redis_url")
    profiles = ProfileFactory.create_batch(AUDIENCE)
    with running_sinks() as sink:
        env = {**sink.provider_env(), **DELIVERY_ENV, **bucket_env}
        # One process per worker: each holds one batch at a time, so the two queued batches
        # go to both workers and the bucket is shared across processes. Each signs its SMS
        # requests with its own API key: the sink shows who sent.
        for name in ("worker-a", "worker-b"):
            celery_process_factory(
                "worker", "--concurrency", "1", extra_env={**env, "SALVO_SMS_API_KEY": name}
            )
        limited = MessagePresetFactory(channel="sms", rate_limit_per_second=RATE_PER_S)
        app = MessagePresetFactory(channel="push", push_app_id="com.example.shop")
        campaign = make_campaign(
            actions=[
                sms_action(preset=limited, body="Sale for {{ profile.external_id }}"),
                push_action(preset=app, subject="Sale", body="Now on"),
            ]
        )
        activate_acknowledged(campaign=campaign)

        wait_for_status(campaign, Status.COMPLETED, timeout=180)
        texts, pushes = sink.received("sms"), sink.received("push")

    assert sorted(r["to"] for r in texts) == sorted(p.phone for p in profiles)
    assert sorted((r["to"], r["json"]["text"]) for r in texts) == sorted(
        (p.phone, f"Sale for {p.external_id}") for p in profiles
    )
    assert sorted(r["json"]["token"] for r in pushes) == sorted(p.push_token for p in profiles)
    assert {(r["json"]["app_id"], r["json"]["title"], r["json"]["body"]) for r in pushes} == {
        ("com.example.shop", "Sale", "Now on")
    }
    sent_by = {r["headers"]["authorization"] for r in texts}
    assert sent_by == {"Bearer worker-a", "Bearer worker-b"}, "one worker sent nothing"

    arrivals = sorted(r["at"] for r in texts)
    span = arrivals[-1] - arrivals[0]
    observed = (len(arrivals) - BURST) / span
    assert observed <= RATE_PER_S * (1 + RATE_TOLERANCE), (observed, span)

    assert selectors.campaign_delivery_counts(campaign=campaign) == expected_report(
        push={"sent": profiles}, sms={"sent": profiles}
    )
