"""The staff's door: `manage.py campaign …` and `manage.py load_demo`."""

from __future__ import annotations

import datetime as dt
import json
import re
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings
from django.utils import timezone

from campaigns import tasks
from campaigns.choices import CampaignStatus as Status
from campaigns.management.commands import load_demo as demo
from campaigns.models import Campaign
from channels.choices import ChannelKind
from channels.models import MessagePreset
from config.celery import app as celery_app
from segments.choices import SegmentKind
from segments.models import Profile, Segment
from segments.selectors import segment_count
from tests.campaigns.factories import (
    email_action,
    make_campaign,
    make_campaign_in_status,
    make_live_campaign,
    sms_action,
)
from tests.campaigns.lifecycle import (
    ACTIONS,
    ALLOWED,
    STATES,
    TARGET,
    last_step,
    snapshot,
    version,
)
from tests.segments.factories import ProfileFactory

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = StringIO()
    call_command("campaign", *args, stdout=out)
    return out.getvalue()


def refused(*args: str) -> str:
    with pytest.raises(CommandError) as error:
        run(*args)
    message = str(error.value)
    assert "\n" not in message
    return message


# --- every operation from every state -------------------------------------------------


@pytest.mark.parametrize("operation", ACTIONS)
@pytest.mark.parametrize(("status", "with_draft"), STATES)
def test_every_operation_from_every_state(operation, status, with_draft):
    campaign = make_campaign_in_status(status, with_draft=with_draft)
    before = snapshot(campaign)
    command = operation.replace("_", "-")
    confirmed = ["--yes"] if operation == "activate" else []

    if (status, with_draft) not in ALLOWED[operation]:
        message = refused(command, str(campaign.pk), *confirmed)
        assert campaign.name in message
        assert snapshot(campaign) == before
        return
    output = run(command, str(campaign.pk), *confirmed)
    campaign.refresh_from_db()
    if operation != "duplicate":
        assert f"Campaign {campaign.pk} “{campaign.name}”" in output
    if operation in TARGET:
        assert campaign.status == TARGET[operation]
    elif operation == "modify":
        assert campaign.has_open_draft
        assert f"draft version {version(campaign).number} opened" in output
    elif operation == "discard_draft":
        assert not campaign.has_open_draft
    elif operation == "duplicate":
        copy = Campaign.objects.get(name=f"{campaign.name} (copy)")
        assert copy.status == Status.DRAFT
        assert f"Campaign {copy.pk} “{copy.name}”: duplicated from campaign {campaign.pk}" in output


@pytest.mark.parametrize("operation", [*[op.replace("_", "-") for op in ACTIONS], "show"])
def test_unknown_id_is_a_one_line_error(operation):
    assert refused(operation, "42") == "Campaign 42 does not exist."


def test_a_non_numeric_id_is_refused_by_the_parser():
    with pytest.raises(CommandError, match="invalid int value"):
        run("stop", "abc")


def test_stop_keeps_the_reason():
    campaign = make_live_campaign()

    run("stop", str(campaign.pk), "--reason", "Wrong audience")

    assert last_step(campaign).reason == "Wrong audience"


def test_duplicate_with_a_name():
    campaign = make_campaign(name="Spring")

    run("duplicate", str(campaign.pk), "--name", "Autumn")

    assert Campaign.objects.get(name="Autumn").status == Status.DRAFT


def test_duplicate_to_a_taken_name_is_refused():
    campaign = make_campaign(name="Spring")
    make_campaign(name="Autumn")

    message = refused("duplicate", str(campaign.pk), "--name", "Autumn")

    assert message.startswith("name: ")
    assert "already exists" in message
    assert Campaign.objects.count() == 2


# --- activation -----------------------------------------------------------------------


def test_activate_lists_every_failed_check_on_one_line():
    preset = MessagePreset.objects.create(name="Mail", channel=ChannelKind.EMAIL)
    campaign = make_campaign(
        segment=None,
        actions=[{"channel": "email", "preset": preset, "subject": "", "body": ""}],
    )
    before = snapshot(campaign)

    message = refused("activate", str(campaign.pk))

    assert message.startswith(f"Campaign {campaign.pk} “{campaign.name}” cannot be activated: ")
    for words in ("segment", "no from_email", "body is empty", "needs a subject"):
        assert words in message
    assert snapshot(campaign) == before


