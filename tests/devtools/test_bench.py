"""manage.py bench_delivery: a clear one-line refusal of bad options, and a small run of
both designs end to end (the sinks, a real worker and web process on the test database)."""

import json
from io import StringIO

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection

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
        (["--history-deliveries", "-1"], "--history-deliveries must be 0 or more."),
    ],
)
def test_bench_delivery_refuses_bad_options_in_one_line(options, error):
    with pytest.raises(CommandError) as refused:
        call_command("bench_delivery", *options, stdout=StringIO())
    assert str(refused.value).startswith(error)
    assert "\n" not in str(refused.value)


@pytest.mark.skipif(
    settings.DATABASES["default"]["ENGINE"] != "django.db.backends.sqlite3",
    reason="the refusal of SQLite (on PostgreSQL the option runs the benchmark)",
)
def test_bench_delivery_refuses_the_history_mode_on_sqlite_in_one_line():
    with pytest.raises(CommandError) as refused:
        call_command("bench_delivery", "--history-deliveries", "100", stdout=StringIO())
    assert str(refused.value) == (
        "--history-deliveries needs PostgreSQL (rows generated with generate_series, "
        "sizes read with pg_total_relation_size); this database is sqlite."
    )


@pytest.mark.postgres
def test_the_history_keeps_exactly_n_rows_that_its_campaigns_reports_count(db):
    from campaigns.models import Delivery, DeliveryEngagement, DeliveryEvent, Execution
    from campaigns.selectors import campaign_report
    from devtools.bench.data import campaign_create, earlier_runs_delete, profiles_ensure
    from devtools.bench.history import (
        EXPIRED_PREFIX,
        delivery_table_size,
        history_campaigns,
        history_ensure,
        retention_figure,
    )

    profiles_ensure("bench-", 30, say=print)
    # A bench run's own delivery: not history, and left alone by it.
    bench = campaign_create("bench-", 30, ["sms"], None)  # type: ignore[arg-type]
    execution = Execution.objects.create(campaign=bench, version=bench.draft_version)
    Delivery.objects.create(
        execution=execution, action=bench.draft_version.actions.get(), profile_id=1
    )
    said: list[str] = []

    def reports_total() -> int:
        return sum(campaign_report(campaign=c)["total"] for c in history_campaigns())

    for n in (101, 101, 37, 120):
        history_ensure(n, days=3, say=said.append)

        campaigns = list(history_campaigns())
        assert len(campaigns) == 3
        assert {c.status for c in campaigns} == {"completed"}
        history = Delivery.objects.filter(execution__campaign__in=campaigns)
        assert history.count() == n
        assert reports_total() == n
        reports = [campaign_report(campaign=c) for c in campaigns]
        assert sum(r["by_channel"]["email"]["total"] for r in reports) == (n + 1) // 2
        assert sum(r["by_status"]["pending"] for r in reports) == 0
        assert not history.filter(provider_message_id="", status="sent").exists()
        # The events and their engagement rows belong to sent history rows only.
        engaged = DeliveryEngagement.objects.filter(execution__campaign__in=campaigns)
        assert (
            DeliveryEvent.objects.filter(delivery__in=history.filter(status="sent")).count()
            == (DeliveryEvent.objects.filter(event_id__startswith="bench-history-").count())
            == engaged.count()
            > 0
        )
        opened = sum(r["engagement"]["by_channel"]["email"]["opened"]["count"] for r in reports)
        assert opened == engaged.filter(kind="opened").count() > 0
    assert Delivery.objects.filter(execution=execution).count() == 1
    assert any(line.startswith("generating 101 history deliveries") for line in said)
    # The second run of 101 changed nothing; 37 trimmed; 120 topped up.
    assert not any(line.startswith("generating 0 ") for line in said)
    assert any(line.startswith("trimming the history to 37") for line in said)
    assert any(line.startswith("generating 83 history deliveries") for line in said)

    # Another number of days: the other days' campaigns go, with their rows.
    history_ensure(120, days=2, say=said.append)
    assert [c.name for c in history_campaigns()] == ["bench-history 001/2", "bench-history 002/2"]
    assert reports_total() == 120
    assert DeliveryEvent.objects.filter(delivery__isnull=True).count() == 0

    earlier_runs_delete()
    assert Delivery.objects.filter(execution__campaign__in=history_campaigns()).count() == 120
    size = delivery_table_size()
    assert size["rows"] == 120
    assert size["total_bytes"] >= size["table_bytes"] + size["index_bytes"] > 0
    assert size["bytes_per_delivery"] == round(size["total_bytes"] / 120)

    # retention_drop_s: a month of 120 / 12 expired rows, made and dropped; the year stays.
    drop = retention_figure(120, say=said.append)
    assert drop is not None
    assert drop.seconds > drop.drop_seconds > 0
    assert Delivery.objects.filter(execution__campaign__in=history_campaigns()).count() == 120
    assert not history_campaigns(EXPIRED_PREFIX).exists()
    assert any(
        line.startswith("retention_drop_s = ") and "Dropped 10 deliveries of 30 runs" in line
        for line in said
    )


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


def bench_run(monkeypatch, command: str, *options: str) -> tuple[list[str], dict]:
    """What a benchmark command with these options prints: its human lines, and its JSON
    summary (the last line). Its worker and web processes inherit this environment: the
    test database."""
    for name, value in child_process_env().items():
        monkeypatch.setenv(name, value)
    out = StringIO()
    call_command(command, *options, stdout=out)
    *lines, last = out.getvalue().splitlines()
    return lines, json.loads(last)


@pytest.mark.worker
@pytest.mark.timeout(600)
def test_bench_delivery_measures_the_engine_and_the_naive_design(transactional_db, monkeypatch):
    lines, summary = bench_run(
        monkeypatch,
        "bench_delivery",
        *("--profiles", "40", "--channels", "sms,webhook", "--workers", "1"),
        *("--naive-profiles", "10", "--timeout", "300"),
    )

    assert (summary["profiles"], summary["channels"]) == (40, ["sms", "webhook"])
    assert summary["deliveries_per_s"] > 0
    assert summary["naive_deliveries_per_s"] > 0
    assert summary["naive_ratio"] > 0
    assert summary["duplicates"] == 0
    # No history; its size per row only where PostgreSQL reports it.
    assert summary["history_deliveries"] == 0
    assert (summary["bytes_per_delivery"] is None) == (connection.vendor != "postgresql")
    # The peak memory of the benchmark's own process and of the sink's.
    assert summary["bench_peak_rss_mb"] > 0
    assert summary["sink_peak_rss_mb"] > 0
    assert any(line.startswith("peak RSS: this benchmark's process ") for line in lines)
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
    lines, summary = bench_run(
        monkeypatch,
        "bench_delivery",
        *("--profiles", "30", "--channels", "email", "--workers", "1", "--esp", "none"),
        *("--naive-profiles", "0", "--no-cap-runs", "--timeout", "300"),
    )

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
    return bench_run(monkeypatch, "bench_events", *options)[1]


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
