"""Test, then send the winner: the test share of the audience gets the variants first, the
rest waits (pending, due when the test ends), the scheduler's tick decides the winner once
the time is up, and the rest then gets the winner's content."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterator

import pytest
from django.core.exceptions import ValidationError
from django.test import override_settings

from campaigns import delivery
from campaigns.choices import CampaignKind, DeliveryReason, DeliveryStatus, ExecutionStatus
from campaigns.experiments import experiment_decide, experiments_decide_due
from campaigns.models import Campaign, Delivery, ExperimentWinner
from devtools.sinks import RunningSinks, running_sinks
from tests.campaigns.delivery_support import plan, send_all, time_passes
from tests.campaigns.factories import email_action, make_campaign, make_live_campaign
from tests.campaigns.test_experiments import audience, groups, opened, segment_of

pytestmark = pytest.mark.django_db

SECOND = dt.timedelta(seconds=1)


@pytest.fixture
def sinks() -> Iterator[RunningSinks]:
    with running_sinks() as sink, override_settings(**sink.provider_settings()):
        yield sink


def a_test_then_winner(prefix: str, size: int) -> Campaign:
    audience(prefix, size)
    return make_live_campaign(
        segment=segment_of(prefix),
        holdout_share=10,
        test_share=40,
        winner_after=SECOND,
        winner_metric="opened",
        actions=[
            email_action(
                subject="Subject A",
                body="A",
                variants=[{"share": 50, "subject": "Subject B", "body": "B"}],
            )
        ],
    )


def subjects(sinks: RunningSinks) -> Counter[str]:
    return Counter(m["headers"]["Subject"] for m in sinks.received("email"))


def test_the_rest_waits_for_the_winner_then_gets_it(sinks):
    campaign = a_test_then_winner("ttw-", 300)
    execution = plan(campaign)
    send_all(execution)
    assigned = groups(campaign)
    counts = Counter(assigned.values())
    assert set(counts) == {"holdout", "A", "B", "rest"}
    # 40 % of the 90 % not held back are tested: within 5 standard deviations.
    tested = counts["A"] + counts["B"]
    assert abs(tested - 300 * 0.9 * 0.4) < 5 * (300 * 0.36 * 0.64) ** 0.5

    # The test group got its variants; the rest waits, due when the test ends.
    assert subjects(sinks) == {"Subject A": counts["A"], "Subject B": counts["B"]}
    rest = [p for p, g in assigned.items() if g == "rest"]
    waiting = Delivery.objects.filter(execution=execution, profile_id__in=rest)
    assert {(r.status, r.reason) for r in waiting} == {
        (DeliveryStatus.PENDING, DeliveryReason.WINNER_WAIT)
    }
    assert {r.next_attempt_at for r in waiting} == {execution.started_at + SECOND}

    # B is opened far more often than A.
    b = [p for p, g in assigned.items() if g == "B"]
    a = [p for p, g in assigned.items() if g == "A"]
    opened(campaign, b[: len(b) * 3 // 4] + a[:2])

    # The tick decides nothing before the time is up, then B, once.
    assert experiments_decide_due(now=execution.started_at) == []
    assert experiments_decide_due(now=execution.started_at + SECOND) == [campaign.pk]
    assert experiments_decide_due(now=execution.started_at + 2 * SECOND) == []
    winner = ExperimentWinner.objects.get(campaign=campaign)
    assert (winner.group, winner.metric, winner.significant) == ("B", "opened", True)

    # The rest's rows fall due and get the winner's content; the campaign completes.
    time_passes(execution, 2)
    send_all(execution)
    delivery.execution_complete_if_done(execution_id=execution.pk)
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.COMPLETED
    assert subjects(sinks) == {"Subject A": counts["A"], "Subject B": counts["B"] + len(rest)}
    assert not waiting.exclude(status=DeliveryStatus.SENT).exists()


def test_without_a_significant_difference_the_best_observed_rate_wins_else_a(sinks):
    campaign = a_test_then_winner("tie-", 60)
    execution = plan(campaign)
    send_all(execution)
    # Nothing measured: a tie at 0 %, which goes to the earlier letter.
    winner = experiment_decide(campaign_id=campaign.pk)
    assert (winner.group, winner.significant) == ("A", False)
    # Decided once: later opens change nothing.
    b = [p for p, g in groups(campaign).items() if g == "B"]
    opened(campaign, b[:1])
    assert experiment_decide(campaign_id=campaign.pk).group == "A"
    assert execution.pk


def test_the_settings_are_refused_at_the_services():
    with pytest.raises(ValidationError) as refused:
        make_campaign(test_share=30)
    assert "winner_after" in refused.value.message_dict
    with pytest.raises(ValidationError) as refused:
        make_campaign(test_share=100, winner_after=SECOND)
    assert "test_share" in refused.value.message_dict
    with pytest.raises(ValidationError) as refused:
        make_campaign(test_share=30, winner_after=dt.timedelta(days=31))
    assert "at most 30 days" in refused.value.message_dict["winner_after"][0]
    with pytest.raises(ValidationError) as refused:
        make_campaign(kind=CampaignKind.RECURRING, test_share=30, winner_after=SECOND)
    assert refused.value.message_dict["test_share"] == [
        "Only a one-shot campaign can test, then send the winner."
    ]


# --- the doors ------------------------------------------------------------------------------


def test_the_doors_take_and_show_the_test_and_refuse_it_on_the_field(api_client, admin_client):
    from django.core.management import call_command

    from tests.campaigns.doors import ADD, add_data, create_payload, url
    from tests.campaigns.test_experiment_doors import admin_rows

    payload = create_payload(test_share=30, winner_after="04:00:00", winner_metric="clicked")
    payload["actions"][0]["variants"] = [{"share": 50, "body": "B"}]
    created = api_client.post("/api/campaigns/", payload, format="json")
    assert created.status_code == 201, created.content
    draft = api_client.get(url(created.json()["id"])).json()["draft_version"]
    assert (draft["test_share"], draft["winner_after"], draft["winner_metric"]) == (
        30,
        "04:00:00",
        "clicked",
    )
    from io import StringIO

    out = StringIO()
    call_command("campaign", "show", str(created.json()["id"]), stdout=out)
    assert "30 % get the variants first; after 4:00:00 the rest gets the winner on clicks" in (
        out.getvalue()
    )

    refused = api_client.post(
        "/api/campaigns/", create_payload(name="Other", test_share=30), format="json"
    )
    assert refused.status_code == 400, refused.content
    assert "winner_after" in refused.json()

    from tests.segments.factories import SegmentFactory

    data = add_data(
        SegmentFactory(), admin_rows("share: 50\nB"), name="Admin test", test_share="30"
    )
    response = admin_client.post(ADD, data)
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "at most 30 days" in errors["winner_after"][0]
    data["winner_after"] = "01:00:00"
    assert admin_client.post(ADD, data).status_code == 302
    version = Campaign.objects.get(name="Admin test").draft_version
    assert version is not None
    assert (version.test_share, version.winner_after) == (30, dt.timedelta(hours=1))


# --- through a real worker and its scheduler -----------------------------------------------


@pytest.mark.worker
@pytest.mark.timeout(180)
def test_a_worker_and_its_tick_send_the_winner_to_the_rest(celery_process_factory):
    """The test moves the clock of the test (the execution's start and the rest's due
    times) instead of waiting an hour; the beat's tick decides and the worker sends."""
    from django.db.models import F

    from campaigns.choices import CampaignStatus
    from campaigns.models import Execution
    from tests.campaigns.delivery_support import sinks_and_worker, wait_for_status
    from tests.campaigns.factories import activate_acknowledged
    from tests.conftest import wait_until

    env = {"SALVO_DELIVERY_WAIT_MAX_S": "1"}
    with sinks_and_worker(celery_process_factory, env=env, beat=True) as (sink, _, _):
        audience("wkr-", 120)
        campaign = make_campaign(
            segment=segment_of("wkr-"),
            holdout_share=10,
            test_share=50,
            winner_after=dt.timedelta(hours=1),
            actions=[
                email_action(
                    subject="Subject A",
                    body="A",
                    variants=[{"share": 50, "subject": "Subject B", "body": "B"}],
                )
            ],
        )
        activate_acknowledged(campaign=campaign)
        wait_until(
            lambda: Execution.objects.filter(campaign=campaign, planning_done=True).exists(),
            timeout=60,
            message="the audience was never planned",
        )
        execution = Execution.objects.get(campaign=campaign)
        assigned = groups(campaign)
        counts = Counter(assigned.values())
        tested = counts["A"] + counts["B"]
        sink.wait_for(tested, channel="email", timeout=60)
        b = [p for p, g in assigned.items() if g == "B"]
        opened(campaign, b)  # every B opened: B wins, whatever A did

        # The test's hour is up: move its start and the rest's due time an hour back.
        hour = dt.timedelta(hours=1)
        Execution.objects.filter(pk=execution.pk).update(started_at=F("started_at") - hour)
        Delivery.objects.filter(
            execution=execution, reason=DeliveryReason.WINNER_WAIT, status="pending"
        ).update(next_attempt_at=F("next_attempt_at") - hour)

        wait_for_status(campaign, CampaignStatus.COMPLETED)
        winner = ExperimentWinner.objects.get(campaign=campaign)
        assert winner.group == "B"
        received = Counter(m["headers"]["Subject"] for m in sink.received("email"))
        assert received == {"Subject A": counts["A"], "Subject B": counts["B"] + counts["rest"]}