def test_activate_without_waiting_leaves_it_activating():
    campaign = make_campaign()

    output = run("activate", str(campaign.pk), "--yes")

    assert "now Activating" in output
    assert Campaign.objects.get(pk=campaign.pk).status == Status.ACTIVATING


def test_wait_gives_up_with_a_hint_when_no_worker_answers():
    # Inside a test transaction the activation task is never sent: nothing will answer.
    campaign = make_campaign()

    message = refused("activate", str(campaign.pk), "--yes", "--wait", "0.3")

    assert message == (
        f"Campaign {campaign.pk} is still Activating after 0.3s: is a Celery worker running?"
    )


@pytest.fixture
def eager_tasks(monkeypatch):
    """Celery tasks run in-process when sent (they are sent when the transaction commits)."""
    monkeypatch.setitem(celery_app.conf, "task_always_eager", True)


@pytest.mark.django_db(transaction=True)
def test_wait_says_it_was_activated_then_gives_up_on_a_campaign_not_finished(eager_tasks):
    # A start tomorrow: activation ends in Scheduled, far from a terminal status.
    campaign = make_campaign(start_at=timezone.now() + dt.timedelta(days=1))
    out = StringIO()

    with pytest.raises(CommandError) as error:
        call_command("campaign", "activate", str(campaign.pk), "--yes", "--wait", "0.5", stdout=out)

    assert Campaign.objects.get(pk=campaign.pk).status == Status.SCHEDULED
    assert "activation requested; now Activating" in out.getvalue()
    assert "activated; now Scheduled" in out.getvalue()
    assert str(error.value) == (
        f"Campaign {campaign.pk} is still Scheduled after 0.5s: "
        "see `manage.py campaign report` for where it stands."
    )


@pytest.mark.django_db(transaction=True)
def test_wait_fails_with_the_reason_when_activation_returns_to_draft(eager_tasks, monkeypatch):
    campaign = make_campaign()
    real_task = tasks.campaign_activation_task

    class PresetEditedMeanwhile:
        """The email preset loses its sender between the request and the task."""

        def delay(self, campaign_id: int) -> None:
            MessagePreset.objects.filter(channel=ChannelKind.EMAIL).update(from_email="")
            real_task.delay(campaign_id)

    monkeypatch.setattr(tasks, "campaign_activation_task", PresetEditedMeanwhile())

    message = refused("activate", str(campaign.pk), "--yes", "--wait", "10")

    assert message.startswith(f"Activation of campaign {campaign.pk} failed; it is Draft again:")
    assert "no from_email" in message
    assert Campaign.objects.get(pk=campaign.pk).status == Status.DRAFT


# --- acting as a user -----------------------------------------------------------------


def test_user_without_the_permission_is_refused(user_with_perms):
    user = user_with_perms("campaigns.change_campaign")
    campaign = make_campaign()
    before = snapshot(campaign)

    message = refused("activate", str(campaign.pk), "--user", user.username)

    assert "campaigns.activate_campaign" in message
    assert snapshot(campaign) == before


def test_user_with_the_permission_is_recorded(user_with_perms):
    user = user_with_perms("campaigns.view_campaign", "campaigns.activate_campaign")
    campaign = make_campaign()

    run("activate", str(campaign.pk), "--yes", "--user", user.username)

    assert last_step(campaign).by == user


def test_unknown_user_is_refused():
    campaign = make_campaign()

    assert refused("stop", str(campaign.pk), "--user", "ghost") == "User “ghost” does not exist."


def test_the_system_is_recorded_as_nobody():
    campaign = make_live_campaign()

    run("stop", str(campaign.pk))

    assert last_step(campaign).by is None


# --- list and show --------------------------------------------------------------------


@pytest.fixture
def one_of_each() -> dict[str, Campaign]:
    return {
        status: make_campaign_in_status(status, name=f"{status} campaign")
        for status in Status.values
    }


def listed(*args: str) -> set[str]:
    return {row["name"] for row in json.loads(run("list", "--json", *args))}


def test_list_default_all_and_repeated_status(one_of_each):
    assert listed() == {"draft campaign", "scheduled campaign", "live campaign"}
    assert listed("--all") == {f"{s} campaign" for s in Status.values}
    assert listed("--status", "stopped", "--status", "archived") == {
        "stopped campaign",
        "archived campaign",
    }


