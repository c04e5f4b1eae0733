"""The server time of a campaign's report and admin pages, through Django's request handler
in this process (middleware, view, queries, templates; no network)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from django.conf import settings
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from campaigns.models import Campaign, Delivery

from .data import bench_user
from .errors import BenchmarkError

# Requests of each page timed after a run (the median is printed).
PAGE_SAMPLES = 7


def static_files_collect() -> None:
    """Collect the static files as a deployment does after each release: with DEBUG off,
    the pages timed name them through the manifest of hashed names collectstatic writes."""
    call_command("collectstatic", interactive=False, verbosity=0)


def pages_ms(campaigns: dict[str, Campaign], *, say: Callable[[str], None]) -> dict[str, float]:
    """The server time, in milliseconds, of each campaign's report, admin change page
    and that page's refresh: ``report_ms``, ``admin_page_ms`` and ``admin_report_ms``,
    each + suffix, for each suffix → campaign; each the median of PAGE_SAMPLES requests,
    printed as a line. The requests go round the pages in turn, so that all of them meet
    the same moments of the machine."""
    hosts = [h for h in settings.ALLOWED_HOSTS if h and h != "*" and not h.startswith(".")]
    client = Client(HTTP_HOST=hosts[0] if hosts else "localhost")
    client.force_login(bench_user())
    pages = {}
    for suffix, campaign in campaigns.items():
        pages[f"report_ms{suffix}"] = (campaign, f"/api/campaigns/{campaign.pk}/report/")
        pages[f"admin_page_ms{suffix}"] = (
            campaign,
            reverse("admin:campaigns_campaign_change", args=[campaign.pk]),
        )
        pages[f"admin_report_ms{suffix}"] = (
            campaign,
            reverse("admin:campaigns_campaign_report", args=[campaign.pk]),
        )
    samples: dict[str, list[float]] = {key: [] for key in pages}
    for _ in range(PAGE_SAMPLES):
        for key, (_, url) in pages.items():
            samples[key].append(_get_ms(client, url))
    medians = {key: statistics.median(times) for key, times in samples.items()}
    totals = {
        campaign.pk: Delivery.objects.filter(execution__campaign=campaign).count()
        for campaign in campaigns.values()
    }
    for key, (campaign, url) in pages.items():
        say(
            f"{key} = {medians[key]:.1f} ms: GET {url} ({totals[campaign.pk]} deliveries), "
            f"median of {PAGE_SAMPLES}"
        )
    return medians


def _get_ms(client: Client, url: str) -> float:
    """The server time of one GET of url in milliseconds."""
    started = time.perf_counter()
    response = client.get(url, secure=settings.SECURE_SSL_REDIRECT)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise BenchmarkError(f"{url} answered {response.status_code}")
    return elapsed * 1000
