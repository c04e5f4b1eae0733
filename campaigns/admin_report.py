"""The live report on a campaign's change page: what went out, per execution and channel,
why the rest did not, how fast, and a chart of it over time.

The page renders the report with the rest of the form; while the campaign may still send,
the page's script asks `CampaignAdmin.report_view` for a fresh copy every few seconds (the
same HTML, rendered here) and stops when the campaign reaches a status in which nothing
more is sent. The chart is SVG drawn on the server: nothing is loaded from elsewhere, and the
figures it draws are also given as a table.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.http import HttpRequest
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.formats import date_format, number_format

from channels.choices import ChannelKind
from config.formats import short_datetime

from .choices import (
    HOLDOUT_GROUP,
    REST_GROUP,
    CampaignStatus,
    DeliveryReason,
    DeliveryStatus,
    ExecutionStatus,
)
from .engagement import OUTCOME_LABELS
from .experiments import experiment_comparisons
from .models import Campaign
from .selectors import DELIVERY_VIEW_PERMISSIONS, campaign_report, progress_percent

# While the campaign is in one of these statuses the page refreshes its report after this
# many milliseconds; in any other status nothing more will be sent and it stops asking.
REPORT_REFRESH_MS: dict[str, int] = {
    CampaignStatus.ACTIVATING: 3_000,
    CampaignStatus.LIVE: 3_000,
    # A start that may be days away: ask less often, and start the live pace when it goes.
    CampaignStatus.SCHEDULED: 15_000,
}
# Executions shown with their own table, newest first (a recurring campaign has many; the
# API's report lists them all).
REPORT_MAX_EXECUTIONS = 10

# The chart's geometry, in SVG user units (it scales to the page's width).
CHART_WIDTH, CHART_HEIGHT = 720, 220
CHART_MARGIN = {"left": 64, "right": 110, "top": 14, "bottom": 34}
# One line per channel, told apart by colour, by dash pattern and by the channel's name at
# the end of the line (colour is never the only carrier).
CHANNEL_STROKES: dict[str, tuple[str, str]] = {
    ChannelKind.EMAIL: ("#0969da", ""),
    ChannelKind.SMS: ("#bf3989", "8 4"),
    ChannelKind.PUSH: ("#1a7f37", "2 4"),
    ChannelKind.WEBHOOK: ("#9a6700", "10 4 2 4"),
}
CHANNEL_LABELS = {str(value): str(label) for value, label in ChannelKind.choices}
REASON_LABELS = {str(value): str(label) for value, label in DeliveryReason.choices}


def refresh_ms(campaign: Campaign) -> int | None:
    """How soon the page asks for the report again; None once nothing more is sent."""
    return REPORT_REFRESH_MS.get(campaign.status)


def _nice_ceiling(value: int) -> int:
    """The smallest of 1, 2, 5 × 10^k at or above `value` (at least 1): the chart's top."""
    if value <= 1:
        return 1
    power = 10 ** (len(str(value)) - 1)
    for step in (1, 2, 5):
        if step * power >= value:
            return step * power
    return 10 * power


def _short_time(at: dt.datetime, *, with_date: bool) -> str:
    local = timezone.localtime(at)
    return date_format(local, "M j, H:i" if with_date else "H:i:s")


