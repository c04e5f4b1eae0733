"""The campaign domain functions: every transition allowed and refused, versions, permissions."""

import datetime as dt
from collections.abc import Callable

import pytest
from django.contrib.auth.models import Permission, User
from django.core.exceptions import PermissionDenied, ValidationError
from django.utils import timezone
from django_fsm import TransitionNotAllowed

from campaigns import services
from campaigns.choices import CampaignStatus as Status
from campaigns.exceptions import CampaignConflict
from campaigns.models import Campaign, CampaignTransition, CampaignVersion
from campaigns.operations import LIFECYCLE
from tests.campaigns.factories import (
    activate_acknowledged,
    email_action,
    make_campaign,
    make_campaign_in_status,
    make_live_campaign,
    make_scheduled_campaign,
    sms_action,
)
from tests.campaigns.lifecycle import ALLOWED, STATES
from tests.channels.factories import MessagePresetFactory
from tests.segments.factories import SegmentFactory

pytestmark = pytest.mark.django_db


def operation(name: str) -> Callable[[Campaign], object]:
    return {
        "activate": lambda c: activate_acknowledged(campaign=c),
        "stop": lambda c: services.campaign_stop(campaign=c, user=None),
        "archive": lambda c: services.campaign_archive(campaign=c, user=None),
        "modify": lambda c: services.campaign_modify(campaign=c, user=None),
        "discard_draft": lambda c: services.campaign_discard_draft(campaign=c, user=None),
        "delete": lambda c: services.campaign_delete(campaign=c, user=None),
        "complete": lambda c: services.campaign_complete(campaign=c),
    }[name]


# Duplicate leaves its source as it was: test_duplicate_from_any_status_makes_a_new_draft.
CASES = [
    (op, state, with_draft) for op in ALLOWED if op != "duplicate" for (state, with_draft) in STATES
]


@pytest.mark.parametrize(("op", "status", "with_draft"), CASES)
def test_every_operation_from_every_status(op, status, with_draft):
    campaign = make_campaign_in_status(status, with_draft=with_draft)
    before = Campaign.objects.filter(pk=campaign.pk).values().get()
    log_size = CampaignTransition.objects.filter(campaign=campaign).count()

    if (status, with_draft) in ALLOWED[op]:
        operation(op)(campaign)
        if op == "delete":
            assert not Campaign.objects.filter(pk=campaign.pk).exists()
        else:
            # Stopping or completing also discards an open draft, and logs that too.
            discarded = op in ("stop", "complete") and with_draft
            logged = CampaignTransition.objects.filter(campaign=campaign).count()
            assert logged == log_size + 1 + discarded
    else:
        with pytest.raises((TransitionNotAllowed, CampaignConflict)) as refused:
            operation(op)(campaign)
        assert campaign.name in str(refused.value)
        # Refused means untouched: same row, nothing logged.
        assert Campaign.objects.filter(pk=campaign.pk).values().get() == before
        assert CampaignTransition.objects.filter(campaign=campaign).count() == log_size


def test_refusal_names_the_status_and_what_would_allow_it():
    campaign = make_live_campaign(name="Spring sale")
    with pytest.raises(TransitionNotAllowed) as refused:
        services.campaign_archive(campaign=campaign, user=None)
    assert str(refused.value) == (
        "Cannot archive campaign “Spring sale”: it is Live; "
        "only a Completed or Stopped campaign can be archived."
    )


@pytest.mark.parametrize(
    ("name", "status", "allowed_from"),
    [
        ("stop", Status.DRAFT, "Scheduled or Live"),
        ("archive", Status.LIVE, "Completed or Stopped"),
        ("activate", Status.STOPPED, "Draft, Scheduled or Live"),
        ("complete", Status.DRAFT, "Live"),
    ],
)
def test_refusal_says_what_would_allow_it_in_the_tables_words(name, status, allowed_from):
    campaign = make_campaign_in_status(status, name="Spring sale")

    with pytest.raises(TransitionNotAllowed) as refused:
        operation(name)(campaign)

    step = LIFECYCLE[name]
    assert str(refused.value) == (
        f"Cannot {step.verb} campaign “Spring sale”: it is {Status(status).label}; "
        f"only a {allowed_from} campaign can be {step.done}."
    )


