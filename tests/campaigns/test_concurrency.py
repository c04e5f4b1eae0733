"""Two different lifecycle operations on one campaign at the same instant, on PostgreSQL.

Each operation runs in its own thread with its own database connection, as two requests,
a request and a task, or two tasks would. The test holds the campaign's row while it lets
them go, one after the other, and releases it only once both are in flight (each either
waiting for a lock or already done): the held row is the barrier neither can pass alone.
Their order in the queue for the row is the test's choice, so each order has one precise
outcome: the operation that queued second sees what the first committed, never the row
both read before. Without the row lock in the services (`_lock`), the second acts on that
stale row: it is refused though the first made it allowed, is let through though the first
made it wrong, or ends in a database error.

On SQLite the IMMEDIATE write lock serialises whole transactions whatever the code does,
so these run on PostgreSQL only.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.utils import timezone
from django_fsm import TransitionNotAllowed

from campaigns import services, tasks
from campaigns.choices import CampaignStatus as Status
from campaigns.choices import ReviewCode
from campaigns.exceptions import CampaignConflict
from campaigns.models import Campaign, CampaignVersion, Execution
from tests.campaigns.factories import (
    make_campaign,
    make_campaign_in_status,
    make_live_campaign,
    make_scheduled_campaign,
)
from tests.conftest import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

JOIN_TIMEOUT_S = 30.0
# The log of a campaign created and activated to its start.
WENT_LIVE = ["create", "activate", "activation_succeed"]


@dataclass
class Contender:
    """One operation racing in its own thread and database connection."""

    name: str
    operation: Callable[[], object]
    error: BaseException | None = None
    backend_pid: int | None = None
    thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, name=f"race-{self.name}")

    def _run(self) -> None:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                self.backend_pid = cursor.fetchone()[0]
            self.operation()
        except BaseException as error:  # the test reads it
            self.error = error
        finally:
            connection.close()

    def in_flight(self) -> bool:
        """Done, or waiting for a lock another transaction holds."""
        if not self.thread.is_alive():
            return True
        if self.backend_pid is None:
            return False
        with connection.cursor() as cursor:
            cursor.execute("SELECT cardinality(pg_blocking_pids(%s)) > 0", [self.backend_pid])
            return bool(cursor.fetchone()[0])


def race(campaign: Campaign, first: Contender, second: Contender) -> None:
    """Run both operations at once on the campaign, `first` ahead in the queue for its row."""
    try:
        with transaction.atomic():
            Campaign.objects.select_for_update().get(pk=campaign.pk)
            for contender in (first, second):
                contender.thread.start()
                wait_until(
                    contender.in_flight,
                    interval=0.02,
                    message=f"{contender.name} never reached the campaign's row",
                )
    finally:
        for contender in (first, second):
            if contender.thread.ident is not None:
                contender.thread.join(JOIN_TIMEOUT_S)
    assert not first.thread.is_alive(), f"{first.name} still running"
    assert not second.thread.is_alive(), f"{second.name} still running"


def state(campaign: Campaign) -> dict[str, Any]:
    """What a user can see of the campaign: its row, its versions and its log."""
    row = Campaign.objects.select_related("live_version", "draft_version").get(pk=campaign.pk)
    return {
        "status": row.status,
        "live": row.live_version.number if row.live_version else None,
        "draft": row.draft_version.number if row.draft_version else None,
        "versions": sorted(
            CampaignVersion.objects.filter(campaign=campaign).values_list("number", flat=True)
        ),
        "log": list(row.transitions.order_by("at", "id").values_list("name", flat=True)),
    }


def stop(campaign: Campaign) -> Contender:
    return Contender("stop", lambda: services.campaign_stop(campaign=campaign, user=None))


def activate(campaign: Campaign) -> Contender:
    # The codes are named up front: a contender racing a "modify" cannot read the review of
    # a draft that does not exist yet. What the factory's content warns about (an empty
    # segment, no SALVO_PUBLIC_URL); anything else is refused and fails the race's test.
    acknowledge = [ReviewCode.EMPTY_AUDIENCE, ReviewCode.NO_UNSUBSCRIBE_LINK]
    return Contender(
        "activate",
        lambda: services.campaign_activate(campaign=campaign, user=None, acknowledge=acknowledge),
    )


def activation_task(campaign: Campaign) -> Contender:
    return Contender("activation task", lambda: tasks.campaign_activation_task(campaign.pk))


def modify(campaign: Campaign) -> Contender:
    return Contender("modify", lambda: services.campaign_modify(campaign=campaign, user=None))


def archive(campaign: Campaign) -> Contender:
    return Contender("archive", lambda: services.campaign_archive(campaign=campaign, user=None))


def discard_draft(campaign: Campaign) -> Contender:
    return Contender(
        "discard draft", lambda: services.campaign_discard_draft(campaign=campaign, user=None)
    )


# --- stop and the activation task ---------------------------------------------------------


def test_stop_queued_behind_the_activation_task_stops_the_campaign_it_made_live():
    campaign = make_campaign_in_status(Status.ACTIVATING)
    task, stopper = activation_task(campaign), stop(campaign)

    race(campaign, task, stopper)

    assert (task.error, stopper.error) == (None, None)
    assert state(campaign) == {
        "status": Status.STOPPED,
        "live": 1,
        "draft": None,
        "versions": [1],
        "log": [*WENT_LIVE, "stop"],
    }
    # The activation started its run before the stop came in.
    assert Execution.objects.filter(campaign=campaign).count() == 1


def test_stop_queued_ahead_of_the_activation_task_is_refused_and_the_task_goes_on():
    campaign = make_campaign_in_status(Status.ACTIVATING)
    stopper, task = stop(campaign), activation_task(campaign)

    race(campaign, stopper, task)

    assert isinstance(stopper.error, TransitionNotAllowed)
    assert "it is Activating" in str(stopper.error)
    assert task.error is None
    assert state(campaign) == {
        "status": Status.LIVE,
        "live": 1,
        "draft": None,
        "versions": [1],
        "log": WENT_LIVE,
    }


# --- activate and modify --------------------------------------------------------------------


def test_activate_queued_behind_modify_activates_the_draft_modify_opened():
    campaign = make_live_campaign()
    opener, activator = modify(campaign), activate(campaign)

    race(campaign, opener, activator)

    assert (opener.error, activator.error) == (None, None)
    assert state(campaign) == {
        "status": Status.ACTIVATING,
        "live": 1,
        "draft": 2,
        "versions": [1, 2],
        "log": [*WENT_LIVE, "modify", "activate"],
    }


def test_activate_queued_ahead_of_modify_is_refused_and_modify_opens_the_draft():
    campaign = make_live_campaign()
    activator, opener = activate(campaign), modify(campaign)

    race(campaign, activator, opener)

    assert isinstance(activator.error, TransitionNotAllowed)
    assert "it has no open draft version" in str(activator.error)
    assert opener.error is None
    assert state(campaign) == {
        "status": Status.LIVE,
        "live": 1,
        "draft": 2,
        "versions": [1, 2],
        "log": [*WENT_LIVE, "modify"],
    }


# --- archive and stop -----------------------------------------------------------------------


def test_archive_queued_behind_stop_archives_the_stopped_campaign():
    campaign = make_live_campaign()
    stopper, archiver = stop(campaign), archive(campaign)

    race(campaign, stopper, archiver)

    assert (stopper.error, archiver.error) == (None, None)
    assert state(campaign) == {
        "status": Status.ARCHIVED,
        "live": 1,
        "draft": None,
        "versions": [1],
        "log": [*WENT_LIVE, "stop", "archive"],
    }


def test_archive_queued_ahead_of_stop_is_refused_and_stop_lands():
    campaign = make_live_campaign()
    archiver, stopper = archive(campaign), stop(campaign)

    race(campaign, archiver, stopper)

    assert isinstance(archiver.error, TransitionNotAllowed)
    assert "it is Live" in str(archiver.error)
    assert stopper.error is None
    assert state(campaign) == {
        "status": Status.STOPPED,
        "live": 1,
        "draft": None,
        "versions": [1],
        "log": [*WENT_LIVE, "stop"],
    }


# --- activate and discard the draft ---------------------------------------------------------


def test_activate_queued_behind_discard_is_refused_for_the_draft_is_gone():
    campaign = make_campaign_in_status(Status.LIVE, with_draft=True)
    discarder, activator = discard_draft(campaign), activate(campaign)

    race(campaign, discarder, activator)

    assert discarder.error is None
    assert isinstance(activator.error, TransitionNotAllowed)
    assert "it has no open draft version" in str(activator.error)
    assert state(campaign) == {
        "status": Status.LIVE,
        "live": 1,
        "draft": None,
        "versions": [1],
        "log": [*WENT_LIVE, "modify", "discard_draft"],
    }


def test_discard_queued_behind_activate_is_refused_and_the_draft_activates():
    campaign = make_campaign_in_status(Status.LIVE, with_draft=True)
    activator, discarder = activate(campaign), discard_draft(campaign)

    race(campaign, activator, discarder)

    assert activator.error is None
    assert isinstance(discarder.error, CampaignConflict)
    assert "no open draft beside a running version" in str(discarder.error)
    assert state(campaign) == {
        "status": Status.ACTIVATING,
        "live": 1,
        "draft": 2,
        "versions": [1, 2],
        "log": [*WENT_LIVE, "modify", "activate"],
    }


# --- activate and an edit of the draft ------------------------------------------------------


def _remove_every_action(campaign: Campaign) -> Contender:
    return Contender(
        "edit",
        lambda: services.campaign_update(campaign=campaign, user=None, data={"actions": []}),
    )


def test_activate_queued_behind_an_edit_checks_the_edited_draft():
    campaign = make_campaign()
    editor, activator = _remove_every_action(campaign), activate(campaign)

    race(campaign, editor, activator)

    assert editor.error is None
    assert isinstance(activator.error, ValidationError)
    assert "Add at least one channel action." in activator.error.messages
    assert state(campaign)["status"] == Status.DRAFT
    assert not CampaignVersion.objects.get(campaign=campaign).actions.exists()


def test_an_edit_queued_behind_activate_is_refused_and_the_checked_draft_stays():
    campaign = make_campaign()
    activator, editor = activate(campaign), _remove_every_action(campaign)

    race(campaign, activator, editor)

    assert activator.error is None
    assert isinstance(editor.error, CampaignConflict)
    assert "is being activated" in str(editor.error)
    assert state(campaign)["status"] == Status.ACTIVATING
    channels = CampaignVersion.objects.get(campaign=campaign).actions.values_list("channel")
    assert sorted(c for (c,) in channels) == ["email", "sms"]


# --- the scheduler's start and stop ---------------------------------------------------------


def _start_due(campaign: Campaign, started: list[int]) -> Contender:
    assert campaign.live_version is not None
    start_at = campaign.live_version.start_at
    assert start_at is not None
    return Contender(
        "scheduler", lambda: started.extend(services.campaigns_start_due(now=start_at))
    )


def test_stop_queued_behind_the_scheduler_stops_the_campaign_it_started():
    campaign = make_scheduled_campaign(start_at=timezone.now() + dt.timedelta(hours=1))
    started: list[int] = []
    scheduler, stopper = _start_due(campaign, started), stop(campaign)

    race(campaign, scheduler, stopper)

    assert (scheduler.error, stopper.error) == (None, None)
    assert started == [campaign.pk]
    assert state(campaign)["log"] == [*WENT_LIVE, "start", "stop"]
    assert state(campaign)["status"] == Status.STOPPED
    assert Execution.objects.filter(campaign=campaign).count() == 1


def test_the_scheduler_queued_behind_stop_starts_nothing():
    campaign = make_scheduled_campaign(start_at=timezone.now() + dt.timedelta(hours=1))
    started: list[int] = []
    stopper, scheduler = stop(campaign), _start_due(campaign, started)

    race(campaign, stopper, scheduler)

    assert (stopper.error, scheduler.error) == (None, None)
    assert started == []
    assert state(campaign)["log"] == [*WENT_LIVE, "stop"]
    assert state(campaign)["status"] == Status.STOPPED
    assert not Execution.objects.filter(campaign=campaign).exists()


# --- two copies of the activation task ------------------------------------------------------


def test_two_copies_of_the_activation_task_activate_once():
    """A lost-looking activation is sent again (campaigns_retry_stale_activations) while the
    first copy still runs: the second finds the campaign Live and leaves it."""
    campaign = make_campaign_in_status(Status.ACTIVATING)
    first, second = activation_task(campaign), activation_task(campaign)

    race(campaign, first, second)

    assert (first.error, second.error) == (None, None)
    assert state(campaign) == {
        "status": Status.LIVE,
        "live": 1,
        "draft": None,
        "versions": [1],
        "log": WENT_LIVE,
    }
    assert Execution.objects.filter(campaign=campaign).count() == 1


def test_two_modifies_open_one_draft_and_the_second_is_told_so():
    campaign = make_live_campaign()
    first, second = modify(campaign), modify(campaign)

    race(campaign, first, second)

    assert first.error is None
    assert isinstance(second.error, CampaignConflict)
    assert "already has an open draft (version 2)" in str(second.error)
    assert state(campaign) == {
        "status": Status.LIVE,
        "live": 1,
        "draft": 2,
        "versions": [1, 2],
        "log": [*WENT_LIVE, "modify"],
    }
