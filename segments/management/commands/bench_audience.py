"""`manage.py bench_audience --profiles N`: how fast audiences are built, on PostgreSQL.

1. generates N profiles with realistic attributes inside the database (one INSERT … SELECT);
2. times the live estimate of a 3-condition rule over them (what the segment builder shows:
   sampled on a large table) and its exact count (what an activation counts), each the
   median of 3 runs, and prints how far the estimate is from the count;
3. times a snapshot of an N-member segment (one INSERT … SELECT; median of 3 runs, as
   a two-second figure on a shared machine varies by a fifth from run to run);
4. writes a CSV of N new profiles and imports it with `manage.py import_profiles` in a
   child process, timing it and reading the child's peak RSS (the import path alone);
then removes what it made (unless --keep). The last line printed is one JSON object with
exactly: profiles, import_rows_per_s, import_peak_rss_mb, estimate_s, count_s,
snapshot_rows_per_s.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection

from config.processes import child_process_env
from segments import selectors, services
from segments.models import AudienceMember, AudienceSnapshot, Profile, Segment

PREFIX = "bench-"
COUNTRIES = ["FR", "DE", "ES", "IT", "BE", "NL", "GB", "US", "PT", "PL"]
COUNTRY_WEIGHTS = [20, 18, 12, 10, 6, 6, 10, 10, 4, 4]
LOCALES = {"FR": "fr", "DE": "de", "ES": "es", "IT": "it", "BE": "fr", "NL": "nl"}
ZONES = {"FR": "Europe/Paris", "DE": "Europe/Berlin", "US": "America/New_York"}
PLANS = ["free", "free", "free", "pro", "team"]
TAGS = ["newsletter", "vip", "beta", "churn-risk", "mobile", "web"]
ESTIMATE_RULE = {
    "all": [
        {"field": "attributes.country", "op": "in", "value": ["FR", "DE", "ES"]},
        {"field": "attributes.age", "op": "gte", "value": 18},
        {"field": "consent.email", "op": "eq", "value": True},
    ]
}


# `_rows` as one INSERT … SELECT (PostgreSQL): a country drawn from a list holding each
# code as many times as its weight, k of the tags (k from 0 to 3) from a random start.
_GENERATE_SQL = """
SELECT external_id, external_id || '@example.com', '+336' || lpad((g %% 100000000)::text, 8, '0'),
    (%(locales)s::text[])[array_position(%(all_countries)s::text[], country)],
    (%(zones)s::text[])[array_position(%(all_countries)s::text[], country)],
    jsonb_build_object(
        'country', country,
        'age', 16 + floor(random() * 65)::int,
        'plan', (%(plans)s::text[])[1 + floor(random() * 5)::int],
        'vip', random() < 0.05,
        'orders', floor(random() * 41)::int,
        'tags', COALESCE((SELECT jsonb_agg((%(tags)s::text[])[1 + (first + i) %% 6])
                          FROM generate_series(1, k) AS i), '[]'::jsonb),
        'last_purchase', (now() - floor(random() * 721)::int * interval '1 day')::date::text
    ),
    random() > 0.08, random() > 0.2, random() > 0.3,
    now() - floor(random() * 365 * 86400)::int * interval '1 second', now(), '', '', '', ''
