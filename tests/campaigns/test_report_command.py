"""`manage.py campaign report` and `campaign activate --wait`: the report's figures at the
staff's door, from real runs (the engine's steps in the test process, or a real worker)."""

from __future__ import annotations

import json
import re
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from campaigns import delivery
from campaigns.choices import CampaignStatus, DeliveryReason
from campaigns.models import Campaign
from segments.models import Profile
from tests.campaigns.delivery_support import make_profile, plan, send_all, sinks_and_worker
from tests.campaigns.factories import email_action, make_campaign, make_live_campaign, sms_action
from tests.channels.factories import MessagePresetFactory
from tests.segments.factories import ProfileFactory

R = DeliveryReason


def run(*args: str) -> str:
    out = StringIO()
    call_command("campaign", *args, stdout=out)
    return out.getvalue()


def table(output: str) -> dict[str, dict[str, str]]:
    """The report's table: {channel: {column: cell}}."""
    lines = [line.split() for line in output.splitlines() if line.strip()]
    header_at = next(i for i, cells in enumerate(lines) if cells[:1] == ["CHANNEL"])
    header = lines[header_at]
    rows = {}
    for cells in lines[header_at + 1 :]:
        if len(cells) != len(header) or not cells[1].isdigit():
            break
        rows[cells[0]] = dict(zip(header, cells, strict=True))
    return rows


@pytest.mark.django_db
def test_report_prints_each_channel_with_its_reasons_and_json_as_the_api(
    refusing_sinks, api_client
):
    reached = ProfileFactory.create_batch(3)
    no_sms = ProfileFactory.create_batch(2, consent_sms=False)
    make_profile(email="invalid@example.com")
    campaign = make_live_campaign(actions=[email_action(), sms_action()])
    execution = plan(campaign)
    send_all(execution)
    delivery.execution_complete_if_done(execution_id=execution.pk)
    audience = len(reached) + len(no_sms) + 1

    output = run("report", str(campaign.pk))

    assert f"Campaign {campaign.pk} “{campaign.name}”: Completed" in output
    assert table(output) == {
        "email": {
            "CHANNEL": "email",
            "AUDIENCE": str(audience),
            "SENT": str(audience - 1),
            "FAILED": "1",
            "SKIPPED": "0",
            "PENDING": "0",
            "RATE/S": "0",
            "TIME-LEFT": "0s",
        },
        "sms": {
            "CHANNEL": "sms",
            "AUDIENCE": str(audience),
            "SENT": str(len(reached) + 1),
            "FAILED": "0",
            "SKIPPED": str(len(no_sms)),
            "PENDING": "0",
            "RATE/S": "0",
            "TIME-LEFT": "0s",
        },
    }
    assert f"email not sent: {R.PROVIDER_REFUSED.label.lower()} 1" in output
    assert f"sms not sent: {R.OPTED_OUT.label.lower()} {len(no_sms)}" in output
    assert "time left: 0s" in output

    as_json = json.loads(run("report", str(campaign.pk), "--json"))
    assert as_json == api_client.get(f"/api/campaigns/{campaign.pk}/report/").json()


@pytest.mark.django_db
def test_report_needs_the_view_permission_and_an_existing_campaign(user_with_perms):
    campaign = make_campaign()
    nobody = user_with_perms(username="nobody")
    for args in (["--user", "nobody"], ["--user", "nobody", "--json"]):
        with pytest.raises(CommandError) as error:
            run("report", str(campaign.pk), *args)
        assert str(error.value) == (
            "You need the “campaigns.view_campaign” permission to see campaigns."
        )
    assert nobody.pk
    with pytest.raises(CommandError, match=r"^Campaign 987654 does not exist\.$"):
        run("report", "987654")
    assert "No deliveries yet." in run("report", str(campaign.pk))


@pytest.mark.worker
@pytest.mark.timeout(180)
def test_activate_wait_waits_for_a_real_worker_to_complete_and_prints_the_counts(
    celery_process_factory,
):
    people = ProfileFactory.create_batch(12)
    no_phone = make_profile(phone="")
    with sinks_and_worker(celery_process_factory) as (sink, _, _):
        campaign = make_campaign(actions=[email_action(), sms_action()])

        output = run("activate", str(campaign.pk), "--yes", "--wait")

        assert Campaign.objects.get(pk=campaign.pk).status == CampaignStatus.COMPLETED
        assert len(sink.received()) == 2 * len(people) + 1
    audience = str(len(people) + 1)
    # Live when the wait saw it activated, unless the worker had finished by then.
    assert re.search(r"activated; now (Live|Completed)\.$", output, re.M)
    assert f"Campaign {campaign.pk} “{campaign.name}”: Completed" in output
    rows = table(output)
    assert {c: (r["AUDIENCE"], r["SENT"], r["SKIPPED"], r["PENDING"]) for c, r in rows.items()} == {
        "email": (audience, audience, "0", "0"),
        "sms": (audience, str(len(people)), "1", "0"),
    }
    assert re.search(rf"sms not sent: {R.NO_ADDRESS.label.lower()} 1$", output, re.M)
    assert Profile.objects.filter(pk=no_phone.pk).exists()


@pytest.mark.worker
@pytest.mark.timeout(180)
def test_activate_wait_gives_up_with_one_line_while_it_still_sends(celery_process_factory):
    ProfileFactory.create_batch(30)
    # One SMS a second: 30 profiles take longer than the wait.
    with sinks_and_worker(celery_process_factory) as (sink, _, _):
        limited = MessagePresetFactory(channel="sms", rate_limit_per_second=1)
        campaign = make_campaign(actions=[sms_action(preset=limited)])
        out = StringIO()
        with pytest.raises(CommandError) as error:
            call_command(
                "campaign", "activate", str(campaign.pk), "--yes", "--wait", "4", stdout=out
            )
        assert 0 < len(sink.received()) < 30
    message = str(error.value)
    assert "\n" not in message
    assert message == (
        f"Campaign {campaign.pk} is still Live after 4s: "
        "see `manage.py campaign report` for where it stands."
    )
    assert "activated; now Live" in out.getvalue()
