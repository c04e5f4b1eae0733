"""The report's engagement counters (``campaigns.engagement``) against a recount from the
events themselves, as the report counted them before it kept counters: after a mixed
history (opens repeated, events posted twice, a bounce before its send, events naming
deliveries that never existed, two channels of one experiment's profile), after a version
activated between an event and its send, from the migration that fills them, and with two
posts at once on PostgreSQL."""

from __future__ import annotations

import datetime as dt
import importlib
import threading
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from django.apps import apps
from django.db import connection, transaction
from django.db.models import Count, OuterRef, Subquery
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from campaigns import selectors, services
from campaigns.choices import DeliveryStatus, EventKind
from campaigns.engagement import ENGAGEMENT_KINDS, engagement_counts
from campaigns.events import ProviderEvent, events_record
from campaigns.experiments import experiment_engagement, group_sizes
from campaigns.models import (
    Assignment,
    AssignmentCount,
    Campaign,
    Delivery,
    DeliveryEngagement,
    DeliveryEvent,
    EngagementCount,
    GroupEngagementCount,
    ProfileEngagement,
)
from devtools.sinks import RunningSinks, running_sinks
from tests.campaigns.delivery_support import drive, make_profile, plan, send_all
from tests.campaigns.factories import activate_acknowledged, email_action, make_live_campaign
from tests.campaigns.test_experiments import ab_test
from tests.conftest import wait_until

# A delivery id no delivery has (bench_events posts such ids).
UNKNOWN = 9_000_000_001
AT = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def sinks() -> Iterator[RunningSinks]:
    with running_sinks() as sink, override_settings(**sink.provider_settings()):
        yield sink


def recount(campaign: Campaign) -> tuple[list[tuple[str, int, str, int]], dict[str, dict]]:
    """What the report counted from the events before the counters: distinct deliveries
    per (channel, version, kind), and distinct profiles per (group, kind)."""
    events = DeliveryEvent.objects.filter(
        delivery__execution__campaign=campaign, kind__in=ENGAGEMENT_KINDS
    )
    by_delivery = sorted(
        (channel, int(version), kind, int(n))
        for channel, version, kind, n in events.values_list(
            "delivery__action__channel", "delivery__version__number", "kind"
        )
        .annotate(n=Count("delivery_id", distinct=True))
        .order_by()
    )
    group = Subquery(
        Assignment.objects.filter(
            campaign_id=campaign.pk, profile_id=OuterRef("delivery__profile_id")
        ).values("group")[:1]
    )
    by_group: dict[str, dict] = {}
    for row in (
        events.annotate(group=group)
        .values("group", "kind")
        .annotate(n=Count("delivery__profile_id", distinct=True))
        .order_by()
    ):
        if row["group"]:
            by_group.setdefault(row["group"], {})[row["kind"]] = row["n"]
    return by_delivery, by_group


def sizes_recounted(campaign: Campaign) -> dict[str, int]:
    rows = Assignment.objects.filter(campaign=campaign).values("group").annotate(n=Count("id"))
    return {row["group"]: row["n"] for row in rows.order_by()}


def counted(campaign: Campaign) -> tuple[list[tuple[str, int, str, int]], dict[str, dict]]:
    """What the report counts now, in the shape of ``recount``."""
    groups = experiment_engagement(campaign=campaign, kinds=ENGAGEMENT_KINDS)
    return sorted(engagement_counts(campaign=campaign)), {
        group: {k: v for k, v in counts.items() if k in ENGAGEMENT_KINDS}
        for group, counts in groups.items()
        if any(k in ENGAGEMENT_KINDS for k in counts)
    }


def event(row_id: int | None, kind: str, event_id: str, channel: str = "email") -> ProviderEvent:
    return ProviderEvent(
        provider="sendgrid",
        event_id=event_id,
        kind=kind,
        channel=channel,
        occurred_at=AT,
        delivery_id=row_id,
        recipient="",
    )


def rows_by_channel(campaign: Campaign) -> dict[str, list[Delivery]]:
    rows: dict[str, list[Delivery]] = {}
    for row in Delivery.objects.filter(execution__campaign=campaign).order_by("profile_id"):
        rows.setdefault(row.action.channel, []).append(row)
    return rows


