"""Stop and edits while a campaign sends, through real worker processes.

A chunk that waits for a slow provider or renders a slow template must not hold up the
rest of the application. Stop and an edit of another campaign answer while the campaign is
sending, and once the stop has committed no new chunk starts: only chunks already on their
way to the provider when Stop was pressed (at most one per sending thread) still arrive.

On SQLite no transaction is open while a chunk renders or waits for the provider, so Stop
waits for neither. On PostgreSQL a chunk holds the campaign's send lock during its provider
call (never while rendering): Stop waits for the calls in flight, which the provider
timeout bounds, and no chunk starts behind it.
"""

import re
import time
from typing import Any

import factory
import pytest
from django.conf import settings
from django.db import connection

from campaigns import selectors
from campaigns.choices import CampaignStatus, ExecutionStatus
from campaigns.models import Campaign, Execution
from devtools.sinks import RunningSinks
from tests.campaigns.delivery_support import (
    campaign_status,
    received_delivery_ids,
    sent_delivery_ids,
    sinks_and_worker,
)
from tests.campaigns.factories import activate_acknowledged, make_campaign, sms_action
from tests.conftest import wait_until
from tests.segments.factories import ProfileFactory

pytestmark = [pytest.mark.worker, pytest.mark.timeout(180)]

Status = CampaignStatus
# Two nested loops over the profile's `n` list: about a third of a second per recipient
# with 900 items on this machine, nothing with none.
SLOW_BODY = "{% for a in profile.n %}{% for b in profile.n %}{% endfor %}{% endfor %}Hi"
SLOW_PHONE = "+33799999"


def on_sqlite() -> bool:
    return connection.vendor == "sqlite"


def sending_threads(processes: int) -> int:
    """How many chunks a worker with `processes` processes can have under way at once."""
    return processes * (1 if on_sqlite() else settings.SALVO_DELIVERY_SEND_THREADS)


def profiles(count: int, **fields: Any) -> list[Any]:
    return ProfileFactory.create_batch(count, **fields)


def phones_starting(prefix: str) -> Any:
    return factory.Sequence(lambda n: f"{prefix}{n:04d}")


def stop_and_edit(api_client: Any, campaign: Campaign, sink: RunningSinks, *, after: int) -> dict:
    """Once `after` messages reached the provider, stop the campaign and edit another one
    through the API. Returns what the sink had seen when Stop was pressed and answered."""
    other = make_campaign(name="Edited while another campaign sends")
    wait_until(lambda: len(sink.attempts()) >= after, timeout=60, message="the send never started")
    pressed_at = time.time()
    stopped = api_client.post(
        f"/api/campaigns/{campaign.pk}/stop/", {"reason": "Wrong audience."}, format="json"
    )
    seen_at_answer = [r["to"] for r in sink.attempts()]
    edited = api_client.patch(
        f"/api/campaigns/{other.pk}/", {"description": "Changed meanwhile."}, format="json"
    )

    assert stopped.status_code == 200, stopped.content
    assert stopped.json()["status"] == Status.STOPPED
    assert edited.status_code == 200, edited.content
    other.refresh_from_db()
    assert other.description == "Changed meanwhile."
    return {"pressed_at": pressed_at, "seen_at_answer": seen_at_answer}


def wait_for_halt_and_check(campaign: Campaign, sink: RunningSinks, *, audience: int) -> None:
    """The worker finishes the chunks it had started, records them and halts the run; what
    reached the provider is exactly what the rows say was sent, each once."""
    execution = Execution.objects.get(campaign=campaign)
    wait_until(
        lambda: Execution.objects.get(pk=execution.pk).status == ExecutionStatus.HALTED,
        timeout=60,
        message="the execution never halted",
    )
    assert len(sink.attempts()) < audience
    assert sink.duplicates() == 0
    assert received_delivery_ids(sink) == sent_delivery_ids(campaign)
    report = selectors.campaign_report(campaign=campaign)["by_status"]
    assert report["sent"] == len(sink.received())
    assert campaign_status(campaign) == Status.STOPPED