def test_create_makes_a_draft_with_version_one_and_its_actions():
    campaign = make_campaign(name="Welcome", tags=["onboarding", "q4"])
    assert campaign.status == Status.DRAFT
    version = campaign.draft_version
    assert version.number == 1
    assert sorted(version.actions.values_list("channel", flat=True)) == ["email", "sms"]
    assert sorted(campaign.tags.names()) == ["onboarding", "q4"]
    assert campaign.live_version is None
    assert not campaign.has_open_draft


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": ""}, "name"),
        ({"type": "spam"}, "type"),
        ({"start_at": timezone.now() - dt.timedelta(minutes=1)}, "in the past"),
        ({"actions": [{"channel": "fax", "preset": None}]}, "actions[0].channel"),
        (
            {"actions": [{"channel": "sms", "preset": "wrong"}]},
            "actions[0].preset: choose a message preset",
        ),
    ],
)
def test_create_refuses_bad_input_and_saves_nothing(fields, message):
    with pytest.raises(ValidationError) as error:
        make_campaign(**fields)
    assert message in str(error.value)
    assert not Campaign.objects.exists()
    assert not CampaignVersion.objects.exists()


def test_preset_of_the_wrong_channel_is_refused_with_its_name():
    sms_preset = MessagePresetFactory(channel="sms", name="Texts")
    with pytest.raises(ValidationError) as error:
        make_campaign(actions=[email_action(preset=sms_preset)])
    assert "“Texts” is a SMS preset, not Email" in str(error.value)


def test_two_actions_of_one_channel_are_refused():
    with pytest.raises(ValidationError, match="at most one email action"):
        make_campaign(actions=[email_action(), email_action()])


def test_duplicate_name_is_refused():
    make_campaign(name="Black Friday")
    with pytest.raises(ValidationError, match="already exists"):
        make_campaign(name="Black Friday")


def test_activation_lists_every_failed_check_and_changes_nothing():
    campaign = make_campaign(segment=None, actions=[])
    with pytest.raises(ValidationError) as error:
        activate_acknowledged(campaign=campaign)
    messages = error.value.messages
    assert any("segment" in m for m in messages)
    assert any("at least one channel action" in m for m in messages)
    assert Campaign.objects.get(pk=campaign.pk).status == Status.DRAFT


def test_activation_checks_action_content():
    campaign = make_campaign(actions=[email_action(subject="", body=" ")])
    with pytest.raises(ValidationError) as error:
        activate_acknowledged(campaign=campaign)
    assert "Email action: the body is empty." in error.value.messages
    assert "Email action: an email needs a subject." in error.value.messages


def test_activation_goes_live_now_and_freezes_the_version():
    campaign = make_campaign()
    activate_acknowledged(campaign=campaign)
    assert Campaign.objects.get(pk=campaign.pk).status == Status.ACTIVATING

    campaign = services.campaign_activation_complete(campaign_id=campaign.pk)
    assert campaign.status == Status.LIVE
    assert campaign.started_at is not None
    assert campaign.draft_version is None
    version = campaign.live_version
    assert version.number == 1
    assert version.is_frozen
    with pytest.raises(ValidationError, match="activated"):
        version.save()
    with pytest.raises(ValidationError, match="activated"):
        version.actions.first().save()


def test_activation_with_a_future_start_is_scheduled_then_started_by_the_scheduler():
    start_at = timezone.now() + dt.timedelta(hours=1)
    campaign = make_scheduled_campaign(start_at=start_at)
    assert campaign.status == Status.SCHEDULED

    assert services.campaigns_start_due(now=start_at - dt.timedelta(seconds=1)) == []
    assert services.campaigns_start_due(now=start_at) == [campaign.pk]
    campaign.refresh_from_db()
    assert campaign.status == Status.LIVE
    assert campaign.transitions.first().name == "start"


def test_a_start_time_that_passes_while_the_activation_waits_starts_the_campaign_now():
    """The start time is checked against the moment the user activated: one that was still
    ahead then, and passed while the activation task waited in the queue, goes Live at once
    instead of being refused as "in the past"."""
    campaign = make_campaign(start_at=timezone.now() + dt.timedelta(hours=1))
    activate_acknowledged(campaign=campaign)
    # As if the task had waited two hours: asked an hour before the start, run an hour after.
    asked_at = timezone.now() - dt.timedelta(hours=2)
    CampaignTransition.objects.filter(campaign=campaign, name="activate").update(at=asked_at)
    CampaignVersion.objects.filter(pk=campaign.draft_version_id).update(
        start_at=asked_at + dt.timedelta(hours=1)
    )

    campaign = services.campaign_activation_complete(campaign_id=campaign.pk)

    assert campaign.status == Status.LIVE, campaign.activation_error
    assert campaign.activation_error == ""
    assert campaign.executions.count() == 1


