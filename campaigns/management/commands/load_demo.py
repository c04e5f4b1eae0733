"""`manage.py load_demo`: a demo superuser, profiles, segments, presets and campaigns.

Safe to run at every start: whatever already exists (matched by its name, external id or
username) is left as it is, so a second run creates nothing. Campaigns are built through
the services, as a user would build them; activations are finished in-process so the demo
does not depend on a running worker.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction
from django.utils import timezone
from rest_framework.authtoken.models import Token

from campaigns import services
from campaigns.choices import CampaignType
from campaigns.models import Campaign
from campaigns.review import review_warning_codes
from channels.choices import ChannelKind
from channels.models import MessagePreset
from segments.choices import SegmentKind
from segments.models import Profile, Segment

ADMIN_USERNAME = "admin"
ADMIN_PASSWORD = "admin"
PROFILE_COUNT = 200
STATIC_MEMBER_COUNT = 25
# The readers of the campaign that is still sending when a newcomer logs in: at
# READERS_RATE_PER_S through its preset, READER_COUNT take five minutes.
READER_COUNT = 3000
READERS_RATE_PER_S = 10.0
# Fixed, so every checkout gets the same demo audience.
SEED = 20240501

COUNTRIES = ["FR", "FR", "FR", "BE", "DE", "ES", "IT", "GB", "US", "CA"]
PLANS = ["free", "free", "free", "pro", "pro", "enterprise"]
LOCALES = {
    "FR": "fr",
    "BE": "fr",
    "DE": "de",
    "ES": "es",
    "IT": "it",
    "GB": "en",
    "US": "en",
    "CA": "en",
}
TIME_ZONES = {
    "FR": "Europe/Paris",
    "BE": "Europe/Brussels",
    "DE": "Europe/Berlin",
    "ES": "Europe/Madrid",
    "IT": "Europe/Rome",
    "GB": "Europe/London",
    "US": "America/New_York",
    "CA": "America/Toronto",
}

FRANCE_AND_BELGIUM = "Demo · France and Belgium"
VIP_ADULTS = "Demo · VIP adults"
PAYING_CUSTOMERS = "Demo · Pro and Enterprise plans"
SMS_REACHABLE = "Demo · Reachable by SMS"
BETA_TESTERS = "Demo · Beta testers (static)"
NEWSLETTER_READERS = "Demo · Newsletter readers"

RULE_SEGMENTS: dict[str, dict[str, Any]] = {
    FRANCE_AND_BELGIUM: {
        "all": [{"field": "attributes.country", "op": "in", "value": ["FR", "BE"]}]
    },
    VIP_ADULTS: {
        "all": [
            {"field": "attributes.age", "op": "gte", "value": 18},
            {"field": "attributes.vip", "op": "eq", "value": True},
        ]
    },
    PAYING_CUSTOMERS: {
        "all": [{"field": "attributes.plan", "op": "in", "value": ["pro", "enterprise"]}]
    },
    SMS_REACHABLE: {
        "all": [
            {"field": "phone", "op": "exists", "value": True},
            {"not": {"field": "consent.sms", "op": "eq", "value": False}},
        ]
    },
    NEWSLETTER_READERS: {"field": "attributes.list", "op": "eq", "value": "readers"},
}

NEWSLETTER = "Demo newsletter"
TEXTS = "Demo SMS"
APP_PUSH = "Demo app push"
CRM_HOOK = "Demo CRM webhook"
PACED_NEWSLETTER = "Demo newsletter, paced"

PRESETS: dict[str, dict[str, Any]] = {
    NEWSLETTER: {
        "channel": ChannelKind.EMAIL,
        "from_name": "Salvo Demo",
        "from_email": "news@demo.example.com",
        "reply_to": "support@demo.example.com",
    },
    TEXTS: {"channel": ChannelKind.SMS, "sms_sender_id": "SALVO"},
    APP_PUSH: {"channel": ChannelKind.PUSH, "push_app_id": "com.example.salvo"},
    CRM_HOOK: {"channel": ChannelKind.WEBHOOK, "webhook_url": "http://127.0.0.1:8025/webhook"},
    PACED_NEWSLETTER: {
        "channel": ChannelKind.EMAIL,
        "from_name": "Salvo Demo",
        "from_email": "news@demo.example.com",
        "description": f"At most {READERS_RATE_PER_S:g} messages a second.",
        "rate_limit_per_second": READERS_RATE_PER_S,
    },
}
SENDING_NOW = "Demo · Autumn newsletter (sending now)"


class Command(BaseCommand):
    help = "Load demo data (idempotent): admin user, profiles, segments, presets, campaigns."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--admin-url",
            default="http://127.0.0.1:8000/admin/",
            help="The admin address to print with the demo login.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        admin, token = self._admin()
        created_profiles = self._profiles()
        segments = self._segments()
        presets = self._presets()
        made = self._campaigns(segments, presets)

        self.stdout.write(
            f"Demo data: {created_profiles} new profiles, {len(made)} new campaigns"
            + (f" ({', '.join(made)})" if made else "")
            + "."
        )
        self.stdout.write(
            self.style.SUCCESS(
                f"Admin: {options['admin_url']}  user “{admin.get_username()}”, "
                f"password “{ADMIN_PASSWORD}”  ·  API token: {token.key}"
            )
        )
        sending = Campaign.objects.filter(name=SENDING_NOW).values_list("pk", flat=True).first()
        if sending is not None:
            self.stdout.write(
                f"Sending now: “{SENDING_NOW}”, "
                f"{options['admin_url']}campaigns/campaign/{sending}/change/ "
                "(the home page shows its progress)"
            )

    # --- people ------------------------------------------------------------------------

    def _admin(self) -> tuple[Any, Token]:
        User = get_user_model()
        admin = User.objects.filter(username=ADMIN_USERNAME).first()
        if admin is None:
            admin = User.objects.create_superuser(
                username=ADMIN_USERNAME, email="admin@demo.example.com", password=ADMIN_PASSWORD
            )
        token, _ = Token.objects.get_or_create(user=admin)
        return admin, token

    def _profiles(self) -> int:
        rng = random.Random(SEED)
        wanted = []
        for n in range(1, PROFILE_COUNT + 1):
            country = rng.choice(COUNTRIES)
            wanted.append(
                Profile(
                    external_id=f"demo-{n:04d}",
                    email=f"demo{n:04d}@demo.example.com",
                    phone=f"+336{n:08d}" if rng.random() < 0.8 else "",
                    push_token=f"demo-push-{n:04d}" if rng.random() < 0.5 else "",
                    locale=LOCALES[country],
                    time_zone=TIME_ZONES[country],
                    attributes={
                        "country": country,
                        "age": rng.randint(16, 80),
                        "vip": rng.random() < 0.15,
                        "plan": rng.choice(PLANS),
                    },
                    consent_email=rng.random() < 0.9,
                    consent_sms=rng.random() < 0.75,
                    consent_push=rng.random() < 0.85,
                )
            )
        # The newsletter's readers: an address and nothing else the other segments test.
        wanted += [
            Profile(
                external_id=f"demo-reader-{n:04d}",
                email=f"reader{n:04d}@demo.example.com",
                attributes={"list": "readers"},
            )
            for n in range(1, READER_COUNT + 1)
        ]
        existing = set(
            Profile.objects.filter(external_id__in=[p.external_id for p in wanted]).values_list(
                "external_id", flat=True
            )
        )
        missing = [p for p in wanted if p.external_id not in existing]
        Profile.objects.bulk_create(missing)
        return len(missing)

    def _segments(self) -> dict[str, Segment]:
        segments = {}
        for name, rules in RULE_SEGMENTS.items():
            segments[name], _ = Segment.objects.get_or_create(
                name=name,
                defaults={
                    "kind": SegmentKind.RULES,
                    "rules": rules,
                    "description": "Demo rule segment.",
                },
            )
        beta, created = Segment.objects.get_or_create(
            name=BETA_TESTERS,
            defaults={"kind": SegmentKind.STATIC, "description": "Demo static list."},
        )
        if created:
            beta.members.set(
                Profile.objects.filter(external_id__startswith="demo-").order_by("external_id")[
                    :STATIC_MEMBER_COUNT
                ]
            )
        segments[BETA_TESTERS] = beta
        return segments

    def _presets(self) -> dict[str, MessagePreset]:
        presets = {}
        for name, fields in PRESETS.items():
            presets[name], _ = MessagePreset.objects.get_or_create(name=name, defaults=fields)
        return presets

    # --- campaigns ----------------------------------------------------------------------

    def _campaigns(
        self, segments: dict[str, Segment], presets: dict[str, MessagePreset]
    ) -> list[str]:
        def email(subject: str, body: str) -> dict[str, Any]:
            return {
                "channel": ChannelKind.EMAIL,
                "preset": presets[NEWSLETTER],
                "subject": subject,
                "body": body,
            }

        def sms(body: str) -> dict[str, Any]:
            return {"channel": ChannelKind.SMS, "preset": presets[TEXTS], "body": body}

        def push(subject: str, body: str) -> dict[str, Any]:
            return {
                "channel": ChannelKind.PUSH,
                "preset": presets[APP_PUSH],
                "subject": subject,
                "body": body,
            }

        def webhook(body: str) -> dict[str, Any]:
            return {"channel": ChannelKind.WEBHOOK, "preset": presets[CRM_HOOK], "body": body}

        hello = "Hello {{ profile.external_id }},"
        tomorrow = timezone.now().replace(second=0, microsecond=0) + dt.timedelta(days=1)

        # name → (create arguments, what happens after creation)
        plans: dict[str, tuple[dict[str, Any], Callable[[Campaign], object]]] = {
            "Demo · Spring sale": (
                {
                    "description": "Ready to activate: try “Activate” in the admin.",
                    "tags": ["promo", "spring"],
                    "segment": segments[FRANCE_AND_BELGIUM],
                    "actions": [
                        email("Spring sale: 20% off", f"{hello}\nOur spring sale starts now."),
                        sms("Spring sale: 20% off today at Salvo Demo."),
                    ],
                },
                _leave,
            ),
            "Demo · Welcome series": (
                {
                    "description": "Missing a segment: activation lists what to fix.",
                    "tags": ["onboarding"],
                    "actions": [email("Welcome!", f"{hello}\nWelcome aboard.")],
                },
                _leave,
            ),
            "Demo · Product launch": (
                {
                    "description": "Scheduled for tomorrow.",
                    "tags": ["launch"],
                    "segment": segments[PAYING_CUSTOMERS],
                    "start_at": tomorrow,
                    "actions": [
                        email("Meet our new product", f"{hello}\nIt is here."),
                        push("New product", "Tap to discover it."),
                    ],
                },
                _activate,
            ),
            "Demo · Weekly digest": (
                {
                    "description": "Live.",
                    "tags": ["newsletter"],
                    "segment": segments[BETA_TESTERS],
                    "actions": [email("Your weekly digest", f"{hello}\nThis week at Salvo.")],
                },
                _activate,
            ),
            "Demo · Loyalty rewards": (
                {
                    "description": "Live, with an open draft version (see “open draft”).",
                    "tags": ["loyalty"],
                    "segment": segments[VIP_ADULTS],
                    "actions": [
                        email("Your rewards", f"{hello}\nYou earned new rewards."),
                        webhook('{"event": "loyalty_rewards"}'),
                    ],
                },
                _activate_then_modify,
            ),
            SENDING_NOW: (
                {
                    "description": f"Live when you log in: {READER_COUNT:,} readers through a "
                    f"preset limited to {READERS_RATE_PER_S:g} messages a second, about "
                    f"{READER_COUNT / READERS_RATE_PER_S / 60:.0f} minutes. Open it to watch "
                    "it go out.",
                    "tags": ["newsletter", "autumn"],
                    "segment": segments[NEWSLETTER_READERS],
                    "actions": [
                        {
                            "channel": ChannelKind.EMAIL,
                            "preset": presets[PACED_NEWSLETTER],
                            "subject": "Autumn news",
                            "body": f"{hello}\nThe leaves are turning at Salvo.",
                        }
                    ],
                },
                _activate,
            ),
            "Demo · Flash sale": (
                {
                    "description": "Stopped: sent to the wrong audience.",
                    "tags": ["promo"],
                    "segment": segments[SMS_REACHABLE],
                    "actions": [sms("Flash sale: 2 hours only!")],
                },
                _activate_then_stop,
            ),
            "Demo · Summer newsletter": (
                {
                    "description": "Completed.",
                    "tags": ["newsletter", "summer"],
                    "segment": segments[FRANCE_AND_BELGIUM],
                    "actions": [email("Summer news", f"{hello}\nHave a nice summer.")],
                },
                _activate_then_complete,
            ),
            "Demo · Terms of service update": (
                {
                    "description": "Archived transactional notice (ignores marketing opt-outs).",
                    "type": CampaignType.TRANSACTIONAL,
                    "tags": ["legal"],
                    "segment": segments[PAYING_CUSTOMERS],
                    "actions": [
                        email("Our terms are changing", f"{hello}\nOur terms change next month.")
                    ],
                },
                _activate_then_archive,
            ),
        }
        existing = set(Campaign.objects.filter(name__in=plans).values_list("name", flat=True))
        made = []
        for name, (fields, then) in plans.items():
            if name in existing:
                continue
            # One transaction per campaign: a failure never leaves a half-built one that
            # would block the next run.
            with transaction.atomic():
                campaign = services.campaign_create(user=None, name=name, **fields)
                then(campaign)
            made.append(name)
        return made


def _leave(campaign: Campaign) -> None:
    pass


def _activate(campaign: Campaign) -> Campaign:
    # The demo's content is ours and reviewed: what it warns about is known and accepted.
    acknowledge = review_warning_codes(campaign=campaign)
    services.campaign_activate(campaign=campaign, user=None, acknowledge=acknowledge)
    return services.campaign_activation_complete(campaign_id=campaign.pk)


def _activate_then_modify(campaign: Campaign) -> None:
    campaign = _activate(campaign)
    services.campaign_modify(campaign=campaign, user=None)


def _activate_then_stop(campaign: Campaign) -> None:
    campaign = _activate(campaign)
    services.campaign_stop(campaign=campaign, user=None, reason="Sent to the wrong audience.")


def _activate_then_complete(campaign: Campaign) -> None:
    campaign = _activate(campaign)
    services.campaign_complete(campaign=campaign, reason="All deliveries done.")


def _activate_then_archive(campaign: Campaign) -> None:
    _activate_then_complete(campaign)
    services.campaign_archive(campaign=campaign, user=None)