def test_list_bad_status_names_the_allowed_values():
    message = refused("list", "--status", "paused")

    assert "'paused'" in message
    assert "draft, activating, scheduled, live, stopped, completed, archived or all" in message


def test_list_all_and_status_together_are_refused():
    with pytest.raises(CommandError, match="not allowed with argument"):
        run("list", "--all", "--status", "live")


def test_list_search_and_tag():
    make_campaign(name="Spring sale", tags=["promo"])
    make_campaign(name="Spring notice", tags=["legal"])
    make_campaign(name="Winter sale", tags=["promo"])

    assert listed("--search", "spring") == {"Spring sale", "Spring notice"}
    assert listed("--tag", "promo", "--tag", "legal") == {
        "Spring sale",
        "Spring notice",
        "Winter sale",
    }
    assert listed("--search", "spring", "--tag", "promo") == {"Spring sale"}


def test_list_table_shows_status_and_open_draft_mark():
    campaign = make_campaign_in_status(
        Status.LIVE, with_draft=True, name="Running", tags=["a", "b"]
    )

    lines = run("list").splitlines()

    cells = [re.split(r"\s{2,}", line) for line in lines]
    assert cells == [
        ["ID", "STATUS", "NAME", "TYPE", "KIND", "TAGS"],
        [str(campaign.pk), "Live + open draft", "Running", "marketing", "one_shot", "a, b"],
    ]


def test_list_says_when_nothing_matches():
    assert run("list").strip() == "No campaigns match."


def test_show_prints_versions_actions_and_log():
    campaign = make_campaign_in_status(Status.LIVE, with_draft=True, name="Running")

    output = run("show", str(campaign.pk))

    assert f"Campaign {campaign.pk} “Running”" in output
    assert "status:      Live" in output
    assert "version 2 (draft)" in output
    assert "version 1 (live)" in output
    assert output.count(" via ") == 4

    run("stop", str(campaign.pk), "--reason", "Enough")
    output = run("show", str(campaign.pk))

    assert "status:      Stopped" in output
    # Stopping discarded the open draft, and the log says so.
    assert "version 2" not in output
    assert output.count(" via ") == 2
    assert "Stopped (stop): live → stopped by system — Enough" in output
    assert (
        "Draft discarded (discard_draft): stopped → stopped by system — Version 2 discarded: "
        "the campaign stopped." in output
    )


def test_show_json_is_the_api_representation_plus_versions_and_log():
    campaign = make_campaign_in_status(Status.LIVE, with_draft=True)

    data = json.loads(run("show", str(campaign.pk), "--json"))

    assert data["status"] == "live"
    assert data["has_open_draft"] is True
    assert [v["number"] for v in data["versions"]] == [2, 1]
    assert [t["name"] for t in data["transitions"]][:1] == ["modify"]
    assert set(data["allowed_operations"]) == {"activate", "discard_draft", "stop", "duplicate"}


# --- load_demo ------------------------------------------------------------------------


def load_demo() -> str:
    out = StringIO()
    call_command("load_demo", stdout=out)
    return out.getvalue()


def demo_counts() -> dict[str, int]:
    return {
        "users": get_user_model().objects.count(),
        "profiles": Profile.objects.count(),
        "segments": Segment.objects.count(),
        "presets": MessagePreset.objects.count(),
        "campaigns": Campaign.objects.count(),
        "members": Segment.members.through.objects.count(),
    }


def test_load_demo_makes_a_usable_demo():
    output = load_demo()

    admin = get_user_model().objects.get(username="admin")
    assert admin.is_superuser
    assert admin.check_password("admin")
    assert "http://127.0.0.1:8000/admin/" in output
    assert "“admin”" in output
    assert Profile.objects.count() == demo.PROFILE_COUNT + demo.READER_COUNT
    countries = {p.attributes.get("country") for p in Profile.objects.all()}
    assert {"FR", "BE"} <= countries
    assert Profile.objects.filter(consent_sms=False).exists()
    assert Profile.objects.filter(attributes__vip=True).exists()
    assert {p.channel for p in MessagePreset.objects.all()} == set(ChannelKind.values)
    # Valid where the demo runs: the embedded default, whose webhook sink is on loopback.
    with override_settings(SALVO_WEBHOOK_ALLOW_PRIVATE_ADDRESSES=True):
        for preset in MessagePreset.objects.all():
            preset.clean()
    static = Segment.objects.get(kind=SegmentKind.STATIC)
    assert static.members.count() > 0
    assert Segment.objects.filter(kind=SegmentKind.RULES).count() >= 3
    statuses = {(c.status, c.has_open_draft) for c in Campaign.objects.all()}
    assert statuses >= {
        (Status.DRAFT, False),
        (Status.SCHEDULED, False),
        (Status.LIVE, False),
        (Status.LIVE, True),
        (Status.STOPPED, False),
        (Status.COMPLETED, False),
        (Status.ARCHIVED, False),
    }
    drafts = Campaign.objects.filter(status=Status.DRAFT)
    assert {version(c).segment_id is None for c in drafts} == {True, False}


