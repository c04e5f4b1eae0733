"""Every admin page Salvo adds, opened in Chromium with data on it: each list, add and change
page of each model the admin registers for Salvo's apps, and the pages they link to (the
profile import, a campaign's deliveries). `admin_page` runs axe-core on each page in both
themes and fails on any serious or critical violation (tests/accessibility.py).

The pages are found from the admin's own registry, so a model added later is checked
without a line here."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib import admin
from django.urls import NoReverseMatch, reverse

from tests.campaigns.factories import make_campaign, make_campaign_in_status
from tests.segments.factories import ProfileFactory, SegmentFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SALVO_APPS = ("campaigns", "channels", "segments")


def admin_urls() -> list[str]:
    """The list page, the add page and the first object's change page of every model the
    admin registers for Salvo's apps."""
    urls = []
    for model, model_admin in admin.site._registry.items():
        meta = model._meta
        if meta.app_label not in SALVO_APPS:
            continue
        name = f"admin:{meta.app_label}_{meta.model_name}"
        urls.append(reverse(f"{name}_changelist"))
        if model_admin.has_add_permission(_superuser_request()):
            urls.append(reverse(f"{name}_add"))
        first = model._default_manager.order_by("pk").first()
        try:  # a model shown only as a list (deliveries) has no change page
            change = reverse(f"{name}_change", args=[first.pk]) if first else None
        except NoReverseMatch:
            change = None
        if change:
            urls.append(change)
    return urls


def _superuser_request() -> Any:
    from django.contrib.auth.models import User
    from django.test import RequestFactory

    request = RequestFactory().get("/admin/")
    request.user = User(is_superuser=True, is_staff=True, is_active=True)
    return request


def test_every_salvo_admin_page_passes_axe_in_both_themes(
    admin_page: Any, live_server: Any
) -> None:
    page = admin_page
    ProfileFactory.create_batch(3, attributes={"plan": "pro"})
    # A rule segment: its change page carries the rule builder, checked as it has drawn it.
    SegmentFactory.create(rules={"all": [{"field": "attributes.plan", "op": "eq", "value": "pro"}]})
    spring = make_campaign(name="Spring sale")
    live = make_campaign_in_status("live", with_draft=True, name="Winter sale")

    urls = admin_urls()
    urls += [
        reverse("admin:index"),
        reverse("admin:segments_profile_import"),
        reverse("admin:campaigns_campaign_preview", args=[live.pk]),
        reverse("admin:campaigns_campaign_version_diff", args=[live.pk]),
        # The review page, with its checks and a warning to tick, for one and for several.
        reverse("admin:campaigns_campaign_review", args=[spring.pk]),
        reverse("admin:campaigns_campaign_reviews") + f"?id={spring.pk}&id={live.pk}",
        reverse("admin:campaigns_delivery_changelist") + f"?campaign={live.pk}",
    ]
    # Every registered model of the three apps was reached: a list, an add and a change.
    assert any("/campaigns/campaign/add/" in url for url in urls)
    assert any("/channels/messagepreset/" in url for url in urls)

    for url in urls:
        response = page.goto(f"{live_server.url}{url}")
        assert response is not None, url
        assert response.ok, f"{url}: HTTP {response.status}"
        if "/segments/segment/" in url and not url.endswith("/segment/"):
            # The rule builder draws itself and its live count after the load event.
            page.locator("#rule-estimate [data-role=count]").wait_for()
            page.check_now()
        page.check()
