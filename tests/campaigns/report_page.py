"""Reading the live report as a marketer sees it: the figures of the HTML block that the
campaign page renders and its refresh endpoint returns (its elements say what they count
in data-* attributes)."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

from django.urls import reverse

from campaigns.models import Campaign

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}
# The attributes that place a figure: which execution, channel, reason or version it counts.
SCOPES = ("data-execution", "data-channel", "data-reason", "data-version")


def report_url(campaign: Campaign) -> str:
    return reverse("admin:campaigns_campaign_report", args=[campaign.pk])


class _Reader(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[dict[str, str]] = []
        self.open: list[tuple[int, dict[str, Any]]] = []
        self.found: list[dict[str, Any]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        if tag in VOID:
            return
        self.stack.append(attributes)
        if "data-figure" in attributes:
            scope = {
                name.removeprefix("data-"): value
                for frame in self.stack
                for name, value in frame.items()
                if name in SCOPES
            }
            figure = {"figure": attributes["data-figure"], **scope, "attrs": attributes, "text": ""}
            self.found.append(figure)
            self.open.append((len(self.stack), figure))

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID or not self.stack:
            return
        while self.open and self.open[-1][0] >= len(self.stack):
            self.open.pop()
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        for _, figure in self.open:
            figure["text"] += data


def figures(html: str) -> list[dict[str, Any]]:
    """Every figure of the report: `{"figure", "execution", "channel", "reason", …,
    "text", "attrs"}` (the scope keys its ancestors give)."""
    reader = _Reader()
    reader.feed(html)
    reader.close()
    for figure in reader.found:
        figure["text"] = " ".join(figure["text"].split())
    return reader.found


def channel_table(html: str) -> dict[str, dict[str, str]]:
    """The newest execution's table: {channel: {figure: text}}, progress as "done/max"."""
    table: dict[str, dict[str, str]] = {}
    first = None
    for figure in figures(html):
        if "channel" not in figure or "execution" not in figure:
            continue
        first = first or figure["execution"]
        if figure["execution"] != first:
            continue
        if figure["figure"] == "done":
            value = f"{figure['attrs']['value']}/{figure['attrs']['max']}"
        else:
            value = figure["text"]
        key = figure["figure"] if "reason" not in figure else f"reason:{figure['reason']}"
        table.setdefault(figure["channel"], {})[key] = value
    return table


def chart_totals(html: str) -> dict[str, str]:
    """The running total at the end of each channel's line of the chart."""
    return {f["channel"]: f["text"] for f in figures(html) if f["figure"] == "chart-total"}


def report_block(page: str) -> str:
    """The report block of a whole change page (from its opening tag to the page's end:
    the readers above only look at figures, which only the block has)."""
    start = page.index('id="report"')
    return page[start:]
