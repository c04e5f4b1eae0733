"""The rule builder in a real browser: a segment built without typing JSON (the structure
changed with the keyboard alone), its live count following the edits, and the JSON edited by
hand shown in the builder. Every page, the builder included, is checked with axe-core in the
light and dark themes by `admin_page`."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.urls import reverse

from segments.models import Segment
from tests.segments.factories import ProfileFactory

pytestmark = pytest.mark.browser


def _expect() -> Any:
    return pytest.importorskip("playwright.sync_api").expect


def focused_label(page: Any) -> str:
    return page.evaluate(
        "() => document.activeElement.getAttribute('aria-label')"
        " || document.activeElement.textContent"
    )


def press_on(page: Any, name: str) -> None:
    """Move the focus to the control named `name` and press Enter: no click."""
    page.get_by_label(name, exact=True).focus()
    page.keyboard.press("Enter")


@pytest.fixture
def people(db: None) -> None:
    ProfileFactory.create(external_id="fr-vip", attributes={"country": "FR", "vip": True})
    ProfileFactory.create(external_id="fr-2", attributes={"country": "FR", "vip": False})
    ProfileFactory.create(external_id="fr-3", attributes={"country": "FR"})
    ProfileFactory.create(external_id="be-vip", attributes={"country": "BE", "vip": True})
    ProfileFactory.create(external_id="de-vip", attributes={"country": "DE", "vip": True})


def test_build_a_segment_with_the_keyboard_and_see_the_live_count(
    admin_page: Any, live_server: Any, people: None
) -> None:
    expect = _expect()
    page = admin_page
    page.goto(f"{live_server.url}{reverse('admin:segments_segment_add')}")
    count = page.locator("#rule-estimate [data-role=count]")
    expect(count).to_have_text("5")  # no condition: every profile
    # Without "Edit as JSON" the raw field is out of the way.
    expect(page.locator("#id_rules")).to_be_hidden()
    page.locator("#id_name").fill("French-speaking VIPs")
    # A static segment has no rules: the builder goes while that kind is chosen.
    page.locator("#id_kind").select_option("static")
    expect(page.locator("#rule-builder-panel")).to_be_hidden()
    page.locator("#id_kind").select_option("rules")
    expect(page.locator("#rule-builder-panel")).to_be_visible()

    # Add a condition from the keyboard: the focus lands on its field.
    press_on(page, "Add condition to the top group")
    assert focused_label(page) == "Field of condition 1"
    page.get_by_label("Field of condition 1", exact=True).select_option("attributes.country")
    page.get_by_label("Operator of condition 1", exact=True).select_option("in")
    page.get_by_label("Value of condition 1, one a line", exact=True).fill("FR\nBE")
    expect(count).to_have_text("4")

    page.get_by_role("button", name="Add condition to the top group").click()
    page.get_by_label("Field of condition 2", exact=True).select_option("attributes.vip")
    page.get_by_label("Type of the value of condition 2", exact=True).select_option("boolean")
    page.get_by_label("Value of condition 2", exact=True).select_option("true")
    expect(count).to_have_text("2")
    reach = page.locator("#rule-estimate li[data-channel=email]")
    expect(reach).to_have_text("Email: 2")
    preview = page.locator("#rule-live-preview")
    expect(preview.get_by_role("link")).to_have_text(["fr-vip", "be-vip"])

    # A group added and removed again from the keyboard; the focus comes back to the list.
    press_on(page, "Add group to the top group")
    assert focused_label(page) == "Match of group 3"
    press_on(page, "Remove group 3")
    assert focused_label(page) == "Field of condition 2"
    # Condition 2 moved up from the keyboard: first now, so the focus goes to its "down".
    press_on(page, "Move up condition 2")
    assert focused_label(page) == "Move down condition 1"
    # The focus is visible where it lands.
    outline = page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
    assert outline == "solid"
    assert page.get_by_label("Field of condition 1", exact=True).input_value() == "attributes.vip"
    expect(count).to_have_text("2")
    page.check_now()  # axe on the builder as built

    page.get_by_role("button", name="Save", exact=True).click()
    page.wait_for_url(f"{live_server.url}{reverse('admin:segments_segment_changelist')}")

    segment = Segment.objects.get(name="French-speaking VIPs")
    assert segment.rules == {
        "all": [
            {"field": "attributes.vip", "op": "eq", "value": True},
            {"field": "attributes.country", "op": "in", "value": ["FR", "BE"]},
        ]
    }


def test_json_edited_by_hand_shows_in_the_builder(
    admin_page: Any, live_server: Any, people: None
) -> None:
    expect = _expect()
    page = admin_page
    segment = Segment.objects.create(name="Everyone", rules={})
    page.goto(f"{live_server.url}{reverse('admin:segments_segment_change', args=[segment.pk])}")
    expect(page.locator("#rule-estimate [data-role=count]")).to_have_text("5")

    page.get_by_role("button", name="Edit as JSON (advanced)").click()
    raw = page.locator("#id_rules")
    expect(raw).to_be_visible()
    raw.fill(
        json.dumps(
            {
                "any": [
                    {"field": "attributes.country", "op": "eq", "value": "DE"},
                    {"not": {"field": "attributes.vip", "op": "exists", "value": True}},
                ]
            }
        )
    )
    expect(page.get_by_label("Match of the top group", exact=True)).to_have_value("any")
    expect(page.get_by_label("Field of condition 1", exact=True)).to_have_value(
        "attributes.country"
    )
    expect(page.get_by_label("Operator of condition 2", exact=True)).to_have_value("exists")
    expect(page.get_by_label("Not condition 2", exact=True)).to_be_checked()
    expect(page.get_by_label("Not condition 1", exact=True)).not_to_be_checked()
    expect(page.locator("#rule-estimate [data-role=count]")).to_have_text("2")  # de, fr-3

    # JSON that does not parse is reported and leaves the builder as it was.
    raw.fill('{"all": [')
    expect(page.locator("#rule-json-error")).to_contain_text("does not parse")
    expect(page.get_by_label("Field of condition 1", exact=True)).to_have_value(
        "attributes.country"
    )

    # An invalid tree that parses: the server's message beside the builder.
    raw.fill(json.dumps({"all": [{"field": "attributes.age", "op": "gt", "value": "old"}]}))
    expect(page.locator("#rule-builder-errors")).to_contain_text(
        'all[0].value: "gt" needs a number'
    )
    page.check_now()


def test_the_live_count_is_asked_and_announced_once_the_typing_settles(
    admin_page: Any, live_server: Any, people: None
) -> None:
    expect = _expect()
    page = admin_page
    # The page's timers run only when the test moves its clock: what happens between
    # keystrokes does not depend on how fast this machine types.
    page.clock.install()
    page.goto(f"{live_server.url}{reverse('admin:segments_segment_add')}")
    page.clock.run_for(1000)
    count = page.locator("#rule-estimate [data-role=count]")
    expect(count).to_have_text("5")
    asked: list[str] = []
    page.on(
        "request",
        lambda request: asked.append(request.url) if request.url.endswith("/estimate/") else None,
    )
    page.evaluate(
        """() => {
          window.estimateUpdates = 0;
          new MutationObserver(() => { window.estimateUpdates += 1; })
            .observe(document.getElementById("rule-estimate"), {childList: true, subtree: true});
        }"""
    )

    press_on(page, "Add condition to the top group")
    page.get_by_label("Field of condition 1", exact=True).select_option("attributes.country")
    page.get_by_label("Operator of condition 1", exact=True).select_option("startswith")
    page.get_by_label("Value of condition 1", exact=True).focus()
    page.keyboard.type("FR")
    page.clock.run_for(300)  # less than the pause the estimate waits for
    assert asked == []
    assert page.evaluate("() => window.estimateUpdates") == 0

    page.clock.run_for(200)
    expect(count).to_have_text("3")
    assert len(asked) == 1
    assert page.evaluate("() => window.estimateUpdates") == 1
    assert page.locator("#rule-estimate").get_attribute("aria-live") == "polite"
