"""What the delivery tests share: small-batch engine settings, sinks with real worker
processes, waiting on a campaign's observable state, the engine's steps run in the test
process, and the campaign report a run's outcomes add up to."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import factory
from django.db.models import F

from campaigns import delivery
from campaigns.models import Campaign, ChannelAction, Delivery, Execution
from devtools.sinks import RunningSinks, running_sinks
from segments.models import Profile, Segment
from tests.conftest import CeleryProcess, wait_until
from tests.segments.factories import ProfileFactory, SegmentFactory

# Small batches and chunks, so that a few dozen profiles span several of each. The lease a
# chunk holds its rows by (SQLite) outlasts any slow provider or template of these tests.
SMALL_BATCHES = {
    "SALVO_DELIVERY_BATCH_SIZE": "10",
    "SALVO_DELIVERY_WINDOW": "2",
    "SALVO_DELIVERY_PLAN_CHUNK": "25",
    "SALVO_DELIVERY_SEND_CHUNK": "5",
    "SALVO_DELIVERY_RETRY_BASE_S": "0.3",
    "SALVO_DELIVERY_SENDING_TIMEOUT_S": "60",
}


@contextmanager
def sinks_and_worker(
    factory: Callable[..., CeleryProcess],
    *,
    env: dict[str, str] | None = None,
    concurrency: int = 2,
    beat: bool = False,
    **rules: Any,
) -> Iterator[tuple[RunningSinks, CeleryProcess, dict[str, str]]]:
    """Sinks with the given failure rules, and one worker (`concurrency` processes) sending
    to them with SMALL_BATCHES and `env`; with `beat`, a scheduler ticking every 0.5 s."""
    with running_sinks(**rules) as sink:
        env = {**sink.provider_env(), **SMALL_BATCHES, **(env or {})}
        worker = factory("worker", "--concurrency", str(concurrency), extra_env=env)
        if beat:
            factory("beat", extra_env={**env, "SALVO_SCHEDULER_INTERVAL_S": "0.5"})
        yield sink, worker, env


def campaign_status(campaign: Campaign) -> str:
    return Campaign.objects.values_list("status", flat=True).get(pk=campaign.pk)


def wait_for_status(campaign: Campaign, status: str, timeout: float = 90) -> None:
    wait_until(
        lambda: campaign_status(campaign) == status,
        timeout=timeout,
        interval=0.2,
        message=f"campaign never reached {status}",
    )


def sent_delivery_ids(campaign: Campaign, channel: str | None = None) -> list[str]:
    """The campaign's deliveries (on `channel`, or every channel) recorded as sent, as the
    sinks write delivery ids."""
    rows = Delivery.objects.filter(execution__campaign=campaign, status="sent")
    if channel is not None:
        rows = rows.filter(action__channel=channel)
    return sorted(str(pk) for pk in rows.values_list("pk", flat=True))


def received_delivery_ids(sink: RunningSinks, channel: str | None = None) -> list[str]:
    """Every accepted message's delivery id, repeats included."""
    return sorted(str(r["delivery_id"]) for r in sink.received(channel))


def make_profile(**fields: Any) -> Profile:
    return ProfileFactory(**fields)  # type: ignore[return-value]


def make_segment(**fields: Any) -> Segment:
    return SegmentFactory(**fields)  # type: ignore[return-value]


# --- the engine's steps, run in the test process --------------------------------------


def plan(campaign: Campaign) -> Execution:
    """Plan the whole audience of the campaign's execution, as the planning task would."""
    execution = Execution.objects.get(campaign=campaign)
    while delivery.execution_plan_step(execution_id=execution.pk):
        pass
    execution.refresh_from_db()
    return execution


def planned_audience(prefix: str, size: int) -> Execution:
    """A Live email + SMS campaign to `size` new profiles whose external ids start with
    `prefix`, its execution planned and nothing sent."""
    from tests.campaigns.factories import email_action, make_live_campaign, sms_action

    batch = ProfileFactory.build_batch(
        size, external_id=factory.Sequence(f"{prefix}{{:05d}}".format)
    )
    Profile.objects.bulk_create(batch)
    rule = {"field": "external_id", "op": "startswith", "value": prefix}
    campaign = make_live_campaign(
        segment=SegmentFactory(rules={"all": [rule]}), actions=[email_action(), sms_action()]
    )
    return plan(campaign)


def live_and_partly_sent(prefix: str, size: int, *, sent: int) -> Campaign:
    """A Live email + SMS campaign to `size` new profiles, planned, with the first `sent`
    of them sent on each channel."""
    execution = planned_audience(prefix, size)
    campaign = execution.campaign
    audience = Profile.objects.filter(external_id__startswith=prefix).order_by("pk")
    first = list(audience.values_list("pk", flat=True)[:sent])
    for action in execution.version.actions.all():
        delivery.batch_send(
            execution_id=execution.pk,
            action_id=action.pk,
            first_profile_id=first[0],
            last_profile_id=first[-1],
        )
    return campaign


def send_all(execution: Execution) -> list[float | None]:
    """Run one copy of a batch over the whole audience per action, as a worker would;
    what each returned (seconds until it must run again, or None)."""
    return [
        delivery.batch_send(
            execution_id=execution.pk,
            action_id=action.pk,
            first_profile_id=0,
            last_profile_id=execution.audience_max_profile_id,
        )
        for action in ChannelAction.objects.filter(version_id=execution.version_id)
    ]


def drive(campaign: Campaign) -> Execution:
    """What the workers do, in this process: plan every chunk, send every action's batch,
    and complete the execution if nothing is left to send."""
    execution = plan(campaign)
    send_all(execution)
    delivery.execution_complete_if_done(execution_id=execution.pk)
    execution.refresh_from_db()
    return execution


def time_passes(execution: Execution, seconds: float) -> None:
    """Everything of the execution waiting for a retry is `seconds` closer to it."""
    Delivery.objects.filter(execution=execution, next_attempt_at__isnull=False).update(
        next_attempt_at=F("next_attempt_at") - dt.timedelta(seconds=seconds)
    )


# --- the campaign report ----------------------------------------------------------------

# The delivery statuses a campaign report counts, as the API documents its `by_status`.
REPORT_STATUSES = ("pending", "sent", "failed", "skipped")


def expected_report(**channels: Mapping[str, Sequence[Profile]]) -> dict[str, Any]:
    """The campaign report of a run in which, on each channel named, the profiles listed
    under a status are the ones whose delivery ended in it (a status not listed: nobody):
    `expected_report(sms={"sent": reachable, "skipped": no_phone + opted_out})`.

    Each channel counts one delivery per profile listed; the campaign's counts add the
    channels up. A profile listed under two statuses of one channel is a mistake of the
    test, refused here."""
    by_channel: dict[str, dict[str, int]] = {}
    for channel, outcomes in channels.items():
        unknown = set(outcomes) - set(REPORT_STATUSES)
        assert not unknown, f"not a status of the report: {sorted(unknown)}"
        listed = [profile.pk for group in outcomes.values() for profile in group]
        assert len(listed) == len(set(listed)), f"a profile stands twice on {channel}"
        counts = {status: len(outcomes.get(status, ())) for status in REPORT_STATUSES}
        by_channel[channel] = {"total": len(listed), **counts}
    by_status = {s: sum(counts[s] for counts in by_channel.values()) for s in REPORT_STATUSES}
    return {"total": sum(by_status.values()), "by_status": by_status, "by_channel": by_channel}
