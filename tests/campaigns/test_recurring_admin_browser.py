"""The admin's recurrence fields, used with the keyboard alone, with no script of their
own (plain labelled fields); `admin_page` runs axe-core on the page in both themes."""

from __future__ import annotations

from typing import Any

import pytest

from campaigns.choices import CampaignKind
from campaigns.models import CampaignVersion
from tests.campaigns.doors import change_url
from tests.campaigns.factories import make_campaign
from tests.test_keyboard_browser import tab_to

pytestmark = pytest.mark.browser


def test_the_recurrence_is_set_with_the_keyboard_alone(admin_page: Any, live_server: Any) -> None:
    page = admin_page
    campaign = make_campaign(name="Weekly letter", kind=CampaignKind.RECURRING)
    page.goto(f"{live_server.url}{change_url(campaign)}")

    tab_to(page, "#id_recurrence_every")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")  # Does not repeat → Every day → Every week
    tab_to(page, "#id_recurrence_at")
    page.keyboard.type("08:30")
    tab_to(page, 'input[name="recurrence_weekdays"][value="friday"]')
    page.keyboard.press("Space")
    tab_to(page, 'input[name="_continue"]')
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert page.locator(".errorlist").count() == 0, page.locator(".errorlist").all_inner_texts()

    version = CampaignVersion.objects.get(pk=campaign.draft_version_id)
    assert version.recurrence == {
        "every": "week",
        "interval": 1,
        "at": "08:30",
        "weekdays": ["friday"],
        "month_days": [],
    }
