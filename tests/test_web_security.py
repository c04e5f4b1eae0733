"""What the web server promises every visitor: a Content-Security-Policy on every page, and
the API's schema and docs only for signed-in users unless published on purpose."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.conf import settings
from django.contrib.staticfiles import finders
from django.test import override_settings

from campaigns.choices import CampaignStatus
from campaigns.models import Campaign
from segments.unsubscribe import unsubscribe_url
from tests.campaigns.factories import make_live_campaign
from tests.segments.factories import ProfileFactory, SegmentFactory

pytestmark = pytest.mark.django_db


def policy(response: Any) -> dict[str, list[str]]:
    header = response.headers.get("Content-Security-Policy", "")
    directives = (part.split() for part in header.split(";") if part.strip())
    return {name: sources for name, *sources in directives}


# --- Content-Security-Policy ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "signed_in"),
    [
        ("/admin/login/", False),
        ("/admin/", True),
        ("/admin/campaigns/campaign/", True),
        ("/api/campaigns/", True),
        ("/api-auth/login/", False),
    ],
)
def test_every_page_carries_a_policy_that_forbids_foreign_and_inline_script(
    client, admin_user, path, signed_in
):
    if signed_in:
        client.force_login(admin_user)

    response = client.get(path, HTTP_ACCEPT="text/html")

    assert response.status_code == 200
    csp = policy(response)
    assert csp["default-src"] == ["'self'"]
    assert csp["object-src"] == ["'none'"]
    assert csp["frame-ancestors"] == ["'none'"]
    assert csp["base-uri"] == ["'self'"]
    script = csp.get("script-src", csp["default-src"])
    assert "'unsafe-inline'" not in script
    assert "'unsafe-eval'" not in script
    assert not [source for source in script if source.startswith(("http", "*"))]


def test_the_admins_own_inline_script_and_style_carry_the_policys_nonce(admin_client):
    campaign = make_live_campaign(name="Weekly digest")

    response = admin_client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/")

    [nonce] = {s for s in policy(response)["script-src"] if s.startswith("'nonce-")}
    assert nonce in policy(response)["style-src"]
    html = response.content.decode()
    tags = re.findall(r"<(script|style)\b([^>]*)>", html)
    inline = [attrs for tag, attrs in tags if "src=" not in attrs and "json" not in attrs]
    assert inline, "the change form has its own inline script and style"
    assert all(f'nonce="{nonce[7:-1]}"' in attrs for attrs in inline), inline


def test_the_public_unsubscribe_page_carries_the_policy(client):
    profile = ProfileFactory.create()
    with override_settings(SALVO_PUBLIC_URL="https://salvo.example.com"):
        url = unsubscribe_url(
            profile_id=profile.pk, external_id=profile.external_id, channel="email"
        )
    assert url is not None

    response = client.get(url.removeprefix("https://salvo.example.com"))

    assert response.status_code == 200
    csp = policy(response)
    assert csp["default-src"] == ["'self'"]
    [nonce] = {s for s in csp["style-src"] if s.startswith("'nonce-")}
    assert f'<style nonce="{nonce[7:-1]}">' in response.content.decode()


# --- the API's schema and docs ----------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/schema/", "/api/docs/", "/api/docs/?script="])
def test_schema_and_docs_refuse_anonymous_visitors(client, path):
    response = client.get(path)

    # Token authentication comes first: an anonymous visitor is asked to authenticate.
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"
    assert b"openapi" not in response.content
    assert b"SwaggerUIBundle" not in response.content


def test_the_docs_page_sends_an_anonymous_visitor_to_sign_in_and_back(client):
    response = client.get("/api/docs/", HTTP_ACCEPT="text/html")

    assert response.status_code == 401
    assert b'href="/api-auth/login/?next=/api/docs/"' in response.content


@pytest.mark.parametrize("path", ["/api/schema/", "/api/docs/", "/api/docs/?script="])
def test_schema_and_docs_serve_signed_in_users(client, user_with_perms, path):
    # Any signed-in user, whatever their permissions: the schema describes, it reveals no data.
    client.force_login(user_with_perms())

    assert client.get(path).status_code == 200


@override_settings(SALVO_API_DOCS_PUBLIC=True)
def test_schema_and_docs_can_be_published_on_purpose(client):
    assert client.get("/api/schema/").status_code == 200
    assert client.get("/api/docs/").status_code == 200


def test_the_docs_page_loads_only_this_servers_files_under_the_sites_policy(
    client, user_with_perms
):
    client.force_login(user_with_perms())

    response = client.get("/api/docs/")

    html = response.content.decode()
    files = re.findall(r'<(?:script|link)\b[^>]*\b(?:src|href)="([^"]+)"', html)
    assert len(files) == 5, files  # stylesheet, favicon, two bundles, start-up script
    assert all(f.startswith("/") and not f.startswith("//") for f in files), files
    static = [f for f in files if f.startswith(settings.STATIC_URL)]
    assert len(static) == 4, files
    for url in static:
        assert finders.find(url.removeprefix(settings.STATIC_URL)), f"not served: {url}"
    [start_up] = set(files) - set(static)
    assert client.get(start_up)["Content-Type"].startswith("application/javascript")
    # No other origin and no inline exception: the page's one <style> carries the nonce.
    csp = policy(response)
    assert not [s for sources in csp.values() for s in sources if "://" in s], csp
    assert "'unsafe-inline'" not in csp["style-src"]
    [nonce] = {s for s in csp["style-src"] if s.startswith("'nonce-")}
    assert f'<style nonce="{nonce[7:-1]}">' in html


# --- the pages in a real browser, under the policy ----------------------------------------


@pytest.fixture
def browser_page(admin_page: Any) -> Any:
    """`admin_page`, recording every policy violation in `page.violations`."""
    page = admin_page
    page.add_init_script(
        "document.addEventListener('securitypolicyviolation', event => console.error("
        "'CSP violation: ' + event.effectiveDirective + ' ' + event.blockedURI + ' at ' + "
        "event.sourceFile + ':' + event.lineNumber));"
    )
    violations: list[str] = []

    def record(message: Any) -> None:
        if "CSP violation" in message.text or "Content Security Policy" in message.text:
            violations.append(message.text)

    page.on("console", record)
    page.violations = violations
    return page


@pytest.mark.browser
def test_admin_api_and_docs_pages_work_under_the_policy(browser_page, live_server):
    page = browser_page
    campaign = make_live_campaign(name="Weekly digest")
    segment = SegmentFactory.create()
    profile = ProfileFactory.create()
    with override_settings(SALVO_PUBLIC_URL=live_server.url):
        unsubscribe = unsubscribe_url(
            profile_id=profile.pk, external_id=profile.external_id, channel="email"
        )
    assert unsubscribe is not None

    for path in [
        "/admin/",
        "/admin/campaigns/campaign/",
        "/admin/campaigns/campaign/add/",
        f"/admin/campaigns/campaign/{campaign.pk}/change/",
        "/admin/segments/profile/",
        "/admin/segments/profile/import/",
        "/admin/segments/segment/add/",
        f"/admin/segments/segment/{segment.pk}/change/",
        "/admin/channels/messagepreset/add/",
        "/api/",
        "/api/campaigns/",
        "/api/docs/",
        unsubscribe.removeprefix(live_server.url),
    ]:
        page.goto(f"{live_server.url}{path}", wait_until="load")
        assert page.violations == [], "\n".join([path, *page.violations])

    # The lifecycle buttons' inline script runs: Stop asks first, and "Cancel" stops nothing.
    page.goto(f"{live_server.url}/admin/campaigns/campaign/{campaign.pk}/change/")
    asked: list[str] = []

    def cancel(dialog: Any) -> None:
        asked.append(dialog.message)
        dialog.dismiss()

    page.once("dialog", cancel)
    page.click("button[data-operation=stop]")
    page.wait_for_load_state()
    assert asked
    assert Campaign.objects.get(pk=campaign.pk).status == CampaignStatus.LIVE
    # The admin's own stylesheet applies: the status badge is styled, not bare text.
    badge = page.locator("#lifecycle .salvo-badge")
    assert badge.evaluate("element => getComputedStyle(element).display") == "inline-block"

    # The browsable API's menu logs out (DRF's own link did it from an inline onclick).
    page.goto(f"{live_server.url}/api/campaigns/")
    page.click(".navbar .dropdown-toggle")
    page.click("#logoutForm button[type=submit]")
    page.wait_for_load_state()
    page.goto(f"{live_server.url}/api/campaigns/")
    assert page.locator(".navbar a", has_text="Log in").count() == 1
    assert page.violations == []


@pytest.mark.browser
def test_swagger_ui_renders_the_operations_with_no_network_but_this_server(
    browser_page, live_server
):
    page = browser_page
    elsewhere: list[str] = []

    def this_server_only(route: Any) -> None:
        if route.request.url.startswith(live_server.url):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    page.route("**/*", this_server_only)

    page.goto(f"{live_server.url}/api/docs/")

    operations = page.locator(".opblock-summary-path")
    operations.filter(has_text="/api/campaigns/{id}/activate/").wait_for()
    assert operations.count() > 20
    assert elsewhere == []
    assert page.violations == []