def _chart(timeline: dict[str, Any], channels: list[str]) -> dict[str, Any] | None:
    """The SVG chart of messages sent per channel, cumulated over the timeline's intervals,
    and the same figures as table rows. None before anything could be drawn."""
    points = timeline["points"]
    if not points or not channels:
        return None
    totals = dict.fromkeys(channels, 0)
    interval = dt.timedelta(seconds=timeline["interval_s"])
    # Each line starts from nothing when the first interval began; each point is the
    # running total at the end of its interval.
    rows = [{"at": points[0]["at"], "sent": [0 for _ in channels]}]
    for point in points:
        for channel in channels:
            totals[channel] += point[DeliveryStatus.SENT].get(channel, 0)
        rows.append({"at": point["at"] + interval, "sent": [totals[c] for c in channels]})
    top = _nice_ceiling(max(totals.values()))
    left, right = CHART_MARGIN["left"], CHART_WIDTH - CHART_MARGIN["right"]
    upper, lower = CHART_MARGIN["top"], CHART_HEIGHT - CHART_MARGIN["bottom"]
    last = len(rows) - 1

    def x(index: int) -> float:
        return round(left + (right - left) * index / last, 1)

    def y(value: int) -> float:
        return round(lower - (lower - upper) * value / top, 1)

    lines: list[dict[str, Any]] = []
    for position, channel in enumerate(channels):
        colour, dash = CHANNEL_STROKES.get(channel, ("#57606a", ""))
        path = " ".join(f"{x(i)},{y(row['sent'][position])}" for i, row in enumerate(rows))
        lines.append(
            {
                "channel": channel,
                "label": CHANNEL_LABELS.get(channel, channel),
                "points": path,
                "colour": colour,
                "dash": dash,
                "end_y": y(totals[channel]),
                "total": totals[channel],
            }
        )
    # Labels at the lines' ends must not overprint: push each below the one above it.
    for line, above in zip(
        sorted(lines, key=lambda line: line["end_y"])[1:],
        sorted(lines, key=lambda line: line["end_y"]),
        strict=False,
    ):
        line["end_y"] = max(line["end_y"], above["end_y"] + 14)
    span = (points[-1]["at"] - points[0]["at"]).total_seconds()
    with_date = span >= 86_400
    ticks_x = sorted({0, last // 2, last})
    return {
        "width": CHART_WIDTH,
        "height": CHART_HEIGHT,
        "left": left,
        "right": right,
        "upper": upper,
        "lower": lower,
        "label_x": right + 8,
        "lines": lines,
        "y_ticks": [
            {"y": y(value), "label": number_format(value, force_grouping=True)}
            for value in sorted({0, top // 2, top})
        ],
        "x_ticks": [
            {"x": x(i), "label": _short_time(rows[i]["at"], with_date=with_date)} for i in ticks_x
        ],
        "interval_s": timeline["interval_s"],
        "channels": [CHANNEL_LABELS.get(c, c) for c in channels],
        "rows": rows,
        "summary": "; ".join(
            f"{line['label']}: {number_format(line['total'], force_grouping=True)} sent"
            for line in lines
        ),
        "from": short_datetime(rows[0]["at"]),
        "to": short_datetime(rows[-1]["at"]),
    }


def _channel_rows(
    counts: dict[str, dict[str, int]],
    reasons: dict[str, dict[str, int]],
    *,
    deliveries_url: str | None,
) -> list[dict[str, Any]]:
    """One row per channel: its counts, how far it got, and why some were not sent."""
    rows = []
    for channel, figures in counts.items():
        total = figures["total"]
        done = total - figures[DeliveryStatus.PENDING]
        link = f"{deliveries_url}&channel={channel}" if deliveries_url else None
        rows.append(
            {
                "channel": channel,
                "label": CHANNEL_LABELS.get(channel, channel),
                "total": total,
                "done": done,
                "percent": progress_percent(done, total),
                **{str(status): figures[status] for status in DeliveryStatus.values},
                "links": {
                    str(status): f"{link}&status={status}" if link else None
                    for status in DeliveryStatus.values
                },
                "reasons": [
                    {
                        "code": code,
                        "label": REASON_LABELS.get(code, code),
                        "count": count,
                        "url": f"{link}&reason={code}" if link else None,
                    }
                    for code, count in sorted(
                        reasons.get(channel, {}).items(), key=lambda item: (-item[1], item[0])
                    )
                ],
            }
        )
    return rows


def _seconds_text(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def report_context(*, campaign: Campaign, request: HttpRequest) -> dict[str, Any] | None:
    """What the report block shows; None before the campaign's first execution. The
    counts come from `campaign_report` (the same few queries for ten deliveries or ten
    million); links to the deliveries page only for whoever may read deliveries."""
    report = campaign_report(campaign=campaign)
    if not report["executions"]:
        return None
    deliveries_url = None
    if request.user.has_perms(DELIVERY_VIEW_PERMISSIONS):
        deliveries_url = f"{reverse('admin:campaigns_delivery_changelist')}?campaign={campaign.pk}"
    executions = report["executions"]
    shown = executions[:REPORT_MAX_EXECUTIONS]
    rate = report["rate"]
    sending = refresh_ms(campaign) is not None
    shown_executions = [
        {
            **execution,
            "channels": _channel_rows(
                execution["by_channel"], execution["by_reason"], deliveries_url=deliveries_url
            ),
        }
        for execution in shown
    ]
    running = [e for e in shown_executions if e["status"] == ExecutionStatus.RUNNING]
    if sending and running:
        # The rate is measured over what runs now: it belongs to the running execution.
        for row in running[0]["channels"]:
            row["rate"] = rate["by_channel"].get(row["channel"], 0.0)
            row["time_left"] = _seconds_text(rate["time_left_s_by_channel"].get(row["channel"]))
    return {
        "campaign": campaign,
        "sending": sending,
        "updated_at": timezone.localtime(),
        "total": report["total"],
        "by_status": report["by_status"],
        "deliveries_url": deliveries_url,
        "rate": {
            "per_s": rate["per_s"],
            "window_s": rate["window_s"],
            "time_left": _seconds_text(rate["time_left_s"]),
        },
        "several": len(executions) > 1,
        "executions": shown_executions,
        "hidden_executions": len(executions) - len(shown),
        "chart": _chart(report["timeline"], sorted(report["by_channel"])),
        "by_version": report["by_version"],
        # What recipients did after the send (campaigns.engagement), per channel and version.
        "engagement": _engagement_rows(report["engagement"]),
        "experiments": experiment_comparisons(campaign=campaign),
        # What waits for the recipients' local time or the end of quiet hours.
        "waiting": [
            {
                "channel": channel,
                "channel_label": ChannelKind(channel).label,
                "reason": reason,
                "reason_label": DeliveryReason(reason).label,
                **waiting,
            }
            for channel, reasons in report["waiting"].items()
            for reason, waiting in reasons.items()
        ],
    }


def _engagement_rows(engagement: dict[str, Any]) -> dict[str, Any] | None:
    """The engagement table's columns and rows: per channel, then per version when there
    are several; None while no channel sent anything nor had an event."""
    if not engagement["by_channel"]:
        return None

    def cells(counts: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {
                "kind": kind,
                "count": shown["count"],
                "percent": None if shown["rate"] is None else round(100 * shown["rate"], 1),
            }
            for kind, shown in counts.items()
        ]

    channels = [
        {"key": channel, "label": CHANNEL_LABELS.get(channel, channel), "cells": cells(counts)}
        for channel, counts in engagement["by_channel"].items()
    ]
    versions = [
        {"key": number, "label": f"Version {number}", "cells": cells(counts)}
        for number, counts in engagement["by_version"].items()
    ]
    variants = [
        {"key": group, "label": _group_label(group), "cells": cells(counts)}
        for group, counts in engagement["by_variant"].items()
    ]
    return {
        "columns": list(OUTCOME_LABELS.values()),
        "channels": channels,
        "versions": versions if len(versions) > 1 else [],
        "variants": sorted(variants, key=lambda row: (len(row["key"]) > 1, row["key"])),
    }


def _group_label(group: str) -> str:
    """An experiment group's row label: its variant, the holdout, or the rest."""
    if group == HOLDOUT_GROUP:
        return "Holdout (profiles)"
    if group == REST_GROUP:
        return "Rest, sent the winner (profiles)"
    return f"Variant {group} (profiles)"


def report_html(*, campaign: Campaign, request: HttpRequest) -> str:
    return render_to_string(
        "admin/campaigns/campaign/_report.html",
        {
            "salvo_report": report_context(campaign=campaign, request=request),
            "salvo_campaign": campaign,
        },
        request=request,
    )