def test_activation_task_is_idempotent():
    campaign = make_live_campaign()
    log_size = campaign.transitions.count()
    again = services.campaign_activation_complete(campaign_id=campaign.pk)
    assert again.status == Status.LIVE
    assert again.transitions.count() == log_size


def test_failed_recheck_returns_a_draft_to_draft_with_the_reason():
    campaign = make_campaign()
    activate_acknowledged(campaign=campaign)
    campaign.draft_version.actions.all().delete()  # changed behind the activation's back

    campaign = services.campaign_activation_complete(campaign_id=campaign.pk)
    assert campaign.status == Status.DRAFT
    assert "Add at least one channel action." in campaign.activation_error
    assert campaign.transitions.first().name == "activation_fail"

    # Fixing it and activating again clears the reason.
    campaign.draft_version.actions.create(
        channel="email", preset=MessagePresetFactory(), subject="Hi", body="Hello"
    )
    campaign = activate_acknowledged(campaign=campaign)
    assert campaign.activation_error == ""


def test_failed_reactivation_of_a_live_campaign_keeps_it_live_with_its_draft():
    campaign = make_live_campaign()
    draft = services.campaign_modify(campaign=campaign, user=None)
    activate_acknowledged(campaign=campaign)
    draft.actions.all().delete()

    campaign = services.campaign_activation_complete(campaign_id=campaign.pk)
    assert campaign.status == Status.LIVE
    assert campaign.draft_version == draft
    assert campaign.live_version.number == 1
    assert campaign.activation_error


def test_modify_opens_a_copy_and_activating_it_replaces_the_running_version():
    campaign = make_live_campaign()
    draft = services.campaign_modify(campaign=campaign, user=None)
    campaign.refresh_from_db()
    assert draft.number == 2
    assert campaign.has_open_draft
    assert campaign.live_version.number == 1
    assert list(draft.actions.values_list("channel", "body")) == list(
        campaign.live_version.actions.values_list("channel", "body")
    )

    new_segment = SegmentFactory()
    services.campaign_update(
        campaign=campaign,
        user=None,
        data={"segment": new_segment, "actions": [sms_action(body="New text")]},
    )
    # The running version did not move.
    assert campaign.live_version.actions.count() == 2

    activate_acknowledged(campaign=campaign)
    campaign = services.campaign_activation_complete(campaign_id=campaign.pk)
    assert campaign.status == Status.LIVE
    assert campaign.live_version == draft
    assert campaign.live_version.segment == new_segment
    assert not campaign.has_open_draft
    assert campaign.versions.count() == 2


def test_new_version_with_a_future_start_reschedules():
    campaign = make_live_campaign()
    services.campaign_modify(campaign=campaign, user=None)
    start_at = timezone.now() + dt.timedelta(days=2)
    services.campaign_update(campaign=campaign, user=None, data={"start_at": start_at})
    activate_acknowledged(campaign=campaign)
    campaign = services.campaign_activation_complete(campaign_id=campaign.pk)
    assert campaign.status == Status.SCHEDULED
    assert campaign.live_version.start_at == start_at


def test_discard_drops_the_draft_and_keeps_the_running_version():
    campaign = make_scheduled_campaign()
    draft = services.campaign_modify(campaign=campaign, user=None)
    campaign = services.campaign_discard_draft(campaign=campaign, user=None)
    assert campaign.status == Status.SCHEDULED
    assert not CampaignVersion.objects.filter(pk=draft.pk).exists()
    assert campaign.live_version.number == 1


def test_modify_twice_is_a_conflict():
    campaign = make_live_campaign()
    services.campaign_modify(campaign=campaign, user=None)
    with pytest.raises(CampaignConflict, match="already has an open draft"):
        services.campaign_modify(campaign=campaign, user=None)


def test_update_without_a_draft_is_a_conflict():
    campaign = make_live_campaign()
    with pytest.raises(CampaignConflict, match="use “modify”"):
        services.campaign_update(campaign=campaign, user=None, data={"description": "x"})


def test_update_while_activating_is_a_conflict():
    campaign = make_campaign_in_status(Status.ACTIVATING)
    with pytest.raises(CampaignConflict, match="being activated"):
        services.campaign_update(campaign=campaign, user=None, data={"description": "x"})


