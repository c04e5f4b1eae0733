"""What the delivery tests share: small-batch engine settings, sinks with real worker
processes, and waiting on a campaign's observable state."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from django.db.models import F

from campaigns import delivery
from campaigns.models import Campaign, ChannelAction, Delivery, Execution
from channels.sinks import RunningSinks, running_sinks
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


def sent_delivery_ids(campaign: Campaign) -> list[str]:
    """The campaign's deliveries recorded as sent, as the sinks write delivery ids."""
    rows = Delivery.objects.filter(execution__campaign=campaign, status="sent")
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


def time_passes(execution: Execution, seconds: float) -> None:
    """Everything of the execution waiting for a retry is `seconds` closer to it."""
    Delivery.objects.filter(execution=execution, next_attempt_at__isnull=False).update(
        next_attempt_at=F("next_attempt_at") - dt.timedelta(seconds=seconds)
    )