def test_stop_does_not_wait_for_a_slow_provider_beyond_its_timeout(
    celery_process_factory, api_client
):
    """One worker process: chunk 1 goes through, chunk 2 waits 12 s at the provider."""
    profiles(5)
    slow = profiles(5, phone=phones_starting(SLOW_PHONE))
    profiles(20)
    # On SQLite the provider may take its time: Stop must not wait for it at all. On
    # PostgreSQL the call holds Stop up to the provider timeout, 4 s here.
    timeout = "30" if on_sqlite() else "4"
    with sinks_and_worker(
        celery_process_factory,
        concurrency=1,
        env={"SALVO_PROVIDER_TIMEOUT_S": timeout},
        slow=re.escape(SLOW_PHONE),
        slow_s=12,
    ) as (sink, _, _):
        campaign = make_campaign(actions=[sms_action()])
        activate_acknowledged(campaign=campaign)

        seen = stop_and_edit(api_client, campaign, sink, after=5)

        # Stop answered while the slow chunk was still at the provider (its attempts are
        # written when the provider answers, 12 s after the call began).
        assert not {p.phone for p in slow} & set(seen["seen_at_answer"])
        wait_for_halt_and_check(campaign, sink, audience=30)
        after_press = [r for r in sink.attempts() if r["at"] > seen["pressed_at"]]
        if on_sqlite():
            # The chunk in flight arrives and is recorded as sent; nothing else.
            assert sorted(r["to"] for r in after_press) == sorted(p.phone for p in slow)
        else:
            # The call timed out before Stop committed: the provider may still deliver it,
            # which its idempotency key lets it drop if it is ever sent again.
            assert {r["to"] for r in after_press} <= {p.phone for p in slow}


def test_stop_does_not_wait_for_a_slow_template_and_the_chunk_it_renders_is_not_sent(
    celery_process_factory, api_client
):
    """One worker process, chunks of 20: chunk 1 renders at once, chunk 2 takes seconds."""
    profiles(20, attributes={"n": []})
    slow = profiles(20, attributes={"n": list(range(900))})
    profiles(20, attributes={"n": []})
    with sinks_and_worker(
        celery_process_factory,
        concurrency=1,
        env={
            "SALVO_DELIVERY_BATCH_SIZE": "40",
            "SALVO_DELIVERY_SEND_CHUNK": "20",
            # Slow but within its budget: each message renders in full and would be sent.
            "SALVO_RENDER_TIMEOUT_MS": "10000",
        },
    ) as (sink, _, _):
        campaign = make_campaign(actions=[sms_action(body=SLOW_BODY)])
        activate_acknowledged(campaign=campaign)

        stop_and_edit(api_client, campaign, sink, after=20)

        wait_for_halt_and_check(campaign, sink, audience=60)
        # The chunk that was rendering when Stop committed never reached the provider.
        assert not {p.phone for p in slow} & {r["to"] for r in sink.attempts()}
        assert len(sink.received()) == 20


@pytest.mark.postgres
def test_stop_is_not_starved_by_chunks_that_keep_starting(celery_process_factory, api_client):
    """Two processes of two sending threads keep four chunks at the provider at every
    moment: Stop still gets through as soon as those four are done."""
    profiles(200)
    with sinks_and_worker(celery_process_factory, concurrency=2, slow=r"\+33", slow_s=1) as (
        sink,
        _,
        _,
    ):
        campaign = make_campaign(actions=[sms_action()])
        activate_acknowledged(campaign=campaign)

        seen = stop_and_edit(api_client, campaign, sink, after=20)

        wait_for_halt_and_check(campaign, sink, audience=200)
        after_press = [r for r in sink.attempts() if r["at"] > seen["pressed_at"]]
        assert len(after_press) <= sending_threads(2) * 5, len(after_press)