def test_type_is_fixed_once_the_campaign_has_run():
    campaign = make_live_campaign()
    services.campaign_modify(campaign=campaign, user=None)
    with pytest.raises(ValidationError, match="duplicate it"):
        services.campaign_update(campaign=campaign, user=None, data={"type": "transactional"})


def test_update_applies_only_given_fields():
    campaign = make_campaign(description="old")
    services.campaign_update(campaign=campaign, user=None, data={"name": "Renamed"})
    campaign.refresh_from_db()
    assert (campaign.name, campaign.description) == ("Renamed", "old")
    assert campaign.draft_version.actions.count() == 2


@pytest.mark.parametrize("status", Status.values)
def test_duplicate_from_any_status_makes_a_new_draft(status):
    source = make_campaign_in_status(status)
    copy = services.campaign_duplicate(campaign=source, user=None)
    assert copy.status == Status.DRAFT
    assert copy.name == f"{source.name} (copy)"
    assert copy.draft_version.number == 1
    assert copy.draft_version.actions.count() == 2
    again = services.campaign_duplicate(campaign=source, user=None)
    assert again.name == f"{source.name} (copy 2)"


def test_stopped_is_terminal():
    campaign = make_campaign_in_status(Status.STOPPED)
    for op in ("activate", "modify", "stop", "discard_draft", "delete"):
        with pytest.raises((TransitionNotAllowed, CampaignConflict)):
            operation(op)(campaign)
    assert Campaign.objects.get(pk=campaign.pk).status == Status.STOPPED


def test_every_transition_is_logged_with_who_and_why():
    user = User.objects.create_superuser("boss", "boss@example.com", "pw")
    campaign = make_live_campaign()
    services.campaign_stop(campaign=campaign, user=user, reason="Wrong price in the email")
    entry = campaign.transitions.first()
    assert (entry.name, entry.source, entry.target, entry.by, entry.reason) == (
        "stop",
        Status.LIVE,
        Status.STOPPED,
        user,
        "Wrong price in the email",
    )
    names = list(campaign.transitions.order_by("at", "id").values_list("name", flat=True))
    assert names == ["create", "activate", "activation_succeed", "stop"]


def grant(user: User, *codenames: str) -> User:
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return User.objects.get(pk=user.pk)  # permissions are cached per instance


def test_activate_needs_the_activate_permission():
    campaign = make_campaign()
    editor = grant(
        User.objects.create_user("editor"), "view_campaign", "change_campaign", "add_campaign"
    )
    with pytest.raises(PermissionDenied, match="activate_campaign"):
        activate_acknowledged(campaign=campaign, user=editor)
    assert Campaign.objects.get(pk=campaign.pk).status == Status.DRAFT

    marketer = grant(editor, "activate_campaign")
    activate_acknowledged(campaign=campaign, user=marketer)
    assert Campaign.objects.get(pk=campaign.pk).status == Status.ACTIVATING


def test_stop_needs_the_change_permission():
    campaign = make_live_campaign()
    viewer = grant(User.objects.create_user("viewer"), "view_campaign")
    with pytest.raises(PermissionDenied):
        services.campaign_stop(campaign=campaign, user=viewer)
    assert Campaign.objects.get(pk=campaign.pk).status == Status.LIVE


def test_status_cannot_be_assigned_directly():
    campaign = make_campaign()
    with pytest.raises(AttributeError):
        campaign.status = Status.LIVE


@pytest.mark.parametrize(
    ("end", "status", "why"),
    [
        (lambda c: services.campaign_complete(campaign=c), Status.COMPLETED, "completed"),
        (lambda c: services.campaign_stop(campaign=c, user=None), Status.STOPPED, "stopped"),
    ],
)
def test_a_campaign_that_ends_discards_its_open_draft_and_logs_it(end, status, why):
    campaign = make_live_campaign()
    draft = services.campaign_modify(campaign=campaign, user=None)

    end(campaign)

    campaign.refresh_from_db()
    assert (campaign.status, campaign.draft_version, campaign.has_open_draft) == (
        status,
        None,
        False,
    )
    assert not CampaignVersion.objects.filter(pk=draft.pk).exists()
    assert list(campaign.versions.values_list("number", flat=True)) == [1]
    ended, discarded = CampaignTransition.objects.filter(campaign=campaign).order_by("-id")[:2][
        ::-1
    ]
    assert ended.name in ("complete", "stop")
    assert (discarded.name, discarded.source, discarded.target, discarded.reason) == (
        "discard_draft",
        status,
        status,
        f"Version {draft.number} discarded: the campaign {why}.",
    )
