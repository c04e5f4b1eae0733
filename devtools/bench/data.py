"""The benchmark's data: profiles generated inside the database (kept between runs), and a
segment and campaign per audience, sent to the local sinks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db import connection
from django.db.models import NOT_PROVIDED, Model
from django.utils import timezone

from campaigns import services
from campaigns.choices import CampaignType
from campaigns.models import Campaign, Delivery, DeliveryCount, DeliveryTimeline, Execution
from channels.choices import ChannelKind
from channels.models import MessagePreset
from devtools.sinks import RunningSinks
from segments.choices import SegmentKind
from segments.models import Profile, Segment

# Every benchmark campaign's name starts with it (earlier runs' rows are found by it).
CAMPAIGN_PREFIX = "bench-delivery "
CONTENT: dict[str, tuple[str, str]] = {
    ChannelKind.EMAIL: (
        "Hello {{ profile.first_name|default:'there' }}",
        "Hi {{ profile.external_id }}, news for you.",
    ),
    ChannelKind.SMS: ("", "Hi {{ profile.first_name|default:'there' }}: news at example.com"),
    ChannelKind.PUSH: ("News", "Hi {{ profile.first_name|default:'there' }}"),
    ChannelKind.WEBHOOK: ("", "{{ profile.external_id }}"),
}
PRESET_FIELDS: dict[str, dict[str, str]] = {
    ChannelKind.EMAIL: {"from_email": "bench@example.com", "from_name": "Bench"},
    ChannelKind.SMS: {"sms_sender_id": "BENCH"},
    ChannelKind.PUSH: {"push_app_id": "com.example.bench"},
    ChannelKind.WEBHOOK: {},
}


def earlier_runs_delete() -> None:
    """Drop the delivery rows of earlier runs (the campaigns stay, Completed)."""
    earlier = Execution.objects.filter(campaign__name__startswith=CAMPAIGN_PREFIX)
    Delivery.objects.filter(execution__in=earlier).delete()
    DeliveryCount.objects.filter(execution__in=earlier).delete()
    DeliveryTimeline.objects.filter(execution__in=earlier).delete()


def profiles_ensure(prefix: str, n: int, *, say: Callable[[str], None]) -> None:
    """Exactly n profiles named prefix0000001…, generated inside the database."""
    width = 8
    Profile.objects.filter(external_id__startswith=prefix).filter(
        external_id__gt=f"{prefix}{n:0{width}d}"
    ).delete()
    have = Profile.objects.filter(external_id__startswith=prefix).count()
    if have >= n:
        return
    say(f"generating {n - have} {prefix}profiles…")
    known = {
        "external_id": f"'{prefix}' || {_pad('g', width)}",
        "email": f"'{prefix}' || g || '@example.com'",
        "phone": f"'+336' || {_pad('g', 8)}",
        "push_token": f"'token-{prefix}' || g",
        "locale": "'en'",
        "time_zone": "'Europe/Paris'",
        "attributes": '\'{"first_name": "Ada", "country": "FR"}\'',
        "created_at": "CURRENT_TIMESTAMP",
        "updated_at": "CURRENT_TIMESTAMP",
    }
    columns, expressions = [], []
    for field in Profile._meta.concrete_fields:
        if field.primary_key:
            continue
        if field.name in known:
            expression = known[field.name]
        elif field.null:
            expression = "NULL"
        elif field.default is not NOT_PROVIDED and not callable(field.default):
            value = field.default
            expression = (
                ("TRUE" if value else "FALSE")
                if isinstance(value, bool)
                else repr(str(value)).replace('"', "'")
            )
        else:
            expression = "''"
        columns.append(connection.ops.quote_name(field.column))
        expressions.append(expression)
    table = connection.ops.quote_name(Profile._meta.db_table)
    select = f"SELECT {', '.join(expressions)}"
    if connection.vendor == "postgresql":
        source = "FROM generate_series(%s, %s) AS g"
    else:
        source = (
            "FROM (WITH RECURSIVE s(g) AS (SELECT %s UNION ALL SELECT g + 1 FROM s "
            "WHERE g < %s) SELECT g FROM s) WHERE true"
        )
    sql = (
        f"INSERT INTO {table} ({', '.join(columns)}) {select} {source} "
        "ON CONFLICT (external_id) DO NOTHING"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [1, n])
    tables_vacuum_analyze(Profile)


def tables_vacuum_analyze(*models: type[Model]) -> None:
    """VACUUM (ANALYZE) the tables of `models` on PostgreSQL, as autovacuum would have long
    since for rows written well before a run: pages all-visible and statistics gathered, so
    that a run does not share the machine with the vacuum its own set-up triggered. Only
    ANALYZE inside a transaction (a test's), where VACUUM cannot run."""
    if connection.vendor != "postgresql":
        return
    command = "ANALYZE" if connection.in_atomic_block else "VACUUM (ANALYZE)"
    with connection.cursor() as cursor:
        for model in models:
            cursor.execute(f"{command} {connection.ops.quote_name(model._meta.db_table)}")


def _pad(expression: str, width: int) -> str:
    if connection.vendor == "postgresql":
        return f"lpad({expression}::text, {width}, '0')"
    return f"substr('{'0' * width}' || {expression}, -{width}, {width})"


def _segment(prefix: str, n: int) -> Segment:
    segment, _ = Segment.objects.update_or_create(
        name=f"bench {prefix}{n}",
        defaults={
            "kind": SegmentKind.RULES,
            "rules": {"all": [{"field": "external_id", "op": "startswith", "value": prefix}]},
        },
    )
    return segment


def campaign_create(
    prefix: str,
    n: int,
    channels: list[str],
    sink: RunningSinks,
    *,
    campaign_type: str = CampaignType.TRANSACTIONAL,
) -> Campaign:
    """A Draft campaign to the n prefix… profiles on each channel, webhooks to the sink;
    transactional unless said otherwise (the frequency caps' runs are marketing)."""
    actions = []
    for channel in channels:
        fields = dict(PRESET_FIELDS[channel])
        if channel == ChannelKind.WEBHOOK:
            fields["webhook_url"] = sink.webhook_url
        preset, _ = MessagePreset.objects.update_or_create(
            name=f"bench {channel}", defaults={"channel": channel, **fields}
        )
        subject, body = CONTENT[channel]
        actions.append({"channel": channel, "preset": preset, "subject": subject, "body": body})
    return services.campaign_create(
        user=None,
        name=f"{CAMPAIGN_PREFIX}{prefix}{n} {timezone.now().isoformat()}",
        type=campaign_type,
        segment=_segment(prefix, n),
        actions=actions,
    )


def bench_user() -> Any:
    """The superuser the timed pages and the export are requested as."""
    from django.contrib.auth import get_user_model

    user, _ = get_user_model().objects.get_or_create(
        username="bench-report", defaults={"is_superuser": True, "is_staff": True}
    )
    return user
