"""Words a marketer reads: the log's steps in words at every door, lists titled by what
they list, and a campaign's version called running only while it runs."""

from __future__ import annotations

import re
from io import StringIO

import pytest
from django.core.management import call_command
from django.urls import reverse

from campaigns import services
from campaigns.choices import CampaignStatus as Status
from campaigns.operations import LIFECYCLE, STEP_LABELS
from tests.campaigns.doors import change_url, url
from tests.campaigns.factories import make_campaign_in_status, make_live_campaign

pytestmark = pytest.mark.django_db

# The log of a campaign that went live and was stopped, newest first, in words.
STOPPED_LOG = ["Stopped", "Activated", "Activation requested", "Created"]


def stopped_campaign():
    campaign = make_live_campaign(name="Autumn news")
    return services.campaign_stop(campaign=campaign, user=None, reason="Enough")


def test_every_step_of_the_lifecycle_has_words():
    assert set(LIFECYCLE) | {"create"} <= set(STEP_LABELS)


def test_admin_log_and_dashboard_say_each_step_in_words(admin_client):
    campaign = stopped_campaign()

    html = admin_client.get(change_url(campaign)).content.decode()

    log = html[html.index('id="transitions"') :]
    steps = re.findall(r"<tr>\s*<td>[^<]*</td>\s*<td>([^<]*)</td>", log)
    assert steps == STOPPED_LOG
    home = admin_client.get(reverse("admin:index")).content.decode()
    assert "Autumn news</a>:\n      Stopped, Live" in home
    for name in ("activation_succeed", "activate", "stop"):
        assert f">{name}<" not in log


def test_a_live_campaign_went_live_in_words(admin_client):
    campaign = make_campaign_in_status(Status.SCHEDULED)
    services.campaigns_start_due(now=campaign.live_version.start_at)

    html = admin_client.get(change_url(campaign)).content.decode()

    log = html[html.index('id="transitions"') :]
    assert "<td>Went live</td>" in log


def test_api_keeps_the_name_and_adds_the_label(api_client):
    campaign = stopped_campaign()

    response = api_client.get(url(campaign, "transitions"))

    assert response.status_code == 200
    log = response.json()["results"]
    assert [entry["label"] for entry in log] == STOPPED_LOG
    assert [entry["name"] for entry in log] == ["stop", "activation_succeed", "activate", "create"]


def test_command_shows_each_step_in_words_and_by_name():
    campaign = stopped_campaign()
    out = StringIO()

    call_command("campaign", "show", str(campaign.pk), stdout=out)

    output = out.getvalue()
    assert "Activated (activation_succeed): activating → live by system" in output
    assert "Stopped (stop): live → stopped by system — Enough" in output


@pytest.mark.parametrize(
    ("url_name", "title"),
    [
        ("admin:campaigns_campaign_changelist", "Campaigns"),
        ("admin:segments_segment_changelist", "Segments"),
        ("admin:segments_profile_changelist", "Profiles"),
        ("admin:channels_messagepreset_changelist", "Message presets"),
    ],
)
def test_lists_are_titled_by_what_they_list(admin_client, url_name, title):
    html = admin_client.get(reverse(url_name)).content.decode()

    assert f"<h1>{title}</h1>" in html
    assert f"<title>{title} |" in html
    assert "to change" not in html
    # The pop-up that picks one for a relation still asks for a choice.
    popup = admin_client.get(reverse(url_name), {"_popup": "1"}).content.decode()
    assert "<h1>Select " in popup


@pytest.mark.parametrize(
    ("status", "role"),
    [
        (Status.LIVE, "Running"),
        (Status.SCHEDULED, "Scheduled"),
        (Status.COMPLETED, "Last run"),
        (Status.STOPPED, "Last run"),
    ],
)
def test_the_live_version_is_running_only_while_the_campaign_runs(admin_client, status, role):
    campaign = make_campaign_in_status(status)

    html = admin_client.get(change_url(campaign)).content.decode()

    block = html[html.index('id="live-version"') : html.index('id="versions"')]
    assert f"<h2>{role} — version 1</h2>" in block
    versions = html[html.index('id="versions"') : html.index('id="transitions"')]
    assert f'<span class="salvo-mark">{role.lower()}</span>' in versions
    if role != "Running":
        assert "unning" not in block + versions


# --- every time with its zone ------------------------------------------------------------

# A zone without summer time: its name is the same whatever day the test runs.
ZONE, ZONE_NAME = "Asia/Tokyo", "JST"
ZONED = re.compile(rf"\d\d:\d\d(:\d\d)? {ZONE_NAME}\b")


@pytest.fixture
def tokyo(settings):
    settings.TIME_ZONE = ZONE


def cells(html: str, block_id: str, column: int) -> list[str]:
    """The text of one column of the rows of the table in the block ``block_id``."""
    block = html[html.index(f'id="{block_id}"') :]
    body = block[block.index("<tbody>") : block.index("</tbody>")]
    rows = re.findall(r"<tr>(.*?)</tr>", body, flags=re.S)
    return [re.findall(r"<td[^>]*>(.*?)</td>", row, flags=re.S)[column] for row in rows]


def test_the_campaign_page_shows_every_time_with_its_zone(admin_client, tokyo):
    campaign = make_campaign_in_status(Status.SCHEDULED, name="Autumn news")

    html = admin_client.get(change_url(campaign)).content.decode()

    when = cells(html, "transitions", 0)
    assert len(when) == 3
    assert all(ZONED.search(cell) for cell in when), when
    start, activated = cells(html, "versions", 3)[0], cells(html, "versions", 4)[0]
    assert ZONED.search(start), start
    assert ZONED.search(activated), activated
    live = html[html.index('id="live-version"') : html.index('id="versions"')]
    assert len(ZONED.findall(live)) == 2  # its start and its activation
    report = html[html.index('id="report"') : html.index('id="report-announce"')]
    assert ZONED.search(report[report.index("the campaign starts") :])


def test_the_list_the_dashboard_and_the_report_show_times_with_their_zone(admin_client, tokyo):
    campaign = make_live_campaign(name="Autumn news")

    listing = admin_client.get(reverse("admin:campaigns_campaign_changelist")).content.decode()
    home = admin_client.get(reverse("admin:index")).content.decode()
    page = admin_client.get(change_url(campaign)).content.decode()

    row = listing[listing.index("Autumn news") :]
    row = row[: row.index("</tr>")]
    assert len(ZONED.findall(row)) == 2  # started and updated
    changes = home[home.index('<ul class="salvo-transitions">') :]
    assert ZONED.search(changes[: changes.index("</li>")])
    report = page[page.index('id="report"') : page.index('id="report-announce"')]
    assert ZONED.search(report), report