@pytest.mark.django_db
def test_the_counters_match_a_recount_of_the_events_after_a_mixed_history(sinks):
    campaign = ab_test("mixed-", 40)
    execution = plan(campaign)
    rows = rows_by_channel(campaign)
    email, sms = rows["email"], rows["sms"]
    # A bounce before its send: the delivery's version is not decided yet.
    assert email[0].status == DeliveryStatus.PENDING
    events_record(events=[event(email[0].pk, EventKind.DELIVERED, "early-d")])
    send_all(execution)
    sent = [r for r in email if Delivery.objects.get(pk=r.pk).status == DeliveryStatus.SENT]
    sent_sms = [r for r in sms if Delivery.objects.get(pk=r.pk).status == DeliveryStatus.SENT]
    history = [
        *(event(r.pk, EventKind.DELIVERED, f"d{r.pk}") for r in sent),
        *(event(r.pk, EventKind.OPENED, f"o{r.pk}-{n}") for r in sent[:12] for n in range(3)),
        *(event(r.pk, EventKind.CLICKED, f"c{r.pk}") for r in sent[:4]),
        event(sent[5].pk, EventKind.BOUNCED, "b1"),
        event(sent[6].pk, EventKind.COMPLAINED, "x1"),
        event(sent[7].pk, EventKind.UNSUBSCRIBED, "u1"),
        event(sent[8].pk, EventKind.SOFT_BOUNCED, "s1"),  # a kind no report counts
        # The same profiles open their SMS too: one profile per group, two deliveries.
        *(event(r.pk, EventKind.OPENED, f"so{r.pk}", "sms") for r in sent_sms[:12]),
        *(event(r.pk, EventKind.DELIVERED, f"sd{r.pk}", "sms") for r in sent_sms),
        # Never a delivery: recorded, counted nowhere.
        event(UNKNOWN, EventKind.OPENED, "unknown-o"),
        event(UNKNOWN + 1, EventKind.DELIVERED, "unknown-d"),
        event(None, EventKind.DELIVERED, "detached"),
    ]
    first = events_record(events=history)
    again = events_record(events=history[::-1])  # the provider's retry, out of order
    assert (again.recorded, again.duplicates) == (0, len(history))
    assert first.recorded == len(history)

    assert counted(campaign) == recount(campaign)
    assert group_sizes(campaign) == sizes_recounted(campaign)
    by_delivery, by_group = counted(campaign)
    opened = {(c, k): n for c, _, k, n in by_delivery}
    assert opened[("email", "opened")] == 12
    assert opened[("email", "delivered")] == len({r.pk for r in sent} | {email[0].pk})
    opened_profiles = {r.profile_id for r in sent[:12]} | {r.profile_id for r in sent_sms[:12]}
    assert sum(kinds.get("opened", 0) for kinds in by_group.values()) == len(opened_profiles)
    assert not DeliveryEngagement.objects.filter(delivery_id__gte=UNKNOWN).exists()
    assert not DeliveryEngagement.objects.filter(kind=EventKind.SOFT_BOUNCED).exists()
    # Every profile once per kind: the groups' counts are of profiles, not deliveries.
    assert ProfileEngagement.objects.filter(campaign=campaign).count() == sum(
        n for kinds in by_group.values() for n in kinds.values()
    )


@pytest.mark.django_db
def test_an_event_before_its_send_counts_for_the_version_the_send_decides(sinks):
    make_profile()
    campaign = make_live_campaign(actions=[email_action(body="v1")])
    execution = plan(campaign)
    row = Delivery.objects.get(execution=execution)
    events_record(events=[event(row.pk, EventKind.DELIVERED, "before")])
    # Counted at once per channel, for the execution's version while undecided.
    assert engagement_counts(campaign=campaign) == [("email", 1, "delivered", 1)]

    services.campaign_modify(campaign=campaign, user=None)
    services.campaign_update(
        campaign=campaign, user=None, data={"actions": [email_action(body="v2")]}
    )
    activate_acknowledged(campaign=campaign)
    services.campaign_activation_complete(campaign_id=campaign.pk)
    send_all(execution)
    events_record(events=[event(row.pk, EventKind.OPENED, "after")])

    assert Delivery.objects.get(pk=row.pk).version.number == 2
    assert counted(campaign) == recount(campaign)
    report = selectors.campaign_report(campaign=campaign)["engagement"]
    assert report["by_version"]["2"]["delivered"]["count"] == 1
    assert report["by_version"]["2"]["opened"]["count"] == 1
    assert "1" not in report["by_version"]


