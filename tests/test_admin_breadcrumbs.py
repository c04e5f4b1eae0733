"""Every page of a model's own (a campaign's preview, review, approval and version
comparison; the imports) leads back the way the admin's own pages do: Home, the app, the
list and, for a campaign's page, the campaign."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from tests.campaigns.doors import change_url, review_url
from tests.campaigns.factories import make_campaign

pytestmark = pytest.mark.django_db


def crumbs(page: str) -> list[tuple[str, str]]:
    """(href, text) of each link of the breadcrumbs, then ("", the last crumb)."""
    block = re.search(r'<div class="breadcrumbs">(.*?)</div>', page, re.S)
    assert block, "the page has breadcrumbs"
    links = re.findall(r'<a href="([^"]*)">([^<]*)</a>', block.group(1))
    last = re.sub(r"<a [^>]*>[^<]*</a>|&rsaquo;|\s+", " ", block.group(1)).split()
    return [*links, ("", " ".join(last))]


def test_a_campaigns_own_pages_lead_back_to_the_campaign(admin_client):
    campaign = make_campaign(name="Spring sale")
    campaigns = reverse("admin:campaigns_campaign_changelist")
    for url, crumb in (
        (review_url(campaign), "Review and activate"),
        (reverse("admin:campaigns_campaign_preview", args=[campaign.pk]), "Preview"),
    ):
        assert crumbs(admin_client.get(url).content.decode()) == [
            ("/admin/", "Home"),
            ("/admin/campaigns/", "Campaigns"),
            (campaigns, "Campaigns"),
            (change_url(campaign), "Spring sale"),
            ("", crumb),
        ]


@pytest.mark.parametrize(
    ("url", "app", "app_label", "model_list"),
    [
        ("admin:channels_suppression_import", "channels", "Channels", "Suppressions"),
        ("admin:segments_profile_import", "segments", "Audience", "Profiles"),
    ],
)
def test_an_import_page_leads_back_to_its_list(admin_client, url, app, app_label, model_list):
    page = admin_client.get(reverse(url)).content.decode()
    found = crumbs(page)
    assert found[:3] == [
        ("/admin/", "Home"),
        (f"/admin/{app}/", app_label),
        (reverse(url.replace("_import", "_changelist")), model_list),
    ]
    assert found[3][0] == ""
    assert found[3][1].startswith("Import")
