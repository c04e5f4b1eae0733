"""``manage.py bench_tracking``: what own tracking adds to rendering one message (the pixel
and every link signed and rewritten, ``campaigns.tracking``), in this process, no I/O;
human lines first, the summary as one JSON line last."""

import json
import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.test import override_settings

from campaigns.tracking import MessageTracker


def _message(links: int) -> tuple[str, str]:
    urls = [f"https://shop.example.com/p/{n}?utm_source=salvo&item={n}" for n in range(links)]
    text = "Hello,\n" + "".join(f"See {url} today.\n" for url in urls)
    html = (
        "<html><body><p>Hello,</p>"
        + "".join(
            f'<p><a href="{url.replace("&", "&amp;")}">Item {n}</a></p>'
            for n, url in enumerate(urls)
        )
        + "</body></html>"
    )
    return text, html


class Command(BaseCommand):
    help = "Measure the cost of own open and click tracking per message."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--messages", type=int, default=20_000)
        parser.add_argument("--links", type=int, default=5, help="Links per message.")

    def handle(self, *args: Any, **options: Any) -> None:
        count, links = options["messages"], options["links"]
        if count < 1 or links < 0:
            raise CommandError("--messages must be at least 1 and --links at least 0.")
        text, html = _message(links)
        public = settings.SALVO_PUBLIC_URL or "https://salvo.example.com"
        secret = settings.SALVO_TRACKING_SECRET or "bench-tracking-key"
        summary: dict[str, Any] = {"messages": count, "links": links}
        with override_settings(SALVO_PUBLIC_URL=public, SALVO_TRACKING_SECRET=secret):
            for name, clicks in (("opens", False), ("opens_and_clicks", True)):
                tracker = MessageTracker(opens=True, clicks=clicks, keep=public + "/unsubscribe/")
                start = time.perf_counter()
                for delivery_id in range(count):
                    tracker.track(delivery_id, text, html)
                per_message_us = (time.perf_counter() - start) / count * 1e6
                summary[f"{name}_us_per_message"] = round(per_message_us, 1)
                self.stdout.write(
                    f"{name}: {per_message_us:.1f} µs per message "
                    f"({1e6 / per_message_us:,.0f} messages/s in one thread)"
                )
        self.stdout.write(json.dumps(summary))
