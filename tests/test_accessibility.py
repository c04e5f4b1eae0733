"""The accessibility check every browser test runs (tests/accessibility.py) fails a test
on a serious or critical violation and lets a clean page through; the admin's preview of an
experiment's every variant passes it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.accessibility import AxeCheckedPage

pytestmark = pytest.mark.browser

CLEAN = (
    '<!doctype html><html lang="en"><head><title>Clean</title></head><body><main>'
    '<h1>Clean</h1><label for="q">Name</label><input id="q"></main></body></html>'
)
# An image with no text alternative and a text field without any label: both critical.
BROKEN = (
    '<!doctype html><html lang="en"><head><title>Broken</title></head><body><main>'
    '<h1>Broken</h1><img src="/x.png"><input id="q"></main></body></html>'
)

# Readable in the light theme; in the dark one (the admin's switch, <html data-theme>), grey
# on near-black after a transition, as the admin's own colours change.
DARK_ONLY = (
    '<!doctype html><html lang="en"><head><title>Dark</title><style>'
    "p { color: #222; background: #fff; transition: color 0.3s, background 0.3s; }"
    'html[data-theme="dark"] p { color: #444; background: #222; }'
    "</style></head><body><main><h1>Dark</h1><p>Hard to read at night</p></main></body></html>"
)
PAGES = {"clean": CLEAN, "broken": BROKEN, "dark": DARK_ONLY}


@pytest.fixture
def browser_page(chromium: Any) -> Iterator[Any]:
    context = chromium.new_context()
    page = context.new_page()
    # Pages served by the test itself: nothing leaves the machine.
    page.route(
        "http://a11y.test/**",
        lambda route: route.fulfill(
            content_type="text/html",
            # Anything else (the broken page's image) is not found: an empty body.
            body=PAGES.get(route.request.url.rsplit("/", 1)[-1], ""),
        ),
    )
    yield page
    context.close()


def test_a_page_with_critical_violations_fails_the_test(browser_page):
    page = AxeCheckedPage(browser_page)
    page.goto("http://a11y.test/clean")
    page.goto("http://a11y.test/broken")

    with pytest.raises(pytest.fail.Exception) as failure:
        page.finish()

    assert page.axe_checked_urls == ["http://a11y.test/clean", "http://a11y.test/broken"]
    assert {(v.url, v.rule) for v in page.axe_violations} == {
        ("http://a11y.test/broken", "image-alt"),
        ("http://a11y.test/broken", "label"),
    }
    assert "http://a11y.test/broken (light theme): [critical] image-alt" in str(failure.value)


def test_a_page_is_checked_in_the_dark_theme_too(browser_page):
    page = AxeCheckedPage(browser_page)
    page.goto("http://a11y.test/dark")

    with pytest.raises(pytest.fail.Exception) as failure:
        page.finish()

    assert {(v.theme, v.rule) for v in page.axe_violations} == {("dark", "color-contrast")}
    assert "(dark theme): [serious] color-contrast" in str(failure.value)
    # The page is left in the theme it had.
    assert browser_page.evaluate("document.documentElement.dataset.theme || ''") == ""


def test_a_clean_page_passes(browser_page):
    page = AxeCheckedPage(browser_page)
    page.goto("http://a11y.test/clean")
    page.finish()
    assert page.axe_checked_urls == ["http://a11y.test/clean"]


def test_the_admin_preview_of_every_variant_is_checked_and_passes(
    admin_page: Any, live_server: Any
) -> None:
    """The preview page at its fullest: an experiment's variants, each a labelled section
    with its own HTML frame, on one page (their ids and frame titles unique)."""
    from django.urls import reverse

    from tests.campaigns.test_admin_preview_browser import variants_campaign
    from tests.segments.factories import ProfileFactory

    ann = ProfileFactory.create(external_id="ann-1", attributes={"first_name": "Ann"})
    campaign = variants_campaign()
    url = reverse("admin:campaigns_campaign_preview", args=[campaign.pk])
    admin_page.goto(f"{live_server.url}{url}?profile={ann.pk}")
    assert admin_page.locator("section[data-variant]").count() == 6
    admin_page.finish()
    assert f"{live_server.url}{url}?profile={ann.pk}" in admin_page.axe_checked_urls
    assert admin_page.axe_violations == []