FROM (
    SELECT g, %(prefix)s || lpad(g::text, 8, '0') AS external_id,
        (%(countries)s::text[])[1 + floor(random() * 100)::int] AS country,
        floor(random() * 4)::int AS k, floor(random() * 6)::int AS first
    FROM generate_series(0, %(n)s - 1) AS g
) AS drawn
"""


def _attributes(rng: random.Random, now: dt.datetime) -> dict[str, Any]:
    country = rng.choices(COUNTRIES, COUNTRY_WEIGHTS)[0]
    last = now - dt.timedelta(days=rng.randint(0, 720))
    return {
        "country": country,
        "age": rng.randint(16, 80),
        "plan": rng.choice(PLANS),
        "vip": rng.random() < 0.05,
        "orders": rng.randint(0, 40),
        "tags": rng.sample(TAGS, rng.randint(0, 3)),
        "last_purchase": last.date().isoformat(),
    }


T = TypeVar("T")


def _three_runs(
    run: Callable[[], T], then: Callable[[T], object] | None = None
) -> tuple[list[float], T]:
    """The timings of three runs of `run` (a figure of about a second varies by a fifth
    from run to run on a shared machine) and what the last one returned; `then` follows
    each run, untimed."""
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        result = run()
        timings.append(time.perf_counter() - started)
        if then is not None:
            then(result)
    return timings, result


class Command(BaseCommand):
    help = "Benchmark profile import, segment estimate and audience snapshot (PostgreSQL)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--profiles", type=int, default=1_000_000)
        parser.add_argument("--keep", action="store_true", help="Keep the generated rows.")
        parser.add_argument("--seed", type=int, default=7)

    def say(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()

    def handle(self, *args: Any, **options: Any) -> None:
        n = options["profiles"]
        if n < 1:
            raise CommandError("--profiles must be at least 1.")
        postgres = connection.vendor == "postgresql"
        if not postgres:
            self.stderr.write(
                "warning: this is SQLite; the targets are for PostgreSQL (make services, then "
                "DATABASE_URL=…). Running anyway, without COPY."
            )
        rng = random.Random(options["seed"])
        self._cleanup()
        if postgres:
            # Free the pages of an earlier run's profiles now, or this run's are appended
            # after them and every scan measured reads twice the pages.
            with connection.cursor() as cursor:
                cursor.execute(f"VACUUM {Profile._meta.db_table}")
        try:
            result = self._run(n, rng, postgres)
        finally:
            if not options["keep"]:
                self._cleanup()
        self.say(json.dumps(result))

    def _run(self, n: int, rng: random.Random, postgres: bool) -> dict[str, Any]:
        started = time.perf_counter()
        self._generate(n, rng, postgres)
        took = time.perf_counter() - started
        self.say(f"generated {n:,} profiles in {took:.2f} s ({n / took:,.0f} rows/s)")
        if postgres:
            with connection.cursor() as cursor:
                cursor.execute(f"VACUUM ANALYZE {Profile._meta.db_table}")

        rule = services.segment_create(user=None, name=f"{PREFIX}3 conditions", rules=ESTIMATE_RULE)
        timings, estimate = _three_runs(lambda: selectors.segment_estimate(segment=rule))
        estimate_s = statistics.median(timings)
        self.say(
            f"estimate of a 3-condition rule: {estimate} of {n:,} profiles in "
            f"{estimate_s:.3f} s (median of 3: {', '.join(f'{t:.3f}' for t in timings)})"
        )
        timings, count = _three_runs(lambda: selectors.segment_count(segment=rule))
        count_s = statistics.median(timings)
        error = estimate.count - count
        self.say(
            f"exact count of the same rule: {count:,} in {count_s:.3f} s (median of 3: "
            f"{', '.join(f'{t:.3f}' for t in timings)}); the estimate is off by {error:+,} "
            f"({error / max(count, 1):+.2%}), its margin ±{estimate.margin:,}"
        )

        everyone = services.segment_create(user=None, name=f"{PREFIX}everyone", rules={"all": []})

        def drop(snapshot: AudienceSnapshot) -> None:
            AudienceMember.objects.filter(snapshot=snapshot).delete()
            snapshot.delete()

        timings, snapshot = _three_runs(
            lambda: services.audience_snapshot_create(segment=everyone), then=drop
        )
        size = snapshot.size
        snapshot_s = statistics.median(timings)
        snapshot_rate = size / snapshot_s
        self.say(
            f"snapshot of {size:,} members in {snapshot_s:.2f} s ({snapshot_rate:,.0f} rows/s; "
            f"median of 3: {', '.join(f'{t:.2f}' for t in timings)})"
        )

        with tempfile.TemporaryDirectory(prefix="salvo-bench-") as folder:
            path = Path(folder) / "profiles.csv"
            self._write_csv(path, n, rng)
            size_mb = path.stat().st_size / 2**20
            self.say(f"wrote {n:,} rows to a {size_mb:,.0f} MB CSV file")
            import_s, peak_mb = self._import_in_child(path)
        import_rate = n / import_s
        self.say(
            f"import of {n:,} new profiles: {import_s:.2f} s ({import_rate:,.0f} rows/s), "
            f"peak RSS {peak_mb:.0f} MB"
        )
        return {
            "profiles": n,
            "import_rows_per_s": round(import_rate),
            "import_peak_rss_mb": round(peak_mb, 1),
            "estimate_s": round(estimate_s, 4),
            "count_s": round(count_s, 4),
            "snapshot_rows_per_s": round(snapshot_rate),
        }

    def _rows(self, n: int, rng: random.Random, start: int = 0) -> Iterator[tuple[Any, ...]]:
        now = dt.datetime.now(dt.UTC)
        for i in range(start, start + n):
            attributes = _attributes(rng, now)
            country = attributes["country"]
            external_id = f"{PREFIX}{i:08d}"
            yield (
                external_id,
                f"{external_id}@example.com",
                f"+336{i % 100_000_000:08d}",
                LOCALES.get(country, "en"),
                ZONES.get(country, "Europe/London"),
                json.dumps(attributes),
                rng.random() > 0.08,
                rng.random() > 0.2,
                rng.random() > 0.3,
                now - dt.timedelta(seconds=rng.randint(0, 365 * 86400)),
                now,
            )

    def _generate(self, n: int, rng: random.Random, postgres: bool) -> None:
        table = Profile._meta.db_table
        columns = (
            "external_id, email, phone, locale, time_zone, attributes, consent_email, "
            "consent_sms, consent_push, created_at, updated_at"
        )
        blank = "push_token, consent_email_source, consent_sms_source, consent_push_source"
        with connection.cursor() as cursor:
            if postgres:
                # Inside the server, from the same distributions as `_rows`: 10M rows made
                # in Python and sent by COPY took 544 s, Python's share being most of it.
                cursor.execute("SELECT setseed(%s)", [rng.random() * 2 - 1])
                cursor.execute(
                    f"INSERT INTO {table} ({columns}, {blank}) {_GENERATE_SQL}",
                    {
                        "n": n,
                        "prefix": PREFIX,
                        "countries": [
                            c
                            for c, w in zip(COUNTRIES, COUNTRY_WEIGHTS, strict=True)
                            for _ in range(w)
                        ],
                        "locales": [LOCALES.get(c, "en") for c in COUNTRIES],
                        "zones": [ZONES.get(c, "Europe/London") for c in COUNTRIES],
                        "all_countries": COUNTRIES,
                        "plans": PLANS,
                        "tags": TAGS,
                    },
                )
            else:
                marks = ", ".join(["%s"] * 15)
                rows = (
                    (*row[:9], *(str(v) for v in row[9:]), "", "", "", "")
                    for row in self._rows(n, rng)
                )
                cursor.executemany(
                    f"INSERT INTO {table} ({columns}, {blank}) VALUES ({marks})", list(rows)
                )

    def _write_csv(self, path: Path, n: int, rng: random.Random) -> None:
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(
                [
                    "external_id",
                    "email",
                    "phone",
                    "locale",
                    "time_zone",
                    "consent_email",
                    "country",
                    "age",
                    "plan",
                    "vip",
                    "orders",
                    "last_purchase",
                ]
            )
            for row in self._rows(n, rng, start=n):
                attributes = json.loads(row[5])
                writer.writerow(
                    [
                        row[0],
                        row[1],
                        row[2],
                        row[3],
                        row[4],
                        "true" if row[6] else "false",
                        attributes["country"],
                        attributes["age"],
                        attributes["plan"],
                        str(attributes["vip"]).lower(),
                        attributes["orders"],
                        attributes["last_purchase"],
                    ]
                )

    def _import_in_child(self, path: Path) -> tuple[float, float]:
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        command = [
            sys.executable,
            str(Path(settings.BASE_DIR) / "manage.py"),
            "import_profiles",
            str(path),
            "--format",
            "csv",
            "--no-progress",
        ]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=self._child_env())
        took = time.perf_counter() - started
        if done.returncode != 0:
            raise CommandError(f"import_profiles failed: {done.stderr.strip()[-500:]}")
        self.say(f"import_profiles: {done.stdout.strip().splitlines()[0]}")
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        return took, max(peak_kb, before) / 1024

    def _child_env(self) -> dict[str, str]:
        """The environment of the importing child: the database this process uses (under
        tests, the test database rather than the one DATABASE_URL names)."""
        # As staff run it in production: DEBUG off (no log of queries kept).
        return {**os.environ, **child_process_env(), "DJANGO_DEBUG": "false"}

    def _cleanup(self) -> None:
        AudienceSnapshot.objects.filter(segment__name__startswith=PREFIX).delete()
        Segment.objects.filter(name__startswith=PREFIX).delete()
        with connection.cursor() as cursor:
            cursor.execute(
                f"DELETE FROM {Profile._meta.db_table} WHERE external_id LIKE %s", [f"{PREFIX}%"]
            )
