"""Accessibility checks built into the browser tests: axe-core (bundled by
axe-playwright-python, nothing fetched from a CDN) runs on every page the browser loads, in
the admin's light and dark themes, and the test fails on any violation of serious or
critical impact.

Violations already known on pages owned elsewhere (KNOWN_ELSEWHERE) are warnings instead.

`AxeCheckedPage` wraps a Playwright page: before each call the test makes on it, the page
loaded since the last call (if any) is checked as it first appeared, before the test
clicks or types into it; `finish()` checks the last page and fails the test with every
violation seen, each with the page it was on."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import pytest

# The impacts that fail a test; "minor" and "moderate" ones are left to review.
FAILING_IMPACTS = frozenset({"serious", "critical"})
_LOAD_TIMEOUT_MS = 30_000
# No preloading of the stylesheets: axe would add <style> elements the pages' CSP refuses,
# which tests of the policy would see as violations of their own.
AXE_OPTIONS: dict[str, Any] = {"resultTypes": ["violations"], "preload": False}
# Every page is checked in both of the admin's themes: contrast differs between them.
THEMES = ("light", "dark")
# Resolves once the page's transitions have ended (at most 2 s: an endless animation).
# Evaluated, not polled by wait_for_function: the pages' CSP forbids the eval it uses.
SETTLED = """() => Promise.race([
  Promise.all(document.getAnimations().map(a => a.finished.catch(() => null))),
  new Promise(resolve => setTimeout(resolve, 2000)),
])"""

# Violations axe finds on pages the admin's campaign work does not own, kept visible as
# warnings (the run's summary lists them) rather than failing every test that passes by:
# (path pattern, rule) → whose page it is. Fix the page, then remove its line.
KNOWN_ELSEWHERE: dict[tuple[str, str], str] = {
    # DRF's browsable API (rest_framework templates): no lang, unnamed dropdown buttons,
    # unlabelled form inputs, low-contrast active tab and help text.
    (r"^/api/(?!docs/)", "html-has-lang"): "DRF browsable API",
    (r"^/api/(?!docs/)", "button-name"): "DRF browsable API",
    (r"^/api/(?!docs/)", "label"): "DRF browsable API",
    (r"^/api/(?!docs/)", "select-name"): "DRF browsable API",
    (r"^/api/(?!docs/)", "color-contrast"): "DRF browsable API",
    # Swagger UI's own markup (swagger-ui-dist, served by drf-spectacular-sidecar): each
    # operation's summary is a button holding other controls, and its method badges and
    # grey labels are below the contrast minimum. The page around it (lang, landmark) is ours.
    (r"^/api/docs/", "nested-interactive"): "Swagger UI (swagger-ui-dist)",
    (r"^/api/docs/", "color-contrast"): "Swagger UI (swagger-ui-dist)",
}


def _known_elsewhere(url: str, rule: str) -> str | None:
    path = re.sub(r"^https?://[^/]+", "", url)
    for (pattern, known_rule), owner in KNOWN_ELSEWHERE.items():
        if known_rule == rule and re.search(pattern, path):
            return owner
    return None


@dataclass
class Violation:
    url: str
    rule: str
    impact: str
    help: str
    targets: list[str]
    theme: str = ""

    def __str__(self) -> str:
        where = ", ".join(self.targets[:5]) + (" …" if len(self.targets) > 5 else "")
        return (
            f"{self.url} ({self.theme} theme): [{self.impact}] {self.rule}: {self.help} ({where})"
        )


def _axe() -> Any:
    from axe_playwright_python.sync_playwright import Axe

    return Axe()


@dataclass
class AxeCheckedPage:
    page: Any
    axe_checked_urls: list[str] = field(default_factory=list)
    axe_violations: list[Violation] = field(default_factory=list)
    _pending: bool = True
    _axe: Any = field(default_factory=_axe)

    def __post_init__(self) -> None:
        self.page.on("load", self._loaded)

    def _loaded(self, _page: Any) -> None:
        self._pending = True  # checked at the test's next call, outside this event handler

    def check(self) -> None:
        """Run axe on the current page now if it loaded since the last check."""
        if not self._pending or self.page.is_closed():
            return
        self._pending = False
        if not self.page.url.startswith(("http://", "https://")):
            return  # the blank page a new tab opens on
        from playwright.sync_api import Error

        for _ in range(3):
            try:
                self.page.wait_for_load_state("load", timeout=_LOAD_TIMEOUT_MS)
                results = self._run_in_each_theme()
                break
            except Error as error:
                # The page navigated away while axe ran: check the one it went to.
                if "context was destroyed" not in str(error):
                    raise
        else:
            pytest.fail(f"axe could not check {self.page.url}: it kept navigating")
        url = self.page.url
        self.axe_checked_urls.append(url)
        for theme, response in results:
            for found in response["violations"]:
                if found["impact"] not in FAILING_IMPACTS:
                    continue
                violation = Violation(
                    url=url,
                    rule=found["id"],
                    impact=found["impact"],
                    help=found["help"],
                    targets=[" ".join(map(str, node["target"])) for node in found["nodes"]],
                    theme=theme,
                )
                owner = _known_elsewhere(url, violation.rule)
                if owner is None:
                    self.axe_violations.append(violation)
                else:
                    warnings.warn(f"known accessibility debt ({owner}): {violation}", stacklevel=1)

    def _run_in_each_theme(self) -> list[tuple[str, dict[str, Any]]]:
        """axe's findings on the page in each of the admin's THEMES (the admin's own
        switch: the `data-theme` attribute of <html>), the page's own theme restored."""
        found = []
        chosen = self.page.evaluate("document.documentElement.dataset.theme || ''")
        try:
            for theme in THEMES:
                self.page.evaluate(
                    "theme => { document.documentElement.dataset.theme = theme; }", theme
                )
                # The admin's colours change with a transition: check them once settled.
                self.page.evaluate(SETTLED)
                found.append((theme, self._axe.run(self.page, options=AXE_OPTIONS).response))
        finally:
            self.page.evaluate(
                "theme => { document.documentElement.dataset.theme = theme; }", chosen
            )
        return found

    def check_now(self) -> None:
        """Run axe on the page as it is now: after the page changed itself (a part of it
        refreshed in place), which no load event announces."""
        self._pending = True
        self.check()

    def finish(self) -> None:
        """Check the last page, then fail with every serious or critical violation seen."""
        self.check()
        if self.axe_violations:
            lines = "\n".join(f"  {v}" for v in self.axe_violations)
            pytest.fail(
                f"axe found {len(self.axe_violations)} serious or critical accessibility "
                f"violation(s):\n{lines}",
                pytrace=False,
            )

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.page, name)
        if not callable(attribute):
            self.check()
            return attribute

        def checked_first(*args: Any, **kwargs: Any) -> Any:
            self.check()
            return attribute(*args, **kwargs)

        return checked_first