@pytest.mark.django_db
def test_the_migration_fills_the_counters_from_the_events_recorded_before(sinks):
    campaign = ab_test("filled-", 20)
    drive(campaign)
    rows = rows_by_channel(campaign)
    events_record(
        events=[
            *(event(r.pk, EventKind.OPENED, f"o{r.pk}-{n}") for r in rows["email"] for n in (1, 2)),
            *(event(r.pk, EventKind.CLICKED, f"c{r.pk}", "sms") for r in rows["sms"][:5]),
            event(UNKNOWN, EventKind.OPENED, "unknown"),
        ]
    )
    before = counted(campaign)
    sizes = group_sizes(campaign)
    assert sizes == sizes_recounted(campaign)
    counters = (DeliveryEngagement, EngagementCount, ProfileEngagement, GroupEngagementCount)
    for model in (*counters, AssignmentCount):
        model.objects.all().delete()
    assert counted(campaign) == ([], {})

    migration = importlib.import_module("campaigns.migrations.0021_engagement_counters")
    # What the migration's function reads of its schema editor: the connection.
    migration.counters_fill(apps, SimpleNamespace(connection=connection))
    assert counted(campaign) == before == recount(campaign)
    assert group_sizes(campaign) == sizes


@pytest.mark.django_db
def test_the_report_reads_no_event(sinks):
    campaign = ab_test("noevents-", 10)
    drive(campaign)
    rows = rows_by_channel(campaign)
    events_record(events=[event(r.pk, EventKind.OPENED, f"o{r.pk}") for r in rows["email"]])
    with CaptureQueriesContext(connection) as queries:
        selectors.campaign_report(campaign=campaign)
    assert not [q["sql"] for q in queries if "campaigns_deliveryevent" in q["sql"]]


# --- two posts at once (PostgreSQL) -------------------------------------------------------


def _post_at_once(table: str, posts: list[list[ProviderEvent]]) -> None:
    """Record each post in its own thread and connection, all let go at the same moment:
    the test holds `table` locked until every post waits for it."""
    pids: list[int] = []
    errors: list[BaseException] = []

    def post(events: list[ProviderEvent]) -> None:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                pids.append(cursor.fetchone()[0])
            events_record(events=events)
        except BaseException as error:  # the test reads it
            errors.append(error)
        finally:
            connection.close()

    def waiting() -> bool:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM unnest(%s::int[]) p "
                "WHERE cardinality(pg_blocking_pids(p)) > 0",
                [pids],
            )
            return len(pids) == len(posts) and cursor.fetchone()[0] == len(posts)

    threads = [threading.Thread(target=post, args=(events,)) for events in posts]
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(f"LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE")
        for thread in threads:
            thread.start()
        wait_until(waiting, interval=0.02, message="the posts never met at the lock")
    for thread in threads:
        thread.join(30)
    assert not errors, errors


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("table", "what", "expected"),
    [
        ("campaigns_deliveryevent", "the same event twice", 1),
        ("campaigns_deliveryengagement", "two opens of one delivery", 1),
        ("campaigns_engagementcount", "opens of two deliveries", 2),
        ("campaigns_profileengagement", "one profile's opens on two channels", 2),
    ],
)
def test_two_posts_at_once_count_each_delivery_and_profile_once(sinks, table, what, expected):
    campaign = ab_test(f"race-{table[-8:]}-", 6, holdout=0)
    drive(campaign)
    rows = rows_by_channel(campaign)
    one, two = rows["email"][0], rows["email"][1]
    if what == "the same event twice":
        posts = [
            [event(one.pk, EventKind.OPENED, "same")],
            [event(one.pk, EventKind.OPENED, "same")],
        ]
    elif what == "two opens of one delivery":
        posts = [[event(one.pk, EventKind.OPENED, "o1")], [event(one.pk, EventKind.OPENED, "o2")]]
    elif what == "opens of two deliveries":
        posts = [[event(one.pk, EventKind.OPENED, "o1")], [event(two.pk, EventKind.OPENED, "o2")]]
    else:
        sms = next(r for r in rows["sms"] if r.profile_id == one.profile_id)
        posts = [
            [event(one.pk, EventKind.OPENED, "o1")],
            [event(sms.pk, EventKind.OPENED, "o2", "sms")],
        ]
    _post_at_once(table, posts)

    by_delivery, by_group = counted(campaign)
    assert (by_delivery, by_group) == recount(campaign)
    assert sum(n for _, _, kind, n in by_delivery if kind == "opened") == expected
    # One profile opened on two channels: two deliveries, one profile.
    profiles = 1 if what != "opens of two deliveries" else 2
    assert sum(kinds.get("opened", 0) for kinds in by_group.values()) == profiles
