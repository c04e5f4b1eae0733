"""Two schedulers' ticks starting the same occurrence at the same instant, on PostgreSQL
(on SQLite the IMMEDIATE write lock serialises whole transactions whatever the code does).

The test holds the campaign's row while both ticks start, so both read the occurrence as
due before either can lock it; the one that locks second must see that the first moved
``next_run_at`` on, and start nothing."""

from __future__ import annotations

import datetime as dt

import pytest

from campaigns.choices import CampaignKind
from campaigns.models import Execution
from campaigns.occurrences import occurrences_start_due
from tests.campaigns.factories import make_live_campaign, sms_action
from tests.campaigns.test_concurrency import Contender, race

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def test_two_ticks_start_one_occurrence_once():
    campaign = make_live_campaign(
        kind=CampaignKind.RECURRING,
        recurrence={"every": "day", "at": "09:00"},
        time_zone="UTC",
        actions=[sms_action()],
    )
    occurrence = campaign.next_run_at
    assert occurrence is not None
    due = occurrence + dt.timedelta(seconds=1)

    first = Contender("tick 1", lambda: occurrences_start_due(now=due))
    second = Contender("tick 2", lambda: occurrences_start_due(now=due))
    race(campaign, first, second)

    assert first.error is None
    assert second.error is None
    assert list(
        Execution.objects.filter(campaign=campaign).values_list("scheduled_for", flat=True)
    ) == [campaign.next_run_at]
