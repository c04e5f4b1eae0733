"""manage.py bench_delivery: a clear one-line refusal of bad options, and a small run of
both designs end to end (the sinks, a real worker and web process on the test database)."""

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from config.processes import child_process_env


@pytest.mark.parametrize(
    ("options", "error"),
    [
        (["--channels", "email,fax"], "--channels: unknown fax; choose from"),
        (["--channels", ","], "--channels: unknown none; choose from"),
        (["--profiles", "0"], "--profiles and --workers must be at least 1."),
        (["--workers", "0"], "--profiles and --workers must be at least 1."),
        (["--profiles", "10", "--esp-profiles", "11"], "--esp-profiles must be from 0 to"),
        (["--esp-profiles", "-1"], "--esp-profiles must be from 0 to --profiles"),
    ],
)
def test_bench_delivery_refuses_bad_options_in_one_line(options, error):
    with pytest.raises(CommandError) as refused:
        call_command("bench_delivery", *options, stdout=StringIO())
    assert str(refused.value).startswith(error)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(
    ("options", "error"),
    [
        (["--recipients", "0"], "--recipients, --per-call and --clients must be at least 1."),
        (["--clients", "0"], "--recipients, --per-call and --clients must be at least 1."),
        (["--rate", "-5"], "--rate must be 0 (as fast as answered) or more."),
        (["--workers", "0"], "--workers must be at least 1."),
    ],
)
def test_bench_triggers_refuses_bad_options_in_one_line(options, error):
    with pytest.raises(CommandError) as refused:
        call_command("bench_triggers", *options, stdout=StringIO())
    assert str(refused.value) == error


@pytest.mark.worker
@pytest.mark.timeout(600)
def test_bench_delivery_measures_the_engine_and_the_naive_design(transactional_db, monkeypatch):
    # The benchmark's worker and web process inherit this environment: the test database.
    for name, value in child_process_env().items():
        monkeypatch.setenv(name, value)
    out = StringIO()

    call_command(
        "bench_delivery",
        *("--profiles", "40", "--channels", "sms,webhook", "--workers", "1"),
        *("--naive-profiles", "10", "--timeout", "300"),
        stdout=out,
    )

    *lines, last = out.getvalue().splitlines()
    summary = json.loads(last)
    assert (summary["profiles"], summary["channels"]) == (40, ["sms", "webhook"])
    assert summary["deliveries_per_s"] > 0
    assert summary["naive_deliveries_per_s"] > 0
    assert summary["naive_ratio"] > 0
    assert summary["duplicates"] == 0
    # The frequency caps' runs: both rates, from the same run.
    assert summary["deliveries_per_s_marketing"] > 0
    assert summary["deliveries_per_s_with_cap"] > 0
    assert "cap_cost_pct" in summary
    assert any(line.startswith("frequency cap check: ") for line in lines)
    assert "naive design: 10 profiles × 2 channels…" in lines
    # No email channel, so no run over SMTP.
    assert not any(line.startswith("email over SMTP") for line in lines)
    assert summary["smtp_messages_per_s"] is None
    assert summary["smtp_duplicates"] is None
    assert summary["smtp_chunking_messages_per_s"] is None


@pytest.mark.worker
@pytest.mark.timeout(600)
def test_bench_delivery_measures_email_over_smtp_at_the_sink(transactional_db, monkeypatch):
    for name, value in child_process_env().items():
        monkeypatch.setenv(name, value)
    out = StringIO()

    call_command(
        "bench_delivery",
        *("--profiles", "30", "--channels", "email", "--workers", "1", "--esp", "none"),
        *("--naive-profiles", "0", "--no-cap-runs", "--timeout", "300"),
        stdout=out,
    )

    *lines, last = out.getvalue().splitlines()
    summary = json.loads(last)
    # --smtp-profiles defaults to 100,000, at most --profiles.
    assert any(
        line.startswith("email over SMTP to the sink: ") and "(30 accepted of 30 profiles" in line
        for line in lines
    )
    assert summary["smtp_messages_per_s"] > 0
    assert summary["smtp_first_message_s"] is not None
    assert summary["smtp_duplicates"] == 0
    # Again with the sink advertising CHUNKING: pipelined BDAT.
    assert any(
        line.startswith("email over SMTP with CHUNKING: ") and "(30 accepted of 30;" in line
        for line in lines
    )
    assert summary["smtp_chunking_messages_per_s"] > 0
    assert summary["smtp_chunking_first_message_s"] is not None
    assert summary["duplicates"] == 0


@pytest.mark.parametrize(
    ("options", "error"),
    [
        (["--events", "0"], "--events, --clients and --per-post must be at least 1."),
        (["--per-post", "0"], "--events, --clients and --per-post must be at least 1."),
        (["--duplicates", "1"], "--duplicates must be from 0 to below 1."),
    ],
)
def test_bench_events_refuses_bad_options_in_one_line(options, error):
    with pytest.raises(CommandError) as refused:
        call_command("bench_events", *options, stdout=StringIO())
    assert str(refused.value) == error


def bench_events_summary(monkeypatch, *options: str) -> dict:
    """What ``bench_events`` with these options prints last: its JSON summary."""
    for name, value in child_process_env().items():
        monkeypatch.setenv(name, value)
    out = StringIO()
    call_command("bench_events", *options, stdout=out)
    return json.loads(out.getvalue().splitlines()[-1])


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("format", "per_post"), [("postmark", "1"), ("sendgrid", "7")])
def test_bench_events_posts_to_the_web_server_and_counts_what_it_ignored(
    transactional_db, monkeypatch, format, per_post
):
    summary = bench_events_summary(
        monkeypatch,
        *("--events", "60", "--clients", "3", "--format", format, "--per-post", per_post),
        *("--duplicates", "0.3"),
    )

    assert summary["events"] > 60
    assert summary["duplicates_ignored"] == summary["events"] - 60
    assert summary["events_per_s"] > 0
    assert summary["web_peak_rss_mb"] > 0
    assert summary["format"].startswith("Postmark" if format == "postmark" else "SendGrid")
    from campaigns.models import DeliveryEvent
    from channels.models import Suppression

    assert DeliveryEvent.objects.count() == 60
    assert Suppression.objects.filter(source="provider").exists() == (
        DeliveryEvent.objects.filter(kind__in=["bounced", "complained", "unsubscribed"]).exists()
    )