def test_the_demo_has_a_campaign_still_sending_when_the_newcomer_logs_in():
    output = load_demo()

    sending = Campaign.objects.get(name=demo.SENDING_NOW)
    assert sending.status == Status.LIVE
    assert sending.executions.count() == 1  # its planning waits for the worker
    assert sending.live_version is not None
    action = sending.live_version.actions.get()
    rate = action.preset.rate_limit_per_second
    assert rate is not None
    segment = sending.live_version.segment
    assert segment is not None
    audience = segment_count(segment=segment)
    assert audience >= 2000  # a few thousand
    # At the preset's rate, sending them all takes several minutes.
    assert audience / rate >= 180
    assert f"campaigns/campaign/{sending.pk}/change/" in output


def test_load_demo_rule_segments_are_valid_rules():
    from segments.rules import rule_errors

    load_demo()

    for segment in Segment.objects.filter(kind=SegmentKind.RULES):
        assert rule_errors(segment.rules) == [], segment.name


def test_the_demo_draft_ready_to_activate_can_be_activated():
    load_demo()
    ready = Campaign.objects.get(name="Demo · Spring sale")

    run("activate", str(ready.pk), "--yes")

    assert Campaign.objects.get(pk=ready.pk).status == Status.ACTIVATING


def test_load_demo_twice_creates_nothing_new():
    load_demo()
    first = demo_counts()

    output = load_demo()

    assert demo_counts() == first
    assert "0 new profiles, 0 new campaigns" in output


# --- review and confirmation -------------------------------------------------------------


class Typed(StringIO):
    """What a person types at a terminal."""

    def isatty(self) -> bool:
        return True


def test_review_prints_reach_schedule_and_checks_with_their_codes():
    ProfileFactory(external_id="first", consent_sms=False)
    campaign = make_campaign(actions=[email_action(), sms_action(body="ж" * 80)])

    output = run("review", str(campaign.pk))

    assert re.search(r"Email via .*: 1 \(", output)
    assert re.search(r"SMS via .*: 0 \(", output)
    assert "starts: as soon as activated" in output
    assert "sample, for profile first:" in output
    assert "warning sms_segments [actions[1].body]" in output
    assert "warning tiny_audience [segment]" in output


def test_review_json_is_the_api_review():
    campaign = make_campaign()
    data = json.loads(run("review", str(campaign.pk), "--json"))
    assert data["reach"] == {"email": 0, "sms": 0}
    assert [c["code"] for c in data["checks"]] == ["empty_audience", "no_unsubscribe_link"]


def test_activate_without_a_terminal_or_yes_refuses_in_one_line():
    campaign = make_campaign()

    message = refused("activate", str(campaign.pk))

    assert "stdin is not a terminal; run with --yes" in message
    assert "empty_audience, no_unsubscribe_link" in message
    campaign.refresh_from_db()
    assert campaign.status == Status.DRAFT


def test_activate_asks_with_the_number_of_recipients_and_takes_yes():
    for _ in range(2):
        ProfileFactory()
    campaign = make_campaign()
    out = StringIO()

    call_command("campaign", "activate", str(campaign.pk), stdout=out, stdin=Typed("y\n"))

    assert "Activate: send to 2 profiles, acknowledging tiny_audience" in out.getvalue()
    campaign.refresh_from_db()
    assert campaign.status == Status.ACTIVATING


def test_activate_answered_no_changes_nothing():
    campaign = make_campaign()
    with pytest.raises(CommandError, match="not activated"):
        call_command(
            "campaign", "activate", str(campaign.pk), stdout=StringIO(), stdin=Typed("n\n")
        )
    campaign.refresh_from_db()
    assert campaign.status == Status.DRAFT
